//! Hostile clients for `herald-bench hostile`: connections that do what no client library would, each kind in a
//! loop that reconnects whenever herald closes it, until the attack's deadline. They run on a thread of their own
//! (one event loop), so that a flood does not slow the coordinator's publisher.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::client::{masked_text, upgrade};

/// The kinds of attacker, each `count` strong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Kind {
    /// Sends PINGs with 120-byte ids at `rate` a second and never reads a PONG: its replies pile up.
    ReplyHog,
    /// Sends PINGs as fast as the socket takes them.
    Flooder,
    /// JOINs and LEAVEs a fresh room name at `rate` messages a second, reading the replies.
    RoomChurner,
    /// Opens a TCP connection and sends nothing.
    HalfOpen,
    /// Joins the bench's room with a tiny receive buffer and never reads.
    SlowReader,
}

/// What to attack, how hard, for how long.
#[derive(Debug, Clone)]
pub(crate) struct Attack {
    pub(crate) target: SocketAddr,
    /// The kinds that attack.
    pub(crate) kinds: Vec<Kind>,
    /// Attackers of each kind.
    pub(crate) count: usize,
    /// Messages a second of the rate-bound kinds (reply hogs, room churners).
    pub(crate) rate: f64,
    /// The bench's room (slow readers join it).
    pub(crate) room: String,
    pub(crate) duration: Duration,
}

/// What one kind of attacker went through.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Tally {
    /// Connections opened (each attacker reconnects when cut off).
    pub(crate) sessions: u64,
    /// Sessions herald ended (closed, reset, or refused at the handshake).
    pub(crate) cut_off: u64,
    /// Bytes the attackers got herald's socket to take.
    pub(crate) bytes_sent: u64,
}

#[derive(Default)]
struct Counters {
    sessions: AtomicU64,
    cut_off: AtomicU64,
    bytes_sent: AtomicU64,
}

/// Runs every kind of attacker on a thread of its own; the handle's result is the tally by kind.
pub(crate) fn start(attack: Attack) -> std::thread::JoinHandle<BTreeMap<Kind, Tally>> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the attackers");
        runtime.block_on(run(attack))
    })
}

async fn run(attack: Attack) -> BTreeMap<Kind, Tally> {
    let attack = Arc::new(attack);
    let deadline = Instant::now() + attack.duration;
    let mut tasks = Vec::new();
    let mut counters = BTreeMap::new();
    for &kind in &attack.kinds {
        let counter = Arc::new(Counters::default());
        counters.insert(kind, Arc::clone(&counter));
        for _ in 0..attack.count {
            let (attack, counter) = (Arc::clone(&attack), Arc::clone(&counter));
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    counter.sessions.fetch_add(1, Ordering::Relaxed);
                    let session = tokio::time::timeout_at(deadline.into(), one_session(kind, &attack, &counter));
                    if let Ok(Err(_)) = session.await {
                        counter.cut_off.fetch_add(1, Ordering::Relaxed);
                        // Not a reconnect storm: a cut-off attacker comes back after a moment.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }));
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    counters
        .into_iter()
        .map(|(kind, c)| {
            let tally = Tally {
                sessions: c.sessions.load(Ordering::Relaxed),
                cut_off: c.cut_off.load(Ordering::Relaxed),
                bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
            };
            (kind, tally)
        })
        .collect()
}

/// One connection of one attacker, until herald ends it (an error) or the deadline (the caller's timeout).
async fn one_session(kind: Kind, attack: &Attack, counter: &Counters) -> io::Result<()> {
    let socket = TcpSocket::new_v4()?;
    if kind == Kind::SlowReader {
        socket.set_recv_buffer_size(4096)?;
    }
    let mut stream = socket.connect(attack.target).await?;
    if kind == Kind::HalfOpen {
        // Until herald drops it (handshake_timeout) or answers it at once (503 at max_handshakes), then again.
        let mut byte = [0u8; 1];
        let _answered_or_dropped = stream.read(&mut byte).await?;
        return Err(io::ErrorKind::ConnectionAborted.into());
    }
    upgrade(&mut stream, attack.target, "", false).await?;
    let every = Duration::from_secs_f64(1.0 / attack.rate.max(0.001));
    match kind {
        Kind::ReplyHog => {
            // At most a write a millisecond (the timer's grain); above 1,000 a second, several PINGs a write.
            let tick = every.max(Duration::from_millis(1));
            let per_tick = (attack.rate * tick.as_secs_f64()).round().max(1.0) as usize;
            let pings =
                masked_text(format!(r#"{{"type":"PING","id":"{}"}}"#, "h".repeat(120)).as_bytes()).repeat(per_tick);
            loop {
                send(&mut stream, &pings, counter).await?;
                tokio::time::sleep(tick).await;
            }
        }
        Kind::Flooder => {
            let burst = masked_text(br#"{"type":"PING"}"#).repeat(256);
            loop {
                send(&mut stream, &burst, counter).await?;
            }
        }
        Kind::RoomChurner => {
            let mut sink = vec![0u8; 16 << 10];
            for n in 0u64.. {
                let kind = if n % 2 == 0 { "JOIN" } else { "LEAVE" };
                let message = format!(r#"{{"type":"{kind}","id":{n},"data":{{"room":"fresh-{}"}}}}"#, n / 2);
                send(&mut stream, &masked_text(message.as_bytes()), counter).await?;
                drain(&mut stream, &mut sink)?;
                tokio::time::sleep(every).await;
            }
            Ok(())
        }
        Kind::SlowReader => {
            let join = serde_json::json!({"type": "JOIN", "data": {"room": attack.room}}).to_string();
            send(&mut stream, &masked_text(join.as_bytes()), counter).await?;
            // It never reads; herald writes to it until its outbox overflows or its writes stall. A PING a second
            // finds out when herald has given up on it (the write fails once herald has reset the connection).
            let ping = masked_text(br#"{"type":"PING"}"#);
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                send(&mut stream, &ping, counter).await?;
            }
        }
        Kind::HalfOpen => unreachable!("handled above"),
    }
}

async fn send(stream: &mut TcpStream, bytes: &[u8], counter: &Counters) -> io::Result<()> {
    stream.write_all(bytes).await?;
    counter.bytes_sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    Ok(())
}

/// Reads whatever has arrived without waiting; an error once herald has closed the connection.
fn drain(stream: &mut TcpStream, sink: &mut [u8]) -> io::Result<()> {
    loop {
        match stream.try_read(sink) {
            Ok(0) => return Err(io::ErrorKind::ConnectionAborted.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}
