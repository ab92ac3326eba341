//! The push API's answers: every status it promises, over real HTTP.

mod support;

use support::{TestServer, flags};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn go_push_form_and_json_bodies_are_taken() {
    let server = TestServer::with_window("0").await;
    let mut client = server.member("lobby").await;
    let form = server
        .post_form("/push/room", "room=lobby&items=%5B%22form%22%5D")
        .await;
    assert_eq!(
        (form.status, form.json()),
        (200, serde_json::json!({"items": 1, "recipients": 1}))
    );
    assert_eq!(client.next_push().await["items"], serde_json::json!(["form"]));
    let json = server.push_all(r#"["json", 2]"#).await;
    assert_eq!(json["items"], 2);
    assert_eq!(client.next_push().await["items"], serde_json::json!(["json", 2]));
    server.stop().await;
}

#[tokio::test]
async fn bad_bodies_get_400_naming_the_field() {
    let server = TestServer::with_window("0").await;
    for (path, form, field) in [
        ("/push/room", "items=[1]", "room"),
        ("/push/room", "room=a", "items"),
        ("/push/room", "room=a&items=not-json", "items"),
        ("/push/all", "items=[]", "items"),
        ("/push/all", "room=a&items=[1]", "room"),
    ] {
        let answer = server.post_form(path, form).await;
        assert_eq!(answer.status, 400, "{form}: {answer:?}");
        assert_eq!(answer.json()["field"], field, "{form}");
        assert!(answer.json()["error"].as_str().unwrap().starts_with(field));
    }
    let broken_json = server
        .http("POST", "/push/all", Some("application/json"), b"{\"items\": [1,")
        .await;
    assert_eq!(
        (broken_json.status, broken_json.json()["field"].as_str()),
        (400, Some("body"))
    );
    assert_eq!(
        server
            .metric(r#"herald_api_requests_total{endpoint="/push/room",status="400"}"#)
            .await,
        3.0
    );
    server.stop().await;
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let settings = flags(&["--max-body-bytes", "1024"]);
    let server = TestServer::start(settings).await;
    let body = format!("room=a&items=[\"{}\"]", "x".repeat(2000));
    let answer = server.post_form("/push/room", &body).await;
    assert_eq!(answer.status, 413, "{answer:?}");
    assert_eq!(answer.json()["field"], "body");
    server.stop().await;
}

/// A shard's queue is bounded in items (`queue_items`) and in bytes (`queue_bytes`): either full, a push is
/// answered 503 with `Retry-After`, counted, and nothing of it is delivered.
#[tokio::test]
async fn a_full_queue_gets_503_with_retry_after_and_nothing_is_delivered() {
    // `[1, 2]` waiting fills either queue: two items, of one byte each.
    for limit in [["--queue-items", "2"], ["--queue-bytes", "2"]] {
        let settings = flags(&["--merge-window", "1h", limit[0], limit[1]]);
        let server = TestServer::start(settings).await;
        let mut client = server.member("q").await;
        server.push_room("q", "[0]").await; // goes at once: the queue is empty again
        assert_eq!(client.next_push().await["items"], serde_json::json!([0]));
        server.push_room("q", "[1, 2]").await; // waits for the window: the queue is full
        let refused = server.post_form("/push/room", "room=q&items=[3]").await;
        assert_eq!(refused.status, 503, "{limit:?}: {refused:?}");
        assert_eq!(refused.header("retry-after"), Some("60"), "{limit:?}");
        assert_eq!(
            server
                .metric(r#"herald_pushes_refused_total{reason="queue_full"}"#)
                .await,
            1.0,
            "{limit:?}"
        );
        server.stop().await;
        // The drain on shutdown sends what was taken, and only that.
        assert_eq!(
            client.next_push().await["items"],
            serde_json::json!([1, 2]),
            "{limit:?}"
        );
        assert_eq!(client.closed().await.0, 1001, "{limit:?}");
    }
}

#[tokio::test]
async fn a_push_larger_than_the_queue_gets_413_not_503() {
    let settings = flags(&["--queue-items", "3"]);
    let server = TestServer::start(settings).await;
    let answer = server.post_form("/push/all", "items=[1,2,3,4]").await;
    assert_eq!(
        (answer.status, answer.json()["field"].as_str()),
        (413, Some("items")),
        "{answer:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn unknown_paths_and_methods_are_refused() {
    let server = TestServer::with_window("0").await;
    assert_eq!(server.http("GET", "/push/everything", None, b"").await.status, 404);
    assert_eq!(server.http("GET", "/push/room", None, b"").await.status, 405);
    server.stop().await;
}

#[tokio::test]
async fn health_stats_and_metrics_tell_the_state() {
    let server = TestServer::with_window("0").await;
    let mut client = server.member("m").await;
    server.push_room("m", "[1]").await;
    client.next_push().await;
    let health = server.http("GET", "/healthz", None, b"").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let stats = server.hub_stats().await;
    assert_eq!((stats.connections, stats.rooms, stats.deliveries), (1, 1, 1));
    let metrics = server.http("GET", "/metrics", None, b"").await;
    assert!(metrics.header("content-type").unwrap().contains("openmetrics-text"));
    for family in [
        "herald_connections",
        "herald_frames_total",
        "herald_closes_total",
        "herald_delivered_bytes_total",
    ] {
        assert!(metrics.body.contains(family), "{family} missing");
    }
    assert_eq!(server.metric("herald_memberships").await, 1.0);
    server.stop().await;
}

#[tokio::test]
async fn several_api_threads_take_concurrent_pushes_and_stop_together() {
    let server = TestServer::start(flags(&["--api-threads", "4", "--merge-window", "0"])).await;
    let mut client = server.member("lobby").await;
    // Each push on its own connection, all at once: the connections spread over the threads' accept loops.
    let bodies: Vec<String> = (0..40).map(|n| format!("[{n}]")).collect();
    let pushes = bodies.iter().map(|items| server.push_room("lobby", items));
    for answer in futures_util::future::join_all(pushes).await {
        assert_eq!(answer["recipients"], 1, "{answer}");
    }
    let mut items: Vec<i64> = client.items(40).await.iter().map(|v| v.as_i64().unwrap()).collect();
    items.sort_unstable();
    assert_eq!(items, (0..40).collect::<Vec<_>>());
    // Every thread ends on shutdown; `stop` fails the test if one does not.
    server.stop().await;
}

/// Every HTTP listener drops connections that do not send their request within `header_read_timeout`: one that
/// says nothing, one that stops inside its request head, one that stops inside an HTTP/2 preface, and one kept
/// alive after a request and then idle. A request sent in time is answered beside them. Checked on the push API
/// and on a gateway's internal listener.
#[tokio::test]
async fn http_listeners_drop_connections_that_send_no_request_in_time() {
    let timeout = ["--header-read-timeout", "1s"];
    let server = TestServer::start(flags(&timeout)).await;
    let gateway = support::cluster::TestGateway::start(flags(&timeout)).await;
    for addr in [server.api, gateway.rpc] {
        let stalls: [&[u8]; 4] = [
            b"",
            b"POST /push/all HTTP/1.1\r\nHost: x\r\n",
            b"PRI * HTTP/2.0\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        ];
        let mut stalled = Vec::new();
        for bytes in stalls {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(bytes).await.unwrap();
            stalled.push(stream);
        }
        let healthy = support::http(addr, "GET", "/healthz", None, b"").await;
        assert_eq!(healthy.status, 200, "{addr}");
        for (stream, bytes) in stalled.iter_mut().zip(stalls) {
            let mut received = Vec::new();
            let ended = tokio::time::timeout(support::FAILSAFE, stream.read_to_end(&mut received)).await;
            assert!(
                ended.is_ok(),
                "{addr}: a connection that sent {:?} was still open",
                String::from_utf8_lossy(bytes)
            );
        }
        // The kept-alive one got its answer before it was dropped.
        let answered = support::parse_response(&{
            let mut all = Vec::new();
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(stalls[3]).await.unwrap();
            let _ = tokio::time::timeout(support::FAILSAFE, stream.read_to_end(&mut all)).await;
            all
        });
        assert_eq!(answered.status, 200, "{addr}");
    }
    gateway.stop().await;
    server.stop().await;
}

/// A push whose body stops short is answered 408 once `body_read_timeout` has passed, and its connection closed
/// (the rest of the body could still come); nothing of it is delivered, and a push sent whole beside it is taken.
#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_is_closed() {
    let server = TestServer::start(flags(&["--body-read-timeout", "1s", "--merge-window", "0"])).await;
    let mut client = server.member("slow").await;
    let mut stream = TcpStream::connect(server.api).await.unwrap();
    let head = "POST /push/room HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
                Content-Length: 100\r\n\r\nroom=slow&items=";
    stream.write_all(head.as_bytes()).await.unwrap();
    assert_eq!(server.push_room("slow", "[\"whole\"]").await["items"], 1);
    let mut received = Vec::new();
    let ended = tokio::time::timeout(support::FAILSAFE, stream.read_to_end(&mut received)).await;
    assert!(ended.is_ok(), "the connection was still open");
    let answer = support::parse_response(&received);
    assert_eq!(
        (answer.status, answer.json()["field"].as_str()),
        (408, Some("body")),
        "{answer:?}"
    );
    assert_eq!(
        server
            .metric(r#"herald_api_requests_total{endpoint="/push/room",status="408"}"#)
            .await,
        1.0
    );
    assert_eq!(client.next_push().await["items"], serde_json::json!(["whole"]));
    server.stop().await;
    let last = client.next().await;
    let code = last.as_close().map(|(code, _)| u16::from(code));
    assert_eq!(code, Some(1001), "the slow push was delivered: {last:?}");
}
