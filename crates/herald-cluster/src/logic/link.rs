//! One gateway's link: its bounded queue, and the task that owns the gateway's HTTP/2 connection and its single
//! `Deliver` stream, sends pushes in queue order, matches the acks to them, reconnects with backoff, and polls the
//! gateway's status beside the stream.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use herald_protocol::stats::{self, GatewayLink, GatewayStatus};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use super::metrics::LinkMetrics;
use super::outcome::Outcome;
use crate::MAX_MESSAGE_BYTES;
use crate::auth::SecretHeader;
use crate::hop::{RECONNECT_MAX, backoff};
use crate::pb;
use crate::pb::gateway_client::GatewayClient;

/// Pushes sent on one stream and not yet acknowledged; past this the link stops taking from its queue.
pub(super) const MAX_IN_FLIGHT: usize = 1024;

/// One push on its way to one gateway, with where its answer goes.
pub(super) struct Forward {
    pub(super) push: pb::Push,
    pub(super) reply: Answer,
}

/// Where a push's answer goes, and its size in the link's byte count (released with the answer).
pub(super) struct Answer {
    pub(super) to: oneshot::Sender<Reply>,
    pub(super) bytes: usize,
}

pub(super) enum Reply {
    /// The gateway's answer.
    Ack(pb::Ack),
    /// Never sent: the link went down while the push waited in its queue.
    NotSent,
    /// Sent, but the stream broke before the gateway answered.
    Lost,
}

/// How one connection to a gateway ended.
pub(super) enum StreamEnd {
    /// Logic is shutting down.
    Stopping,
    /// The connection failed, or never came up.
    Failed {
        error: String,
        /// It had stayed up long enough to count as working (the backoff starts over).
        healthy: bool,
    },
}

/// Logic's connection to one gateway.
pub(super) struct Link {
    pub(super) addr: String,
    pub(super) endpoint: Endpoint,
    pub(super) header: SecretHeader,
    pub(super) status_interval: Duration,
    pub(super) connect_timeout: Duration,
    pub(super) queue: mpsc::Sender<Forward>,
    /// Most pushes outstanding (queued or in flight, not yet answered): `gateway_queue`.
    pub(super) capacity: usize,
    pub(super) outstanding: AtomicUsize,
    /// Most bytes outstanding (encoded pushes): `gateway_queue_bytes`. Counted beside `outstanding`, so that a
    /// stalled gateway holds at most this much of logic's memory.
    pub(super) capacity_bytes: usize,
    pub(super) outstanding_bytes: AtomicUsize,
    /// The `Deliver` stream is open: pushes are taken into the queue only then.
    pub(super) up: AtomicBool,
    pub(super) state: Mutex<LinkState>,
    pub(super) metrics: LinkMetrics,
}

#[derive(Default)]
pub(super) struct LinkState {
    /// When the link last went up or down.
    pub(super) since: Option<Instant>,
    pub(super) last_error: Option<String>,
    /// The gateway's last reported status.
    pub(super) status: Option<GatewayStatus>,
    /// A client on the link's connection while it is up, for the unary calls beside the stream (queries).
    pub(super) client: Option<Client>,
}

pub(super) type Client = GatewayClient<InterceptedService<Channel, SecretHeader>>;

impl Link {
    pub(super) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub(super) fn last_error(&self) -> Option<String> {
        self.state.lock().last_error.clone()
    }

    /// Queues a push for this gateway, or says at once why it cannot.
    pub(super) fn offer(&self, push: pb::Push) -> Result<oneshot::Receiver<Reply>, Outcome> {
        if !self.is_up() {
            self.metrics.count("unreachable");
            return Err(Outcome::unreachable());
        }
        let bytes = prost::Message::encoded_len(&push);
        let bytes_before = self.outstanding_bytes.fetch_add(bytes, Ordering::AcqRel);
        let over_bytes = bytes_before > 0 && bytes_before + bytes > self.capacity_bytes;
        if over_bytes || self.outstanding.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            if !over_bytes {
                self.outstanding.fetch_sub(1, Ordering::AcqRel);
            }
            self.outstanding_bytes.fetch_sub(bytes, Ordering::AcqRel);
            self.metrics.count("queue_full");
            return Err(Outcome::Refused {
                reason: "queue_full",
                retry_after: 1,
                limit: None,
                detail: None,
            });
        }
        self.metrics.queue_depth.inc();
        let (to, answer) = oneshot::channel();
        match self.queue.try_send(Forward {
            push,
            reply: Answer { to, bytes },
        }) {
            Ok(()) => Ok(answer),
            // The channel holds `capacity` and `outstanding` never exceeds it: only a closed channel refuses.
            Err(_) => {
                self.release(bytes);
                self.metrics.count("unreachable");
                Err(Outcome::unreachable())
            }
        }
    }

    pub(super) fn release(&self, bytes: usize) {
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
        self.outstanding_bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.metrics.queue_depth.dec();
    }

    /// Answers one outstanding push and counts how it ended.
    pub(super) fn answer(&self, reply_to: Answer, reply: Reply) {
        self.release(reply_to.bytes);
        self.metrics.count(match &reply {
            Reply::Ack(ack) => Outcome::from_ack(ack).result_label(),
            Reply::NotSent => "unreachable",
            Reply::Lost => "unconfirmed",
        });
        // The caller may have stopped waiting (ack_timeout, or the HTTP client left); it was counted anyway.
        let _ = reply_to.to.send(reply);
    }

    /// Connects, streams, and reconnects with backoff, until `stop`.
    pub(super) async fn run(self: Arc<Self>, mut queue: mpsc::Receiver<Forward>, stop: CancellationToken) {
        let mut failures = 0u32;
        loop {
            let (error, healthy) = match self.connect_and_stream(&mut queue, &stop).await {
                StreamEnd::Stopping => break,
                StreamEnd::Failed { error, healthy } => (error, healthy),
            };
            // A stream that stayed up a while starts the backoff over; one that keeps failing fast does not, so a
            // gateway that accepts and drops every stream is not hammered.
            failures = if healthy { 1 } else { failures.saturating_add(1) };
            self.set_down(error, false);
            let sleep = tokio::time::sleep(backoff(failures));
            tokio::pin!(sleep);
            // While down, whatever is still queued (or arrives in a race with going down) is answered at once.
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    () = stop.cancelled() => break,
                    forward = queue.recv() => match forward {
                        Some(forward) => self.answer(forward.reply, Reply::NotSent),
                        None => return,
                    },
                }
            }
            if stop.is_cancelled() {
                break;
            }
        }
        self.set_down("logic is shutting down".to_owned(), true);
        queue.close();
        while let Some(forward) = queue.recv().await {
            self.answer(forward.reply, Reply::NotSent);
        }
    }

    /// Opens the connection and the `Deliver` stream, within `connect_timeout` (tonic's own connect timeout covers
    /// TCP only, not TLS or the stream's response headers).
    pub(super) async fn open(&self) -> Result<(Client, mpsc::Sender<pb::Push>, Streaming<pb::Ack>), String> {
        let open = async {
            let channel = self
                .endpoint
                .connect()
                .await
                .map_err(|e| format!("connect: {}", error_chain(&e)))?;
            let mut client: Client = GatewayClient::with_interceptor(channel, self.header.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            let (pushes, outgoing) = mpsc::channel::<pb::Push>(MAX_IN_FLIGHT);
            let acks = client
                .deliver(tokio_stream::wrappers::ReceiverStream::new(outgoing))
                .await
                .map_err(|status| describe(&status))?
                .into_inner();
            Ok((client, pushes, acks))
        };
        tokio::time::timeout(self.connect_timeout, open)
            .await
            .unwrap_or_else(|_| Err(format!("no stream within {:?}", self.connect_timeout)))
    }

    /// One connection's life, to its end; every push taken from the queue is answered before this returns.
    pub(super) async fn connect_and_stream(
        self: &Arc<Self>,
        queue: &mut mpsc::Receiver<Forward>,
        stop: &CancellationToken,
    ) -> StreamEnd {
        let opened = tokio::select! {
            opened = self.open() => opened,
            () = stop.cancelled() => return StreamEnd::Stopping,
        };
        let (client, pushes, mut acks) = match opened {
            Ok(opened) => opened,
            Err(error) => return StreamEnd::Failed { error, healthy: false },
        };

        // Status is fetched (and queries asked) beside the stream, on the same HTTP/2 connection.
        let status_stop = stop.child_token();
        let _stop_status = status_stop.clone().drop_guard();
        self.state.lock().client = Some(client.clone());
        tokio::spawn(Arc::clone(self).poll_status(client, status_stop));
        self.set_up();
        let up_since = Instant::now();

        let mut in_flight: VecDeque<Answer> = VecDeque::new();
        let end = loop {
            tokio::select! {
                biased;
                ack = acks.message() => match ack {
                    Ok(Some(ack)) => match in_flight.pop_front() {
                        Some(reply) => self.answer(reply, Reply::Ack(ack)),
                        None => break Some("the gateway sent an ack for no push".to_owned()),
                    },
                    Ok(None) => break Some("the gateway closed the stream".to_owned()),
                    Err(status) => break Some(describe(&status)),
                },
                forward = queue.recv(), if in_flight.len() < MAX_IN_FLIGHT => match forward {
                    Some(Forward { push, reply }) => {
                        // Room is guaranteed: the channel holds MAX_IN_FLIGHT and every push in it is in flight.
                        if pushes.try_send(push).is_err() {
                            self.answer(reply, Reply::NotSent);
                            break Some("the stream to the gateway closed".to_owned());
                        }
                        in_flight.push_back(reply);
                    }
                    None => break None,
                },
                () = stop.cancelled() => break None,
            }
        };
        self.up.store(false, Ordering::Release);
        for reply in in_flight {
            self.answer(reply, Reply::Lost);
        }
        match end {
            None => StreamEnd::Stopping,
            Some(error) => StreamEnd::Failed {
                error,
                healthy: up_since.elapsed() >= RECONNECT_MAX,
            },
        }
    }

    pub(super) fn set_up(&self) {
        self.up.store(true, Ordering::Release);
        self.metrics.up.set(1);
        let mut state = self.state.lock();
        state.since = Some(Instant::now());
        tracing::info!(gateway = %self.addr, "gateway link up");
        state.last_error = None;
    }

    pub(super) fn set_down(&self, error: String, stopping: bool) {
        self.up.store(false, Ordering::Release);
        self.metrics.up.set(0);
        self.metrics.connections.set(0);
        self.metrics.rooms.set(0);
        let mut state = self.state.lock();
        // What the gateway last reported no longer holds: it is not reachable through this link.
        state.status = None;
        state.client = None;
        let was_up = state.last_error.is_none() && state.since.is_some();
        if was_up {
            state.since = Some(Instant::now());
        }
        if stopping {
            tracing::info!(gateway = %self.addr, "gateway link closed");
        } else if was_up || state.last_error.as_deref() != Some(error.as_str()) {
            // Logged and counted once per distinct error, not once per reconnect attempt.
            tracing::warn!(gateway = %self.addr, %error, "gateway link down");
            self.metrics.disconnects.inc();
        }
        state.last_error = Some(error);
    }

    /// Fetches the gateway's status every `status_interval` while the stream is up.
    pub(super) async fn poll_status(self: Arc<Self>, mut client: Client, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.status_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            let call = tokio::time::timeout(
                self.status_interval.max(Duration::from_secs(1)),
                client.status(pb::StatusRequest {}),
            );
            let answer = tokio::select! {
                answer = call => answer,
                () = stop.cancelled() => return,
            };
            // An answer that arrives as the link goes down must not bring a down gateway's figures back.
            if !self.is_up() {
                return;
            }
            match answer {
                Ok(Ok(status)) => {
                    let status = crate::status::from_wire(status.into_inner());
                    self.metrics.connections.set(status.hub.connections as i64);
                    self.metrics.rooms.set(status.hub.rooms as i64);
                    self.state.lock().status = Some(status);
                }
                Ok(Err(status)) => {
                    tracing::debug!(gateway = %self.addr, error = %describe(&status), "status call failed")
                }
                Err(_) => tracing::debug!(gateway = %self.addr, "status call timed out"),
            }
        }
    }

    /// Asks the gateway a query on the link's connection; `None` while the link is down or when the call fails.
    pub(super) async fn query(&self, request: pb::QueryRequest) -> Option<pb::QueryReply> {
        let mut client = self.state.lock().client.clone()?;
        match client.query(request).await {
            Ok(reply) => Some(reply.into_inner()),
            Err(status) => {
                tracing::debug!(gateway = %self.addr, error = %describe(&status), "query failed");
                None
            }
        }
    }

    pub(super) fn stats(&self) -> GatewayLink {
        let state = self.state.lock();
        GatewayLink {
            addr: self.addr.clone(),
            state: if self.is_up() {
                stats::LinkState::Up
            } else {
                stats::LinkState::Down
            },
            since_secs: state.since.map(|since| since.elapsed().as_secs()),
            last_error: state.last_error.clone(),
            queue_depth: self.metrics.queue_depth.get().max(0) as u64,
            status: state.status.clone(),
        }
    }
}

/// A gRPC status as an operator should read it.
pub(super) fn describe(status: &tonic::Status) -> String {
    match status.code() {
        tonic::Code::Unauthenticated => format!("the gateway refused the cluster secret ({})", status.message()),
        code => format!("{code:?}: {}", status.message()),
    }
}

/// An error with its causes: tonic's transport errors say little on their own ("transport error").
pub(super) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut last = text.clone();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Layers often repeat their inner error's words; say them once.
        if !last.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        last = cause_text;
        source = cause.source();
    }
    text
}
