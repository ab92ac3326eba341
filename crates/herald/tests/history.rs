//! History and recovery over real sockets: a client that comes back with `since` gets exactly what it missed, in
//! order, before live items, or is told `recovered: false`; in `herald serve`, on each gateway of a gRPC cluster, and
//! on NATS, where JetStream keeps it (each test starts its own `nats-server -js` with a private store).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use support::cluster::{NatsServer, TestGateway, TestLogic};
use support::{Client, TestServer, flags};

/// Where a client stands in a room: the offset of its last item, and the epoch.
#[derive(Debug, Clone, PartialEq)]
struct At {
    offset: u64,
    epoch: String,
}

impl At {
    fn of(data: &Value) -> Self {
        Self {
            offset: data["offset"].as_u64().unwrap_or_else(|| panic!("an offset in {data}")),
            epoch: data["epoch"]
                .as_str()
                .unwrap_or_else(|| panic!("an epoch in {data}"))
                .to_owned(),
        }
    }
}

/// A client of one room that keeps its position, as a client library does.
struct Resumer {
    client: Client,
    room: String,
    at: Option<At>,
    /// Every item received, with its offset.
    items: Vec<(u64, Value)>,
}

impl Resumer {
    /// Connects and joins `room` (resuming from `at` when given); returns the ACK's `data`.
    async fn join(ws: std::net::SocketAddr, room: &str, at: Option<At>) -> (Self, Value) {
        let mut resumer = Self {
            client: Client::connect(ws).await,
            room: room.to_owned(),
            at,
            items: Vec::new(),
        };
        let ack = resumer.rejoin().await;
        (resumer, ack)
    }

    /// Sends JOIN (with `since` when it has a position) and returns the ACK's `data`: the first message after it,
    /// since the ACK precedes every frame of the room.
    async fn rejoin(&mut self) -> Value {
        let mut data = json!({ "room": self.room });
        if let Some(at) = &self.at {
            data["since"] = json!({ "offset": at.offset, "epoch": at.epoch });
        }
        self.client
            .send_text(&json!({ "type": "JOIN", "id": "j", "data": data }).to_string())
            .await;
        let ack = self.client.next_json().await;
        assert_eq!((&ack["type"], &ack["id"]), (&json!("ACK"), &json!("j")), "{ack}");
        let data = ack["data"].clone();
        if data["recovered"] != json!(true) {
            // Nothing is replayed: live items continue from where the room stands.
            self.at = Some(At::of(&data));
        }
        data
    }

    /// Reads frames until it holds `count` items in all.
    async fn read_until(&mut self, count: usize) {
        while self.items.len() < count {
            self.read_frame().await;
        }
    }

    async fn read_frame(&mut self) {
        let data = self.client.next_push().await;
        let at = At::of(&data);
        let items = data["items"].as_array().unwrap();
        for (i, item) in items.iter().enumerate() {
            self.items
                .push((at.offset + 1 + i as u64 - items.len() as u64, item.clone()));
        }
        self.at = Some(at);
    }
}

/// A reader's task: what it received (items with their offsets), and how often it dropped.
type Reader = tokio::task::JoinHandle<(Vec<(u64, Value)>, usize)>;

/// A reader for each client: it reads a few frames, drops its connection, joins again from where it stood (at the
/// address `ws_for(client, drops so far)`) and asserts that it recovered, until it holds `count` items. Each gives its
/// items and how often it dropped.
fn keep_dropping_and_resuming(
    clients: Vec<Resumer>,
    count: usize,
    ws_for: impl Fn(usize, usize) -> SocketAddr + Copy + Send + 'static,
) -> Vec<Reader> {
    clients
        .into_iter()
        .enumerate()
        .map(|(n, mut resumer)| {
            tokio::spawn(async move {
                let room = resumer.room.clone();
                let mut items = Vec::new();
                let mut drops = 0;
                loop {
                    for _ in 0..1 + (n + drops) % 5 {
                        if items.len() + resumer.items.len() >= count {
                            break;
                        }
                        resumer.read_frame().await;
                    }
                    items.append(&mut resumer.items);
                    if items.len() >= count {
                        return (items, drops);
                    }
                    let at = resumer.at.clone();
                    drop(resumer);
                    drops += 1;
                    tokio::time::sleep(Duration::from_millis((n as u64 * 3) % 10)).await;
                    let (back, ack) = Resumer::join(ws_for(n, drops), &room, at).await;
                    assert_eq!(ack["recovered"], true, "{ack}");
                    resumer = back;
                }
            })
        })
        .collect()
}

/// Waits for every reader and asserts that each got items 1 to `pushes`, once each, in order; how often they
/// dropped in all.
async fn every_item_once(readers: Vec<Reader>, pushes: i64) -> usize {
    let mut drops = 0;
    for reader in readers {
        let (items, dropped) = reader.await.unwrap();
        assert_eq!(
            numbers(&items),
            (1..=pushes).collect::<Vec<_>>(),
            "exactly once, in order"
        );
        drops += dropped;
    }
    drops
}

fn numbers(items: &[(u64, Value)]) -> Vec<i64> {
    items.iter().map(|(_, item)| item.as_i64().unwrap()).collect()
}

fn history(extra: &[&str]) -> Vec<String> {
    let mut list = flags(&["--history-size", "100", "--merge-window", "10ms"]);
    list.extend(flags(extra));
    list
}

#[tokio::test]
async fn a_client_that_reconnects_with_since_gets_exactly_what_it_missed() {
    let server = TestServer::start(history(&[])).await;
    let (mut first, ack) = Resumer::join(server.ws, "news", None).await;
    assert_eq!(ack["offset"], 0, "{ack}");
    assert!(
        ack.get("recovered").is_none(),
        "a JOIN without since does not resume: {ack}"
    );
    server.push_room("news", "[1,2]").await;
    first.read_until(2).await;
    assert_eq!(first.items.iter().map(|(o, _)| *o).collect::<Vec<_>>(), [1, 2]);
    let left_at = first.at.clone().unwrap();
    drop(first);
    // Pushes made while the old connection is still a member would wait in the room's batch and reach the new
    // one live; this test is about the ones that reach nobody.
    server.wait_metric_at_most("herald_memberships", 0.0).await;

    for n in 3..=7 {
        server.push_room("news", &format!("[{n}]")).await;
    }
    let (mut back, ack) = Resumer::join(server.ws, "news", Some(left_at.clone())).await;
    assert_eq!(ack["recovered"], true, "{ack}");
    assert_eq!(At::of(&ack), At { offset: 7, ..left_at });
    server.push_room("news", "[8]").await;
    back.read_until(6).await;
    assert_eq!(
        numbers(&back.items),
        [3, 4, 5, 6, 7, 8],
        "the missed items in order, then live"
    );
    assert_eq!(
        back.items.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        [3, 4, 5, 6, 7, 8]
    );
    assert_eq!(
        server.metric("herald_recoveries_total{outcome=\"recovered\"}").await,
        1.0
    );
    assert_eq!(server.metric("herald_replayed_items_total").await, 5.0);
    server.stop().await;
}

#[tokio::test]
async fn pushes_racing_the_join_leave_no_gap_and_no_duplicate() {
    let server = TestServer::start(history(&[])).await;
    let (mut watcher, _) = Resumer::join(server.ws, "race", None).await;
    // In the room before the first push: a JOIN without `since` starts from where the room stands.
    let (first, _) = Resumer::join(server.ws, "race", None).await;
    const PUSHES: i64 = 400;
    let api = support::PushApi(server.api);
    let pusher = tokio::spawn(async move {
        for n in 1..=PUSHES {
            api.push_room("race", &format!("[{n}]")).await;
        }
    });
    // Joins again and again while the pushes flow, each time from where the last connection stopped.
    let mut resumer = Some(first);
    let mut items = Vec::new();
    let mut at = None;
    let mut rejoins = 1;
    while items.len() < PUSHES as usize {
        let mut current = match resumer.take() {
            Some(current) => current,
            None => {
                let (joined, ack) = Resumer::join(server.ws, "race", at.clone()).await;
                if at.is_some() {
                    assert_eq!(ack["recovered"], true, "{ack}");
                }
                rejoins += 1;
                joined
            }
        };
        let frames = 1 + rejoins % 4;
        for _ in 0..frames {
            if items.len() + current.items.len() >= PUSHES as usize {
                break;
            }
            current.read_frame().await;
        }
        items.append(&mut current.items);
        at = current.at.clone();
        // Drop the connection, with frames possibly on their way, and come back.
    }
    pusher.await.unwrap();
    let offsets: Vec<u64> = items.iter().map(|(o, _)| *o).collect();
    let expected: Vec<u64> = (1..=PUSHES as u64).collect();
    assert_eq!(offsets, expected, "every offset once, in order, over {rejoins} joins");
    assert_eq!(numbers(&items), (1..=PUSHES).collect::<Vec<_>>());
    watcher.read_until(PUSHES as usize).await;
    assert_eq!(numbers(&watcher.items), (1..=PUSHES).collect::<Vec<_>>());
    server.stop().await;
}

#[tokio::test]
async fn too_old_another_epoch_or_a_restarted_server_is_not_recovered() {
    let server = TestServer::start(history(&["--history-size", "3"])).await;
    let (mut client, ack) = Resumer::join(server.ws, "r", None).await;
    let epoch = At::of(&ack).epoch;
    server.push_room("r", "[1,2,3,4,5]").await;
    client.read_until(5).await;
    drop(client);

    let cases = [
        (
            At {
                offset: 1,
                epoch: epoch.clone(),
            },
            "items 2 and 3 left by size",
        ),
        (
            At {
                offset: 4,
                epoch: "not-this-one".into(),
            },
            "another epoch",
        ),
        (
            At {
                offset: 6,
                epoch: epoch.clone(),
            },
            "an offset the room never reached",
        ),
    ];
    let mut refused = Vec::new();
    for (since, why) in cases {
        let (back, ack) = Resumer::join(server.ws, "r", Some(since)).await;
        assert_eq!(ack["recovered"], false, "{why}: {ack}");
        assert_eq!(
            At::of(&ack),
            At {
                offset: 5,
                epoch: epoch.clone()
            },
            "{why}: where the room stands"
        );
        refused.push((back, why));
    }
    server.push_room("r", "[\"live\"]").await;
    for (mut back, why) in refused {
        back.read_until(1).await;
        assert_eq!(back.items, [(6, json!("live"))], "{why}: nothing old replayed");
    }
    let (mut back, ack) = Resumer::join(
        server.ws,
        "r",
        Some(At {
            offset: 4,
            epoch: epoch.clone(),
        }),
    )
    .await;
    assert_eq!(ack["recovered"], true, "offsets 4 to 6 are kept: {ack}");
    back.read_until(2).await;
    assert_eq!(numbers(&back.items[..1]), [5]);
    let gone = server.metric("herald_recoveries_total{outcome=\"gone\"}").await;
    let other = server.metric("herald_recoveries_total{outcome=\"other_epoch\"}").await;
    let ahead = server.metric("herald_recoveries_total{outcome=\"ahead\"}").await;
    assert_eq!((gone, other, ahead), (1.0, 1.0, 1.0));
    server.stop().await;

    // A restart of serve starts every history over, in a new epoch.
    let restarted = TestServer::start(history(&[])).await;
    let (_, ack) = Resumer::join(restarted.ws, "r", Some(At { offset: 5, epoch })).await;
    assert_eq!(ack["recovered"], false, "{ack}");
    restarted.stop().await;
}

#[tokio::test]
async fn the_memory_bound_evicts_the_oldest_items_and_counts_them() {
    // One shard, so the bound is one budget: about 20 items of 1 KB.
    let server = TestServer::start(history(&["--shards", "1", "--history-max-bytes", "24000"])).await;
    let (mut client, ack) = Resumer::join(server.ws, "old", None).await;
    let start = At::of(&ack);
    let item = format!("\"{}\"", "x".repeat(1000));
    server.push_room("old", &format!("[{item}]")).await;
    client.read_until(1).await;
    drop(client);
    for n in 0..40 {
        server.push_room(&format!("new-{}", n % 4), &format!("[{item}]")).await;
    }
    let evicted = server.metric("herald_history_evicted_total{reason=\"memory\"}").await;
    assert!(evicted >= 20.0, "evicted {evicted}");
    let bytes = server.metric("herald_history_bytes").await;
    assert!(bytes <= 24000.0, "history holds {bytes} bytes");
    // The oldest room's item went first: resuming from before it is refused, plainly.
    let (_, ack) = Resumer::join(server.ws, "old", Some(start)).await;
    assert_eq!(ack["recovered"], false, "{ack}");
    server.stop().await;
}

#[tokio::test]
async fn many_clients_dropping_and_resuming_each_get_every_item_once_in_order() {
    let server = TestServer::start(history(&["--history-size", "1000"])).await;
    const CLIENTS: usize = 12;
    const PUSHES: i64 = 300;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(Resumer::join(server.ws, "churn", None).await.0);
    }
    let ws = server.ws;
    let readers = keep_dropping_and_resuming(clients, PUSHES as usize, move |_, _| ws);
    for n in 1..=PUSHES {
        server.push_room("churn", &format!("[{n}]")).await;
        if n % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let drops = every_item_once(readers, PUSHES).await;
    assert!(drops >= CLIENTS, "the clients dropped and resumed ({drops} times)");
    server.stop().await;
}

#[tokio::test]
async fn in_a_grpc_cluster_a_client_recovers_on_the_gateway_it_left() {
    let gateway_flags = || {
        let mut list = history(&[]);
        list.extend(flags(&["--cluster-secret", "s"]));
        list
    };
    let (one, two) = (
        TestGateway::start(gateway_flags()).await,
        TestGateway::start(gateway_flags()).await,
    );
    let logic = TestLogic::start(&[one.rpc, two.rpc], flags(&["--cluster-secret", "s"])).await;
    logic.wait_all_up().await;
    let (mut client, _) = Resumer::join(one.ws, "r", None).await;
    logic.push_room("r", "[1]").await;
    client.read_until(1).await;
    let left_at = client.at.clone().unwrap();
    drop(client);
    logic.push_room("r", "[2,3]").await;

    // Each gateway keeps its own history and epoch.
    let (_, elsewhere) = Resumer::join(two.ws, "r", Some(left_at.clone())).await;
    assert_eq!(elsewhere["recovered"], false, "another gateway's epoch: {elsewhere}");
    let (mut back, ack) = Resumer::join(one.ws, "r", Some(left_at)).await;
    assert_eq!(ack["recovered"], true, "{ack}");
    back.read_until(2).await;
    assert_eq!(numbers(&back.items), [2, 3]);
    logic.stop().await;
    one.stop().await;
    two.stop().await;
}

#[tokio::test]
async fn with_history_off_frames_and_acks_are_go_push_s() {
    let server = TestServer::with_window("10ms").await;
    let mut client = Client::connect(server.ws).await;
    let reply = client.request("JOIN", "r").await;
    assert_eq!(reply, json!({"type": "ACK", "id": reply["id"]}));
    server.push_room("r", "[1]").await;
    let message = client.next().await;
    assert_eq!(
        message.as_text().unwrap(),
        r#"{"type":"PUSH","data":{"room":"r","items":[1]}}"#
    );
    server.stop().await;
}

/// Flags of a gateway on `nats` with history (100 items a room, unless `extra` says otherwise).
fn gateway_on(nats: &NatsServer, extra: &[&str]) -> Vec<String> {
    [nats.bus(), history(extra)].concat()
}

/// Flags of a logic node on `nats` with the history settings of the gateways.
fn logic_on(nats: &NatsServer, size: &str) -> Vec<String> {
    [nats.bus(), flags(&["--history-size", size])].concat()
}

/// A NATS cluster with history: `gateways` gateways and one logic node, every gateway heard from.
async fn history_on_nats(nats: &NatsServer, gateways: usize, size: &str) -> (Vec<TestGateway>, TestLogic) {
    let mut started = Vec::new();
    for _ in 0..gateways {
        started.push(TestGateway::start(gateway_on(nats, &["--history-size", size])).await);
    }
    let logic = TestLogic::start(&[], logic_on(nats, size)).await;
    logic
        .wait_nats("every gateway heard from", |s| s.gateways_live == gateways as u64)
        .await;
    (started, logic)
}

#[tokio::test]
async fn on_nats_a_client_resumes_on_another_gateway_from_jetstream() {
    let nats = NatsServer::start_jetstream().await;
    let (gateways, logic) = history_on_nats(&nats, 2, "100").await;
    let (one, two) = (&gateways[0], &gateways[1]);
    // herald made the stream, with the history settings as its limits, republishing to the room subjects.
    let stream = nats.stream_config("HERALD_ROOMS").await;
    assert_eq!(stream["max_msgs_per_subject"], 100, "{stream}");
    assert_eq!(stream["max_age"], 300_000_000_000u64, "{stream}");
    assert_eq!(stream["republish"]["dest"], "herald.room.>", "{stream}");

    let (mut first, ack) = Resumer::join(one.ws, "news", None).await;
    let joined_at = At::of(&ack);
    assert!(joined_at.epoch.starts_with("js-"), "the stream's epoch: {ack}");
    let answer = logic.push_room("news", "[1,2]").await;
    assert_eq!(answer["items"], 2, "{answer}");
    first.read_until(2).await;
    let left_at = first.at.clone().unwrap();
    assert!(left_at.offset > joined_at.offset, "{left_at:?} after {joined_at:?}");
    drop(first);
    one.internal().wait_metric_eq("herald_memberships", 0.0).await;

    for n in 3..=5 {
        logic.push_room("news", &format!("[{n}]")).await;
    }
    // The other gateway never held the room: what the client missed comes from JetStream.
    let (mut back, ack) = Resumer::join(two.ws, "news", Some(left_at.clone())).await;
    assert_eq!(ack["recovered"], true, "{ack}");
    assert_eq!(At::of(&ack).epoch, left_at.epoch);
    logic.push_room("news", "[6]").await;
    back.read_until(4).await;
    assert_eq!(
        numbers(&back.items),
        [3, 4, 5, 6],
        "the missed items in order, then live"
    );
    assert!(back.at.clone().unwrap().offset > At::of(&ack).offset);
    assert_eq!(
        two.internal()
            .metric_or_zero("herald_recoveries_total{outcome=\"recovered\"}")
            .await,
        1.0
    );
    assert_eq!(logic.metric_or_zero("herald_nats_history_items_total").await, 6.0);
    logic.stop().await;
    for gateway in gateways {
        gateway.stop().await;
    }
}

#[tokio::test]
async fn on_nats_clients_hopping_between_gateways_while_pushes_flow_get_every_item_once_in_order() {
    let nats = NatsServer::start_jetstream().await;
    let (gateways, logic) = history_on_nats(&nats, 2, "1000").await;
    const CLIENTS: usize = 6;
    const PUSHES: i64 = 150;
    let ws = [gateways[0].ws, gateways[1].ws];
    let mut clients = Vec::new();
    for n in 0..CLIENTS {
        clients.push(Resumer::join(ws[n % 2], "hop", None).await.0);
    }
    // To the other gateway each time.
    let readers = keep_dropping_and_resuming(clients, PUSHES as usize, move |n, drops| ws[(n + drops) % 2]);
    let api = logic.api.0;
    for n in 1..=PUSHES {
        support::PushApi(api).push_room("hop", &format!("[{n}]")).await;
    }
    let hops = every_item_once(readers, PUSHES).await;
    assert!(hops >= CLIENTS, "the clients moved between gateways ({hops} times)");
    logic.stop().await;
    for gateway in gateways {
        gateway.stop().await;
    }
}

#[tokio::test]
async fn on_nats_what_jetstream_no_longer_holds_is_not_recovered_and_a_push_it_cannot_take_is_503() {
    let nats = NatsServer::start_jetstream().await;
    let (gateways, logic) = history_on_nats(&nats, 1, "3").await;
    let gateway = &gateways[0];
    let (mut client, ack) = Resumer::join(gateway.ws, "r", None).await;
    let joined_at = At::of(&ack);
    logic.push_room("r", "[1,2,3,4,5]").await;
    client.read_until(5).await;
    let now_at = client.at.clone().unwrap();
    drop(client);
    gateway.internal().wait_metric_eq("herald_memberships", 0.0).await;

    for (since, why) in [
        (joined_at.clone(), "items 1 and 2 left the stream by count"),
        (
            At {
                epoch: "js-another".into(),
                ..now_at.clone()
            },
            "another stream",
        ),
    ] {
        let (_, ack) = Resumer::join(gateway.ws, "r", Some(since)).await;
        assert_eq!(ack["recovered"], false, "{why}: {ack}");
        assert_eq!(At::of(&ack), now_at, "{why}: where the room stands");
    }
    let gone = gateway
        .internal()
        .metric_or_zero("herald_recoveries_total{outcome=\"gone\"}")
        .await;
    assert_eq!(gone, 1.0);

    // Without JetStream, no push is taken: it could not be recovered.
    drop(nats);
    let deadline = tokio::time::Instant::now() + support::FAILSAFE;
    let refused = loop {
        let answer = logic.push_raw("r", "[6]").await;
        if answer.status == 503 {
            break answer;
        }
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(
            tokio::time::Instant::now() < deadline,
            "pushes still taken without NATS"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(refused.header("retry-after").is_some(), "{refused:?}");
    logic.stop().await;
    for gateway in gateways {
        gateway.stop().await;
    }
}
