//! A connection's writer: the [`Session`] the hub holds, its direct, non-blocking writes from the fan-out path, and
//! the bounded outbox behind them.
//!
//! [`Session::deliver`] runs on a hub worker. When nothing is queued it writes the frame straight to the socket and
//! is done: no queue, no task wake-up. Only what the socket does not take at once goes into the outbox, and the
//! session's own task flushes it when the socket turns writable. An outbox full (`outbox_frames` frames or
//! `outbox_bytes` bytes) closes the connection as a slow consumer (4000): fan-out never waits for one client. The
//! first frame queued is always taken, however large, so one push as big as `max_body_bytes` still goes out.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;

use bytes::Bytes;
use herald_hub::{Hub, Recipient};
use herald_protocol::forms::WireForm;
use herald_protocol::token::Identity;
use herald_protocol::ws::{self, close};
use parking_lot::Mutex;
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::auth::Auth;
use crate::access::Access;
use crate::config::GatewayConfig;
use crate::metrics::{CloseReason, DropReason, GatewayMetrics};

/// What every session of one gateway shares.
pub(crate) struct Context {
    /// The fan-out engine the connections join rooms in.
    pub(crate) hub: Arc<Hub<Session>>,
    /// Limits of a connection.
    pub(crate) limits: GatewayConfig,
    /// Who may connect and join what.
    pub(crate) access: Access,
    pub(crate) metrics: GatewayMetrics,
    /// Conformance mode (see `Gateway::new_echo`): every data message is echoed.
    #[cfg(feature = "conformance")]
    pub(crate) echo: bool,
}

/// A connection as the hub and the connection's task share it.
pub struct Session {
    pub(super) id: u64,
    pub(super) stream: TcpStream,
    /// How its frames go on the wire, stated when it was accepted.
    form: WireForm,
    pub(super) outbox: Mutex<Outbox>,
    /// Wakes the session's task: something was queued, or the connection must close.
    pub(super) wake: Notify,
    pub(super) context: Arc<Context>,
    /// The user (its token's `sub`), shared with the user's other connections here; `None` with auth off.
    pub(super) user: Option<Arc<str>>,
    /// Its token's `info` claim, for presence.
    info: Option<Box<RawValue>>,
}

impl Session {
    /// A session for an upgraded connection. Of its token's claims, the user and `info` go with the session
    /// (the hub reads them); the expiry and the rooms it allows stay with the connection's task ([`Auth`]).
    pub(crate) fn new(
        id: u64,
        stream: TcpStream,
        form: WireForm,
        context: Arc<Context>,
        identity: Option<Identity>,
    ) -> (Arc<Self>, Option<Auth>) {
        let (user, info, auth) = match identity {
            None => (None, None, None),
            Some(identity) => (
                Some(context.hub.user_name(&identity.user)),
                identity.info,
                Some(Auth::new(identity.expires, identity.rooms)),
            ),
        };
        let session = Arc::new(Self {
            id,
            stream,
            form,
            outbox: Mutex::default(),
            wake: Notify::new(),
            context,
            user,
            info,
        });
        (session, auth)
    }
}

/// The most frames written in one `writev`.
const WRITEV_FRAMES: usize = 64;

/// What waits to be written to one connection.
#[derive(Default)]
pub(super) struct Outbox {
    /// Frames not yet fully written; `written` bytes of the first are on the wire already.
    pub(super) frames: VecDeque<Bytes>,
    written: usize,
    /// The length of every frame in `frames`, whole (the part already written included): what `outbox_bytes`
    /// bounds. A push frame shared by many connections is one allocation, counted here in each outbox it waits in.
    pub(super) bytes: usize,
    /// No further frame is taken (a close frame is queued, or the connection failed).
    pub(super) closing: bool,
    /// A close frame was queued (it is the last frame, while still queued).
    close_queued: bool,
    /// Frames handed to [`Recipient::deliver`] and written whole (close frames not counted); added to
    /// `herald_sent_frames_total` when the connection ends.
    pub(super) sent: u64,
    /// When the queue last became non-empty or last moved (for the write timeout).
    pub(super) last_progress: Option<Instant>,
    /// A write failed; the connection is dead.
    pub(super) failed: bool,
    /// Why the writer's side began the close, when it did (a full outbox, a failed write, the push API's
    /// disconnect); every close it begins names its reason here.
    pub(super) ended_by: Option<CloseReason>,
}

impl Recipient for Session {
    fn id(&self) -> u64 {
        self.id
    }

    fn form(&self) -> WireForm {
        self.form
    }

    fn deliver(&self, frame: &Bytes) {
        let mut outbox = self.outbox.lock();
        if outbox.closing {
            drop(outbox);
            self.context.metrics.dropped(DropReason::Closing, 1);
            return;
        }
        if outbox.frames.is_empty() {
            // The fast path: straight to the socket, nothing queued, nobody woken. The send goes around tokio's
            // readiness tracking (one cache line less per recipient in a large fan-out): a WouldBlock here leaves
            // tokio believing the socket writable, so `Session::flush` finds out with its own try_write and waits.
            let written = match socket2::SockRef::from(&self.stream).send(frame) {
                Ok(n) if n == frame.len() => {
                    outbox.sent += 1;
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(_) => {
                    outbox.failed = true;
                    outbox.closing = true;
                    outbox.ended_by.get_or_insert(CloseReason::WriteError);
                    drop(outbox);
                    self.context.metrics.dropped(DropReason::Closing, 1);
                    self.wake.notify_one();
                    return;
                }
            };
            outbox.written = written;
            outbox.push(frame);
            outbox.last_progress = Some(Instant::now());
            drop(outbox);
            self.wake.notify_one();
        } else if outbox.frames.len() >= self.context.limits.outbox_frames
            || outbox.bytes + frame.len() > self.context.limits.outbox_bytes
        {
            outbox.ended_by.get_or_insert(CloseReason::SlowConsumer);
            let discarded = outbox.begin_close(close::SLOW_CONSUMER, "slow consumer", true);
            drop(outbox);
            self.context
                .metrics
                .dropped(DropReason::SlowConsumer, discarded as u64 + 1);
            self.wake.notify_one();
        } else {
            outbox.push(frame);
        }
    }

    fn user(&self) -> Option<&Arc<str>> {
        self.user.as_ref()
    }

    fn info(&self) -> Option<&RawValue> {
        self.info.as_deref()
    }

    fn disconnect(&self) {
        {
            let mut outbox = self.outbox.lock();
            if outbox.closing {
                return;
            }
            outbox.ended_by = Some(CloseReason::Disconnected);
            // What is queued still goes out first: the user was pushed it before the disconnect.
            outbox.begin_close(close::DISCONNECTED, "disconnected by the server", false);
        }
        self.wake.notify_one();
    }
}

impl Outbox {
    fn push(&mut self, frame: &Bytes) {
        self.bytes += frame.len();
        self.frames.push_back(frame.clone());
    }

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
            self.bytes = self.frames.iter().map(Bytes::len).sum();
        }
        if self.frames.is_empty() {
            self.last_progress = Some(Instant::now());
        }
        self.push(&ws::close_frame(code, reason));
        self.close_queued = true;
        discarded
    }
}

impl Session {
    /// Queues a close frame after what is queued (or, with `discard`, instead of it).
    pub(super) fn begin_close(&self, code: u16, reason: &str, discard: bool) {
        let discarded = self.outbox.lock().begin_close(code, reason, discard);
        if discarded > 0 {
            self.context.metrics.dropped(DropReason::SlowConsumer, discarded as u64);
        }
    }

    /// Writes as much of the outbox as the socket takes now.
    pub(super) fn flush(&self) -> io::Result<()> {
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
                    if let Some(sent) = outbox.frames.pop_front() {
                        outbox.bytes -= sent.len();
                        // The close frame is always the last one queued.
                        if !(outbox.close_queued && outbox.frames.is_empty()) {
                            outbox.sent += 1;
                        }
                    }
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

    /// Ends the writer when the connection is gone: fan-outs that took their member snapshot earlier are refused
    /// from now on, the frames that never left are counted as dropped (`why`; a close frame is not a frame that
    /// was delivered), and the frames that did as sent.
    pub(super) fn abandon(&self, why: DropReason) {
        let (unsent, sent) = {
            let mut outbox = self.outbox.lock();
            outbox.closing = true;
            outbox.failed = true;
            outbox.bytes = 0;
            let frames = std::mem::take(&mut outbox.frames).len();
            let close_unsent = outbox.close_queued && frames > 0;
            (frames - usize::from(close_unsent), outbox.sent)
        };
        self.context.metrics.dropped(why, unsent as u64);
        self.context.metrics.sent(sent);
    }
}
