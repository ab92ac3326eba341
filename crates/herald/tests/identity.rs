//! Identity: connection tokens (signed by PyJWT, an independent implementation), room permissions, pushes to a
//! user, presence and the server's disconnect, in serve, the gRPC cluster and on NATS.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::cluster::{NatsServer, TestGateway, TestLogic};
use support::jwt::{claims, forge_with_file, hs256, make_keys, sign, sign_with_header, unix_in};
use support::{Client, PushApi, TestServer, flags, http_with, refused_handshake};

const OLD: &str = "old-secret-0123456789";
const NEW: &str = "new-secret-9876543210";

fn auth_flags(extra: &[&str]) -> Vec<String> {
    let mut list = vec![
        "--auth-hmac-secret",
        OLD,
        "--auth-hmac-secret",
        NEW,
        "--merge-window",
        "0",
    ];
    list.extend_from_slice(extra);
    flags(&list)
}

/// The 401's reason for a handshake with `token` (or none).
async fn refusal_reason(server: &TestServer, token: Option<&str>) -> String {
    let path = match token {
        Some(token) => format!(
            "/connect?token={}",
            form_urlencoded::byte_serialize(token.as_bytes()).collect::<String>()
        ),
        None => "/connect".to_owned(),
    };
    let response = refused_handshake(server.ws, &path, &[]).await;
    assert_eq!(response.status, 401, "{}", response.body);
    response.json()["reason"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn every_bad_token_is_refused_at_the_handshake_with_its_reason() {
    let server = TestServer::start(auth_flags(&[])).await;
    let user = |extra| claims("alice", 60, extra);
    assert_eq!(refusal_reason(&server, None).await, "missing");
    assert_eq!(refusal_reason(&server, Some("not-a-jwt")).await, "malformed");
    let forged = hs256("some-other-secret-value", &user(json!({})));
    assert_eq!(refusal_reason(&server, Some(&forged)).await, "bad_signature");
    let expired = hs256(OLD, &claims("alice", -10, json!({})));
    assert_eq!(refusal_reason(&server, Some(&expired)).await, "expired");
    let early = hs256(OLD, &user(json!({ "nbf": unix_in(600) })));
    assert_eq!(refusal_reason(&server, Some(&early)).await, "not_yet_valid");
    let no_exp = hs256(OLD, &json!({ "sub": "alice" }));
    assert_eq!(refusal_reason(&server, Some(&no_exp)).await, "bad_claims");
    let no_sub = hs256(OLD, &json!({ "exp": unix_in(60) }));
    assert_eq!(refusal_reason(&server, Some(&no_sub)).await, "bad_claims");
    let long_sub = hs256(OLD, &claims(&"u".repeat(257), 60, json!({})));
    assert_eq!(refusal_reason(&server, Some(&long_sub)).await, "bad_claims");
    let big_info = hs256(OLD, &user(json!({ "info": "x".repeat(1100) })));
    assert_eq!(refusal_reason(&server, Some(&big_info)).await, "bad_claims");
    // A room token opens no connection.
    let room_token = hs256(OLD, &user(json!({ "room": "r" })));
    assert_eq!(refusal_reason(&server, Some(&room_token)).await, "bad_claims");
    // alg "none": header {"alg":"none"}, no signature.
    let none = format!(
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
        base64_url(&user(json!({})).to_string())
    );
    assert_eq!(refusal_reason(&server, Some(&none)).await, "bad_algorithm");
    assert_eq!(
        server
            .metric(r#"herald_auth_failures_total{reason="bad_algorithm"}"#)
            .await,
        1.0
    );
    assert_eq!(
        server.metric(r#"herald_handshakes_total{reason="unauthorized"}"#).await,
        11.0
    );

    // Rotation: a token signed with either secret passes; by query or by header.
    let mut by_old = Client::with_token(server.ws, &hs256(OLD, &user(json!({})))).await;
    by_old.send_text(r#"{"type":"PING"}"#).await;
    assert_eq!(by_old.next_json().await["type"], "PONG");
    let token = hs256(NEW, &claims("bob", 60, json!({})));
    let mut stream = tokio::net::TcpStream::connect(server.ws).await.unwrap();
    let request = format!(
        "GET /connect HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
        .await
        .unwrap();
    let mut head = [0u8; 12];
    tokio::io::AsyncReadExt::read_exact(&mut stream, &mut head)
        .await
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 101", "a bearer header is taken too");
    server.stop().await;
}

fn base64_url(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test]
async fn public_keys_verify_their_own_algorithm_only() {
    let dir = std::env::temp_dir().join(format!("herald-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    make_keys(&dir);
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let keys = format!("{},{},{}", path("rsa.pem"), path("ec.pem"), path("ed.pem"));
    let server = TestServer::start(flags(&["--auth-public-key", &keys])).await;
    let user = claims("carol", 60, json!({}));
    for (alg, key) in [("RS256", "rsa.key"), ("ES256", "ec.key"), ("EdDSA", "ed.key")] {
        let mut client = Client::with_token(server.ws, &sign(alg, &path(key), &user)).await;
        client.send_text(r#"{"type":"PING"}"#).await;
        assert_eq!(client.next_json().await["type"], "PONG", "{alg}");
    }
    // A kid picks its key: the EC token named as the RSA key's fails.
    let misnamed = sign_with_header("ES256", &path("ec.key"), &user, &json!({"kid": "rsa"}));
    assert_eq!(refusal_reason(&server, Some(&misnamed)).await, "unknown_key");
    let named = sign_with_header("ES256", &path("ec.key"), &user, &json!({"kid": "ec"}));
    Client::with_token(server.ws, &named).await;
    let unknown = sign_with_header("ES256", &path("ec.key"), &user, &json!({"kid": "nope"}));
    assert_eq!(refusal_reason(&server, Some(&unknown)).await, "unknown_key");
    // The classic confusion: an HS256 token whose secret is the public key's PEM text.
    let confused = forge_with_file(&path("rsa.pem"), &user);
    assert_eq!(refusal_reason(&server, Some(&confused)).await, "bad_algorithm");
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn rooms_need_a_claim_a_public_room_or_a_room_token() {
    let server = TestServer::start(auth_flags(&["--public-rooms", "lobby,news.*"])).await;
    let token = hs256(OLD, &claims("dave", 60, json!({ "rooms": ["team-1", "chat.*"] })));
    let mut client = Client::with_token(server.ws, &token).await;
    for room in ["team-1", "chat.42", "lobby", "news.today"] {
        let reply = client.request("JOIN", room).await;
        assert_eq!(reply["type"], "ACK", "{room}: {reply}");
    }
    let reply = client.request("JOIN", "team-2").await;
    assert_eq!(
        (reply["type"].clone(), reply["data"]["code"].clone()),
        (json!("ERROR"), json!("forbidden"))
    );
    // Without an id: ignored, and counted.
    client.send_text(r#"{"type":"JOIN","data":{"room":"secret"}}"#).await;
    server
        .wait_metric(r#"herald_bad_input_total{reason="forbidden"}"#, 2.0)
        .await;

    let room_token = |sub: &str, room: &str| hs256(NEW, &json!({ "sub": sub, "room": room, "exp": unix_in(60) }));
    let ok = client
        .request_data(
            "JOIN",
            json!({ "room": "private", "token": room_token("dave", "private") }),
        )
        .await;
    assert_eq!(ok["type"], "ACK", "{ok}");
    for (sub, room) in [("eve", "vault"), ("dave", "other")] {
        let reply = client
            .request_data("JOIN", json!({ "room": "vault", "token": room_token(sub, room) }))
            .await;
        assert_eq!(reply["data"]["code"], "invalid_token", "{sub} {room}: {reply}");
    }
    // A connection token (it has `rooms`) is no room token, even for a room it names.
    let connection_token = hs256(NEW, &claims("dave", 60, json!({ "room": "vault", "rooms": ["vault"] })));
    let reply = client
        .request_data("JOIN", json!({ "room": "vault", "token": connection_token }))
        .await;
    assert_eq!(reply["data"]["code"], "invalid_token", "{reply}");
    // Pushes reach only the rooms joined.
    server.push_room("private", "[1]").await;
    assert_eq!(client.next_push().await["items"], json!([1]));
    server.stop().await;
}

#[tokio::test]
async fn an_expired_token_closes_with_4003_unless_refreshed() {
    let server = TestServer::start(auth_flags(&[])).await;
    // Tokens of 6 s: time for both connections and the REFRESH before they expire, even on a loaded machine
    // (each token is signed by a Python process).
    let mut lapsing = Client::with_token(server.ws, &hs256(OLD, &claims("erin", 6, json!({})))).await;
    let mut refreshed = Client::with_token(server.ws, &hs256(OLD, &claims("erin", 6, json!({})))).await;
    let wrong_user = refreshed
        .request_data(
            "REFRESH",
            json!({ "token": hs256(OLD, &claims("mallory", 60, json!({}))) }),
        )
        .await;
    assert_eq!(wrong_user["data"]["code"], "invalid_token");
    let reply = refreshed
        .request_data(
            "REFRESH",
            json!({ "token": hs256(NEW, &claims("erin", 60, json!({}))) }),
        )
        .await;
    assert_eq!(reply["type"], "ACK", "{reply}");
    assert_eq!(lapsing.closed().await, (4003, "token expired".to_owned()));
    // The refreshed connection lives on past the first token's exp.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    refreshed.send_text(r#"{"type":"PING"}"#).await;
    assert_eq!(refreshed.next_json().await["type"], "PONG");
    assert_eq!(
        server.metric(r#"herald_closes_total{reason="token_expired"}"#).await,
        1.0
    );
    server.stop().await;
}

#[tokio::test]
async fn origins_user_limits_and_handshake_rates_are_enforced() {
    let server = TestServer::start(auth_flags(&[
        "--allowed-origins",
        "https://app.example.com,https://*.example.org",
        "--max-connections-per-user",
        "1",
    ]))
    .await;
    let token = hs256(OLD, &claims("frank", 60, json!({})));
    let path = format!("/connect?token={token}");
    let response = refused_handshake(server.ws, &path, &[("Origin", "https://evil.example.net")]).await;
    assert_eq!(response.status, 403, "{}", response.body);
    let first = Client::with_token(server.ws, &token).await;
    let response = refused_handshake(server.ws, &path, &[("Origin", "https://a.example.org")]).await;
    assert_eq!(response.status, 429, "{}", response.body);
    assert_eq!(response.json()["error"], "user_limit");
    drop(first);
    server.stop().await;

    let limited = TestServer::start(flags(&["--handshake-rate-per-ip", "2"])).await;
    Client::connect(limited.ws).await;
    Client::connect(limited.ws).await;
    let response = refused_handshake(limited.ws, "/connect", &[]).await;
    assert_eq!(response.status, 429);
    assert!(response.header("retry-after").is_some());
    limited.stop().await;
}

#[tokio::test]
async fn api_keys_guard_every_endpoint_but_healthz() {
    let server = TestServer::start(flags(&["--api-key", "key-one,key-two"])).await;
    let body = br#"{"room":"r","items":[1]}"#;
    let no_key = server.http("POST", "/push/room", Some("application/json"), body).await;
    assert_eq!(no_key.status, 401);
    let bad = http_with(
        server.api,
        "GET",
        "/stats",
        &[("Authorization", "Bearer key-three")],
        None,
        b"",
    )
    .await;
    assert_eq!(bad.status, 401);
    for key in ["Bearer key-one", "Bearer key-two"] {
        let good = http_with(
            server.api,
            "POST",
            "/push/room",
            &[("Authorization", key)],
            Some("application/json"),
            body,
        )
        .await;
        assert_eq!(good.status, 200, "{}", good.body);
    }
    assert_eq!(server.http("GET", "/healthz", None, b"").await.status, 200);
    server.stop().await;
}

/// What every mode must do for users: push to a user on every gateway, presence summed, disconnect.
async fn users_across(api: &PushApi, ws: [std::net::SocketAddr; 2], on_nats: bool) {
    let alice = |info: Value| hs256(OLD, &claims("alice", 300, json!({ "info": info, "rooms": ["r"] })));
    let mut phone = Client::with_token(ws[0], &alice(json!({"device": "phone"}))).await;
    let mut laptop = Client::with_token(ws[1], &alice(json!({"device": "laptop"}))).await;
    let mut bob = Client::with_token(ws[1], &hs256(OLD, &claims("bob", 300, json!({ "rooms": ["r"] })))).await;
    for client in [&mut phone, &mut laptop, &mut bob] {
        client.join("r").await;
    }
    // On NATS the gateways subscribe to the user's subject on their own time: push until both have one.
    let deadline = tokio::time::Instant::now() + support::FAILSAFE;
    let mut n = 0;
    loop {
        let answer = api
            .http(
                "POST",
                "/push/user",
                Some("application/json"),
                json!({"user": "alice", "items": [n]}).to_string().as_bytes(),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        if !on_nats {
            assert_eq!(
                (answer.json()["items"].clone(), answer.json()["recipients"].clone()),
                (json!(1), json!(2))
            );
        }
        let (a, b) = (phone.next_push_within().await, laptop.next_push_within().await);
        if let (Some(a), Some(b)) = (&a, &b) {
            assert_eq!((a["user"].clone(), b["items"].clone()), (json!("alice"), json!([n])));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "alice's connections never both got a push"
        );
        n += 1;
    }
    assert!(bob.next_push_within().await.is_none(), "bob got alice's push");

    let room = api.http("GET", "/rooms/r", None, b"").await.json();
    assert_eq!(
        room,
        json!({"room": "r", "connections": 3, "users": 2, "partial": false})
    );
    let user = api.http("GET", "/users/alice", None, b"").await.json();
    assert_eq!(user["connections"], 2, "{user}");
    let mut devices: Vec<String> = user["info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["device"].to_string())
        .collect();
    devices.sort();
    assert_eq!(devices, ["\"laptop\"", "\"phone\""]);
    let closed = api.post_form("/disconnect/user", "user=alice").await;
    assert_eq!(
        closed.json(),
        json!({"user": "alice", "closed": 2, "partial": false}),
        "{}",
        closed.body
    );
    assert_eq!(phone.closed().await, (4004, "disconnected by the server".to_owned()));
    assert_eq!(laptop.closed().await, (4004, "disconnected by the server".to_owned()));
    bob.send_text(r#"{"type":"PING"}"#).await;
    assert_eq!(bob.next_json().await["type"], "PONG", "bob is still connected");
}

#[tokio::test]
async fn serve_pushes_to_users_and_counts_presence() {
    let server = TestServer::start(auth_flags(&[])).await;
    users_across(&server, [server.ws, server.ws], false).await;
    server.stop().await;
}

/// Two gateways with auth on (and `extra` flags, e.g. a bus).
async fn two_gateways(extra: &[String]) -> [TestGateway; 2] {
    let flags = || [extra.to_vec(), auth_flags(&[])].concat();
    [TestGateway::start(flags()).await, TestGateway::start(flags()).await]
}

/// Two gateways and a logic node over gRPC, every link up.
async fn grpc_cluster() -> ([TestGateway; 2], TestLogic) {
    let gateways = two_gateways(&[]).await;
    let logic = TestLogic::start(&[gateways[0].rpc, gateways[1].rpc], flags(&[])).await;
    logic.wait_all_up().await;
    (gateways, logic)
}

#[tokio::test]
async fn a_grpc_cluster_pushes_to_a_user_on_every_gateway() {
    let (gateways, logic) = grpc_cluster().await;
    users_across(&logic, [gateways[0].ws, gateways[1].ws], false).await;
    logic.stop().await;
    for gateway in gateways {
        gateway.stop().await;
    }
}

#[tokio::test]
async fn on_nats_a_users_pushes_follow_the_gateways_that_hold_it() {
    let nats = NatsServer::start().await;
    let gateways = two_gateways(&nats.bus()).await;
    let logic = TestLogic::start(&[], nats.bus()).await;
    logic.wait_nats("2 live gateways", |s| s.gateways_live == 2).await;
    users_across(&logic, [gateways[0].ws, gateways[1].ws], true).await;
    logic.stop().await;
    for gateway in gateways {
        gateway.stop().await;
    }
}

#[tokio::test]
async fn presence_says_partial_when_a_gateway_is_down_and_503_when_all_are() {
    let (gateways, logic) = grpc_cluster().await;
    let token = hs256(OLD, &claims("gina", 300, json!({ "rooms": ["r"] })));
    let mut client = Client::with_token(gateways[0].ws, &token).await;
    client.join("r").await;
    let [first, second] = gateways;
    second.stop().await;
    logic.wait_cluster("one gateway up", |s| s.gateways_up == 1).await;
    let room = logic.http("GET", "/rooms/r", None, b"").await.json();
    assert_eq!(
        room,
        json!({"room": "r", "connections": 1, "users": 1, "partial": true})
    );
    first.stop().await;
    logic.wait_cluster("no gateway up", |s| s.gateways_up == 0).await;
    let none = logic.http("GET", "/users/gina", None, b"").await;
    assert_eq!(none.status, 503, "{}", none.body);
    assert!(none.header("retry-after").is_some());
    logic.stop().await;
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_set() {
    let server = TestServer::start(auth_flags(&["--auth-issuer", "app", "--auth-audience", "herald"])).await;
    let with = |extra: Value| hs256(OLD, &claims("hal", 60, extra));
    let wrong_issuer = with(json!({ "iss": "other", "aud": "herald" }));
    assert_eq!(refusal_reason(&server, Some(&wrong_issuer)).await, "bad_issuer");
    let wrong_audience = with(json!({ "iss": "app", "aud": ["web", "mobile"] }));
    assert_eq!(refusal_reason(&server, Some(&wrong_audience)).await, "bad_audience");
    // A configured issuer or audience is required, not only checked when present.
    let no_issuer = with(json!({ "aud": "herald" }));
    assert_eq!(refusal_reason(&server, Some(&no_issuer)).await, "bad_issuer");
    let no_audience = with(json!({ "iss": "app" }));
    assert_eq!(refusal_reason(&server, Some(&no_audience)).await, "bad_audience");
    let mut client = Client::with_token(server.ws, &with(json!({ "iss": "app", "aud": ["web", "herald"] }))).await;
    client.send_text(r#"{"type":"PING"}"#).await;
    assert_eq!(client.next_json().await["type"], "PONG");
    server.stop().await;
}
