//! A connection's own task: it reads the client's frames, keeps the heartbeat, flushes the outbox when the socket
//! turns writable, and carries the close through to its end. Where the connection stands is one [`State`].
//!
//! Reads go into a buffer on the stack; bytes are kept on the heap only while a frame is incomplete, so an idle
//! connection holds no read buffer.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use herald_protocol::ws::{Assembler, Message, close, decode_header, unmask};
use tokio::io::Interest;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::auth::Auth;
use super::commands::{Commands, Flow};
use super::writer::Session;
use crate::metrics::{CloseReason, DropReason};

/// Reads per wake-up before the task lets others run.
const READS_PER_WAKE: usize = 16;
/// Once our close frame is on the wire, how long the peer has to answer with its own before the socket is closed.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// While this much waits in the outbox, the connection is not read: a client that does not read what it is sent
/// (its replies among it) gets no more requests handled, and the kernel's buffers then push back on it. Reading
/// resumes once the outbox drains below it; meanwhile write progress, not PINGs, shows the peer alive.
const READ_PAUSE_BYTES: usize = 64 << 10;
/// What is read of a peer once the close has begun, at most: enough for its close frame behind what it had in
/// flight, not a flood drained at line rate. Past it, reading stops (the socket may then end with a reset).
const CLOSING_READ_BYTES: usize = 64 << 10;

/// Where a connection stands.
enum State {
    /// Reading and writing.
    Open,
    /// A close frame is queued (by this task, or by the writer: a full outbox, the push API's disconnect): the
    /// connection ends when it is out and the peer has answered, or at the latest one write timeout after the
    /// close began.
    Closing(Closing),
}

struct Closing {
    /// Why the connection is ending (the first reason found).
    why: CloseReason,
    since: Instant,
    input: Input,
    /// When our close frame was fully written and our side of the TCP connection shut down; the peer then has
    /// [`CLOSE_LINGER`] to answer.
    sent_at: Option<Instant>,
    /// Bytes read of the peer since the close began (bounded by [`CLOSING_READ_BYTES`]).
    read: usize,
}

/// What is still read of the peer while closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    /// Its frames are parsed, for the close frame that answers ours (data messages are ignored).
    Parsed,
    /// It broke the framing or the protocol: bytes are read and dropped, so closing does not reset.
    Ignored,
    /// It has nothing more to say (its close frame or EOF came): reading stopped.
    Done,
}

impl State {
    fn why(&self) -> Option<CloseReason> {
        match self {
            Self::Open => None,
            Self::Closing(closing) => Some(closing.why),
        }
    }

    fn reading(&self) -> bool {
        !matches!(self, Self::Closing(Closing { input: Input::Done, .. }))
    }

    fn parsing(&self) -> bool {
        matches!(
            self,
            Self::Open
                | Self::Closing(Closing {
                    input: Input::Parsed,
                    ..
                })
        )
    }

    /// The close under way, begun now for `why` unless one already was (its reason stands).
    fn closing(&mut self, why: CloseReason) -> &mut Closing {
        if let Self::Open = self {
            *self = Self::Closing(Closing {
                why,
                since: Instant::now(),
                input: Input::Parsed,
                sent_at: None,
                read: 0,
            });
        }
        match self {
            Self::Closing(closing) => closing,
            Self::Open => unreachable!("set just above"),
        }
    }

    /// The close under way, taken up from the writer if the writer began it (a full outbox, a failed write, the
    /// push API's disconnect), with the reason the writer gave (`ended_by`); a close this task began keeps its
    /// own. The first reason found stands.
    fn close_under_way(&mut self, ended_by: Option<CloseReason>) -> &mut Closing {
        // Every close the writer begins names its reason; with none, the close is this task's and under way.
        debug_assert!(ended_by.is_some() || self.why().is_some());
        self.closing(ended_by.unwrap_or(CloseReason::WriteError))
    }
}

/// The session task's own state (what the hub never sees).
struct Conn {
    session: Arc<Session>,
    rooms: Vec<Arc<str>>,
    /// The token's expiry and the rooms it allows; `None` with auth off.
    auth: Option<Auth>,
    partial: Vec<u8>,
    assembler: Assembler,
    last_seen: Instant,
    /// Messages this connection may still send now (`client_message_rate`'s bucket), refilled as time passes.
    allowance: f32,
    /// Reading is paused (see [`READ_PAUSE_BYTES`]).
    paused: bool,
    /// It negotiated permessage-deflate: its data messages may come compressed (RSV1).
    deflate: bool,
    state: State,
}

/// Runs a connection to its end. `early` holds bytes that arrived with the handshake; `deflate`: it negotiated
/// permessage-deflate.
pub(crate) async fn run(
    session: Arc<Session>,
    auth: Option<Auth>,
    early: Vec<u8>,
    deflate: bool,
    shutdown: CancellationToken,
) {
    let context = Arc::clone(&session.context);
    context.hub.register(&session);
    let mut conn = Conn {
        session,
        rooms: Vec::new(),
        auth,
        partial: Vec::new(),
        assembler: Assembler::default(),
        last_seen: Instant::now(),
        allowance: context.limits.message_burst() as f32,
        paused: false,
        deflate,
        state: State::Open,
    };
    if !early.is_empty() {
        let mut early = early;
        conn.ingest(&mut early);
    }
    let reason = conn.drive(&shutdown).await;
    let Conn { session, rooms, .. } = conn;
    context.hub.unregister(&session, rooms.iter().map(|r| &**r));
    session.abandon(if reason == CloseReason::SlowConsumer {
        DropReason::SlowConsumer
    } else {
        DropReason::Closing
    });
    context.metrics.closed(reason);
    tracing::debug!(id = session.id, ?reason, "connection closed");
}

impl Conn {
    async fn drive(&mut self, shutdown: &CancellationToken) -> CloseReason {
        let limits = self.session.context.limits;
        let timer = sleep_until(self.last_seen + limits.heartbeat_timeout);
        // Both made once, kept across the turns of the loop, and made again only when they fire: a future made
        // anew at every turn registers with its `Notify` when polled and unregisters when another branch wins, a
        // lock round trip each way on every wake (the shutdown's is shared by every connection of the process).
        // In a profile of 56 gateways answering 25,000 PINGs a second they were the largest user-space cost.
        let session = Arc::clone(&self.session);
        let woken = session.wake.notified();
        let cancelled = shutdown.cancelled();
        tokio::pin!(timer, woken, cancelled);
        loop {
            let (queued, closing, failed, last_progress, ended_by, queued_bytes) = {
                let outbox = self.session.outbox.lock();
                (
                    !outbox.frames.is_empty(),
                    outbox.closing,
                    outbox.failed,
                    outbox.last_progress,
                    outbox.ended_by,
                    outbox.bytes,
                )
            };
            let paused = queued_bytes >= READ_PAUSE_BYTES;
            if paused {
                if !self.paused {
                    self.session.context.metrics.read_paused();
                }
                // Its PINGs are not read now; what it takes off the socket shows it alive instead.
                if let Some(progress) = last_progress {
                    self.last_seen = self.last_seen.max(progress);
                }
            }
            self.paused = paused;
            if failed {
                return self.ended(ended_by, CloseReason::WriteError);
            }
            if closing {
                let state = self.state.close_under_way(ended_by);
                if !queued && state.input == Input::Done {
                    return state.why;
                }
                let mut deadline = state.since + limits.write_timeout;
                if !queued {
                    // Our close frame is out: send FIN so the peer sees the end, and give it a moment to answer
                    // (reading on, so its last bytes are not met with a reset).
                    let sent_at = *state.sent_at.get_or_insert_with(|| {
                        let _ = socket2::SockRef::from(&self.session.stream).shutdown(std::net::Shutdown::Write);
                        Instant::now()
                    });
                    deadline = deadline.min(sent_at + CLOSE_LINGER);
                }
                if Instant::now() >= deadline {
                    return state.why;
                }
                timer.as_mut().reset(deadline);
            } else {
                // The write and token deadlines are checked at every turn, not only when the timer fires: a client
                // that keeps the socket readable would otherwise keep the (last, biased) timer branch from ever
                // being polled, and outlive its token or stall its writes forever. (The heartbeat is judged when
                // the timer fires: see there.)
                let write = last_progress
                    .filter(|_| queued)
                    .map(|progress| progress + limits.write_timeout);
                let token = self.auth.as_ref().map(Auth::expires);
                let heartbeat = self.last_seen + limits.heartbeat_timeout;
                let now = Instant::now();
                if write.is_some_and(|write| now >= write) {
                    // Nothing moved for a whole write timeout: a close frame would not get through either.
                    return CloseReason::SlowConsumer;
                }
                if token.is_some_and(|token| now >= token) {
                    self.state.closing(CloseReason::TokenExpired);
                    self.session.begin_close(close::TOKEN_EXPIRED, "token expired", false);
                    continue;
                }
                let deadline = [write, token].into_iter().flatten().fold(heartbeat, Instant::min);
                // Every read moves the heartbeat deadline later. Moving a pending timer later is one atomic
                // exchange in tokio (the wheel finds the new deadline when it reaches the old one, and files the
                // entry again without waking anyone), so it is moved at once: left for the timer to find, it fired
                // once a PING interval per connection (as often as the PINGs themselves when they come every 40 s
                // against a 60 s timeout), and each firing was a wake-up and a turn of this loop.
                if deadline != timer.deadline() || timer.is_elapsed() {
                    timer.as_mut().reset(deadline);
                }
            }
            tokio::select! {
                biased;
                () = &mut cancelled, if !closing => {
                    self.state.closing(CloseReason::Shutdown);
                    self.session.begin_close(close::GOING_AWAY, "server shutting down", false);
                }
                () = &mut woken => woken.set(session.wake.notified()),
                // poll_*_ready keep the task's waker in the socket's own reader and writer slots: the futures of
                // `readable()` and `writable()` would join (and leave) the socket's list of waiters at every turn.
                ready = std::future::poll_fn(|cx| session.stream.poll_write_ready(cx)), if queued => {
                    if ready.and_then(|()| self.session.flush()).is_err() {
                        let ended_by = self.session.outbox.lock().ended_by;
                        return self.ended(ended_by, CloseReason::WriteError);
                    }
                }
                ready = std::future::poll_fn(|cx| session.stream.poll_read_ready(cx)), if self.state.reading() && !paused => {
                    if ready.is_err() || !self.read_available() {
                        let (closing, ended_by) = {
                            let outbox = self.session.outbox.lock();
                            (outbox.closing, outbox.ended_by)
                        };
                        if !closing {
                            return self.ended(ended_by, CloseReason::PeerGone);
                        }
                        // Half-closed: what we still owe it (our close frame) may yet be written.
                        self.state.close_under_way(ended_by).input = Input::Done;
                    }
                }
                // The write and token deadlines are checked at the top of the loop. The heartbeat is judged here,
                // after the read branch had its turn: a task woken late (behind a large fan-out) reads the PING
                // waiting in its socket before it would call the client silent.
                () = &mut timer => {
                    if !closing && Instant::now() >= self.last_seen + limits.heartbeat_timeout {
                        self.state.closing(CloseReason::Heartbeat);
                        self.session.begin_close(close::HEARTBEAT_TIMEOUT, "heartbeat timeout", false);
                    }
                }
            }
        }
    }

    /// Why the connection ends now that `cause` stops it: the reason of a close already under way (this task's, or
    /// the writer's `ended_by`), else `cause`.
    fn ended(&self, ended_by: Option<CloseReason>, cause: CloseReason) -> CloseReason {
        self.state.why().or(ended_by).unwrap_or(cause)
    }

    /// Reads what the socket has; false when the peer is gone.
    fn read_available(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        for _ in 0..READS_PER_WAKE {
            match self.read_once(&mut buf) {
                Ok(0) => return false,
                Ok(n) => {
                    let now = Instant::now();
                    self.refill(now - self.last_seen);
                    self.last_seen = now;
                    if let State::Closing(closing) = &mut self.state {
                        closing.read += n;
                        if closing.read > CLOSING_READ_BYTES {
                            closing.input = Input::Done;
                            return true;
                        }
                    }
                    if self.state.parsing() {
                        self.ingest(&mut buf[..n]);
                    }
                    if n < buf.len() || self.session.outbox.lock().bytes >= READ_PAUSE_BYTES {
                        return true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
        true
    }

    /// Adds to the message allowance what `client_message_rate` gives over `elapsed`, up to the burst.
    fn refill(&mut self, elapsed: std::time::Duration) {
        let limits = &self.session.context.limits;
        if limits.client_message_rate > 0.0 {
            let earned = elapsed.as_secs_f64() * limits.client_message_rate;
            self.allowance = (f64::from(self.allowance) + earned).min(limits.message_burst()) as f32;
        }
    }

    /// One `recv` into `buf`. A short read means the receive queue was empty at that moment, so tokio is told the
    /// socket is no longer readable right away, instead of learning it from a second `recv` that returns
    /// WouldBlock: most wakes (a PING, a JOIN) then cost one system call, not two. tokio clears the readiness
    /// only if no new event arrived since it was read, and never clears read-closed, so neither data that lands
    /// after the `recv` nor a FIN queued behind the data is missed. (TCP's `recv` stops short of the queued data
    /// only at an urgent mark, which WebSocket clients never send; a peer that does delays only its own bytes,
    /// until its next segment or its heartbeat timeout.)
    fn read_once(&self, buf: &mut [u8]) -> io::Result<usize> {
        let stream = &self.session.stream;
        let mut read = 0;
        let result = stream.try_io(Interest::READABLE, || {
            read = io::Read::read(&mut &*socket2::SockRef::from(stream), buf)?;
            if read > 0 && read < buf.len() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(read)
        });
        match result {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && read > 0 => Ok(read),
            other => other,
        }
    }

    /// Takes bytes from the socket: completes frames, handles messages, keeps an unfinished frame.
    fn ingest(&mut self, data: &mut [u8]) {
        let flow = if self.partial.is_empty() {
            let (used, flow) = self.consume(data);
            if matches!(flow, Flow::Continue) && used < data.len() {
                self.partial.extend_from_slice(&data[used..]);
            }
            flow
        } else {
            self.partial.extend_from_slice(data);
            let mut partial = std::mem::take(&mut self.partial);
            let (used, flow) = self.consume(&mut partial);
            partial.drain(..used);
            if !partial.is_empty() {
                self.partial = partial;
            }
            flow
        };
        match flow {
            Flow::Continue => {}
            Flow::Close { code, reason, why } => {
                self.state.closing(why).input = Input::Ignored;
                self.partial = Vec::new();
                self.session.begin_close(code, &reason, false);
            }
            Flow::PeerClosed(code) => {
                self.state.closing(CloseReason::Client).input = Input::Done;
                self.partial = Vec::new();
                // Echo the peer's code (RFC 6455 5.5.1); does nothing if we had started the close ourselves.
                self.session.begin_close(code.unwrap_or(close::NORMAL), "", false);
            }
        }
    }

    /// Handles the complete frames at the start of `buf`; returns the bytes used.
    fn consume(&mut self, buf: &mut [u8]) -> (usize, Flow) {
        let limits = &self.session.context.limits;
        // Lent field by field: a message borrows the assembler while the commands handle it.
        let mut commands = Commands {
            session: &self.session,
            rooms: &mut self.rooms,
            auth: &mut self.auth,
        };
        let mut used = 0;
        loop {
            let header = match decode_header(&buf[used..], limits.max_message_bytes, self.deflate) {
                Ok(Some(header)) if buf.len() - used >= header.frame_len() => header,
                Ok(_) => return (used, Flow::Continue),
                Err(e) => return (used, commands.frame_error(&e)),
            };
            let payload = &mut buf[used + header.header_len..used + header.frame_len()];
            unmask(payload, header.mask);
            used += header.frame_len();
            let closing = self.session.outbox.lock().closing;
            let flow = match self.assembler.on_frame(&header, payload, limits.max_message_bytes) {
                Ok(Some(message)) if !closing && !spend(&mut self.allowance, limits, &message) => {
                    // Counted when the connection ends (herald_closes_total{reason="message_rate"}).
                    tracing::debug!(id = self.session.id, "message rate exceeded, closing");
                    Flow::Close {
                        code: close::MESSAGE_RATE,
                        reason: "message rate exceeded".to_owned(),
                        why: CloseReason::MessageRate,
                    }
                }
                Ok(Some(message)) => commands.on_message(message, closing),
                Ok(None) => Flow::Continue,
                Err(e) => commands.frame_error(&e),
            };
            self.assembler.release();
            if !matches!(flow, Flow::Continue) {
                return (used, flow);
            }
        }
    }
}

/// Spends one message of `allowance`; false when there is none left (the connection is then closed). A close frame
/// is always taken: it ends the connection anyway.
fn spend(allowance: &mut f32, limits: &crate::config::GatewayConfig, message: &Message<'_>) -> bool {
    if limits.client_message_rate <= 0.0 || matches!(message, Message::Close(_)) {
        return true;
    }
    if *allowance < 1.0 {
        return false;
    }
    *allowance -= 1.0;
    true
}
