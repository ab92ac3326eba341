//! Hostile clients at scale: a slow consumer among a thousand readers, join/leave storms, one-byte writes, and a
//! process out of file descriptors. Each test checks that only the offender is affected and that herald recovers.

mod support;

use std::time::Duration;

use serde_json::json;
use support::cluster::HeraldProcess;
use support::{Client, PushApi, RawClient, TestServer, flags};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A client that never reads fills its socket and then its outbox with a heavy room's traffic and is evicted
/// (4000), while a thousand clients of another room, pushed to all along, get every item in order, and the heavy
/// room's other member gets everything too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_evicted_while_a_thousand_others_get_everything() {
    let server = TestServer::start(flags(&[
        "--merge-window",
        "0",
        "--outbox-frames",
        "16",
        "--write-timeout",
        "1s",
    ]))
    .await;
    const READERS: usize = 1000;
    let mut crowd = Vec::new();
    for _ in 0..READERS {
        crowd.push(server.member("crowd").await);
    }
    let mut heavy_reader = server.member("heavy").await;
    let _slow = support::never_reading_member(server.ws, "heavy").await;

    // Readers read all along, until the last item (-1).
    let crowd: Vec<_> = crowd
        .into_iter()
        .map(|mut reader| {
            tokio::spawn(async move {
                let mut items = Vec::new();
                loop {
                    // Pushes that wait together go out in one frame: read every item of it.
                    let data = reader.next_push().await;
                    for item in data["items"].as_array().unwrap() {
                        let n = item.as_i64().unwrap();
                        if n < 0 {
                            return items;
                        }
                        items.push(n);
                    }
                }
            })
        })
        .collect();
    let heavy = tokio::spawn(async move {
        let mut count = 0;
        loop {
            for item in heavy_reader.next_push().await["items"].as_array().unwrap() {
                if item["n"].as_i64().unwrap() < 0 {
                    return count;
                }
                count += 1;
            }
        }
    });

    // 8 MB for the heavy room: more than the slow one's socket (at most 4 MB here) and outbox (16 frames) hold.
    // Its connection is then closed as a slow consumer once its close frame has had write_timeout to get out.
    let pad = "x".repeat(100_000);
    let slow_closed = r#"herald_closes_total{reason="slow_consumer"}"#;
    let (mut light, mut heavy_pushes) = (0i64, 0);
    let deadline = tokio::time::Instant::now() + support::FAILSAFE;
    while server.metric_or_zero(slow_closed).await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow consumer was never evicted"
        );
        if heavy_pushes < 80 {
            server
                .push_room("heavy", &format!(r#"[{{"n":{heavy_pushes},"pad":"{pad}"}}]"#))
                .await;
            heavy_pushes += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.push_room("crowd", &format!("[{light}]")).await;
        light += 1;
    }
    server.push_room("crowd", "[-1]").await;
    server.push_room("heavy", r#"[{"n":-1}]"#).await;
    for reader in crowd {
        assert_eq!(
            reader.await.unwrap(),
            (0..light).collect::<Vec<_>>(),
            "every item, in order"
        );
    }
    assert_eq!(heavy.await.unwrap(), heavy_pushes);
    assert!(
        server
            .metric(r#"herald_dropped_frames_total{reason="slow_consumer"}"#)
            .await
            >= 1.0
    );
    assert_eq!(server.metric(slow_closed).await, 1.0, "only the slow one");
    server.stop().await;
}

#[tokio::test]
async fn ten_thousand_joins_and_leaves_in_a_tight_loop_leave_nothing_behind() {
    // What the hub does with the storm is the point here, not the rate limit (tested below): off.
    let server = TestServer::start(flags(&["--merge-window", "0", "--client-message-rate", "0"])).await;
    let mut storm = server.client().await;
    // Pipelined without waiting (no ids: go-push clients expect no answer), as fast as the socket takes them.
    for n in 0..10_000 {
        let room = format!("room-{}", n % 100);
        storm
            .send_text(&format!(r#"{{"type":"JOIN","data":{{"room":"{room}"}}}}"#))
            .await;
        storm
            .send_text(&format!(r#"{{"type":"LEAVE","data":{{"room":"{room}"}}}}"#))
            .await;
    }
    storm.join("last").await;
    let stats = server.hub_stats().await;
    assert_eq!((stats.rooms, stats.memberships), (1, 1), "{stats:?}");
    server.push_room("last", "[1]").await;
    assert_eq!(storm.next_push().await["items"], json!([1]));
    server.stop().await;
}

#[tokio::test]
async fn a_client_writing_one_byte_at_a_time_is_understood() {
    let server = TestServer::with_window("0").await;
    let stream = TcpStream::connect(server.ws).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let mut stream = stream;
    let request = format!(
        "GET /connect HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.ws
    );
    let join = support::encode_client_frame(0x81, br#"{"type":"JOIN","id":7,"data":{"room":"drip"}}"#, true);
    // The handshake, then a JOIN right behind it, each byte its own TCP segment.
    for byte in request.as_bytes().iter().chain(&join) {
        stream.write_all(&[*byte]).await.unwrap();
        stream.flush().await.unwrap();
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let mut client = RawClient::after_handshake(stream).await;
    let (_, ack) = client.read_frame().await.unwrap();
    assert_eq!(ack, br#"{"type":"ACK","id":7}"#);
    server.push_room("drip", "[1]").await;
    let (opcode, push) = client.read_frame().await.unwrap();
    assert_eq!(opcode, 0x1);
    let push: serde_json::Value = serde_json::from_slice(&push).unwrap();
    assert_eq!(push["data"]["items"], json!([1]));
    server.stop().await;
}

/// Out of file descriptors (the soft limit lowered to 48 for this process), `accept` fails with EMFILE: herald
/// counts it, backs off, keeps the connections it has, and accepts again once descriptors are free.
#[tokio::test]
async fn running_out_of_file_descriptors_backs_off_and_recovers() {
    let mut herald = HeraldProcess::start_with_fd_limit(
        48,
        &[
            "serve",
            "--ws-addr",
            "127.0.0.1:0",
            "--api-addr",
            "127.0.0.1:0",
            "--handshake-timeout",
            "30s",
        ],
    )
    .await;
    let (ws, api) = (herald.addr("ws"), PushApi(herald.addr("api")));
    let mut member = Client::member(ws, "r").await;

    // Far more connections than descriptors: the kernel queues them; herald takes what it can.
    let mut flood = Vec::new();
    for _ in 0..100 {
        flood.push(TcpStream::connect(ws).await.unwrap());
    }
    // The accept loop hits EMFILE; the API listener cannot accept either until descriptors are freed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(flood);
    api.wait_metric("herald_accept_errors_total", 1.0).await;
    assert!(herald.child.try_wait().unwrap().is_none(), "herald is still running");

    // The member it had was never disturbed, and new connections work again.
    api.push_room("r", "[1]").await;
    assert_eq!(member.next_push().await["items"], json!([1]));
    let mut newcomer = Client::member(ws, "r").await;
    api.push_room("r", "[2]").await;
    assert_eq!(newcomer.next_push().await["items"], json!([2]));
    assert_eq!(member.next_push().await["items"], json!([2]));
}

/// Under churn (clients joining, reading a little and leaving, hundreds of times, while pushes flow), every
/// connection that stayed for the whole run receives every item exactly once, in order; every frame handed to a
/// connection was either written whole or counted as dropped with its reason (the counts add up exactly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_churn_the_connections_that_stay_get_every_item_once_in_order() {
    let server = TestServer::with_window("10ms").await;
    const STAYERS: u32 = 20;
    let mut stayers = Vec::new();
    for _ in 0..STAYERS {
        stayers.push(server.member("seq").await);
    }
    let ws = server.ws;
    let stop_churn = tokio_util::sync::CancellationToken::new();
    let churners: Vec<_> = (0..8)
        .map(|_| {
            let stop = stop_churn.clone();
            tokio::spawn(async move {
                let mut cycles = 0u32;
                while !stop.is_cancelled() {
                    let mut client = Client::member(ws, "seq").await;
                    // Sometimes read what arrives, sometimes leave with frames on their way.
                    if cycles % 2 == 0 {
                        let _ = tokio::time::timeout(Duration::from_millis(5), client.next_json()).await;
                    }
                    drop(client);
                    cycles += 1;
                }
                cycles
            })
        })
        .collect();

    const PUSHES: i64 = 300;
    let readers: Vec<_> = stayers
        .into_iter()
        .map(|mut stayer| {
            tokio::spawn(async move {
                let mut items = Vec::new();
                while items.len() < PUSHES as usize {
                    let data = stayer.next_push().await;
                    items.extend(data["items"].as_array().unwrap().iter().map(|i| i.as_i64().unwrap()));
                }
                items
            })
        })
        .collect();
    for n in 0..PUSHES {
        server.push_room("seq", &format!("[{n}]")).await;
        if n % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    for reader in readers {
        assert_eq!(
            reader.await.unwrap(),
            (0..PUSHES).collect::<Vec<_>>(),
            "exactly once, in order"
        );
    }
    stop_churn.cancel();
    let mut cycles = 0;
    for churner in churners {
        cycles += churner.await.unwrap();
    }
    assert!(cycles >= 8, "the churn ran ({cycles} connect/leave cycles)");
    // No stayer was evicted; whatever leaving connections did not get was counted, never silently lost.
    assert_eq!(
        server
            .metric_or_zero(r#"herald_closes_total{reason="slow_consumer"}"#)
            .await,
        0.0
    );
    // Every frame handed to a connection was written or counted as dropped: once all have ended, the pushes'
    // deliveries and the replies (one ACK per JOIN: the stayers' and each churn cycle's) add up exactly.
    // (The stayers ended with their reader tasks; the churners have stopped.)
    let deadline = tokio::time::Instant::now() + support::FAILSAFE;
    while server.hub_stats().await.connections > 0 {
        assert!(tokio::time::Instant::now() < deadline, "connections never all ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metric = |name: &'static str| server.metric_or_zero(name);
    let deliveries = metric("herald_deliveries_total").await;
    let sent = metric("herald_sent_frames_total").await;
    let dropped = metric(r#"herald_dropped_frames_total{reason="closing"}"#).await
        + metric(r#"herald_dropped_frames_total{reason="slow_consumer"}"#).await;
    let replies = (STAYERS + cycles) as f64;
    assert_eq!(
        deliveries + replies,
        sent + dropped,
        "{cycles} churn cycles: {deliveries} deliveries and {replies} replies, {sent} sent and {dropped} dropped"
    );
    server.stop().await;
}

/// A connection that sends faster than `client_message_rate` (bursts of two seconds' worth) is closed with 4005 and
/// counted; one beside it that keeps to the rate is not touched.
#[tokio::test]
async fn a_message_flood_is_closed_with_4005_and_a_neighbour_is_not() {
    let server = TestServer::start(flags(&["--client-message-rate", "20"])).await;
    let mut neighbour = server.client().await;
    let mut flood = RawClient::connect(server.ws).await;
    // 41 pipelined PINGs: the burst holds 40, however fast the server reads them.
    let ping = support::encode_client_frame(0x81, br#"{"type":"PING"}"#, true);
    let mut burst = Vec::new();
    for _ in 0..41 {
        burst.extend_from_slice(&ping);
    }
    flood.stream.write_all(&burst).await.unwrap();
    assert_eq!(flood.close_code().await, Some(4005));
    server
        .wait_metric(r#"herald_closes_total{reason="message_rate"}"#, 1.0)
        .await;
    neighbour.send_text(r#"{"type":"PING"}"#).await;
    assert_eq!(neighbour.next_json().await["type"], "PONG");
    assert_eq!(
        server.metric(r#"herald_closes_total{reason="message_rate"}"#).await,
        1.0
    );
    server.stop().await;
}

/// A message whose `id` is longer than 128 bytes is refused with 1008 (every reply would echo it).
#[tokio::test]
async fn an_id_over_128_bytes_closes_with_1008() {
    let server = TestServer::start(flags(&[])).await;
    let mut client = server.client().await;
    let fits = format!(r#"{{"type":"PING","id":"{}"}}"#, "x".repeat(126));
    client.send_text(&fits).await;
    assert_eq!(client.next_json().await["type"], "PONG");
    let long = format!(r#"{{"type":"PING","id":"{}"}}"#, "x".repeat(127));
    client.send_text(&long).await;
    assert_eq!(client.closed().await.0, 1008);
    assert_eq!(
        server.metric(r#"herald_bad_input_total{reason="id_too_long"}"#).await,
        1.0
    );
    server.stop().await;
}

/// At `max_rooms`, a JOIN of a new room is refused (`too_many_rooms_total`) while joining a room that exists is
/// still taken; a room that empties makes space again.
#[tokio::test]
async fn max_rooms_caps_the_rooms_in_all() {
    let server = TestServer::start(flags(&["--max-rooms", "2"])).await;
    let mut first = server.client().await;
    first.join("a").await;
    first.join("b").await;
    let refused = first.request("JOIN", "c").await;
    assert_eq!(refused["data"]["code"], "too_many_rooms_total", "{refused}");
    let mut second = server.client().await;
    second.join("a").await;
    assert_eq!(server.hub_stats().await.rooms, 2);
    assert_eq!(first.request("LEAVE", "b").await["type"], "ACK");
    second.join("c").await;
    assert_eq!(
        server
            .metric(r#"herald_bad_input_total{reason="too_many_rooms_total"}"#)
            .await,
        1.0
    );
    server.stop().await;
}

/// A client that sends requests and never reads their replies is not read further once 64 KiB of replies wait
/// for it: its own writes then block (the kernel's buffers push back), herald holds no more for it, and it is
/// closed as a slow consumer when its writes have made no progress for `write_timeout`. A neighbour is served
/// all along. Limits that would otherwise close it first (rate, outbox size) are lifted here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_replies_is_not_read_further() {
    let server = TestServer::start(flags(&[
        "--client-message-rate",
        "0",
        "--outbox-frames",
        "100000000",
        "--outbox-bytes",
        "4000000000",
        "--write-timeout",
        "3s",
    ]))
    .await;
    let mut neighbour = server.client().await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut attacker = RawClient::handshake(socket.connect(server.ws).await.unwrap(), server.ws).await;
    let ping = support::encode_client_frame(
        0x81,
        format!(r#"{{"type":"PING","id":"{}"}}"#, "x".repeat(120)).as_bytes(),
        true,
    );
    let chunk = ping.repeat(64);
    // Were it read on, herald would take these as fast as it can parse them: far past this bound within the
    // deadline. Paused, it takes what its socket buffer holds and then nothing.
    const BOUND: usize = 256 << 20;
    let paused = "herald_read_pauses_total";
    let (mut written, deadline) = (0usize, tokio::time::Instant::now() + support::FAILSAFE);
    loop {
        assert!(
            written < BOUND,
            "herald read {written} bytes of PINGs whose PONGs were never read"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the attacker's writes never blocked"
        );
        match tokio::time::timeout(Duration::from_secs(1), attacker.stream.write_all(&chunk)).await {
            Ok(Ok(())) => written += chunk.len(),
            Ok(Err(e)) => panic!("the attacker was cut off before it blocked: {e}"),
            // Blocked for a second: herald stopped reading, unless the machine is merely slow.
            Err(_) if server.metric(paused).await >= 1.0 => break,
            Err(_) => {}
        }
    }
    neighbour.send_text(r#"{"type":"PING"}"#).await;
    assert_eq!(neighbour.next_json().await["type"], "PONG");
    server
        .wait_metric(r#"herald_closes_total{reason="slow_consumer"}"#, 1.0)
        .await;
    assert_eq!(server.metric(paused).await, 1.0);
    eprintln!("the attacker wrote {written} bytes before it blocked");
    server.stop().await;
}

/// `outbox_bytes` closes a connection that falls that many bytes behind with 4000, long before `outbox_frames`
/// would; the close frame follows what its socket already holds, so a client that reads at last finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_bytes_closes_a_connection_that_falls_behind_with_4000() {
    let server = TestServer::start(flags(&[
        "--merge-window",
        "0",
        "--outbox-frames",
        "100000",
        "--outbox-bytes",
        "300000",
        "--write-timeout",
        "20s",
    ]))
    .await;
    let mut slow = support::never_reading_member(server.ws, "big").await;
    let pad = "z".repeat(100_000);
    let dropped = r#"herald_dropped_frames_total{reason="slow_consumer"}"#;
    let (mut pushes, deadline) = (0, tokio::time::Instant::now() + support::FAILSAFE);
    while server.metric_or_zero(dropped).await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never closed after {pushes} pushes"
        );
        // 100 pushes are 10 MB: more than the socket buffers and the outbox's 300 KB, never 100,000 frames.
        if pushes < 100 {
            server
                .push_room("big", &format!(r#"[{{"n":{pushes},"pad":"{pad}"}}]"#))
                .await;
            pushes += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(slow.close_code().await, Some(4000));
    server
        .wait_metric(r#"herald_closes_total{reason="slow_consumer"}"#, 1.0)
        .await;
    server.stop().await;
}

/// Idle TCP connections that never send a request hold a handshake place (`max_handshakes`), not a connection
/// (`max_connections`): real clients still connect beside them; once every handshake place is held a new
/// connection is answered 503 at once; at `handshake_timeout` the idle ones are dropped and the places come back.
#[tokio::test]
async fn idle_half_open_connections_do_not_take_the_places_of_real_clients() {
    let server = TestServer::start(flags(&[
        "--max-connections",
        "2",
        "--max-handshakes",
        "3",
        "--handshake-timeout",
        "2s",
    ]))
    .await;
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(TcpStream::connect(server.ws).await.unwrap());
    }
    // Two idle sockets and max_connections 2: both real clients get in.
    let mut first = server.client().await;
    let _second = server.client().await;
    first.send_text(r#"{"type":"PING"}"#).await;
    assert_eq!(first.next_json().await["type"], "PONG");
    // A third client finds the connections taken: 503 after its request was read.
    let refused = support::refused_handshake(server.ws, "/connect", &[]).await;
    assert_eq!(refused.status, 503);
    assert_eq!(
        server.metric(r#"herald_handshakes_total{reason="over_limit"}"#).await,
        1.0
    );
    // A third idle socket takes the last handshake place; the next connection is answered before it says a word.
    // (Connections are accepted in the order they were made, so the idle one is taken first.)
    idle.push(TcpStream::connect(server.ws).await.unwrap());
    let mut busy = TcpStream::connect(server.ws).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        support::FAILSAFE,
        tokio::io::AsyncReadExt::read_to_end(&mut busy, &mut answer),
    )
    .await
    .expect("answered")
    .unwrap();
    assert_eq!(support::parse_response(&answer).status, 503);
    assert_eq!(server.metric(r#"herald_handshakes_total{reason="busy"}"#).await, 1.0);
    // At the handshake timeout the idle ones are dropped, and the places are free again.
    server
        .wait_metric(r#"herald_handshakes_total{reason="timeout"}"#, 3.0)
        .await;
    drop(first);
    server
        .wait_metric(r#"herald_closes_total{reason="peer_gone"}"#, 1.0)
        .await;
    let _again = server.client().await;
    server.stop().await;
}

/// A request head over 8 KiB, or with more than 32 headers, is answered 431 and counted as rejected.
#[tokio::test]
async fn an_oversized_request_head_gets_431() {
    let server = TestServer::start(flags(&[])).await;
    let long = "a".repeat(9000);
    let too_long = support::refused_handshake(server.ws, "/connect", &[("X-Long", &long)]).await;
    assert_eq!(too_long.status, 431);
    let names: Vec<String> = (0..40).map(|i| format!("X-H{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    let too_many = support::refused_handshake(server.ws, "/connect", &many).await;
    assert_eq!(too_many.status, 431);
    assert_eq!(
        server.metric(r#"herald_handshakes_total{reason="rejected"}"#).await,
        2.0
    );
    server.stop().await;
}

/// A client that floods on after herald closed it (4005) is read only a little further (64 KiB, for its close
/// frame), not drained at line rate until the close linger ends: its writes soon block and the connection ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_after_the_close_is_not_drained() {
    let server = TestServer::start(flags(&["--client-message-rate", "20"])).await;
    let mut flood = RawClient::connect(server.ws).await;
    let burst = support::encode_client_frame(0x81, br#"{"type":"PING"}"#, true).repeat(1000);
    let (mut written, deadline) = (0usize, tokio::time::Instant::now() + support::FAILSAFE);
    // Drained, the flood would go at loopback speed (gigabytes a second) for the linger's second.
    const BOUND: usize = 256 << 20;
    loop {
        assert!(written < BOUND, "herald read {written} bytes of a client it had closed");
        assert!(tokio::time::Instant::now() < deadline, "the flood never stopped");
        match tokio::time::timeout(Duration::from_secs(2), flood.stream.write_all(&burst)).await {
            Ok(Ok(())) => written += burst.len(),
            // Cut off (reset) or blocked: herald no longer reads it.
            Ok(Err(_)) | Err(_) => break,
        }
    }
    server
        .wait_metric(r#"herald_closes_total{reason="message_rate"}"#, 1.0)
        .await;
    eprintln!("the flood got {written} bytes in before herald stopped reading");
    server.stop().await;
}
