//! The go-push client protocol end to end: real herald, real WebSocket clients over TCP.

mod support;

use futures_util::{SinkExt, StreamExt};
use support::{RawClient, TestServer, flags};

#[tokio::test]
async fn ping_gets_pong_with_and_without_data_or_id() {
    let server = TestServer::with_window("1s").await;
    let mut client = server.client().await;
    client.send_text(r#"{"type":"PING","data":{}}"#).await;
    assert_eq!(client.next_json().await, serde_json::json!({"type":"PONG","data":{}}));
    client.send_text(r#"{"type":"PING"}"#).await;
    assert_eq!(client.next_json().await["type"], "PONG");
    client.send_text(r#"{"type":"PING","id":"p1"}"#).await;
    assert_eq!(client.next_json().await["id"], "p1");
    server.stop().await;
}

#[tokio::test]
async fn websocket_pings_are_answered_with_their_payload() {
    let server = TestServer::with_window("1s").await;
    let mut raw = RawClient::connect(server.ws).await;
    raw.send_frame(0x89, b"are you there", true).await;
    assert_eq!(raw.read_frame().await, Some((0xA, b"are you there".to_vec())));
    server.stop().await;
}

#[tokio::test]
async fn room_pushes_reach_members_only_and_leave_stops_them() {
    let server = TestServer::with_window("0").await;
    let mut news = server.member("news").await;
    let mut sport = server.member("sport").await;
    let answer = server.push_room("news", r#"[{"headline":"hi"}]"#).await;
    assert_eq!(answer, serde_json::json!({"items": 1, "recipients": 1}));
    let data = news.next_push().await;
    assert_eq!(data["items"], serde_json::json!([{"headline":"hi"}]));
    assert_eq!(data["room"], "news");

    // sport got nothing: the next thing it sees is its own PONG.
    sport.send_text(r#"{"type":"PING"}"#).await;
    assert_eq!(sport.next_json().await["type"], "PONG");

    assert_eq!(news.request("LEAVE", "news").await["type"], "ACK");
    assert_eq!(server.push_room("news", "[2]").await["recipients"], 0);
    news.send_text(r#"{"type":"PING"}"#).await;
    assert_eq!(news.next_json().await["type"], "PONG", "no push after LEAVE");
    server.stop().await;
}

#[tokio::test]
async fn join_without_id_is_silent_as_in_go_push() {
    let server = TestServer::with_window("0").await;
    let mut client = server.client().await;
    client.send_text(r#"{"type":"JOIN","data":{"room":"quiet"}}"#).await;
    client.send_text(r#"{"type":"PING"}"#).await;
    assert_eq!(client.next_json().await["type"], "PONG", "no reply to JOIN without id");
    server.push_room("quiet", "[1]").await;
    assert_eq!(client.next_push().await["items"], serde_json::json!([1]));
    server.stop().await;
}

#[tokio::test]
async fn push_all_reaches_every_connection() {
    let server = TestServer::with_window("0").await;
    let mut a = server.member("a").await;
    let mut b = server.client().await;
    b.send_text(r#"{"type":"PING"}"#).await;
    b.next_json().await; // registered for certain
    assert_eq!(server.push_all(r#"["all"]"#).await["recipients"], 2);
    for client in [&mut a, &mut b] {
        let data = client.next_push().await;
        assert_eq!(data["items"], serde_json::json!(["all"]));
        assert!(data.get("room").is_none());
    }
    server.stop().await;
}

#[tokio::test]
async fn items_arrive_as_the_exact_json_text_pushed() {
    let server = TestServer::with_window("0").await;
    let mut client = server.member("exact").await;
    let items = r#"[{"s":"é\u00e9\"\\","n":1.50e3,"big":12345678901234567890},null,true,"\ud83d\ude00",[]]"#;
    let form = format!("room=exact&items={}", form_encode(items));
    assert_eq!(server.post_form("/push/room", &form).await.status, 200);
    let message = client.next().await;
    let text = message.as_text().unwrap();
    assert_eq!(
        text,
        format!(r#"{{"type":"PUSH","data":{{"room":"exact","items":{items}}}}}"#)
    );
    server.stop().await;
}

fn form_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn the_first_push_after_a_quiet_window_goes_at_once() {
    // With an hour-long window, anything that waited for the window would never arrive.
    let server = TestServer::with_window("1h").await;
    let mut client = server.member("r").await;
    server.push_room("r", "[1]").await;
    assert_eq!(client.next_push().await["items"], serde_json::json!([1]));
    server.stop().await;
}

#[tokio::test]
async fn pushes_inside_one_window_arrive_as_one_frame_in_order() {
    let settings = flags(&["--merge-window", "1h", "--merge-max-items", "3"]);
    let server = TestServer::start(settings).await;
    let mut client = server.member("r").await;
    server.push_room("r", "[1]").await;
    assert_eq!(client.next_push().await["items"], serde_json::json!([1]));
    // Inside the window now: held until the batch holds merge_max_items (the window itself never ends here).
    server.push_room("r", "[2]").await;
    server.push_room("r", r#"["3a","3b"]"#).await;
    assert_eq!(client.next_push().await["items"], serde_json::json!([2, "3a", "3b"]));
    let stats = server.hub_stats().await;
    assert_eq!((stats.frames, stats.items), (2, 4));
    server.stop().await;
}

#[tokio::test]
async fn a_window_that_ends_sends_what_it_collected() {
    let server = TestServer::with_window("300ms").await;
    let mut client = server.member("r").await;
    server.push_room("r", "[1]").await;
    client.next_push().await;
    server.push_room("r", "[2]").await;
    server.push_room("r", "[3]").await;
    // However the two pushes fell relative to the window, both arrive, in order, and nothing else does.
    let mut got = Vec::new();
    while got.len() < 2 {
        got.extend(client.next_push().await["items"].as_array().unwrap().iter().cloned());
    }
    assert_eq!(got, [2, 3]);
    server.stop().await;
}

#[tokio::test]
async fn acks_and_errors_carry_the_request_id() {
    let settings = flags(&["--max-rooms-per-connection", "2"]);
    let server = TestServer::start(settings).await;
    let mut client = server.client().await;
    assert_eq!(client.request("JOIN", "a").await["type"], "ACK");
    assert_eq!(
        client.request("JOIN", "a").await["type"],
        "ACK",
        "joining twice is fine"
    );
    assert_eq!(client.request("JOIN", "b").await["type"], "ACK");
    let refused = client.request("JOIN", "c").await;
    assert_eq!(refused["type"], "ERROR");
    assert_eq!(refused["data"]["code"], "too_many_rooms");
    let empty = client.request("JOIN", "").await;
    assert_eq!(empty["data"]["code"], "invalid_room");
    assert_eq!(client.request("LEAVE", "a").await["type"], "ACK");
    assert_eq!(client.request("JOIN", "c").await["type"], "ACK", "room freed by LEAVE");
    assert_eq!(
        server
            .metric(r#"herald_bad_input_total{reason="too_many_rooms"}"#)
            .await,
        1.0
    );

    // Without an id the over-limit JOIN is ignored, as in go-push: the connection stays, the room is not joined.
    client.send_text(r#"{"type":"JOIN","data":{"room":"d"}}"#).await;
    client.send_text(r#"{"type":"PING"}"#).await;
    assert_eq!(client.next_json().await["type"], "PONG");
    assert_eq!(server.push_room("d", "[1]").await["recipients"], 0);
    server.stop().await;
}

#[tokio::test]
async fn fragmented_messages_and_split_writes_are_read_whole() {
    let server = TestServer::with_window("0").await;
    let mut raw = RawClient::connect(server.ws).await;
    let join = br#"{"type":"JOIN","id":9,"data":{"room":"frag"}}"#;
    // Three fragments with a ping in between, and every byte in its own TCP write.
    let mut bytes = support::encode_client_frame(0x01, &join[..10], true);
    bytes.extend(support::encode_client_frame(0x89, b"mid", true));
    bytes.extend(support::encode_client_frame(0x00, &join[10..20], true));
    bytes.extend(support::encode_client_frame(0x80, &join[20..], true));
    for byte in bytes {
        tokio::io::AsyncWriteExt::write_all(&mut raw.stream, &[byte])
            .await
            .unwrap();
    }
    assert_eq!(raw.read_frame().await, Some((0xA, b"mid".to_vec())));
    let (opcode, ack) = raw.read_frame().await.unwrap();
    assert_eq!(
        (opcode, String::from_utf8(ack).unwrap()),
        (0x1, r#"{"type":"ACK","id":9}"#.to_owned())
    );
    server.stop().await;
}

#[tokio::test]
async fn a_client_close_is_answered_and_counted() {
    let server = TestServer::with_window("0").await;
    let mut client = server.member("bye").await;
    client.ws.close().await.unwrap();
    let drained = tokio::time::timeout(support::FAILSAFE, async {
        while let Some(Ok(message)) = client.ws.next().await {
            assert!(message.is_close() || message.is_text(), "{message:?}");
        }
    });
    drained.await.expect("the server ends the connection");
    server.wait_metric(r#"herald_closes_total{reason="client"}"#, 1.0).await;
    assert_eq!(server.push_room("bye", "[1]").await["recipients"], 0, "left every room");
    server.stop().await;
}
