//! herald on NATS: each test starts its own nats-server on a free port. Gateways subscribe to the rooms they hold
//! and announce themselves; logic publishes and lists the live gateways.

mod support;

use std::net::SocketAddr;

use herald_protocol::stats::{NatsState, NatsStats};
use serde_json::{Value, json};
use support::cluster::{HeraldProcess, NatsServer, TestGateway, TestLogic};
use support::{Client, PushApi, TestServer, flags};

fn with_window(nats: &NatsServer, window: &str) -> Vec<String> {
    [nats.bus(), flags(&["--merge-window", window])].concat()
}

/// Waits until the gateway has `rooms` room subscriptions confirmed by NATS.
async fn wait_subscribed(gateway: &TestGateway, rooms: f64) {
    gateway
        .internal()
        .wait_metric_eq("herald_nats_subscriptions", rooms)
        .await;
}

async fn wait_live(logic: &PushApi, gateways: u64) -> NatsStats {
    logic
        .wait_nats(&format!("{gateways} live gateways"), |s| s.gateways_live == gateways)
        .await
}

const ROOM_MESSAGES: &str = r#"herald_nats_messages_received_total{kind="room"}"#;
/// The subjects of room subscriptions, as nats-server lists them.
const ROOM_SUBJECTS: &str = "herald.room.";

#[tokio::test]
async fn a_gateway_receives_only_the_rooms_it_holds() {
    let nats = NatsServer::start().await;
    let (holder, bystander) = (
        TestGateway::start(with_window(&nats, "5ms")).await,
        TestGateway::start(with_window(&nats, "5ms")).await,
    );
    let logic = TestLogic::start(&[], nats.bus()).await;
    wait_live(&logic, 2).await;

    let mut member = holder.member("quiet-room").await;
    let mut elsewhere = bystander.member("other-room").await;
    wait_subscribed(&holder, 1.0).await;
    wait_subscribed(&bystander, 1.0).await;
    // On the wire: nats-server itself holds one room subscription per gateway.
    nats.wait_subjects(ROOM_SUBJECTS, 2).await;

    for n in 0..5 {
        let answer = logic.push_room("quiet-room", &format!("[{n}]")).await;
        // On NATS logic cannot know the recipients: it says so rather than guess.
        assert_eq!(answer, json!({"items": 1, "recipients": null}));
    }
    assert_eq!(member.items(5).await, (0..5).map(|n| json!(n)).collect::<Vec<_>>());
    assert_eq!(holder.internal().metric(ROOM_MESSAGES).await, 5.0);
    // The bystander has members, but none in that room: not one of its messages reached it.
    assert_eq!(bystander.internal().metric_or_zero(ROOM_MESSAGES).await, 0.0);

    // Broadcasts reach every gateway.
    logic.push_all(r#"["all"]"#).await;
    assert_eq!(member.next_push().await["items"], json!(["all"]));
    assert_eq!(elsewhere.next_push().await["items"], json!(["all"]));

    // The last member leaving ends the subscription; the room's traffic stops reaching the gateway.
    drop(member);
    wait_subscribed(&holder, 0.0).await;
    // nats-server itself dropped it (so it sends the gateway nothing of that room), not only herald's count.
    nats.wait_subjects(ROOM_SUBJECTS, 1).await;
    logic.push_room("quiet-room", "[99]").await;
    logic.push_room("other-room", "[100]").await;
    assert_eq!(elsewhere.next_push().await["items"], json!([100]));
    assert_eq!(holder.internal().metric(ROOM_MESSAGES).await, 5.0);

    logic.stop().await;
    holder.stop().await;
    bystander.stop().await;
}

#[tokio::test]
async fn three_gateways_and_two_logic_nodes_need_no_configuration() {
    let nats = NatsServer::start().await;
    let mut gateways = Vec::new();
    for _ in 0..3 {
        gateways.push(TestGateway::start(with_window(&nats, "5ms")).await);
    }
    let logics = [
        TestLogic::start(&[], nats.bus()).await,
        TestLogic::start(&[], nats.bus()).await,
    ];
    for logic in &logics {
        let stats = wait_live(logic, 3).await;
        let mut addrs: Vec<String> = stats.gateways.iter().map(|g| g.announced.ws_addr.clone()).collect();
        addrs.sort();
        let mut expected: Vec<String> = gateways.iter().map(|g| g.ws.to_string()).collect();
        expected.sort();
        assert_eq!(addrs, expected);
    }
    let mut clients = Vec::new();
    for gateway in &gateways {
        clients.push(gateway.member("feed").await);
        wait_subscribed(gateway, 1.0).await;
    }

    // Each logic node's items reach every connection in that node's push order.
    const PUSHES: usize = 50;
    let senders: Vec<_> = logics
        .iter()
        .enumerate()
        .map(|(node, logic)| {
            let api = logic.api.0;
            tokio::spawn(async move {
                for n in 0..PUSHES {
                    PushApi(api)
                        .push_room("feed", &format!(r#"[{{"node":{node},"n":{n}}}]"#))
                        .await;
                }
            })
        })
        .collect();
    for client in &mut clients {
        let items = client.items(2 * PUSHES).await;
        support::assert_each_in_order(&items, "node", 2, PUSHES);
    }
    for sender in senders {
        sender.await.unwrap();
    }

    // A gateway that stops is gone from every logic node's list.
    gateways.pop().unwrap().stop().await;
    for logic in &logics {
        wait_live(logic, 2).await;
    }
    for logic in logics {
        logic.stop().await;
    }
    for gateway in gateways {
        gateway.stop().await;
    }
}

#[tokio::test]
async fn a_gateway_that_stops_announcing_is_dropped() {
    let nats = NatsServer::start().await;
    let mut gateway = HeraldProcess::start(&[
        "gateway",
        "--ws-addr",
        "127.0.0.1:0",
        "--rpc-addr",
        "127.0.0.1:0",
        "--bus",
        &nats.url(),
    ])
    .await;
    let logic = TestLogic::start(&[], nats.bus()).await;
    wait_live(&logic, 1).await;
    // Killed: no goodbye. Logic drops it once it has been silent for the gateway TTL (3 s).
    gateway.child.start_kill().unwrap();
    gateway.child.wait().await.unwrap();
    wait_live(&logic, 0).await;
    logic.stop().await;
}

#[tokio::test]
async fn delivery_resumes_after_nats_restarts() {
    let nats = NatsServer::start().await;
    let url = nats.url();
    let gateway = TestGateway::start(with_window(&nats, "5ms")).await;
    let logic = TestLogic::start(&[], nats.bus()).await;
    wait_live(&logic, 1).await;
    let mut member = gateway.member("r").await;
    wait_subscribed(&gateway, 1.0).await;
    logic.push_room("r", "[1]").await;
    assert_eq!(member.next_push().await["items"], json!([1]));

    // NATS goes down: pushes are refused, never taken and lost; clients stay connected.
    let port = nats.kill().await;
    let refused = async {
        loop {
            let response = logic.post_form("/push/room", "room=r&items=[2]").await;
            if response.status == 503 {
                return response;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    let refused = tokio::time::timeout(support::FAILSAFE, refused)
        .await
        .expect("503 while NATS is down");
    assert!(refused.header("retry-after").is_some());
    assert!(
        refused.json()["error"].as_str().unwrap().contains("NATS"),
        "{}",
        refused.body
    );
    let pong = member.request("PING", "").await;
    assert_eq!(pong["type"], "PONG", "{pong}");

    // NATS comes back on the same address: both sides reconnect by themselves and the gateway resubscribes.
    let _nats = NatsServer::start_on(port).await;
    assert_eq!(_nats.url(), url);
    let resumed = async {
        for attempt in 0u64.. {
            let response = logic
                .post_form("/push/room", &format!("room=r&items=[{}]", 1000 + attempt))
                .await;
            if response.status == 200 {
                let got = tokio::time::timeout(std::time::Duration::from_millis(500), member.next_push()).await;
                if let Ok(data) = got {
                    return data["items"][0].as_u64().unwrap();
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        unreachable!()
    };
    let first = tokio::time::timeout(support::FAILSAFE, resumed)
        .await
        .expect("delivery resumes");
    assert!(first >= 1000);
    // And from then on, nothing is missed.
    for n in 0..20 {
        logic.push_room("r", &format!("[{n}]")).await;
    }
    // A probe push published before the one that got through may still arrive first: skip those.
    let mut items = Vec::new();
    while items.len() < 20 {
        let more = member.items(1).await;
        items.extend(more.into_iter().filter(|item| item.as_u64().is_some_and(|n| n < 1000)));
    }
    assert_eq!(items, (0..20).map(|n| json!(n)).collect::<Vec<_>>());
    logic.stop().await;
    gateway.stop().await;
}

#[tokio::test]
async fn several_gateways_share_one_websocket_port() {
    let nats = NatsServer::start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let shared: SocketAddr = ([127, 0, 0, 1], port).into();
    let sharing = [
        with_window(&nats, "5ms"),
        flags(&["--ws-addr", &shared.to_string(), "--reuse-port"]),
    ]
    .concat();
    let (one, two) = (
        TestGateway::start(sharing.clone()).await,
        TestGateway::start(sharing).await,
    );
    assert_eq!((one.ws, two.ws), (shared, shared));
    let logic = TestLogic::start(&[], nats.bus()).await;
    wait_live(&logic, 2).await;

    let mut clients = Vec::new();
    for _ in 0..24 {
        clients.push(Client::member(shared, "shared").await);
    }
    // The kernel spread the connections over both processes' listeners.
    let on_one = one.internal().hub_stats().await.connections;
    let on_two = two.internal().hub_stats().await.connections;
    assert_eq!(on_one + on_two, 24);
    assert!(on_one > 0 && on_two > 0, "{on_one} + {on_two}");
    wait_subscribed(&one, 1.0).await;
    wait_subscribed(&two, 1.0).await;
    logic.push_room("shared", r#"["hello"]"#).await;
    for client in &mut clients {
        assert_eq!(client.next_push().await["items"], json!(["hello"]));
    }
    logic.stop().await;
    one.stop().await;
    two.stop().await;
}

#[tokio::test]
async fn serve_runs_on_nats_too() {
    let nats = NatsServer::start().await;
    let (first, second) = (
        TestServer::start(with_window(&nats, "5ms")).await,
        TestServer::start(with_window(&nats, "5ms")).await,
    );
    first
        .wait_nats("connected to NATS", |s| s.nats.state == NatsState::Connected)
        .await;
    let mut member = second.member("r").await;
    second.wait_metric("herald_nats_subscriptions", 1.0).await;
    // Pushed to one serve process, delivered by the other.
    assert_eq!(first.push_room("r", "[7]").await["recipients"], Value::Null);
    assert_eq!(member.next_push().await["items"], json!([7]));
    first.stop().await;
    second.stop().await;
}

/// A client that JOINs and LEAVEs fresh room names as fast as it can costs a NATS subscription each: it is closed
/// at `client_message_rate` (4005), every subscription it made is gone from nats-server afterwards, and a member
/// of another room beside it keeps receiving.
#[tokio::test]
async fn a_join_and_leave_flood_of_fresh_rooms_is_closed_and_leaves_no_subscription() {
    let nats = NatsServer::start().await;
    let gateway = TestGateway::start(
        [
            nats.bus(),
            flags(&["--merge-window", "0", "--client-message-rate", "50"]),
        ]
        .concat(),
    )
    .await;
    let logic = TestLogic::start(&[], nats.bus()).await;
    wait_live(&logic, 1).await;
    let mut neighbour = gateway.member("steady").await;
    nats.wait_subjects(ROOM_SUBJECTS, 1).await;

    // 200 JOIN/LEAVE pairs, pipelined: the bucket holds 100 messages.
    let mut flood = support::RawClient::connect(gateway.ws).await;
    let mut burst = Vec::new();
    for n in 0..200 {
        for kind in ["JOIN", "LEAVE"] {
            let message = format!(r#"{{"type":"{kind}","data":{{"room":"fresh-{n}"}}}}"#);
            burst.extend_from_slice(&support::encode_client_frame(0x81, message.as_bytes(), true));
        }
    }
    tokio::io::AsyncWriteExt::write_all(&mut flood.stream, &burst)
        .await
        .unwrap();
    assert_eq!(flood.close_code().await, Some(4005));
    gateway
        .internal()
        .wait_metric(r#"herald_closes_total{reason="message_rate"}"#, 1.0)
        .await;
    // Only the neighbour's room is left subscribed, on the wire, and its pushes still arrive.
    let left = nats.wait_subjects(ROOM_SUBJECTS, 1).await;
    wait_subscribed(&gateway, 1.0).await;
    logic.push_room("steady", "[1]").await;
    assert_eq!(neighbour.next_push().await["items"], json!([1]), "{left:?}");
    logic.stop().await;
    gateway.stop().await;
}
