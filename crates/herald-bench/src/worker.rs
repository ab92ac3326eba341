//! A load-generator worker process: holds its share of the connections on one thread.
//!
//! The coordinator starts `herald-bench worker`, writes one [`Plan`] line to its stdin, and then sends commands
//! (`status`, `stop`), one per line; the worker answers each with one [`Event`] line on stdout. Running connections
//! in several processes gets past the per-process file-descriptor limit, and binding each process's connections to
//! its own 127.x.y.z source addresses keeps the ephemeral ports of any one address far from exhausted.
//!
//! Per connection the worker keeps a task, its socket and a [`Scanner`] (a few hundred bytes); reads go into one
//! buffer shared by the whole process (`socket_reads`).
//!
//! With `compress` each connection offers permessage-deflate and, once herald accepts, sends its JOIN and PINGs
//! compressed and reads through a [`Frames`] parser: plain frames go to the scanner as above, compressed ones are
//! counted from the worker's [`Inflated`] table, which inflates each distinct payload once. A connection that did
//! not negotiate compression reads as a plain one, and is counted. Without `compress` the read path is the plain
//! one, unchanged but for counting the bytes read.
//!
//! Latency is taken twice per item. `latency` ends when the frame reached the client's socket: the kernel's
//! receive timestamp (SO_TIMESTAMPNS) of the last segment a read returned, so never early. That is what a client
//! on its own machine sees; here hundreds of clients share one thread and two cores with the server, and the time a
//! frame then waits for this thread to read it is the load generator's queue, not herald's. `read_latency` ends
//! when this thread read it, queue included, and is reported beside it.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{self, BufRead, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use nix::sys::socket::{setsockopt, sockopt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::client::{self, accepted_deflate, masked_compressed, masked_text, upgrade};
use crate::frames::{Frames, Segment};
use crate::inflated::Inflated;
use crate::proc;
use crate::scan::{CARRY, Scanner, Tally, now_us};
use crate::socket_reads::read_each;

/// Connections bound to one source address.
const CONNS_PER_SOURCE: usize = 10_000;
/// First explicit source port. Connections bind explicit ports below the ephemeral range (10000-19999, then
/// 20000-29999 on a clash): letting the kernel pick a port for a bound socket searches its bind table, which
/// costs milliseconds per connect once thousands of ports are taken.
const FIRST_SOURCE_PORT: u16 = 10_000;
/// Handshakes in flight at once.
const CONNECT_CONCURRENCY: usize = 256;

/// What a worker is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// herald's WebSocket listener.
    pub target: SocketAddr,
    /// Connections to open.
    pub conns: usize,
    /// Room to join (none: receive broadcasts only).
    pub room: Option<String>,
    /// This worker's index; picks its source addresses 127.1.INDEX.N.
    pub index: u8,
    /// Interval between a connection's PINGs.
    pub ping_every_ms: u64,
    /// Churn, on the `churn` command: connections opened (and joined) per second, each dropped after `churn_hold_ms`
    /// with a reset, for `churn_secs`. Zero: no churn.
    #[serde(default)]
    pub churn_per_sec: f64,
    /// How long a churning connection stays.
    #[serde(default)]
    pub churn_hold_ms: u64,
    /// How long the churn lasts.
    #[serde(default)]
    pub churn_secs: f64,
    /// Churning connections JOIN with `since` at the last position a churner saw, and read while they stay.
    #[serde(default)]
    pub churn_resume: bool,
    /// Sign each connection a token (HS256) with this secret: user `bench-INDEX-N`, any room, valid for a day.
    #[serde(default)]
    pub token_secret: Option<String>,
    /// Offer permessage-deflate on every connection (churners excepted), and read compressed frames.
    #[serde(default)]
    pub compress: bool,
}

/// The `?token=` query of connection `n` of worker `index`, when the plan signs tokens.
fn token_query(plan: &Plan, n: usize) -> String {
    plan.token_secret.as_deref().map_or_else(String::new, |secret| {
        client::token_query(secret, &format!("bench-{}-{n}", plan.index))
    })
}

/// What a worker reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// All connections attempted.
    Connected {
        /// Connections open and joined.
        conns: usize,
        /// Connections that failed.
        errors: usize,
        /// Time taken to open them.
        secs: f64,
        /// This worker's resident memory with them open.
        rss_bytes: u64,
    },
    /// Progress, on `status`.
    Status {
        /// Items received so far.
        items: u64,
    },
    /// Final figures, on `stop`.
    Done(Report),
}

/// A worker's final figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// Items received.
    pub items: u64,
    /// PUSH frames received.
    pub frames: u64,
    /// Items missing between the sequence numbers received.
    pub gaps: u64,
    /// Items received twice or out of order.
    pub duplicates: u64,
    /// Connections the server closed before the end.
    pub closed_early: u64,
    /// Connections that had not added their tally (frames, PONGs, gaps, duplicates, PINGs sent) when the worker
    /// stopped waiting for them: those figures are short by theirs.
    #[serde(default)]
    pub unreported: u64,
    /// The same connections by how they ended: the close frame's status code (`"4000"`, `"1001"`, ...), `"no
    /// code"` (a close frame without one), `"no close frame"` (the stream just ended, or its close frame's reason was
    /// longer than the scanner's carry holds: 44 bytes), `"reset"` or `"error"`.
    #[serde(default)]
    pub closed_early_by: BTreeMap<String, u64>,
    /// PINGs sent (each connection sends one every `ping_every_ms`, the first at a random point of the first).
    #[serde(default)]
    pub pings_sent: u64,
    /// PONGs received.
    #[serde(default)]
    pub pongs_received: u64,
    /// Latency to the client's socket, as (microseconds, count) pairs.
    pub latency_us: Vec<(u64, u64)>,
    /// Latency to this worker's read of it, as (microseconds, count) pairs.
    #[serde(default)]
    pub read_latency_us: Vec<(u64, u64)>,
    /// Reads of items that carried no receive timestamp (their arrival was taken as the read).
    #[serde(default)]
    pub untimed_reads: u64,
    /// CPU seconds this worker used.
    pub cpu_secs: f64,
    /// Churning connections opened, joined and dropped.
    #[serde(default)]
    pub churn_cycles: u64,
    /// Churning connections that failed to connect or were refused.
    #[serde(default)]
    pub churn_errors: u64,
    /// Resuming churners whose ACK said `"recovered":true`.
    #[serde(default)]
    pub recovered: u64,
    /// Resuming churners whose ACK said `"recovered":false`.
    #[serde(default)]
    pub not_recovered: u64,
    /// Bytes read from the connections' sockets once upgraded (frames, as they came over the wire).
    #[serde(default)]
    pub wire_bytes: u64,
    /// Connections whose offer of permessage-deflate herald accepted.
    #[serde(default)]
    pub compression_negotiated: u64,
    /// Connections that offered permessage-deflate and were answered without it (they run plain).
    #[serde(default)]
    pub compression_refused: u64,
    /// Compressed messages (RSV1) received, every copy counted.
    #[serde(default)]
    pub compressed_frames: u64,
    /// Distinct compressed payloads this worker inflated (once each, whatever the copies).
    #[serde(default)]
    pub compressed_payloads_inflated: u64,
    /// Compressed payloads that would not inflate (every copy counted; their items are missing).
    #[serde(default)]
    pub inflate_errors: u64,
}

struct Shared {
    latency: Mutex<Latency>,
    totals: Mutex<Report>,
}

/// The two latency histograms (see the module's doc).
struct Latency {
    arrived: Histogram<u64>,
    read: Histogram<u64>,
}

/// A histogram of 1 µs to 120 s, 3 significant digits.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

/// A histogram's recorded values as (value, count) pairs.
fn recorded(histogram: &Histogram<u64>) -> Vec<(u64, u64)> {
    histogram
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

thread_local! {
    /// The compressed payloads this worker has seen (its connections all run on this thread).
    static INFLATED: RefCell<Inflated> = RefCell::new(Inflated::default());
}

/// Runs a worker: reads the plan and commands from stdin, answers on stdout.
pub fn main() -> anyhow::Result<()> {
    let mut stdin = io::BufReader::new(io::stdin());
    let mut line = String::new();
    stdin.read_line(&mut line)?;
    let plan: Plan = serde_json::from_str(&line)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (commands_tx, mut commands) = tokio::sync::mpsc::unbounded_channel::<String>();
    // stdin is read on a plain thread: the worker's runtime thread only serves connections.
    std::thread::spawn(move || {
        for line in stdin.lines() {
            let Ok(line) = line else { break };
            if commands_tx.send(line).is_err() {
                break;
            }
        }
    });
    runtime.block_on(async move {
        let shared = Arc::new(Shared {
            latency: Mutex::new(Latency {
                arrived: latency_histogram(),
                read: latency_histogram(),
            }),
            totals: Mutex::new(Report::default()),
        });
        let (stop_tx, stop) = watch::channel(false);
        let started = Instant::now();
        let (conns, errors) = open_all(&plan, &shared, &stop).await;
        let secs = started.elapsed().as_secs_f64();
        let rss_bytes = proc::rss_bytes(std::process::id()).unwrap_or(0);
        emit(&Event::Connected {
            conns,
            errors,
            secs,
            rss_bytes,
        });
        while let Some(command) = commands.recv().await {
            match command.trim() {
                "status" => {
                    let items = shared.totals.lock().unwrap().items;
                    emit(&Event::Status { items });
                }
                "churn" => {
                    tokio::spawn(churn(plan.clone(), Arc::clone(&shared)));
                    emit(&Event::Status {
                        items: shared.totals.lock().unwrap().items,
                    });
                }
                _ => break,
            }
        }
        let _ = stop_tx.send(true);
        // Let every connection task add its tally (each holds a reference to `shared` until it has). A worker of a
        // million-connection run, sharing two cores with the server, takes tens of seconds to get through all of
        // its tasks.
        let deadline = Instant::now() + Duration::from_secs(60);
        while Arc::strong_count(&shared) > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut report = std::mem::take(&mut *shared.totals.lock().unwrap());
        report.unreported = Arc::strong_count(&shared) as u64 - 1;
        let latency = shared.latency.lock().unwrap();
        report.latency_us = recorded(&latency.arrived);
        report.read_latency_us = recorded(&latency.read);
        report.cpu_secs = proc::self_cpu_secs().unwrap_or(0.0);
        INFLATED.with_borrow(|inflated| {
            report.compressed_payloads_inflated = inflated.inflated;
            report.inflate_errors = inflated.errors;
        });
        emit(&Event::Done(report));
    });
    Ok(())
}

fn emit(event: &Event) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{}", serde_json::to_string(event).expect("events serialize"));
    let _ = out.flush();
}

async fn open_all(plan: &Plan, shared: &Arc<Shared>, stop: &watch::Receiver<bool>) -> (usize, usize) {
    let permits = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel::<bool>();
    let join = plan.room.as_deref().map(join_text);
    let compress = plan.compress;
    for i in 0..plan.conns {
        let permit = Arc::clone(&permits).acquire_owned().await.expect("semaphore open");
        let source = Ipv4Addr::new(127, 1, plan.index, 1 + (i / CONNS_PER_SOURCE) as u8);
        let port = FIRST_SOURCE_PORT + (i % CONNS_PER_SOURCE) as u16;
        let (target, join, done_tx) = (plan.target, join.clone(), done_tx.clone());
        let (shared, stop) = (Arc::clone(shared), stop.clone());
        let ping_every = Duration::from_millis(plan.ping_every_ms);
        let query = token_query(plan, i);
        tokio::spawn(async move {
            let source = SocketAddrV4::new(source, port);
            let opened = open(source, target, &query, join.as_deref(), compress, false).await;
            drop(permit);
            if let Ok((_, negotiated)) = &opened
                && compress
            {
                let mut totals = shared.totals.lock().unwrap();
                if *negotiated {
                    totals.compression_negotiated += 1;
                } else {
                    totals.compression_refused += 1;
                }
            }
            let _ = done_tx.send(opened.is_ok());
            drop(done_tx);
            if let Ok((stream, negotiated)) = opened {
                run_connection(stream, shared, stop, ping_every, negotiated).await;
            }
        });
    }
    drop(done_tx);
    let (mut ok, mut failed) = (0, 0);
    while ok + failed < plan.conns {
        match done.recv().await {
            Some(true) => ok += 1,
            Some(false) => failed += 1,
            None => break,
        }
    }
    (ok, failed)
}

/// Connects from `source` (or the same address one port block up, if that port is taken), completes the
/// WebSocket handshake (offering permessage-deflate with `compress`) and joins the room with the JOIN message
/// `join`, compressed if herald accepted the offer. Returns the stream and whether it did.
async fn open(
    source: SocketAddrV4,
    target: SocketAddr,
    query: &str,
    join: Option<&[u8]>,
    compress: bool,
    reset_on_close: bool,
) -> io::Result<(TcpStream, bool)> {
    let mut attempt = 0;
    let socket = loop {
        let socket = TcpSocket::new_v4()?;
        // A port left in TIME_WAIT by an earlier run may be bound again.
        socket.set_reuseaddr(true)?;
        if reset_on_close {
            // Through socket2: tokio deprecates its setter because a non-zero linger blocks on drop; zero never does.
            socket2::SockRef::from(&socket).set_linger(Some(Duration::ZERO))?;
        }
        let port = source.port() + attempt * CONNS_PER_SOURCE as u16;
        match socket.bind(SocketAddr::V4(SocketAddrV4::new(*source.ip(), port))) {
            Ok(()) => break socket,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && attempt < 1 => attempt += 1,
            Err(e) => return Err(e),
        }
    };
    let mut stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    setsockopt(&stream, sockopt::ReceiveTimestampns, &true)?;
    let head = upgrade(&mut stream, target, query, compress).await?;
    let compressed = compress && accepted_deflate(&head);
    if let Some(join) = join {
        let frame = if compressed {
            masked_compressed(join)
        } else {
            masked_text(join)
        };
        stream.write_all(&frame).await?;
    }
    Ok((stream, compressed))
}

/// Opens, joins and drops connections at `plan.churn_per_sec` for `plan.churn_secs`, from 127.2.INDEX.N with
/// kernel-chosen ports; each is dropped with a reset (linger 0) so no port waits in TIME_WAIT.
async fn churn(plan: Plan, shared: Arc<Shared>) {
    if plan.churn_per_sec <= 0.0 {
        return;
    }
    let join = plan.room.as_deref().map(join_text);
    let every = Duration::from_secs_f64(1.0 / plan.churn_per_sec);
    let end = tokio::time::Instant::now() + Duration::from_secs_f64(plan.churn_secs);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let permits = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    // The last position (offset, epoch) a resuming churner saw in a PUSH frame.
    let last_seen: Arc<Mutex<Option<(u64, String)>>> = Arc::new(Mutex::new(None));
    let mut n: u32 = 0;
    while tokio::time::Instant::now() < end {
        tick.tick().await;
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            // More churners in flight than allowed: the server is slower than the asked rate; count it.
            shared.totals.lock().unwrap().churn_errors += 1;
            continue;
        };
        n = n.wrapping_add(1);
        let source = Ipv4Addr::new(127, 2, plan.index, 1 + (n % 200) as u8);
        let (target, join, shared) = (plan.target, join.clone(), Arc::clone(&shared));
        let hold = Duration::from_millis(plan.churn_hold_ms);
        let query = token_query(&plan, n as usize);
        let resume = plan
            .churn_resume
            .then(|| (plan.room.clone().unwrap_or_default(), Arc::clone(&last_seen)));
        tokio::spawn(async move {
            let join = match &resume {
                Some((room, last_seen)) => Some(resume_text(room, last_seen.lock().unwrap().as_ref())),
                None => join,
            };
            match open_churning(source, target, &query, join.as_deref()).await {
                Ok((stream, _)) => {
                    shared.totals.lock().unwrap().churn_cycles += 1;
                    match &resume {
                        Some((_, last_seen)) => read_resumed(stream, hold, last_seen, &shared).await,
                        None => {
                            tokio::time::sleep(hold).await;
                            drop(stream);
                        }
                    }
                }
                Err(_) => shared.totals.lock().unwrap().churn_errors += 1,
            }
            drop(permit);
        });
    }
}

/// A resuming JOIN: with an id (so its ACK says whether it recovered) and `since` at `at`, when there is one.
fn resume_text(room: &str, at: Option<&(u64, String)>) -> Vec<u8> {
    let mut data = serde_json::json!({ "room": room });
    if let Some((offset, epoch)) = at {
        data["since"] = serde_json::json!({ "offset": offset, "epoch": epoch });
    }
    serde_json::json!({"type": "JOIN", "id": "resume", "data": data})
        .to_string()
        .into_bytes()
}

/// Reads a resumed churner's stream for `hold`: counts what its ACK said, and keeps the position of the last
/// PUSH frame read whole in `last_seen`, for the next churner.
async fn read_resumed(
    mut stream: TcpStream,
    hold: Duration,
    last_seen: &Mutex<Option<(u64, String)>>,
    shared: &Shared,
) {
    let mut text = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + hold;
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buf[..n]);
    }
    let answered = |marker: &[u8]| memchr::memmem::find(&text, marker).is_some();
    {
        let mut totals = shared.totals.lock().unwrap();
        if answered(br#""recovered":true"#) {
            totals.recovered += 1;
        } else if answered(br#""recovered":false"#) {
            totals.not_recovered += 1;
        }
    }
    // Frames end with `"offset":N,"epoch":"E"}}`; the last one read whole is the position to resume from.
    let marker = br#","offset":"#;
    if let Some(at) = memchr::memmem::rfind(&text, marker) {
        let rest = &text[at + marker.len()..];
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let epoch_start = digits + br#","epoch":""#.len();
        let offset = std::str::from_utf8(&rest[..digits])
            .ok()
            .and_then(|d| d.parse::<u64>().ok());
        let epoch = rest
            .get(epoch_start..)
            .and_then(|tail| tail.iter().position(|b| *b == b'"').map(|end| &tail[..end]))
            .and_then(|epoch| std::str::from_utf8(epoch).ok());
        // A frame cut off at the end of the read gives no epoch: the previous position stands.
        if let (Some(offset), Some(epoch)) = (offset, epoch)
            && rest.get(digits..epoch_start) == Some(&br#","epoch":""#[..])
        {
            let mut last = last_seen.lock().unwrap();
            if last.as_ref().is_none_or(|(seen, _)| *seen < offset) {
                *last = Some((offset, epoch.to_owned()));
            }
        }
    }
}

async fn open_churning(
    source: Ipv4Addr,
    target: SocketAddr,
    query: &str,
    join: Option<&[u8]>,
) -> io::Result<(TcpStream, bool)> {
    // Port 0: the kernel picks one of this source address's ports. Linger 0: closing resets the connection.
    open(SocketAddrV4::new(source, 0), target, query, join, false, true).await
}

/// Serves one held connection until the worker stops or the server closes it: reads (through [`Frames`] when it
/// negotiated compression) and PINGs (compressed then too).
async fn run_connection(
    stream: TcpStream,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    ping_every: Duration,
    compressed: bool,
) {
    let mut scanner = Scanner::default();
    let ping_text = br#"{"type":"PING","data":{}}"#;
    let ping = if compressed {
        masked_compressed(ping_text)
    } else {
        masked_text(ping_text)
    };
    let mut frames = compressed.then(Box::<Frames>::default);
    let mut wire_bytes = 0u64;
    // Spread the pings of many connections over the interval.
    let first = ping_every.mul_f64(f64::from(fastrand_u16()) / f64::from(u16::MAX));
    let timer = tokio::time::sleep(first);
    tokio::pin!(timer);
    let mut ended = None;
    let mut pings_sent = 0u64;
    loop {
        tokio::select! {
            ready = stream.readable() => {
                let end = match (ready, &mut frames) {
                    (Ok(()), None) => read_available(&stream, &mut scanner, &shared, &mut wire_bytes),
                    (Ok(()), Some(frames)) => read_framed(&stream, &mut scanner, frames, &shared, &mut wire_bytes),
                    (Err(e), _) => Some(Err(e.kind())),
                };
                if let Some(end) = end {
                    ended = (!*stop.borrow()).then(|| how_it_ended(end, &scanner));
                    break;
                }
            }
            () = &mut timer => {
                // A PING the socket does not take whole is not retried (nor counted): 31 bytes (fewer compressed) on
                // a connection that reads and is read, it is always taken here.
                if matches!(stream.try_write(&ping), Ok(n) if n == ping.len()) {
                    pings_sent += 1;
                }
                timer.as_mut().reset(tokio::time::Instant::now() + ping_every);
            }
            _ = stop.changed() => break,
        }
    }
    let mut totals = shared.totals.lock().unwrap();
    add(&mut totals, &scanner.tally);
    if let Some(how) = ended {
        totals.closed_early += 1;
        *totals.closed_early_by.entry(how).or_default() += 1;
    }
    totals.pings_sent += pings_sent;
    totals.wire_bytes += wire_bytes;
    totals.compressed_frames += frames.map_or(0, |frames| frames.messages);
}

/// How a connection the server closed ended, from what [`read_available`] returned and the stream's last bytes.
fn how_it_ended(end: Result<(), io::ErrorKind>, scanner: &Scanner) -> String {
    match end {
        Ok(()) => match scanner.close_code() {
            Some(Some(code)) => code.to_string(),
            Some(None) => "no code".to_owned(),
            None => "no close frame".to_owned(),
        },
        Err(io::ErrorKind::ConnectionReset) => "reset".to_owned(),
        Err(_) => "error".to_owned(),
    }
}

/// Adds a finished connection's tally (its items were added as they arrived, for `status`).
fn add(report: &mut Report, tally: &Tally) {
    report.frames += tally.frames;
    report.pongs_received += tally.pongs;
    report.gaps += tally.gaps;
    report.duplicates += tally.duplicates;
}

/// Reads what the socket holds and scans it, adding the bytes read to `wire_bytes` (see [`read_each`] for what it
/// returns).
fn read_available(
    stream: &TcpStream,
    scanner: &mut Scanner,
    shared: &Shared,
    wire_bytes: &mut u64,
) -> Option<Result<(), io::ErrorKind>> {
    read_each(stream, wire_bytes, |buf, n, arrived| {
        account(shared, scanner, arrived, |scanner, timing| {
            let start = scanner.prepare(buf);
            scanner.scan(&buf[start..CARRY + n], |sent| timing.record(sent));
        });
    })
}

/// [`read_available`] for a connection that negotiated compression: each read is split at frame boundaries by
/// `frames`; plain runs are scanned as there, compressed messages counted from the worker's [`Inflated`] table.
fn read_framed(
    stream: &TcpStream,
    scanner: &mut Scanner,
    frames: &mut Frames,
    shared: &Shared,
    wire_bytes: &mut u64,
) -> Option<Result<(), io::ErrorKind>> {
    INFLATED.with_borrow_mut(|inflated| {
        read_each(stream, wire_bytes, |buf, n, arrived| {
            account(shared, scanner, arrived, |scanner, timing| {
                let mut record = |sent: u64| timing.record(sent);
                let mut at = 0;
                while let Some(segment) = frames.next(&buf[CARRY..CARRY + n], &mut at) {
                    match segment {
                        Segment::Plain(range) => {
                            // The bytes before the run were taken already: the carry may go over them.
                            let start = scanner.prepare_at(buf, CARRY + range.start);
                            scanner.scan(&buf[start..CARRY + range.end], &mut record);
                        }
                        // A payload that would not inflate counts nothing (its items show as lost; the table
                        // counts the error).
                        Segment::Compressed(range) => {
                            let payload = &buf[CARRY + range.start..CARRY + range.end];
                            if let Some(message) = inflated.get(payload) {
                                scanner.tally.count_message(message, &mut record);
                            }
                        }
                        Segment::Collected => {
                            let payload = frames.take_message();
                            if let Some(message) = inflated.get(&payload) {
                                scanner.tally.count_message(message, &mut record);
                            }
                        }
                    }
                }
            });
        })
    })
}

/// Where one read's items are timed: the latency histograms, held for the read, and its two end points.
struct Timing<'a> {
    latency: MutexGuard<'a, Latency>,
    /// When the read's last segment reached the socket (the read itself, if the kernel did not say).
    arrived_us: u64,
    /// When this thread read it.
    now: u64,
}

impl Timing<'_> {
    fn record(&mut self, sent: u64) {
        let _ = self.latency.arrived.record(self.arrived_us.saturating_sub(sent).max(1));
        let _ = self.latency.read.record(self.now.saturating_sub(sent).max(1));
    }
}

/// Runs `scan` over one read with its [`Timing`], then adds the items it found to the worker's totals (for
/// `status`).
fn account(shared: &Shared, scanner: &mut Scanner, arrived: Option<u64>, scan: impl FnOnce(&mut Scanner, &mut Timing)) {
    let now = now_us();
    let before = scanner.tally.items;
    let mut timing = Timing {
        latency: shared.latency.lock().unwrap(),
        arrived_us: arrived.unwrap_or(now),
        now,
    };
    scan(scanner, &mut timing);
    drop(timing);
    let new_items = scanner.tally.items - before;
    if new_items > 0 {
        let mut totals = shared.totals.lock().unwrap();
        totals.items += new_items;
        totals.untimed_reads += u64::from(arrived.is_none());
    }
}

/// The JOIN message of `room`, before framing (plain or compressed: see [`open`]).
fn join_text(room: &str) -> Vec<u8> {
    serde_json::json!({"type": "JOIN", "data": {"room": room}})
        .to_string()
        .into_bytes()
}

fn fastrand_u16() -> u16 {
    // Good enough to spread timers: the low bits of the clock.
    (now_us() as u16).wrapping_mul(40503)
}
