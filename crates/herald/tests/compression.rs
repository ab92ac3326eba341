//! permessage-deflate over real sockets: what herald answers to an offer, that a compressing and a plain client in
//! one room get the same items (the compressed frame built once for all), that a resume's replay comes compressed,
//! that compressed client messages are read, and that every bad one gets its close code and harms nobody else.
//! The last test connects with Python's `websockets`, an independent implementation that compresses by default.

mod support;

use herald_protocol::deflate;
use serde_json::{Value, json};
use support::{Client, RawClient, TestServer, flags};
use tokio::net::TcpStream;

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
const ANSWER: &str =
    "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n";
/// Well over `max_message_bytes` once inflated, a few bytes compressed.
const INFLATES_TOO_FAR: usize = 64 << 10;

/// A client at the byte level that offered permessage-deflate.
struct Deflating {
    raw: RawClient,
    /// The server's answer to the handshake.
    head: String,
}

impl Deflating {
    async fn connect(server: &TestServer, offer: &str) -> Self {
        let stream = TcpStream::connect(server.ws).await.unwrap();
        let (raw, head) = RawClient::handshake_with(stream, server.ws, offer).await;
        Self { raw, head }
    }

    /// Sends `text` as one compressed text frame.
    async fn send_compressed(&mut self, text: &str) {
        self.raw
            .send_frame(0xC1, &deflate::deflate(text.as_bytes(), 6), true)
            .await;
    }

    /// The next data message: (whether it came compressed, its JSON).
    async fn next_json(&mut self) -> (bool, Value) {
        loop {
            let (first_byte, payload) = self.raw.read_whole_frame().await.expect("connection open");
            let compressed = first_byte & 0x40 != 0;
            assert_eq!(first_byte & 0x30, 0, "RSV2 and RSV3 are never set");
            match first_byte & 0x0F {
                0x1 => {
                    let text = if compressed {
                        deflate::inflate(&payload, 1 << 24).expect("herald's frames inflate")
                    } else {
                        payload
                    };
                    return (compressed, serde_json::from_slice(&text).unwrap());
                }
                0x9 | 0xA => {
                    assert!(!compressed, "control frames are never compressed");
                }
                other => panic!("unexpected opcode {other}"),
            }
        }
    }

    /// JOINs `room` with a compressed message (and `since`, when given); returns the ACK's data.
    async fn join(&mut self, room: &str, since: Option<Value>) -> Value {
        let mut data = json!({ "room": room });
        if let Some(since) = since {
            data["since"] = since;
        }
        self.send_compressed(&json!({ "type": "JOIN", "id": 1, "data": data }).to_string())
            .await;
        loop {
            let (_, reply) = self.next_json().await;
            if reply["id"] == 1 {
                assert_eq!(reply["type"], "ACK", "{reply}");
                return reply["data"].clone();
            }
        }
    }
}

/// Twenty chat-like items, several hundred bytes together: well over `compression_min_bytes`.
fn chat_items(round: usize) -> String {
    let items: Vec<Value> = (0..20)
        .map(|n| json!({ "round": round, "n": n, "user": format!("user{}", n % 3), "text": "hello from the room" }))
        .collect();
    serde_json::to_string(&items).unwrap()
}

#[tokio::test]
async fn a_compressing_and_a_plain_client_in_one_room_get_the_same_items() {
    let server = TestServer::start(flags(&["--merge-window", "20ms"])).await;
    let mut plain = server.member("r").await;
    let mut compressing: Vec<Deflating> = Vec::new();
    for _ in 0..2 {
        let mut client = Deflating::connect(&server, OFFER).await;
        assert!(client.head.contains(ANSWER), "{}", client.head);
        assert_eq!(client.head.matches("Sec-WebSocket-Extensions").count(), 1);
        client.join("r", None).await;
        compressing.push(client);
    }
    server.push_room("r", &chat_items(1)).await;
    let expected = plain.next_push().await;
    for client in &mut compressing {
        let (compressed, frame) = client.next_json().await;
        assert!(compressed, "a frame over compression_min_bytes comes compressed");
        assert_eq!(frame["data"], expected);
    }
    let stats = server.hub_stats().await;
    assert_eq!(
        stats.compressed_frames, 1,
        "compressed once for both compressing clients"
    );
    assert!(
        stats.compression_out_bytes * 2 < stats.compression_in_bytes,
        "{stats:?}"
    );
    assert_eq!(server.metric("herald_compressed_frames_total").await, 1.0);
    // A short frame goes out plain, RSV1 clear, to the compressing clients too.
    server.push_room("r", r#"["hi"]"#).await;
    assert_eq!(plain.next_push().await["items"], json!(["hi"]));
    for client in &mut compressing {
        let (compressed, frame) = client.next_json().await;
        assert!(!compressed);
        assert_eq!(frame["data"]["items"], json!(["hi"]));
    }
    server.stop().await;
}

/// `client` JOINs `r` with a plain message, and the next frame pushed to `r` reaches it plain.
async fn served_plain(server: &TestServer, client: &mut Deflating) {
    let join = br#"{"type":"JOIN","id":1,"data":{"room":"r"}}"#;
    client.raw.send_frame(0x81, join, true).await;
    assert_eq!(client.next_json().await.1["type"], "ACK");
    server.push_room("r", &chat_items(1)).await;
    assert!(!client.next_json().await.0, "plain frames");
}

#[tokio::test]
async fn no_offer_or_compression_off_means_plain_frames_and_no_extension() {
    let server = TestServer::start(flags(&["--merge-window", "0"])).await;
    let mut silent = Deflating::connect(&server, "").await;
    assert!(!silent.head.contains("Sec-WebSocket-Extensions"), "{}", silent.head);
    let unreadable = "Sec-WebSocket-Extensions: permessage-deflate; 15\r\n";
    let declined = Deflating::connect(&server, unreadable).await;
    assert!(!declined.head.contains("Sec-WebSocket-Extensions"), "{}", declined.head);
    // A connection that offered nothing is served as before.
    served_plain(&server, &mut silent).await;
    server.stop().await;

    let off = TestServer::start(flags(&["--compression", "false", "--merge-window", "0"])).await;
    let mut offered = Deflating::connect(&off, OFFER).await;
    assert!(!offered.head.contains("Sec-WebSocket-Extensions"), "{}", offered.head);
    served_plain(&off, &mut offered).await;
    off.stop().await;
}

#[tokio::test]
async fn a_resume_replays_what_was_missed_compressed() {
    let server = TestServer::start(flags(&["--history-size", "100", "--merge-window", "10ms"])).await;
    // A member that stays, so the room (and its history) lives on while the other is away.
    let _stays = server.member("r").await;
    let mut first = Deflating::connect(&server, OFFER).await;
    let at = first.join("r", None).await;
    let since = json!({ "offset": at["offset"], "epoch": at["epoch"] });
    drop(first);
    for round in 1..=3 {
        server.push_room("r", &chat_items(round)).await;
    }
    let mut back = Deflating::connect(&server, OFFER).await;
    let ack = back.join("r", Some(since)).await;
    assert_eq!(ack["recovered"], true, "{ack}");
    let mut replayed = Vec::new();
    while replayed.len() < 60 {
        let (compressed, frame) = back.next_json().await;
        assert!(compressed, "the replay comes compressed");
        replayed.extend(frame["data"]["items"].as_array().unwrap().iter().cloned());
    }
    let rounds: Vec<u64> = replayed.iter().map(|item| item["round"].as_u64().unwrap()).collect();
    assert!(rounds.windows(2).all(|w| w[0] <= w[1]), "in order: {rounds:?}");
    assert_eq!(rounds.iter().filter(|round| **round == 3).count(), 20);
    server.stop().await;
}

#[tokio::test]
async fn compressed_client_messages_are_read_fragmented_or_whole() {
    let server = TestServer::start(flags(&["--merge-window", "0"])).await;
    let mut client = Deflating::connect(&server, OFFER).await;
    client.join("r", None).await;
    // A compressed PING cut in three fragments, RSV1 on the first only, a ping frame between.
    let compressed = deflate::deflate(br#"{"type":"PING","id":7}"#, 6);
    let (a, rest) = compressed.split_at(2);
    let (b, c) = rest.split_at(rest.len() / 2);
    client.raw.send_frame(0x41, a, true).await;
    client.raw.send_frame(0x00, b, true).await;
    client.raw.send_frame(0x89, b"", true).await;
    client.raw.send_frame(0x80, c, true).await;
    loop {
        let (_, reply) = client.next_json().await;
        if reply["id"] == 7 {
            assert_eq!(reply["type"], "PONG", "{reply}");
            break;
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn bad_compressed_input_gets_its_close_code_and_harms_no_one_else() {
    let server = TestServer::start(flags(&["--merge-window", "0"])).await;
    let mut bystander = server.member("r").await;
    let big = " ".repeat(INFLATES_TOO_FAR);
    let cases: Vec<(&str, Vec<u8>, &str, u16, &str)> = vec![
        (
            "",
            deflate::deflate(b"{}", 1),
            "RSV1 without the extension",
            1002,
            "protocol",
        ),
        (OFFER, b"".to_vec(), "RSV1 on a ping", 1002, "protocol"),
        (OFFER, vec![0x07], "bytes that do not inflate", 1007, "bad_compression"),
        (
            OFFER,
            deflate::deflate(big.as_bytes(), 1),
            "inflated past max_message_bytes",
            1009,
            "too_big",
        ),
        (
            OFFER,
            deflate::deflate(&[0xFF, 0xFE], 1),
            "inflated text that is not UTF-8",
            1007,
            "invalid_utf8",
        ),
    ];
    for (offer, payload, why, code, reason) in cases {
        let before = server
            .metric(&format!(r#"herald_bad_input_total{{reason="{reason}"}}"#))
            .await;
        let mut client = Deflating::connect(&server, offer).await;
        let first_byte = if why == "RSV1 on a ping" { 0xC9 } else { 0xC1 };
        client.raw.send_frame(first_byte, &payload, true).await;
        assert_eq!(client.raw.close_code().await, Some(code), "{why}");
        let after = server
            .metric(&format!(r#"herald_bad_input_total{{reason="{reason}"}}"#))
            .await;
        assert_eq!(after, before + 1.0, "{why}: counted as {reason}");
    }
    server.push_room("r", r#"["still here"]"#).await;
    assert_eq!(bystander.next_push().await["items"], json!(["still here"]));
    let mut fresh = Client::member(server.ws, "s").await;
    server.push_room("s", r#"["and new ones too"]"#).await;
    assert_eq!(fresh.next_push().await["items"], json!(["and new ones too"]));
    server.stop().await;
}

/// Python's `websockets` offers permessage-deflate by default: it negotiates it with herald, sends its JOIN
/// compressed, and reads the compressed frame as any other.
#[tokio::test]
async fn python_websockets_negotiates_compression_and_reads_the_frames() {
    const CLIENT: &str = r#"
import asyncio, json, sys
from websockets.asyncio.client import connect

async def main():
    async with connect(sys.argv[1]) as ws:
        extensions = [extension.name for extension in ws.protocol.extensions]
        await ws.send(json.dumps({"type": "JOIN", "id": 1, "data": {"room": "r"}}))
        while json.loads(await ws.recv()).get("id") != 1:
            pass
        print(json.dumps({"extensions": extensions}), flush=True)
        print(await ws.recv(), flush=True)

asyncio.run(main())
"#;
    use tokio::io::AsyncBufReadExt;
    let server = TestServer::start(flags(&["--merge-window", "20ms"])).await;
    let mut plain = server.member("r").await;
    let mut python = tokio::process::Command::new(support::jwt::python())
        .args(["-c", CLIENT, &format!("ws://{}/connect", server.ws)])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python starts");
    let mut lines = tokio::io::BufReader::new(python.stdout.take().unwrap()).lines();
    let mut next_line = async || {
        let line = tokio::time::timeout(support::FAILSAFE, lines.next_line()).await;
        serde_json::from_str::<Value>(&line.expect("in time").unwrap().expect("a line")).unwrap()
    };
    assert_eq!(next_line().await["extensions"], json!(["permessage-deflate"]));
    server.push_room("r", &chat_items(1)).await;
    let expected = plain.next_push().await;
    assert_eq!(next_line().await["data"], expected);
    assert_eq!(server.hub_stats().await.compressed_frames, 1);
    assert!(python.wait().await.unwrap().success());
    server.stop().await;
}
