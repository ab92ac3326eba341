//! One WebSocket connection after the handshake: its outbox, its reads, its heartbeat, its close.
//!
//! The fan-out path calls [`Session::deliver`] from a hub worker. When nothing is queued it writes the frame
//! straight to the socket (non-blocking) and is done: no queue, no task wake-up. Only what the socket does not
//! take at once goes into the bounded outbox, and the session's own task flushes it when the socket turns
//! writable. A full outbox, or a write that makes no progress for the write timeout, closes the connection as a
//! slow consumer (close code 4000): fan-out never waits for one client.
//!
//! Reads go into a buffer on the stack; bytes are kept on the heap only while a frame is incomplete, so an idle
//! connection holds no read buffer.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_hub::Recipient;
use herald_protocol::client::{self, Command, RequestError};
use herald_protocol::ws::{self, Assembler, FrameError, Message, OpCode, close, decode_header, unmask};
use parking_lot::Mutex;
use serde_json::value::RawValue;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::Gateway;
use crate::metrics::{BadInput, CloseReason, DropReason};

/// The most frames written in one `writev`.
const WRITEV_FRAMES: usize = 64;
/// Reads per wake-up before the task lets others run.
const READS_PER_WAKE: usize = 16;
/// Once our close frame is on the wire, how long the peer has to answer with its own before the socket is closed.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// A connection as the hub and the gateway share it.
pub struct Session {
    id: u64,
    stream: TcpStream,
    outbox: Mutex<Outbox>,
    /// Wakes the session's task: something was queued, or the connection must close.
    wake: Notify,
    gateway: Arc<Gateway>,
}

#[derive(Default)]
struct Outbox {
    /// Frames not yet fully written; `written` bytes of the first are on the wire already.
    frames: VecDeque<Bytes>,
    written: usize,
    /// A close frame is queued: no further frame is taken.
    closing: bool,
    /// When the queue last became non-empty or last moved (for the write timeout).
    last_progress: Option<Instant>,
    /// A write failed; the connection is dead.
    failed: bool,
}

impl Recipient for Session {
    fn id(&self) -> u64 {
        self.id
    }

    fn deliver(&self, frame: &Bytes) {
        let mut outbox = self.outbox.lock();
        if outbox.closing {
            drop(outbox);
            self.gateway.metrics.dropped(DropReason::Closing, 1);
            return;
        }
        if outbox.frames.is_empty() {
            // The fast path: straight to the socket, nothing queued, nobody woken. The send goes around tokio's
            // readiness tracking (one cache line less per recipient in a large fan-out): a WouldBlock here leaves
            // tokio believing the socket writable, so `Session::flush` finds out with its own try_write and waits.
            let written = match socket2::SockRef::from(&self.stream).send(frame) {
                Ok(n) if n == frame.len() => return,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(_) => {
                    outbox.failed = true;
                    outbox.closing = true;
                    drop(outbox);
                    self.gateway.metrics.dropped(DropReason::Closing, 1);
                    self.wake.notify_one();
                    return;
                }
            };
            outbox.written = written;
            outbox.frames.push_back(frame.clone());
            outbox.last_progress = Some(Instant::now());
            drop(outbox);
            self.wake.notify_one();
        } else if outbox.frames.len() >= self.gateway.config.outbox_frames {
            let discarded = outbox.begin_close(close::SLOW_CONSUMER, "slow consumer", true);
            drop(outbox);
            self.gateway
                .metrics
                .dropped(DropReason::SlowConsumer, discarded as u64 + 1);
            self.wake.notify_one();
        } else {
            outbox.frames.push_back(frame.clone());
        }
    }
}

impl Outbox {
    /// Queues a close frame (once); with `discard`, first drops every queued frame not yet started. Returns how
    /// many frames were discarded.
    fn begin_close(&mut self, code: u16, reason: &str, discard: bool) -> usize {
        if self.closing {
            return 0;
        }
        self.closing = true;
        let mut discarded = 0;
        if discard {
            // A frame partly on the wire must be finished, or the stream of frames is corrupt.
            let keep = usize::from(self.written > 0);
            discarded = self.frames.len().saturating_sub(keep);
            self.frames.truncate(keep);
        }
        if self.frames.is_empty() {
            self.last_progress = Some(Instant::now());
        }
        self.frames.push_back(ws::close_frame(code, reason));
        discarded
    }
}

impl Session {
    pub(crate) fn new(id: u64, stream: TcpStream, gateway: Arc<Gateway>) -> Arc<Self> {
        Arc::new(Self {
            id,
            stream,
            outbox: Mutex::default(),
            wake: Notify::new(),
            gateway,
        })
    }

    /// Queues a close frame after what is queued (or, with `discard`, instead of it).
    fn begin_close(&self, code: u16, reason: &str, discard: bool) {
        let discarded = self.outbox.lock().begin_close(code, reason, discard);
        if discarded > 0 {
            self.gateway.metrics.dropped(DropReason::SlowConsumer, discarded as u64);
        }
    }

    /// Writes as much of the outbox as the socket takes now.
    fn flush(&self) -> io::Result<()> {
        let mut outbox = self.outbox.lock();
        while !outbox.frames.is_empty() {
            let result = {
                let mut slices = [IoSlice::new(&[]); WRITEV_FRAMES];
                let mut count = 0;
                for (slot, frame) in slices.iter_mut().zip(&outbox.frames) {
                    let start = if count == 0 { outbox.written } else { 0 };
                    *slot = IoSlice::new(&frame[start..]);
                    count += 1;
                }
                self.stream.try_write_vectored(&slices[..count])
            };
            let mut written = match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            };
            outbox.last_progress = Some(Instant::now());
            while written > 0 {
                let left_in_first = outbox.frames[0].len() - outbox.written;
                if written >= left_in_first {
                    written -= left_in_first;
                    outbox.frames.pop_front();
                    outbox.written = 0;
                } else {
                    outbox.written += written;
                    written = 0;
                }
            }
        }
        // Idle connections keep no queue memory.
        outbox.frames = VecDeque::new();
        Ok(())
    }
}

/// What reading asks the task to do next.
enum Flow {
    Continue,
    /// Close with this code and reason.
    Close {
        code: u16,
        reason: String,
        why: CloseReason,
    },
    /// The peer sent a close frame.
    PeerClosed(Option<u16>),
}

/// The session task's own state (what the hub never sees).
struct Conn {
    session: Arc<Session>,
    rooms: Vec<Box<str>>,
    partial: Vec<u8>,
    assembler: Assembler,
    last_seen: Instant,
    /// Why the connection is ending, once known.
    ending: Option<CloseReason>,
    /// When the close began; the connection is dropped one write timeout later at the latest.
    closing_since: Option<Instant>,
    /// When our close frame was fully written; the peer then has [`CLOSE_LINGER`] to answer.
    close_sent_at: Option<Instant>,
    /// The peer's input is no longer parsed (it sent its close frame, or broke the framing).
    input_done: bool,
    /// The peer has nothing more to say: its close frame or EOF arrived. Reading stops.
    peer_done: bool,
    /// Our side of the TCP connection was shut down after our close frame went out.
    write_shut: bool,
}

/// Runs a connection to its end. `early` holds bytes that arrived with the handshake.
pub(crate) async fn run(session: Arc<Session>, early: Vec<u8>, shutdown: CancellationToken) {
    let gateway = Arc::clone(&session.gateway);
    gateway.hub.register(&session);
    let mut conn = Conn {
        session,
        rooms: Vec::new(),
        partial: Vec::new(),
        assembler: Assembler::default(),
        last_seen: Instant::now(),
        ending: None,
        closing_since: None,
        close_sent_at: None,
        input_done: false,
        peer_done: false,
        write_shut: false,
    };
    if !early.is_empty() {
        let mut early = early;
        conn.ingest(&mut early);
    }
    let reason = conn.drive(&shutdown).await;
    let Conn { session, rooms, .. } = conn;
    gateway.hub.unregister(session.id, rooms.iter().map(|r| &**r));
    // Fan-outs that took their member snapshot before `unregister` may still deliver: refuse and count those,
    // and count what never left the outbox.
    let unsent = {
        let mut outbox = session.outbox.lock();
        outbox.closing = true;
        outbox.failed = true;
        std::mem::take(&mut outbox.frames).len() as u64
    };
    let why = if reason == CloseReason::SlowConsumer {
        DropReason::SlowConsumer
    } else {
        DropReason::Closing
    };
    gateway.metrics.dropped(why, unsent);
    gateway.metrics.closed(reason);
    tracing::debug!(id = session.id, ?reason, "connection closed");
}

impl Conn {
    async fn drive(&mut self, shutdown: &CancellationToken) -> CloseReason {
        let config = self.session.gateway.config;
        let timer = sleep_until(self.last_seen + config.heartbeat_timeout);
        tokio::pin!(timer);
        loop {
            let (queued, closing, failed, last_progress) = {
                let outbox = self.session.outbox.lock();
                (
                    !outbox.frames.is_empty(),
                    outbox.closing,
                    outbox.failed,
                    outbox.last_progress,
                )
            };
            if failed {
                return self.ending.unwrap_or(CloseReason::WriteError);
            }
            if closing {
                let since = *self.closing_since.get_or_insert_with(Instant::now);
                self.ending.get_or_insert(CloseReason::SlowConsumer);
                if !queued && self.peer_done {
                    return self.ending.unwrap_or(CloseReason::Client);
                }
                let mut deadline = since + config.write_timeout;
                if !queued {
                    // Our close frame is out: send FIN so the peer sees the end, and give it a moment to answer
                    // (reading on, so its last bytes are not met with a reset).
                    if !self.write_shut {
                        self.write_shut = true;
                        let _ = socket2::SockRef::from(&self.session.stream).shutdown(std::net::Shutdown::Write);
                    }
                    deadline = deadline.min(*self.close_sent_at.get_or_insert_with(Instant::now) + CLOSE_LINGER);
                }
                if Instant::now() >= deadline {
                    return self.ending.unwrap_or(CloseReason::SlowConsumer);
                }
                timer.as_mut().reset(deadline);
            } else {
                let mut deadline = self.last_seen + config.heartbeat_timeout;
                if let (true, Some(progress)) = (queued, last_progress) {
                    deadline = deadline.min(progress + config.write_timeout);
                }
                // Every PING moves the heartbeat deadline later; re-arming the timer for each one would touch the
                // timer wheel (and its lock) once per ping. A later deadline is left for the timer to find: it
                // fires early, finds the peer alive, and is re-armed here once per heartbeat timeout at most.
                if deadline < timer.deadline() || timer.is_elapsed() {
                    timer.as_mut().reset(deadline);
                }
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled(), if !closing => {
                    self.ending = Some(CloseReason::Shutdown);
                    self.session.begin_close(close::GOING_AWAY, "server shutting down", false);
                }
                () = self.session.wake.notified() => {}
                ready = self.session.stream.writable(), if queued => {
                    if ready.and_then(|()| self.session.flush()).is_err() {
                        return self.ending.unwrap_or(CloseReason::WriteError);
                    }
                }
                ready = self.session.stream.readable(), if !self.peer_done => {
                    if ready.is_err() || !self.read_available() {
                        if !self.session.outbox.lock().closing {
                            return self.ending.unwrap_or(CloseReason::PeerGone);
                        }
                        // Half-closed: what we still owe it (our close frame) may yet be written.
                        self.peer_done = true;
                        self.input_done = true;
                    }
                }
                () = &mut timer => {
                    let now = Instant::now();
                    if closing {
                        continue; // the closing deadline is checked at the top
                    }
                    if queued && last_progress.is_some_and(|p| now >= p + config.write_timeout) {
                        // Nothing moved for a whole write timeout: a close frame would not get through either.
                        return CloseReason::SlowConsumer;
                    }
                    if now >= self.last_seen + config.heartbeat_timeout {
                        self.ending = Some(CloseReason::Heartbeat);
                        self.session.begin_close(close::HEARTBEAT_TIMEOUT, "heartbeat timeout", false);
                    }
                }
            }
        }
    }

    /// Reads what the socket has; false when the peer is gone.
    fn read_available(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        for _ in 0..READS_PER_WAKE {
            match self.read_once(&mut buf) {
                Ok(0) => return false,
                Ok(n) => {
                    self.last_seen = Instant::now();
                    if !self.input_done {
                        self.ingest(&mut buf[..n]);
                    }
                    if n < buf.len() {
                        return true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
        true
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
                self.ending.get_or_insert(why);
                self.input_done = true;
                self.partial = Vec::new();
                self.session.begin_close(code, &reason, false);
            }
            Flow::PeerClosed(code) => {
                self.ending.get_or_insert(CloseReason::Client);
                self.input_done = true;
                self.peer_done = true;
                self.partial = Vec::new();
                // Echo the peer's code (RFC 6455 5.5.1); does nothing if we had started the close ourselves.
                self.session.begin_close(code.unwrap_or(close::NORMAL), "", false);
            }
        }
    }

    /// Handles the complete frames at the start of `buf`; returns the bytes used.
    fn consume(&mut self, buf: &mut [u8]) -> (usize, Flow) {
        let limit = self.session.gateway.config.max_message_bytes;
        let mut used = 0;
        loop {
            let header = match decode_header(&buf[used..], limit) {
                Ok(Some(header)) if buf.len() - used >= header.frame_len() => header,
                Ok(_) => return (used, Flow::Continue),
                Err(e) => return (used, self.frame_error(&e)),
            };
            let payload = &mut buf[used + header.header_len..used + header.frame_len()];
            unmask(payload, header.mask);
            used += header.frame_len();
            let closing = self.session.outbox.lock().closing;
            let mut ctx = MessageCtx {
                session: &self.session,
                rooms: &mut self.rooms,
                closing,
            };
            let flow = match self.assembler.on_frame(&header, payload, limit) {
                Ok(Some(message)) => ctx.on_message(message),
                Ok(None) => Flow::Continue,
                Err(e) => ctx.frame_error(&e),
            };
            self.assembler.release();
            if !matches!(flow, Flow::Continue) {
                return (used, flow);
            }
        }
    }

    fn frame_error(&mut self, error: &FrameError) -> Flow {
        MessageCtx {
            session: &self.session,
            rooms: &mut self.rooms,
            closing: false,
        }
        .frame_error(error)
    }
}

/// What handling one message needs (kept apart from the assembler that lends the message).
struct MessageCtx<'a> {
    session: &'a Arc<Session>,
    rooms: &'a mut Vec<Box<str>>,
    /// Our close is under way: data messages are ignored, only the peer's close matters.
    closing: bool,
}

impl MessageCtx<'_> {
    fn on_message(&mut self, message: Message<'_>) -> Flow {
        match message {
            Message::Close(code) => Flow::PeerClosed(code),
            _ if self.closing => Flow::Continue,
            // The conformance echo server (Gateway::new_echo): every message goes back as it came.
            Message::Text(text) if self.session.gateway.echo => {
                self.session.deliver(&ws::frame(OpCode::Text, text.as_bytes()));
                Flow::Continue
            }
            Message::Binary(data) if self.session.gateway.echo => {
                self.session.deliver(&ws::frame(OpCode::Binary, data));
                Flow::Continue
            }
            Message::Text(text) => self.on_text(text),
            Message::Binary(_) => self.bad(
                BadInput::Binary,
                close::UNSUPPORTED_DATA,
                "binary messages not supported",
            ),
            Message::Ping(payload) => {
                self.session.deliver(&ws::frame(OpCode::Pong, payload));
                Flow::Continue
            }
            Message::Pong => Flow::Continue,
        }
    }

    fn on_text(&mut self, text: &str) -> Flow {
        let message = match client::parse(text) {
            Ok(message) => message,
            Err(e) => {
                let kind = if e.close_code() == close::INVALID_PAYLOAD {
                    BadInput::NotJson
                } else {
                    BadInput::UnknownMessage
                };
                return self.bad(kind, e.close_code(), &e.to_string());
            }
        };
        let result = match &message.command {
            Command::Ping => {
                self.session.deliver(&client::pong(message.id));
                return Flow::Continue;
            }
            Command::Join(room) => self.join(room),
            Command::Leave(room) => self.leave(room),
        };
        self.reply(message.id, result);
        Flow::Continue
    }

    fn join(&mut self, room: &str) -> Result<(), RequestError> {
        let gateway = &self.session.gateway;
        if !client::valid_room(room) {
            return Err(RequestError::InvalidRoom);
        }
        if self.rooms.iter().any(|r| **r == *room) {
            return Ok(());
        }
        if self.rooms.len() >= gateway.config.max_rooms_per_connection {
            return Err(RequestError::TooManyRooms);
        }
        gateway.hub.join(room, self.session);
        self.rooms.push(room.into());
        Ok(())
    }

    fn leave(&mut self, room: &str) -> Result<(), RequestError> {
        if !client::valid_room(room) {
            return Err(RequestError::InvalidRoom);
        }
        if let Some(index) = self.rooms.iter().position(|r| **r == *room) {
            self.rooms.swap_remove(index);
            self.session.gateway.hub.leave(room, self.session.id);
        }
        Ok(())
    }

    /// Acknowledges a request that carried an id; without one, go-push sends nothing and neither does herald.
    fn reply(&self, id: Option<&RawValue>, result: Result<(), RequestError>) {
        if let Err(error) = result {
            let kind = match error {
                RequestError::InvalidRoom => BadInput::InvalidRoom,
                RequestError::TooManyRooms => BadInput::TooManyRooms,
            };
            self.session.gateway.metrics.bad_input(kind);
        }
        if let Some(id) = id {
            let frame = match result {
                Ok(()) => client::ack(id),
                Err(error) => client::error(id, error),
            };
            self.session.deliver(&frame);
        }
    }

    fn frame_error(&mut self, error: &FrameError) -> Flow {
        let kind = match error {
            FrameError::Protocol(_) => BadInput::Protocol,
            FrameError::InvalidUtf8 => BadInput::InvalidUtf8,
            FrameError::TooBig { .. } => BadInput::TooBig,
        };
        self.bad(kind, error.close_code(), &error.to_string())
    }

    fn bad(&self, kind: BadInput, code: u16, reason: &str) -> Flow {
        self.session.gateway.metrics.bad_input(kind);
        tracing::debug!(id = self.session.id, code, reason, "bad input, closing");
        Flow::Close {
            code,
            reason: reason.to_owned(),
            why: CloseReason::BadInput,
        }
    }
}
