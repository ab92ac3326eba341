//! The raw fan-out floor: what this machine costs to write each frame to every socket, with nothing else.
//!
//! A calibration instrument for `herald-bench fanout`, not a server: it completes the WebSocket handshake, never
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
//! With `--compress` it accepts permessage-deflate offers as herald does and compresses each frame once, with
//! herald's encoder and default settings, for every connection: the floor of the compressed scenarios.
//!
//! With `--processes N` it is N processes sharing the WebSocket port (SO_REUSEPORT, the kernel spreading the
//! connections), as `herald-bench --nats N` runs N gateways: the first takes the pushes and the `/stats` requests
//! and hands each on to the others over HTTP/1.1 (as logic hands pushes to the gateways through nats-server), each
//! writes to its own connections. The others are its children and end when it does.
//!
//! ```text
//! cargo build --release -p herald-bench --bin herald-bench --example raw_fanout
//! target/release/examples/raw_fanout 127.0.0.1:17777 127.0.0.1:17799 1000 100 &   # not `cargo run`: $! must be it
//! target/release/herald-bench fanout --ws 127.0.0.1:17777 --api 127.0.0.1:17799 --server-pid $! --conns 10000 --rate 10 --secs 30
//! ```

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_gateway::handshake::{accept_key, switching_protocols};
use herald_protocol::bus::Target;
use herald_protocol::deflate::Compression;
use herald_protocol::deflate_offer;
use herald_protocol::forms::WireForm;
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

/// The command line: `WS_ADDR API_ADDR WINDOW_MS MAX_ITEMS [--answer-pings] [--compress] [--processes N]`.
struct Args {
    ws: SocketAddr,
    api: SocketAddr,
    window_ms: String,
    max_items: String,
    answer_pings: bool,
    compress: bool,
    processes: usize,
    /// One of the processes another one started (`--child`, not for users): it prints its push-API address and
    /// ends when its parent does.
    child: bool,
}

impl Args {
    fn parse() -> anyhow::Result<Self> {
        const USAGE: &str =
            "usage: raw_fanout WS_ADDR API_ADDR WINDOW_MS MAX_ITEMS [--answer-pings] [--compress] [--processes N]";
        let mut args = std::env::args().skip(1);
        let mut positional = Vec::new();
        let (mut answer_pings, mut compress, mut processes, mut child) = (false, false, 1, false);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--answer-pings" => answer_pings = true,
                "--compress" => compress = true,
                "--child" => child = true,
                "--processes" => processes = args.next().and_then(|n| n.parse().ok()).unwrap_or(0),
                _ => positional.push(arg),
            }
        }
        let [ws, api, window_ms, max_items] =
            <[String; 4]>::try_from(positional).map_err(|_| anyhow::anyhow!(USAGE))?;
        anyhow::ensure!(processes >= 1, "--processes must be at least 1; {USAGE}");
        Ok(Self {
            ws: ws.parse()?,
            api: api.parse()?,
            window_ms,
            max_items,
            answer_pings,
            compress,
            processes,
            child,
        })
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let window = Duration::from_millis(args.window_ms.parse()?);
    let max_items: usize = args.max_items.parse()?;
    anyhow::ensure!(max_items > 0, "MAX_ITEMS must be at least 1");
    let shared = Arc::new(Shared::default());
    let shared_port = args.processes > 1 || args.child;
    let ws = listen(args.ws, shared_port)?;
    let api = TcpListener::bind(args.api)?;
    let others = if args.child {
        println!("{}", api.local_addr()?);
        // The parent holds the other end of stdin: when it ends, so does this process.
        std::thread::spawn(|| {
            let _ = io::copy(&mut io::stdin(), &mut io::sink());
            std::process::exit(0);
        });
        Others::default()
    } else {
        Others::start(&args)?
    };
    let accepting = Arc::clone(&shared);
    let pongs = args.answer_pings.then(PingAnswerer::start).transpose()?;
    let compress = args.compress;
    std::thread::spawn(move || {
        for stream in ws.incoming().flatten() {
            if let Ok(stream) = upgrade(stream, compress) {
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
    let others = Arc::new(others);
    let serving = Arc::clone(&shared);
    std::thread::spawn(move || {
        for stream in api.incoming().flatten() {
            let (serving, others) = (Arc::clone(&serving), Arc::clone(&others));
            std::thread::spawn(move || {
                let _ = serve_api(stream, &serving, &others, max_items);
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
        let form = if compress {
            WireForm::Deflate
        } else {
            WireForm::WebSocket
        };
        let frames: Vec<Bytes> = items
            .chunks(max_items)
            .map(|c| form.encode(&room, c, None, &Compression::default()).frame)
            .collect();
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

/// The WebSocket listener; with `shared_port`, opened with SO_REUSEPORT so that every process can bind it.
fn listen(addr: SocketAddr, shared_port: bool) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(shared_port)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// With `--processes N`, the N - 1 other processes: their push APIs, each over one kept-alive connection.
#[derive(Default)]
struct Others {
    links: Mutex<Vec<HttpLink>>,
    children: Vec<Child>,
}

impl Others {
    fn start(args: &Args) -> anyhow::Result<Self> {
        let mut others = Self::default();
        for _ in 1..args.processes {
            let mut child = Command::new(std::env::current_exe()?)
                .args([
                    &args.ws.to_string(),
                    "127.0.0.1:0",
                    &args.window_ms,
                    &args.max_items,
                    "--child",
                ])
                .args(args.answer_pings.then_some("--answer-pings"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()?;
            let mut line = String::new();
            BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
            let api: SocketAddr = line.trim().parse()?;
            others.links.get_mut().unwrap().push(HttpLink::connect(api)?);
            others.children.push(child);
        }
        Ok(others)
    }

    /// Sends `request` to every other process, then reads their answers (so they work on it at once).
    fn forward(&self, request: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        let mut links = self.links.lock().unwrap();
        for link in links.iter_mut() {
            link.writer.write_all(request)?;
        }
        links
            .iter_mut()
            .map(|link| {
                read_message(&mut link.reader)?
                    .map(|(_, body)| body)
                    .ok_or(io::ErrorKind::UnexpectedEof.into())
            })
            .collect()
    }
}

impl Drop for Others {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
        }
    }
}

/// A kept-alive HTTP/1.1 connection to another process's push API.
struct HttpLink {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl HttpLink {
    fn connect(addr: SocketAddr) -> io::Result<Self> {
        let writer = TcpStream::connect(addr)?;
        writer.set_nodelay(true)?;
        Ok(Self {
            reader: BufReader::new(writer.try_clone()?),
            writer,
        })
    }
}

/// Reads one HTTP/1.1 message (a request or a response) with a `Content-Length` body: its first line and its body;
/// `None` at the end of the stream.
fn read_message(reader: &mut impl BufRead) -> io::Result<Option<(String, Vec<u8>)>> {
    let mut first_line = String::new();
    if reader.read_line(&mut first_line)? == 0 {
        return Ok(None);
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
            length = value.trim().parse().map_err(|_| io::ErrorKind::InvalidData)?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(Some((first_line, body)))
}

/// Reads the handshake request and answers 101 (accepting a permessage-deflate offer with `compress`); the socket is
/// then non-blocking and never read again.
fn upgrade(mut stream: TcpStream, compress: bool) -> io::Result<TcpStream> {
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
    let offers = head.lines().filter_map(|l| {
        l.split_once(':')
            .filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-extensions"))
            .map(|(_, v)| v)
    });
    let deflate = deflate_offer::negotiate(offers).filter(|_| compress);
    stream.write_all(switching_protocols(&accept_key(&key), None, deflate.as_ref()).as_bytes())?;
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
                while let Ok(Some(header)) = decode_header(&buf[used..filled], buf.len(), true) {
                    let end = used + header.header_len + header.payload_len;
                    if end > filled {
                        break;
                    }
                    let payload = &mut buf[used + header.header_len..end];
                    unmask(payload, header.mask);
                    // A client that negotiated compression (`--compress`) sends its PINGs compressed: inflated, as
                    // herald must, before they are told from JOINs.
                    let inflated = header
                        .compressed
                        .then(|| herald_protocol::deflate::inflate(payload, 512).unwrap_or_default());
                    if inflated.as_deref().unwrap_or(payload).starts_with(br#"{"type":"PING""#) {
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
/// bench how many connections are in. Both are handed on to the other processes, whose figures are added.
fn serve_api(stream: TcpStream, shared: &Shared, others: &Others, max_items: usize) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        items: Vec<&'a serde_json::value::RawValue>,
    }
    #[derive(serde::Deserialize)]
    struct Taken {
        recipients: usize,
    }
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    while let Some((request_line, body)) = read_message(&mut reader)? {
        let answers = if others.children.is_empty() {
            Vec::new() // one process: the floor's push path stays as it was
        } else {
            let path = request_line.split(' ').nth(1).unwrap_or("/");
            let method = request_line.split(' ').next().unwrap_or("GET");
            let forwarded = format!("{method} {path} HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len());
            others.forward(&[forwarded.as_bytes(), &body].concat())?
        };
        let answer = if request_line.starts_with("GET /stats") {
            let mut conns = shared.connected.load(Ordering::Relaxed) as u64;
            for answer in answers {
                conns += serde_json::from_slice::<herald_protocol::stats::HubStats>(&answer)?.connections;
            }
            // The document `herald serve` answers, so the bench reads the floor as it reads herald.
            let stats = herald_protocol::stats::HubStats {
                connections: conns,
                memberships: conns,
                ..Default::default()
            };
            serde_json::to_string(&stats)?
        } else {
            let mut conns = shared.connected.load(Ordering::Relaxed);
            let items = serde_json::from_slice::<Body>(&body)?.items;
            let count = items.len();
            let mut pending = shared.pending.lock().unwrap();
            pending.extend(items.into_iter().map(|i| Bytes::copy_from_slice(i.get().as_bytes())));
            if pending.len() >= max_items {
                shared.frame_full.notify_one();
            }
            drop(pending);
            for answer in answers {
                conns += serde_json::from_slice::<Taken>(&answer)?.recipients;
            }
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
    Ok(())
}
