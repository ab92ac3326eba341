//! Bad input, slow and silent clients, limits and shutdown: each closes only the offending connection, with the
//! documented close code, and is counted.

mod support;

use support::{RawClient, TestServer, flags};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `frame` on a fresh connection and returns the close code herald answers with, checking that another
/// connection in the same room is untouched and that the input was counted as `kind`.
async fn closes_with(frame: Vec<u8>, kind: &str) -> Option<u16> {
    let server = TestServer::with_window("0").await;
    let mut bystander = server.member("room").await;
    let mut raw = RawClient::connect(server.ws).await;
    raw.stream.write_all(&frame).await.unwrap();
    let code = raw.close_code().await;
    server
        .wait_metric(&format!(r#"herald_bad_input_total{{reason="{kind}"}}"#), 1.0)
        .await;
    server.push_room("room", "[1]").await;
    assert_eq!(
        bystander.next_push().await["items"],
        serde_json::json!([1]),
        "others unaffected"
    );
    server.stop().await;
    code
}

fn text(payload: &[u8]) -> Vec<u8> {
    support::encode_client_frame(0x81, payload, true)
}

#[tokio::test]
async fn not_json_closes_1007() {
    assert_eq!(closes_with(text(b"hello"), "not_json").await, Some(1007));
}

#[tokio::test]
async fn unknown_message_closes_1008() {
    assert_eq!(
        closes_with(text(br#"{"type":"DANCE"}"#), "unknown_message").await,
        Some(1008)
    );
    assert_eq!(
        closes_with(text(br#"{"type":"JOIN","data":{}}"#), "unknown_message").await,
        Some(1008)
    );
}

#[tokio::test]
async fn invalid_utf8_closes_1007() {
    assert_eq!(
        closes_with(text(&[b'"', 0xC3, 0x28, b'"']), "invalid_utf8").await,
        Some(1007)
    );
}

#[tokio::test]
async fn over_the_read_limit_closes_1009() {
    let big = format!(r#"{{"type":"PING","data":{{"pad":"{}"}}}}"#, "x".repeat(5000));
    assert_eq!(closes_with(text(big.as_bytes()), "too_big").await, Some(1009));
}

#[tokio::test]
async fn protocol_violations_close_1002() {
    let unmasked = support::encode_client_frame(0x81, br#"{"type":"PING"}"#, false);
    assert_eq!(closes_with(unmasked, "protocol").await, Some(1002));
    let reserved_opcode = support::encode_client_frame(0x83, b"x", true);
    assert_eq!(closes_with(reserved_opcode, "protocol").await, Some(1002));
    let rsv_bits = support::encode_client_frame(0xC1, b"{}", true);
    assert_eq!(closes_with(rsv_bits, "protocol").await, Some(1002));
    let stray_continuation = support::encode_client_frame(0x80, b"{}", true);
    assert_eq!(closes_with(stray_continuation, "protocol").await, Some(1002));
}

#[tokio::test]
async fn binary_messages_close_1003() {
    let binary = support::encode_client_frame(0x82, b"\x00\x01", true);
    assert_eq!(closes_with(binary, "binary").await, Some(1003));
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_heartbeat_timeout() {
    let settings = flags(&["--heartbeat-timeout", "400ms"]);
    let server = TestServer::start(settings).await;
    let mut silent = server.client().await;
    let (code, reason) = silent.closed().await;
    assert_eq!((code, reason.as_str()), (4001, "heartbeat timeout"));
    server
        .wait_metric(r#"herald_closes_total{reason="heartbeat"}"#, 1.0)
        .await;
    server.stop().await;
}

#[tokio::test]
async fn pings_keep_a_connection_alive_past_the_heartbeat_timeout_and_silence_then_ends_it() {
    // Pings every 300 ms against a 2 s timeout: a loaded machine may stretch a sleep, hardly sevenfold.
    let settings = flags(&["--heartbeat-timeout", "2s"]);
    let server = TestServer::start(settings).await;
    let mut client = server.client().await;
    for _ in 0..8 {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        client.send_text(r#"{"type":"PING"}"#).await;
        assert_eq!(client.next_json().await["type"], "PONG");
    }
    assert_eq!(server.metric(r#"herald_closes_total{reason="heartbeat"}"#).await, 0.0);
    // Each ping moved the deadline later without re-arming the timer; silence now must still end the connection.
    let (code, reason) = client.closed().await;
    assert_eq!((code, reason.as_str()), (4001, "heartbeat timeout"));
    server.stop().await;
}

/// A member of `room` that will never read again; a tiny receive buffer makes the kernel hold little for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_evicted_while_the_others_get_everything() {
    // write_timeout leaves the slow client time to read through to its close frame once the test lets it.
    let settings = flags(&["--merge-window", "0", "--outbox-frames", "16", "--write-timeout", "20s"]);
    let server = TestServer::start(settings).await;
    let mut readers = Vec::new();
    for _ in 0..3 {
        readers.push(server.member("feed").await);
    }
    let mut slow = support::never_reading_member(server.ws, "feed").await;

    let pushes = 120;
    let pad = "x".repeat(100_000);
    let readers_done: Vec<_> = readers
        .into_iter()
        .map(|mut reader| {
            tokio::spawn(async move {
                // With merge_window 0 pushes that wait for the same flush share a frame: count items, not frames.
                let items = reader.items(pushes).await;
                let order: Vec<_> = items.iter().map(|item| item["n"].as_u64()).collect();
                assert_eq!(
                    order,
                    (0..pushes as u64).map(Some).collect::<Vec<_>>(),
                    "every item, in order"
                );
            })
        })
        .collect();
    for n in 0..pushes {
        server
            .push_room("feed", &format!(r#"[{{"n":{n},"pad":"{pad}"}}]"#))
            .await;
    }
    for reader in readers_done {
        reader.await.unwrap();
    }
    // Its outbox overflowed: what was queued is discarded (counted) and a close frame queued behind what the
    // socket holds already.
    server
        .wait_metric(r#"herald_dropped_frames_total{reason="slow_consumer"}"#, 1.0)
        .await;
    // The slow client, reading at last (within write_timeout), reads through to that close frame.
    assert_eq!(slow.close_code().await, Some(4000));
    server
        .wait_metric(r#"herald_closes_total{reason="slow_consumer"}"#, 1.0)
        .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_stalled_past_the_write_timeout_evicts_the_connection() {
    // The outbox is large enough never to fill here: only the stall rule can close this connection.
    let settings = flags(&[
        "--merge-window",
        "0",
        "--outbox-frames",
        "100000",
        "--write-timeout",
        "500ms",
    ]);
    let server = TestServer::start(settings).await;
    let _stalled = support::never_reading_member(server.ws, "s").await;
    let pad = "y".repeat(100_000);
    for n in 0..60 {
        server.push_room("s", &format!(r#"[{{"n":{n},"pad":"{pad}"}}]"#)).await;
    }
    server
        .wait_metric(r#"herald_closes_total{reason="slow_consumer"}"#, 1.0)
        .await;
    assert!(
        server
            .metric(r#"herald_dropped_frames_total{reason="slow_consumer"}"#)
            .await
            > 0.0
    );
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_closes_and_half_closes_still_gets_the_close_echo() {
    let server = TestServer::with_window("0").await;
    let mut raw = RawClient::connect(server.ws).await;
    raw.send_frame(0x88, &4321u16.to_be_bytes(), true).await;
    raw.stream.shutdown().await.unwrap();
    assert_eq!(raw.close_code().await, Some(4321), "the peer's code echoed");
    server.wait_metric(r#"herald_closes_total{reason="client"}"#, 1.0).await;
    server.stop().await;
}

#[tokio::test]
async fn connections_over_the_limit_get_503_and_the_limit_recovers() {
    let settings = flags(&["--max-connections", "2"]);
    let server = TestServer::start(settings).await;
    let first = server.client().await;
    let _second = server.client().await;
    let mut third = TcpStream::connect(server.ws).await.unwrap();
    third
        .write_all(
            b"GET /connect HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let mut response = Vec::new();
    third.read_to_end(&mut response).await.unwrap();
    let response = support::parse_response(&response);
    assert_eq!((response.status, response.header("retry-after")), (503, Some("1")));
    assert_eq!(
        server.metric(r#"herald_handshakes_total{reason="over_limit"}"#).await,
        1.0
    );

    drop(first);
    server
        .wait_metric(r#"herald_closes_total{reason="peer_gone"}"#, 1.0)
        .await;
    let _again = server.client().await;
    server.stop().await;
}

#[tokio::test]
async fn a_handshake_that_never_finishes_is_dropped_at_the_timeout() {
    let settings = flags(&["--handshake-timeout", "300ms"]);
    let server = TestServer::start(settings).await;
    let mut slowloris = TcpStream::connect(server.ws).await.unwrap();
    slowloris
        .write_all(b"GET /connect HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(support::FAILSAFE, slowloris.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty(), "dropped without an answer");
    assert_eq!(server.metric(r#"herald_handshakes_total{reason="timeout"}"#).await, 1.0);
    server.stop().await;
}

#[tokio::test]
async fn bad_handshakes_get_http_errors() {
    let server = TestServer::with_window("1s").await;
    let plain = support::http(server.ws, "GET", "/connect", None, b"").await;
    assert_eq!(plain.status, 400);
    let unknown = support::http(server.ws, "GET", "/elsewhere", None, b"").await;
    assert_eq!(unknown.status, 404);
    let page = support::http(server.ws, "GET", "/", None, b"").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<title>herald demo</title>"));
    server.stop().await;
}

#[tokio::test]
async fn shutdown_sends_what_waits_then_going_away() {
    let server = TestServer::with_window("1h").await;
    let mut client = server.member("r").await;
    server.push_room("r", "[1]").await;
    assert_eq!(client.next_push().await["items"], serde_json::json!([1]));
    server.push_room("r", "[2]").await; // held by the hour-long window
    server.begin_shutdown();
    assert_eq!(
        client.next_push().await["items"],
        serde_json::json!([2]),
        "drained before the close"
    );
    assert_eq!(client.closed().await, (1001, "server shutting down".to_owned()));
    server.stop().await;
}

#[tokio::test]
async fn pushes_during_shutdown_are_refused_with_503() {
    let server = TestServer::with_window("1h").await;
    let _client = server.member("r").await;
    server.begin_shutdown();
    // The API keeps answering while connections drain (the silent client holds the drain for its close
    // linger); /healthz turns 503 once pushes are refused, and pushes are refused truthfully.
    let deadline = tokio::time::Instant::now() + support::FAILSAFE;
    while server.http("GET", "/healthz", None, b"").await.status != 503 {
        assert!(tokio::time::Instant::now() < deadline, "/healthz never turned 503");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let answer = server.post_form("/push/room", "room=r&items=[1]").await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.header("retry-after"), Some("5"));
    assert_eq!(answer.json()["error"], "shutting down");
    server.stop().await;
}
