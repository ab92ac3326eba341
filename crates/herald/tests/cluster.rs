//! The two-tier cluster: logic nodes forwarding pushes to gateways over gRPC, in this process and as real
//! `herald gateway` / `herald logic` processes.

mod support;

use std::net::SocketAddr;

use herald_protocol::stats::LinkState;
use serde_json::{Value, json};
use support::cluster::{HeraldProcess, TestGateway, TestLogic};
use support::{Client, PushApi, flags};

fn secret(text: &str) -> Vec<String> {
    flags(&["--cluster-secret", text])
}

#[tokio::test]
async fn pushes_and_broadcasts_reach_members_on_every_gateway() {
    let (one, two) = (
        TestGateway::start(secret("s3cret")).await,
        TestGateway::start(secret("s3cret")).await,
    );
    let logic = TestLogic::start(&[one.rpc, two.rpc], secret("s3cret")).await;
    logic.wait_all_up().await;

    let mut a1 = one.member("news").await;
    let mut a2 = one.member("news").await;
    let mut b1 = two.member("news").await;
    let mut b2 = two.member("sport").await;

    let answer = logic.push_room("news", r#"[{"headline":"hi"}]"#).await;
    assert_eq!(
        answer,
        json!({"items": 1, "recipients": 3, "gateways": {"accepted": 2, "refused": 0, "unconfirmed": 0}})
    );
    for client in [&mut a1, &mut a2, &mut b1] {
        let data = client.next_push().await;
        assert_eq!(
            (data["room"].clone(), data["items"].clone()),
            (json!("news"), json!([{"headline":"hi"}]))
        );
    }

    let answer = logic.push_all(r#"["all"]"#).await;
    assert_eq!(answer["recipients"], 4, "{answer}");
    for client in [&mut a1, &mut a2, &mut b1, &mut b2] {
        assert_eq!(client.next_push().await["items"], json!(["all"]));
    }

    // Logic's /stats and /metrics cover the cluster, from the gateways' own reports.
    let stats = logic
        .wait_cluster("four connections reported", |s| s.connections == 4)
        .await;
    assert_eq!((stats.gateways_total, stats.gateways_up), (2, 2));
    let first = logic.gateway_stats(one.rpc).await;
    assert_eq!(
        (first.state, first.status.map(|s| s.hub.connections)),
        (LinkState::Up, Some(2))
    );
    let accepted = format!(
        r#"herald_cluster_forwards_total{{gateway="{}",result="accepted"}}"#,
        one.rpc
    );
    assert_eq!(logic.metric(&accepted).await, 2.0);

    // The gateway's internal listener answers operators, and takes no pushes over plain HTTP.
    let internal = one.internal();
    let health = internal.http("GET", "/healthz", None, b"").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    assert_eq!(internal.hub_stats().await.connections, 2);
    assert_eq!(
        internal.post_form("/push/room", "room=news&items=[1]").await.status,
        404
    );

    logic.stop().await;
    one.stop().await;
    two.stop().await;
}

#[tokio::test]
async fn items_of_one_room_arrive_in_push_order_on_every_gateway() {
    let window = flags(&["--merge-window", "5ms"]);
    let (one, two) = (
        TestGateway::start(window.clone()).await,
        TestGateway::start(window).await,
    );
    let logic = TestLogic::start(&[one.rpc, two.rpc], flags(&[])).await;
    logic.wait_all_up().await;
    let mut clients = [one.member("seq").await, two.member("seq").await];

    // Three senders at once: every gateway must see the pushes in one and the same order, and each sender's
    // pushes in the order it sent them.
    const SENDERS: usize = 3;
    const PUSHES: usize = 100;
    let api = logic.api.0;
    let senders: Vec<_> = (0..SENDERS)
        .map(|sender| {
            tokio::spawn(async move {
                for n in 0..PUSHES {
                    PushApi(api)
                        .push_room("seq", &format!(r#"[{{"s":{sender},"n":{n}}}]"#))
                        .await;
                }
            })
        })
        .collect();
    let mut seen = Vec::new();
    for client in &mut clients {
        let items = client.items(SENDERS * PUSHES).await;
        support::assert_each_in_order(&items, "s", SENDERS, PUSHES);
        seen.push(items);
    }
    assert_eq!(seen[0], seen[1], "both gateways saw the same order");
    for sender in senders {
        sender.await.unwrap();
    }
    logic.stop().await;
    one.stop().await;
    two.stop().await;
}

#[tokio::test]
async fn a_wrong_or_missing_secret_is_refused() {
    let gateway = TestGateway::start(secret("right")).await;
    for logic_settings in [secret("wrong"), flags(&[])] {
        let logic = TestLogic::start(&[gateway.rpc], logic_settings).await;
        let down = logic
            .wait_cluster("the gateway refusing the secret", |s| {
                s.gateways[0]
                    .last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("cluster secret"))
            })
            .await;
        assert_eq!(down.gateways[0].state, LinkState::Down, "{down:?}");

        let response = logic.post_form("/push/room", "room=r&items=[1]").await;
        assert_eq!(response.status, 503, "{}", response.body);
        assert!(response.header("retry-after").is_some());
        let error = response.json()["error"].as_str().unwrap().to_owned();
        assert!(error.contains("cluster secret"), "{error}");
        logic.stop().await;
    }
    // Nothing reached the gateway's hub.
    assert_eq!(gateway.internal().hub_stats().await.pushes, 0);
    gateway.stop().await;
}

#[tokio::test]
async fn logic_answers_503_when_no_gateway_is_reachable() {
    // A port with nothing listening: bind one, note it, close it.
    let unused: SocketAddr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let logic = TestLogic::start(&[unused], flags(&[])).await;
    logic
        .wait_cluster("a failed connect", |s| {
            s.gateways[0]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("connect"))
        })
        .await;
    let response = logic.post_form("/push/all", "items=[1]").await;
    assert_eq!(response.status, 503, "{}", response.body);
    let error = response.json()["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains(&unused.to_string()) && error.contains("unreachable"),
        "{error}"
    );
    let unreachable = format!(r#"herald_cluster_forwards_total{{gateway="{unused}",result="unreachable"}}"#);
    assert!(error.contains("Connection refused"), "{error}");
    assert_eq!(logic.metric(&unreachable).await, 1.0);
    assert_eq!(
        logic
            .metric(&format!(r#"herald_cluster_gateway_up{{gateway="{unused}"}}"#))
            .await,
        0.0
    );
    logic.stop().await;
}

/// Two `herald gateway` processes (`--merge-window 5ms`; the first on a runtime of two workers, the second on one
/// event loop, so that both of `worker_threads`' runtimes carry pushes) and a `herald logic` forwarding to both
/// (with `logic_args`), every link up.
async fn process_cluster(logic_args: &[&str]) -> (HeraldProcess, HeraldProcess, HeraldProcess, PushApi) {
    let gateway = [
        "gateway",
        "--ws-addr",
        "127.0.0.1:0",
        "--rpc-addr",
        "127.0.0.1:0",
        "--merge-window",
        "5ms",
    ];
    let first = HeraldProcess::start(&[&gateway[..], &["--worker-threads", "2"]].concat()).await;
    let second = HeraldProcess::start(&[&gateway[..], &["--worker-threads", "1"]].concat()).await;
    let gateways = format!("{},{}", first.addr("rpc"), second.addr("rpc"));
    let args = [
        &["logic", "--api-addr", "127.0.0.1:0", "--gateways", &gateways][..],
        logic_args,
    ]
    .concat();
    let logic = HeraldProcess::start(&args).await;
    let api = PushApi(logic.addr("api"));
    api.wait_all_up().await;
    (first, second, logic, api)
}

/// Real processes: two gateways and a logic node. One gateway is killed in the middle of a stream of pushes; the
/// other's clients receive every item, logic reports the failure, and a restarted gateway on the same internal
/// address receives pushes again without logic being restarted.
#[tokio::test]
async fn a_cluster_of_processes_survives_a_killed_gateway() {
    let (mut doomed, survivor, logic, api) = process_cluster(&["--status-interval", "100ms"]).await;
    let doomed_rpc = doomed.addr("rpc").to_string();

    let mut watcher = Client::member(survivor.addr("ws"), "feed").await;
    let mut casualty = Client::member(doomed.addr("ws"), "feed").await;
    assert_eq!(api.push_room("feed", "[-1]").await["recipients"], 2);
    assert_eq!(watcher.next_push().await["items"], json!([-1]));
    assert_eq!(casualty.next_push().await["items"], json!([-1]));

    const PUSHES: usize = 400;
    let api_addr = api.0;
    let sender = tokio::spawn(async move {
        let mut answers = Vec::new();
        for n in 0..PUSHES {
            answers.push(PushApi(api_addr).push_room("feed", &format!("[{n}]")).await);
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        answers
    });
    // Kill the gateway once the stream is under way (a frame may carry several items: keep all of them).
    let mut seen = watcher.items(100).await;
    doomed.child.start_kill().unwrap();
    doomed.child.wait().await.unwrap();
    let rest = watcher.items(PUSHES - seen.len()).await;
    seen.extend(rest);
    assert_eq!(seen, (0..PUSHES).map(|n| json!(n)).collect::<Vec<_>>());
    for answer in sender.await.unwrap() {
        // Every push was taken by the survivor (push_room asserts 200).
        assert!(answer["gateways"]["accepted"].as_u64().unwrap() >= 1, "{answer}");
    }

    let down = api
        .wait_cluster("the killed gateway reported down", |s| {
            s.gateways
                .iter()
                .any(|g| g.addr == doomed_rpc && g.state == LinkState::Down)
        })
        .await;
    let report = down.gateways.iter().find(|g| g.addr == doomed_rpc).unwrap();
    assert!(
        report.last_error.as_deref().is_some_and(|e| !e.is_empty()),
        "{report:?}"
    );
    assert!(
        api.metric(&format!(
            r#"herald_cluster_gateway_disconnects_total{{gateway="{doomed_rpc}"}}"#
        ))
        .await
            >= 1.0
    );

    // Restart it on the same internal address; logic reconnects by itself.
    let reborn = HeraldProcess::start(&[
        "gateway",
        "--ws-addr",
        "127.0.0.1:0",
        "--rpc-addr",
        &doomed_rpc,
        "--merge-window",
        "5ms",
    ])
    .await;
    api.wait_all_up().await;
    let mut newcomer = Client::member(reborn.addr("ws"), "feed").await;
    let answer = api.push_room("feed", r#"["after"]"#).await;
    assert_eq!(answer["recipients"], 2, "{answer}");
    assert_eq!(newcomer.next_push().await["items"], json!(["after"]));
    assert_eq!(watcher.next_push().await["items"], json!(["after"]));
    drop((logic, survivor, reborn));
}

/// Logic is one event loop by default; with several push-API threads it runs the API on them and the links on a
/// worker per core. Both layouts forward in order to every gateway.
#[tokio::test]
async fn logic_with_several_api_threads_forwards_too() {
    let (first, second, logic, api) = process_cluster(&["--api-threads", "3"]).await;
    let mut near = Client::member(first.addr("ws"), "feed").await;
    let mut far = Client::member(second.addr("ws"), "feed").await;
    for n in 0..20 {
        let answer = api.push_room("feed", &format!("[{n}]")).await;
        assert_eq!(answer["gateways"]["accepted"], 2, "{answer}");
    }
    let expected: Vec<Value> = (0..20).map(|n| json!(n)).collect();
    assert_eq!(near.items(20).await, expected);
    assert_eq!(far.items(20).await, expected);
    drop((logic, first, second));
}

#[tokio::test]
async fn the_hop_can_run_over_tls() {
    let dir = std::env::temp_dir().join(format!("herald-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.join("gateway.pem"), dir.join("gateway.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();

    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let gateway = TestGateway::start(flags(&["--rpc-tls-cert", cert, "--rpc-tls-key", key])).await;
    // The certificate names localhost, so logic must dial the gateway by that name.
    let by_name = format!("localhost:{}", gateway.rpc.port());
    let tls = flags(&["--gateways", &by_name, "--rpc-tls-ca", cert]);
    let logic = TestLogic::start(&[], tls).await;
    logic.wait_all_up().await;
    let mut member = gateway.member("secure").await;
    assert_eq!(logic.push_room("secure", "[1]").await["recipients"], 1);
    assert_eq!(member.next_push().await["items"], json!([1]));
    logic.stop().await;

    // A logic node speaking plain HTTP/2 to the TLS listener never gets through.
    let plain = TestLogic::start(&[gateway.rpc], flags(&[])).await;
    plain
        .wait_cluster("the plain link failing", |s| s.gateways[0].last_error.is_some())
        .await;
    assert_eq!(plain.post_form("/push/room", "room=secure&items=[2]").await.status, 503);
    plain.stop().await;
    gateway.stop().await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// Waits until every thread of process `pid` is stopped (state `T` in /proc).
async fn wait_stopped(pid: &str) {
    let all_stopped = || {
        std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().all(|task| {
            let stat = std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap_or_default();
            // The state follows the command name, which is in parentheses.
            stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T'))
        })
    };
    let deadline = tokio::time::Instant::now() + support::FAILSAFE;
    while !all_stopped() {
        assert!(tokio::time::Instant::now() < deadline, "process {pid} did not stop");
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// A gateway that stops answering (SIGSTOP: its kernel still takes the bytes) costs the other gateway nothing but
/// the wait for its acks: pushes are answered unconfirmed for it after `ack_timeout`, then refused at once when its
/// queue is full (two pushes, by `gateway_queue`), and everything it was sent is delivered when it resumes.
#[tokio::test]
async fn a_stalled_gateway_fills_its_own_queue_only() {
    stalled_gateway_fills_its_queue(&["--gateway-queue", "2"], "").await;
}

/// The same, with the queue bounded by `gateway_queue_bytes`: two pushes of 1,000 bytes fit in 2,500, a third not.
#[tokio::test]
async fn a_stalled_gateway_holds_at_most_gateway_queue_bytes_of_logic() {
    let pad = "p".repeat(1000);
    stalled_gateway_fills_its_queue(&["--gateway-queue", "1000", "--gateway-queue-bytes", "2500"], &pad).await;
}

/// Stops one of two gateways and pushes three times; `queue` lets two pushes wait for it. Pushes carry `pad`.
/// The healthy gateway is checked by what its client receives, not by acks within `ack_timeout`, and the third
/// push waits until it has acknowledged the first two (its own queue empty again), so a loaded machine cannot
/// fail the test by slowness.
async fn stalled_gateway_fills_its_queue(queue: &[&str], pad: &str) {
    let logic_args = [queue, &["--ack-timeout", "300ms"][..]].concat();
    let (stalled, healthy, logic, api) = process_cluster(&logic_args).await;
    let stalled_rpc = stalled.addr("rpc").to_string();
    let mut asleep = Client::member(stalled.addr("ws"), "r").await;
    let mut awake = Client::member(healthy.addr("ws"), "r").await;
    let healthy_rpc = healthy.addr("rpc").to_string();
    let forwards =
        |result: &str| format!(r#"herald_cluster_forwards_total{{gateway="{stalled_rpc}",result="{result}"}}"#);
    let healthy_accepted = format!(r#"herald_cluster_forwards_total{{gateway="{healthy_rpc}",result="accepted"}}"#);
    let item = |n: u32| json!({"n": n, "pad": pad});

    let pid = stalled.child.id().unwrap().to_string();
    let signal = |name: &str| {
        let status = std::process::Command::new("kill").args([name, &pid]).status().unwrap();
        assert!(status.success());
    };
    signal("-STOP");
    // kill returns once the signal is queued; each thread stops when it next runs. Wait until all have.
    wait_stopped(&pid).await;
    for n in 1..=2 {
        // Unconfirmed by the stopped one (and by the other too, should it be slower than ack_timeout).
        let answer = api.push_room("r", &json!([item(n)]).to_string()).await;
        assert_eq!(answer["gateways"]["refused"], 0, "{answer}");
        assert!(answer["gateways"]["unconfirmed"].as_u64() >= Some(1), "{answer}");
    }
    // Two pushes outstanding fill its queue: the next is refused for it at once, and taken by the other (whose
    // acks, however late, are counted when they come).
    api.wait_metric(&healthy_accepted, 2.0).await;
    let answer = api.push_room("r", &json!([item(3)]).to_string()).await;
    assert_eq!(answer["gateways"]["refused"], 1, "{answer}");
    assert_eq!(api.metric(&forwards("queue_full")).await, 1.0);
    let numbers = |items: Vec<Value>| items.iter().map(|i| i["n"].as_u64().unwrap()).collect::<Vec<_>>();
    assert_eq!(numbers(awake.items(3).await), [1, 2, 3]);

    // Resumed, it delivers what it was sent (not what it refused), and takes pushes again.
    signal("-CONT");
    assert_eq!(numbers(asleep.items(2).await), [1, 2]);
    api.wait_metric(&forwards("accepted"), 2.0).await;
    let answer = api.push_room("r", &json!([item(4)]).to_string()).await;
    assert_eq!(answer["gateways"]["refused"], 0, "{answer}");
    assert_eq!(numbers(asleep.items(1).await), [4]);
    assert_eq!(numbers(awake.items(1).await), [4]);
    drop((logic, stalled, healthy));
}

#[tokio::test]
async fn a_push_every_gateway_finds_too_large_is_413_not_503() {
    let small = flags(&["--queue-items", "3"]);
    let (one, two) = (TestGateway::start(small.clone()).await, TestGateway::start(small).await);
    let logic = TestLogic::start(&[one.rpc, two.rpc], flags(&[])).await;
    logic.wait_all_up().await;
    let response = logic.post_form("/push/all", "items=[1,2,3,4]").await;
    assert_eq!(response.status, 413, "{}", response.body);
    assert_eq!(response.json()["field"], "items");
    let too_many = format!(
        r#"herald_cluster_forwards_total{{gateway="{}",result="gateway_too_many_items"}}"#,
        one.rpc
    );
    assert_eq!(logic.metric(&too_many).await, 1.0);
    // Within the limit it goes through.
    assert_eq!(logic.push_all("[1,2,3]").await["gateways"]["accepted"], 2);
    logic.stop().await;
    one.stop().await;
    two.stop().await;
}

/// A gateway decodes push messages only up to what its own `max_body_bytes` allows (twice it, plus 4 KiB): a push
/// that logic takes but a gateway set smaller cannot decode is answered as unconfirmed by that gateway and reaches
/// nobody; pushes that fit go through once the link is back.
#[tokio::test]
async fn a_gateway_decodes_no_push_larger_than_its_max_body_bytes_allows() {
    let gateway = TestGateway::start(flags(&["--max-body-bytes", "1024"])).await;
    let logic = TestLogic::start(&[gateway.rpc], flags(&[])).await;
    logic.wait_all_up().await;
    let mut member = gateway.member("big").await;
    let large = format!(r#"["{}"]"#, "x".repeat(8000));
    // Logic takes it (its own limit is the default) and says the gateway never confirmed it.
    let answer = logic.push_room("big", &large).await;
    assert_eq!(
        answer["gateways"],
        json!({"accepted": 0, "refused": 0, "unconfirmed": 1}),
        "{answer}"
    );
    let mut answer = logic.push_raw("big", r#"["small"]"#).await;
    // The link may still be coming back up: a push it could not take is answered 503, and retried here.
    let deadline = tokio::time::Instant::now() + support::FAILSAFE;
    while answer.status != 200 {
        assert!(tokio::time::Instant::now() < deadline, "{}", answer.body);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        answer = logic.push_raw("big", r#"["small"]"#).await;
    }
    assert_eq!(member.next_push().await["items"], json!(["small"]));
    logic.stop().await;
    gateway.stop().await;
}
