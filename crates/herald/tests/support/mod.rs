//! Test harness: a real herald on 127.0.0.1 port 0, real WebSocket clients (tokio-websockets, an independent
//! implementation), a raw-socket client for protocol violations, and a minimal HTTP/1.1 client for the push API.
//!
//! Timeouts here are failsafes that turn a hang into a failure; no test asserts how long anything took.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use herald::config::{GatewayArgs, LogicArgs, ServeArgs};
use herald_protocol::stats::{HubStats, Stats};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};

pub mod chromium;
pub mod cluster;
pub mod jwt;
pub mod proxy;

/// How long any single expected event may take before the test fails.
pub const FAILSAFE: Duration = Duration::from_secs(20);

/// Flags of a herald the test starts, as a command line takes them: `flags(&["--merge-window", "0"])`.
pub fn flags(list: &[&str]) -> Vec<String> {
    list.iter().map(|flag| (*flag).to_owned()).collect()
}

/// A mode's arguments parsed from `base` then `flags` (a later flag wins, as on a command line).
fn parse<A: Parser>(base: &[&str], flags: &[String]) -> A {
    let args = base.iter().map(|arg| (*arg).to_owned()).chain(flags.iter().cloned());
    A::try_parse_from(args).unwrap_or_else(|e| panic!("test flags: {e}"))
}

/// The configuration of `herald serve` on loopback port 0 (both listeners), quiet, with `flags`.
pub fn serve_config(flags: &[String]) -> herald::config::Serve {
    let base = [
        "serve",
        "--ws-addr",
        "127.0.0.1:0",
        "--api-addr",
        "127.0.0.1:0",
        "--log",
        "warn",
    ];
    parse::<ServeArgs>(&base, flags).resolve().expect("valid test settings")
}

/// The configuration of `herald gateway` on loopback port 0 (both listeners), quiet, with `flags`.
pub fn gateway_config(flags: &[String]) -> herald::config::Gateway {
    let base = [
        "gateway",
        "--ws-addr",
        "127.0.0.1:0",
        "--rpc-addr",
        "127.0.0.1:0",
        "--log",
        "warn",
    ];
    parse::<GatewayArgs>(&base, flags)
        .resolve()
        .expect("valid gateway settings")
}

/// The configuration of `herald logic` on loopback port 0, quiet, with `flags`.
pub fn logic_config(flags: &[String]) -> herald::config::Logic {
    let base = ["logic", "--api-addr", "127.0.0.1:0", "--log", "warn"];
    parse::<LogicArgs>(&base, flags)
        .resolve()
        .expect("valid logic settings")
}

/// A herald running in this process.
pub struct TestServer {
    pub ws: SocketAddr,
    pub api: SocketAddr,
    push_api: PushApi,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    /// Starts herald with `flags` on loopback port 0 (both listeners).
    pub async fn start(flags: Vec<String>) -> Self {
        let config = serve_config(&flags);
        let (ws, api) = herald::serve::bind(&config).await.expect("bind");
        let (ws_addr, api_addr) = (ws.local_addr().unwrap(), api.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(herald::serve::run(config, ws, api, shutdown.clone()));
        Self {
            ws: ws_addr,
            api: api_addr,
            push_api: PushApi(api_addr),
            shutdown,
            task,
        }
    }

    /// Starts herald with defaults, except the merge window.
    pub async fn with_window(window: &str) -> Self {
        Self::start(flags(&["--merge-window", window])).await
    }

    /// Asks herald to shut down (as SIGTERM does) without waiting.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Shuts herald down and waits until it has stopped.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(FAILSAFE, self.task)
            .await
            .expect("herald stops")
            .unwrap()
            .unwrap();
    }

    /// A connected WebSocket client.
    pub async fn client(&self) -> Client {
        Client::connect(self.ws).await
    }

    /// A client that has joined `room` (acknowledged, so pushes after this reach it).
    pub async fn member(&self, room: &str) -> Client {
        Client::member(self.ws, room).await
    }
}

impl std::ops::Deref for TestServer {
    type Target = PushApi;

    fn deref(&self) -> &PushApi {
        &self.push_api
    }
}

/// A push API (`herald serve`'s or a logic node's) at this address.
pub struct PushApi(pub SocketAddr);

impl PushApi {
    /// An HTTP request to the push API.
    pub async fn http(&self, method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> HttpResponse {
        http(self.0, method, path, content_type, body).await
    }

    /// `POST` a form body, go-push style.
    pub async fn post_form(&self, path: &str, form: &str) -> HttpResponse {
        self.http("POST", path, Some("application/x-www-form-urlencoded"), form.as_bytes())
            .await
    }

    /// Pushes JSON `items` (a JSON array text) to `room`; panics unless answered 200.
    pub async fn push_room(&self, room: &str, items: &str) -> Value {
        let response = self.push_raw(room, items).await;
        assert_eq!(response.status, 200, "{}", response.body);
        response.json()
    }

    /// Pushes JSON `items` (a JSON array text) to `room`, whatever the answer.
    pub async fn push_raw(&self, room: &str, items: &str) -> HttpResponse {
        let body = serde_json::json!({ "room": room, "items": serde_json::from_str::<Value>(items).unwrap() });
        self.http(
            "POST",
            "/push/room",
            Some("application/json"),
            body.to_string().as_bytes(),
        )
        .await
    }

    /// Pushes JSON `items` to everyone; panics unless answered 200.
    pub async fn push_all(&self, items: &str) -> Value {
        let body = format!(r#"{{"items":{items}}}"#);
        let response = self
            .http("POST", "/push/all", Some("application/json"), body.as_bytes())
            .await;
        assert_eq!(response.status, 200, "{}", response.body);
        response.json()
    }

    /// `GET /stats`.
    pub async fn stats(&self) -> Stats {
        let response = self.http("GET", "/stats", None, b"").await;
        assert_eq!(response.status, 200, "{}", response.body);
        serde_json::from_str(&response.body).unwrap_or_else(|e| panic!("/stats: {e}: {}", response.body))
    }

    /// `GET /stats` of herald serve (in memory) or of a gateway's internal listener: the hub's figures.
    pub async fn hub_stats(&self) -> HubStats {
        match self.stats().await {
            Stats::Hub(hub) => hub,
            other => panic!("not a hub's /stats: {other:?}"),
        }
    }

    /// The value of one sample in `GET /metrics` (e.g. `herald_closes_total{reason="heartbeat"}`).
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self.http("GET", "/metrics", None, b"").await.body;
        text.lines()
            .find_map(|line| line.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no sample {sample} in:\n{text}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// Waits until `sample` reaches `at_least`.
    pub async fn wait_metric(&self, sample: &str, at_least: f64) {
        self.wait_metric_where(sample, &format!("at least {at_least}"), |value| value >= at_least)
            .await;
    }

    /// Waits until `sample` falls to `at_most`.
    pub async fn wait_metric_at_most(&self, sample: &str, at_most: f64) {
        self.wait_metric_where(sample, &format!("at most {at_most}"), |value| value <= at_most)
            .await;
    }

    async fn wait_metric_where(&self, sample: &str, expected: &str, holds: impl Fn(f64) -> bool) {
        let deadline = tokio::time::Instant::now() + FAILSAFE;
        loop {
            let value = self.metric(sample).await;
            if holds(value) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{sample} stayed at {value}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A WebSocket client over real TCP.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Client {
    /// Connects to the WebSocket listener at `ws`.
    pub async fn connect(ws: SocketAddr) -> Self {
        Self::connect_to(ws, "/connect").await
    }

    /// Connects to `path` (e.g. `/connect?token=...`) of the WebSocket listener at `ws`.
    pub async fn connect_to(ws: SocketAddr, path: &str) -> Self {
        let uri = format!("ws://{ws}{path}");
        let (ws, _) = tokio::time::timeout(FAILSAFE, ClientBuilder::new().uri(&uri).unwrap().connect())
            .await
            .expect("connect in time")
            .expect("connect");
        Client { ws, next_id: 1 }
    }

    /// Connects with a connection token (`?token=`).
    pub async fn with_token(ws: SocketAddr, token: &str) -> Self {
        let token: String = form_urlencoded::byte_serialize(token.as_bytes()).collect();
        Self::connect_to(ws, &format!("/connect?token={token}")).await
    }

    /// Sends `{"type": kind, "id": .., "data": data}` and returns the reply with that id.
    pub async fn request_data(&mut self, kind: &str, data: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send_text(&serde_json::json!({ "type": kind, "id": id, "data": data }).to_string())
            .await;
        loop {
            let reply = self.next_json().await;
            // PUSH frames may come first; the reply is the message with this id.
            if reply["id"] == id {
                return reply;
            }
        }
    }

    /// A client of `ws` that has joined `room` (acknowledged, so pushes after this reach it).
    pub async fn member(ws: SocketAddr, room: &str) -> Self {
        let mut client = Self::connect(ws).await;
        client.join(room).await;
        client
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_owned())).await.expect("send");
    }

    /// The next message from the server (pings answered by the library are not seen).
    pub async fn next(&mut self) -> Message {
        tokio::time::timeout(FAILSAFE, self.ws.next())
            .await
            .expect("a message in time")
            .expect("connection open")
            .expect("valid message")
    }

    /// The next message, parsed as JSON.
    pub async fn next_json(&mut self) -> Value {
        let message = self.next().await;
        let text = message
            .as_text()
            .unwrap_or_else(|| panic!("expected text, got {message:?}"));
        serde_json::from_str(text).unwrap()
    }

    /// The next `PUSH` frame's `data`.
    pub async fn next_push(&mut self) -> Value {
        let json = self.next_json().await;
        assert_eq!(json["type"], "PUSH", "{json}");
        json["data"].clone()
    }

    /// The next `PUSH` frame's `data` if one comes within a moment (for a push that may not be routed yet).
    pub async fn next_push_within(&mut self) -> Option<Value> {
        let message = tokio::time::timeout(Duration::from_millis(500), self.ws.next())
            .await
            .ok()??
            .ok()?;
        let json: Value = serde_json::from_str(message.as_text()?).ok()?;
        assert_eq!(json["type"], "PUSH", "{json}");
        Some(json["data"].clone())
    }

    /// Reads PUSH frames until `count` items have arrived (a frame may carry several); returns them in order.
    pub async fn items(&mut self, count: usize) -> Vec<Value> {
        let mut items = Vec::new();
        while items.len() < count {
            let data = self.next_push().await;
            items.extend(data["items"].as_array().unwrap().iter().cloned());
        }
        items
    }

    /// Sends a request with a fresh id and returns the reply with that id.
    pub async fn request(&mut self, kind: &str, room: &str) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send_text(&serde_json::json!({ "type": kind, "id": id, "data": { "room": room } }).to_string())
            .await;
        let reply = self.next_json().await;
        assert_eq!(reply["id"], id, "{reply}");
        reply
    }

    /// JOINs `room` and waits for the ACK.
    pub async fn join(&mut self, room: &str) {
        let reply = self.request("JOIN", room).await;
        assert_eq!(reply["type"], "ACK", "{reply}");
    }

    /// Reads until the server's close frame; returns its code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            let message = self.next().await;
            if let Some((code, reason)) = message.as_close() {
                return (code.into(), reason.to_owned());
            }
        }
    }
}

/// Asserts that the items carrying `key: source` are `{"n": 0..count}` in order, for every source in `0..sources`
/// (items pushed concurrently by several senders: each sender's order must hold).
pub fn assert_each_in_order(items: &[Value], key: &str, sources: usize, count: usize) {
    for source in 0..sources {
        let order: Vec<u64> = items
            .iter()
            .filter(|item| item[key] == source)
            .map(|item| item["n"].as_u64().unwrap())
            .collect();
        assert_eq!(order, (0..count as u64).collect::<Vec<_>>(), "{key} {source}");
    }
}

/// A member of `room` on `ws` that never reads, with a tiny receive buffer so its socket fills fast.
pub async fn never_reading_member(ws: SocketAddr, room: &str) -> RawClient {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut client = RawClient::handshake(socket.connect(ws).await.unwrap(), ws).await;
    let join = format!(r#"{{"type":"JOIN","id":1,"data":{{"room":"{room}"}}}}"#);
    client.send_frame(0x81, join.as_bytes(), true).await;
    let (_, ack) = client.read_frame().await.unwrap();
    assert_eq!(ack, br#"{"type":"ACK","id":1}"#);
    client
}

/// A response from [`http`].
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request with `Connection: close`, read to the end.
pub async fn http(addr: SocketAddr, method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> HttpResponse {
    http_with(addr, method, path, &[], content_type, body).await
}

/// A WebSocket handshake on `path` with extra `headers` that the server is expected to refuse: its answer.
pub async fn refused_handshake(ws: SocketAddr, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let mut all = vec![
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    all.extend_from_slice(headers);
    let response = http_with(ws, "GET", path, &all, None, b"").await;
    assert_ne!(response.status, 101, "the handshake was not refused");
    response
}

/// One HTTP/1.1 request with extra `headers` (the `Connection` header is `close` unless given), read to the end.
pub async fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    content_type: Option<&str>,
    body: &[u8],
) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let connection = if headers.iter().any(|(name, _)| *name == "Upgrade") {
        "Upgrade"
    } else {
        "close"
    };
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: {connection}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(content_type) = content_type {
        request.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(FAILSAFE, async {
        // To the end of the body by Content-Length (some servers keep the connection open), else to EOF.
        let mut chunk = [0u8; 8192];
        loop {
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            raw.extend_from_slice(&chunk[..n]);
            let complete = parse_response(&raw);
            let expected = complete.header("content-length").and_then(|v| v.parse::<usize>().ok());
            if n == 0 || expected.is_some_and(|len| complete.body.len() >= len) {
                return;
            }
        }
    })
    .await
    .expect("response in time");
    parse_response(&raw)
}

/// Parses a complete HTTP/1.1 response (no chunked encoding needed for herald's answers).
pub fn parse_response(raw: &[u8]) -> HttpResponse {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked"));
    HttpResponse {
        status,
        headers,
        body: if chunked { dechunk(body) } else { body.to_owned() },
    }
}

/// The body of a chunked response (what other servers, nats-server's monitoring among them, send).
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// A WebSocket at the byte level, for sending what no well-behaved client library would.
pub struct RawClient {
    pub stream: TcpStream,
}

impl RawClient {
    /// Completes a handshake on `stream`.
    pub async fn handshake(stream: TcpStream, ws: SocketAddr) -> Self {
        Self::handshake_with(stream, ws, "").await.0
    }

    /// Completes a handshake on `stream` whose request carries `extra_headers` (each line ending in CRLF); returns
    /// the client and the server's response head.
    pub async fn handshake_with(mut stream: TcpStream, ws: SocketAddr, extra_headers: &str) -> (Self, String) {
        let request = format!(
            "GET /connect HTTP/1.1\r\nHost: {ws}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        Self::read_upgrade(stream).await
    }

    /// Reads the server's answer to a handshake request already sent on `stream`; panics unless it is 101.
    pub async fn after_handshake(stream: TcpStream) -> Self {
        Self::read_upgrade(stream).await.0
    }

    async fn read_upgrade(mut stream: TcpStream) -> (Self, String) {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            let n = tokio::time::timeout(FAILSAFE, stream.read(&mut byte))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                n,
                1,
                "connection closed during handshake: {}",
                String::from_utf8_lossy(&head)
            );
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        (Self { stream }, String::from_utf8_lossy(&head).into_owned())
    }

    pub async fn connect(ws: SocketAddr) -> Self {
        Self::handshake(TcpStream::connect(ws).await.unwrap(), ws).await
    }

    /// Sends one frame with the given first byte, masked or not.
    pub async fn send_frame(&mut self, first_byte: u8, payload: &[u8], masked: bool) {
        self.stream
            .write_all(&encode_client_frame(first_byte, payload, masked))
            .await
            .unwrap();
    }

    /// Reads server frames until a close frame; returns its code (None if the connection ended without one).
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            let (opcode, payload) = self.read_frame().await?;
            if opcode == 0x8 {
                return payload.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]));
            }
        }
    }

    /// Reads one server frame: (opcode, payload); None at end of stream.
    pub async fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let (first_byte, payload) = self.read_whole_frame().await?;
        Some((first_byte & 0x0F, payload))
    }

    /// Reads one server frame: (its first byte: FIN, RSV bits and opcode; payload); None at end of stream.
    pub async fn read_whole_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut head = [0u8; 2];
        self.read_exact(&mut head).await?;
        assert_eq!(head[1] & 0x80, 0, "server frames are never masked");
        let len = match head[1] & 0x7F {
            126 => {
                let mut ext = [0u8; 2];
                self.read_exact(&mut ext).await?;
                u16::from_be_bytes(ext) as usize
            }
            127 => {
                let mut ext = [0u8; 8];
                self.read_exact(&mut ext).await?;
                u64::from_be_bytes(ext) as usize
            }
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        self.read_exact(&mut payload).await?;
        Some((head[0], payload))
    }

    async fn read_exact(&mut self, buf: &mut [u8]) -> Option<()> {
        match tokio::time::timeout(FAILSAFE, self.stream.read_exact(buf))
            .await
            .expect("server answers in time")
        {
            Ok(_) => Some(()),
            Err(_) => None,
        }
    }
}

/// A client frame (masked with a fixed key unless `masked` is false).
pub fn encode_client_frame(first_byte: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut out = vec![first_byte];
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 65535 => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}
