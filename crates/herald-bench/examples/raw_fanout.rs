//! The raw fan-out floor: what this machine costs to write each frame to every socket, with nothing else.
//!
//! A calibration instrument for `herald bench fanout`, not a server: it completes the WebSocket handshake, never
//! reads a connection again (JOINs and PINGs stay unanswered in the kernel), puts every connection in the one room,
//! takes pushes on a bare HTTP/1.1 push API, and writes what was pushed to every socket from a single thread, in
//! frames of at most MAX_ITEMS items encoded as herald encodes them: whole frames as soon as MAX_ITEMS items wait
//! (as herald's merging sends a full batch early), the rest once per window. What herald spends beyond this on the
//! same scenario, measured in the same minute with the same client, is herald's own cost.
//!
//! With `--answer-pings` it also reads every connection and answers each PING with a PONG, the one thing any
//! server of this protocol must do beyond writing frames: where the clients' heartbeats are a large share of the
//! work (10,000 connections that get one frame a second), this variant tells the heartbeats' cost from herald's.
//!
//! ```text
//! cargo build --release -p herald --example raw_fanout -p herald-bench
//! target/release/examples/raw_fanout 127.0.0.1:17777 127.0.0.1:17799 1000 100 &   # not `cargo run`: $! must be it
//! target/release/herald bench fanout --ws 127.0.0.1:17777 --api 127.0.0.1:17799 --server-pid $! --conns 10000 --rate 10 --secs 30
//! ```

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_gateway::handshake::{accept_key, switching_protocols};
use herald_protocol::bus::Target;
use herald_protocol::push::push_frame;
use herald_protocol::ws::{OpCode, decode_header, unmask};

#[derive(Default)]
struct Shared {
    conns: Mutex<Vec<Conn>>,
    /// The connection count, apart from the list: the push API must not wait while a flush holds the list.
    connected: AtomicUsize,
    pending: Mutex<Vec<Bytes>>,
    /// Signalled when `pending` holds at least a whole frame's items.
    frame_full: Condvar,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (ws, api, window_ms, max_items, answer_pings) = match args.as_slice() {
        [ws, api, window_ms, max_items] => (ws, api, window_ms, max_items, false),
        [ws, api, window_ms, max_items, flag] if flag == "--answer-pings" => (ws, api, window_ms, max_items, true),
        _ => anyhow::bail!("usage: raw_fanout WS_ADDR API_ADDR WINDOW_MS MAX_ITEMS [--answer-pings]"),
    };
    let window = Duration::from_millis(window_ms.parse()?);
    let max_items: usize = max_items.parse()?;
    anyhow::ensure!(max_items > 0, "MAX_ITEMS must be at least 1");
    let shared = Arc::new(Shared::default());
    let ws = TcpListener::bind(ws)?;
    let api = TcpListener::bind(api)?;
    let accepting = Arc::clone(&shared);
    let pongs = answer_pings.then(PingAnswerer::start).transpose()?;
    std::thread::spawn(move || {
        for stream in ws.incoming().flatten() {
            if let Ok(stream) = upgrade(stream) {
                let conn = match &pongs {
                    Some(pongs) => match pongs.answer(stream) {
                        Ok(shared) => Conn::Answered(shared),
                        Err(_) => continue,
                    },
                    None => Conn::Plain(stream),
                };
                accepting.conns.lock().unwrap().push(conn);
                accepting.connected.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let serving = Arc::clone(&shared);
    std::thread::spawn(move || {
        for stream in api.incoming().flatten() {
            let serving = Arc::clone(&serving);
            std::thread::spawn(move || {
                let _ = serve_api(stream, &serving, max_items);
            });
        }
    });
    // Frames a socket did not take whole (not expected on loopback at these rates; reported, not retried).
    let mut short_writes = 0u64;
    let mut next_tick = Instant::now() + window;
    loop {
        let items: Vec<Bytes> = {
            let mut pending = shared.pending.lock().unwrap();
            let ticked = loop {
                let now = Instant::now();
                if now >= next_tick {
                    next_tick += window;
                    break true;
                }
                if pending.len() >= max_items {
                    break false;
                }
                pending = shared.frame_full.wait_timeout(pending, next_tick - now).unwrap().0;
            };
            // Early, only whole frames go; the window's tick takes the rest.
            let take = if ticked {
                pending.len()
            } else {
                pending.len() - pending.len() % max_items
            };
            pending.drain(..take).collect()
        };
        let room = Target::Room("bench".into());
        let frames: Vec<Bytes> = items.chunks(max_items).map(|c| push_frame(&room, c)).collect();
        let conns = shared.conns.lock().unwrap();
        let before = short_writes;
        for frame in &frames {
            for conn in conns.iter() {
                if !matches!(conn.write(frame), Ok(n) if n == frame.len()) {
                    short_writes += 1;
                }
            }
        }
        drop(conns);
        if short_writes > before {
            eprintln!("raw_fanout: {short_writes} short writes so far");
        }
    }
}

/// Reads the handshake request and answers 101; the socket is then non-blocking and never read again.
fn upgrade(mut stream: TcpStream) -> io::Result<TcpStream> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 || head.len() > 8192 {
            return Err(io::ErrorKind::InvalidData.into());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let key = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-key"))
        })
        .map(|(_, v)| v.trim().to_owned())
        .ok_or(io::ErrorKind::InvalidData)?;
    stream.write_all(switching_protocols(&accept_key(&key)).as_bytes())?;
    stream.set_nodelay(true)?;
    stream.set_nonblocking(true)?;
    Ok(stream)
}

/// A connection as the fan-out loop holds it.
enum Conn {
    /// Written to, never read.
    Plain(TcpStream),
    /// Also read by the [`PingAnswerer`]'s loop (one socket, no second descriptor: 10,000 connections use half
    /// the process's descriptors already).
    Answered(Arc<tokio::net::TcpStream>),
}

impl Conn {
    fn write(&self, frame: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(stream) => (&mut &*stream).write(frame),
            Self::Answered(stream) => socket2::SockRef::from(&**stream).send(frame),
        }
    }
}

/// With `--answer-pings`, the least a server does for the clients' heartbeats: one single-threaded event loop
/// reads every connection and answers each PING with a PONG (a static frame, one `send`), nothing else is read
/// for. herald must answer them too, so this variant of the floor tells how much of herald's cost beyond the
/// bare floor is the heartbeats' and how much is herald's own.
struct PingAnswerer {
    runtime: tokio::runtime::Handle,
}

impl PingAnswerer {
    fn start() -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
        let handle = runtime.handle().clone();
        std::thread::spawn(move || runtime.block_on(std::future::pending::<()>()));
        Ok(Self { runtime: handle })
    }

    /// Reads `stream` until the peer goes; returns the socket for the fan-out loop to write to.
    fn answer(&self, stream: TcpStream) -> io::Result<Arc<tokio::net::TcpStream>> {
        let _guard = self.runtime.enter();
        let stream = Arc::new(tokio::net::TcpStream::from_std(stream)?);
        let reader = Arc::clone(&stream);
        self.runtime.spawn(async move {
            let pong = herald_protocol::ws::frame(OpCode::Text, br#"{"type":"PONG","data":{}}"#);
            let mut buf = vec![0u8; 512];
            let mut filled = 0;
            loop {
                // A frame that does not fit is not one of the bench's clients' (they send PINGs and JOINs).
                if filled == buf.len() || reader.readable().await.is_err() {
                    return;
                }
                let n = match reader.try_read(&mut buf[filled..]) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(_) => return,
                };
                filled += n;
                // Whole frames from the start of the buffer: a PING gets its PONG, anything else is skipped.
                let mut used = 0;
                while let Ok(Some(header)) = decode_header(&buf[used..filled], buf.len()) {
                    let end = used + header.header_len + header.payload_len;
                    if end > filled {
                        break;
                    }
                    let payload = &mut buf[used + header.header_len..end];
                    unmask(payload, header.mask);
                    if payload.starts_with(br#"{"type":"PING""#) {
                        // Between two of the fan-out thread's frames: each goes in one `send`, whole, or is
                        // reported as a short write (after which this connection's stream is broken anyway).
                        let _ = reader.try_write(&pong);
                    }
                    used = end;
                }
                buf.copy_within(used..filled, 0);
                filled -= used;
            }
        });
        Ok(stream)
    }
}

/// A keep-alive HTTP/1.1 connection: `POST /push/...` with a JSON body takes its items; `GET /stats` tells the
/// bench how many connections are in.
fn serve_api(stream: TcpStream, shared: &Shared, max_items: usize) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        items: Vec<&'a serde_json::value::RawValue>,
    }
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            if line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse()?;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let conns = shared.connected.load(Ordering::Relaxed);
        let answer = if request_line.starts_with("GET /stats") {
            // The document `herald serve` answers, so the bench reads the floor as it reads herald.
            let stats = herald_protocol::stats::HubStats {
                connections: conns as u64,
                memberships: conns as u64,
                ..Default::default()
            };
            serde_json::to_string(&stats)?
        } else {
            let items = serde_json::from_slice::<Body>(&body)?.items;
            let count = items.len();
            let mut pending = shared.pending.lock().unwrap();
            pending.extend(items.into_iter().map(|i| Bytes::copy_from_slice(i.get().as_bytes())));
            if pending.len() >= max_items {
                shared.frame_full.notify_one();
            }
            drop(pending);
            format!(r#"{{"items":{count},"recipients":{conns}}}"#)
        };
        // One write per answer: `write!` on the bare socket would send each piece of the format in its own
        // segment, and Nagle would hold the later ones for the client's delayed ACK (40 ms per push).
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        writer.write_all(response.as_bytes())?;
    }
}
