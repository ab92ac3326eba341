//! Logic's end of the hop: the [`ClusterBus`] forwards every push to every gateway and answers with what they said.
//!
//! # One link per gateway
//! Each gateway has a [`Link`]: a bounded queue of pushes and one task that owns the gateway's HTTP/2 connection and
//! its single `Deliver` stream. The task sends pushes in queue order and matches the gateway's acks to them in the
//! same order (the gateway answers each push once, in order), so items for one room sent through one logic node
//! reach each connection in push order. A slow or dead gateway fills only its own queue.
//!
//! # What a push is answered
//! A push goes to every link that is up and has room in its queue, then waits (at most `ack_timeout`) for their
//! acks. Each gateway's answer is one of: accepted (its members are counted in `recipients`), refused (it delivers
//! nothing: link down, its queue here full, or the gateway's own queue full or shutting down), or unconfirmed (sent,
//! but the connection broke or the deadline passed before the ack: it may or may not deliver). The push API answers
//! 200 when any gateway accepted or may have, and 503 with the reasons when every gateway refused.
//!
//! # When a gateway goes away
//! Pushes still queued for it are answered refused at once; pushes in flight are answered unconfirmed. The link
//! reconnects with exponential backoff (100 ms doubling to 5 s, each wait jittered to between half and all of it),
//! and delivery resumes on the new connection without any action on logic.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use herald_protocol::bus::{Accepted, Bus, GatewayTally, PushFuture, Refused, Target};
use herald_protocol::stats::{self, ClusterStats, GatewayLink, GatewayStatus, Stats};
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Streaming;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::auth::SecretHeader;
use crate::pb::gateway_client::GatewayClient;
use crate::pb::{self, ack, push, refused};
use crate::{MAX_MESSAGE_BYTES, Secret};

/// First wait before reconnecting to a gateway; doubles per failed attempt.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// Longest wait between reconnect attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// Pushes sent on one stream and not yet acknowledged; past this the link stops taking from its queue.
const MAX_IN_FLIGHT: usize = 1024;
/// HTTP/2 pings find a gateway that vanished without closing its connection (a dead host, a cut network).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of logic's links to its gateways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The gateways' internal listeners, `host:port` each.
    pub gateways: Vec<String>,
    /// Pushes waiting for one gateway (queued and in flight); a push that finds it full is refused for that gateway.
    pub queue_pushes: usize,
    /// Longest wait for the gateways' acks before the push API answers; late gateways count as unconfirmed.
    pub ack_timeout: Duration,
    /// How often each gateway's status (connections, rooms) is fetched.
    pub status_interval: Duration,
    /// Longest wait for a TCP (and TLS) connection to a gateway.
    pub connect_timeout: Duration,
    /// The shared secret sent on every call, if the gateways require one.
    pub secret: Option<Secret>,
    /// PEM certificate(s) to trust for TLS on the hop; `None` means plain HTTP/2.
    pub tls_ca_pem: Option<Vec<u8>>,
}

/// Logic's bus: forwards each push to every gateway. Create with [`ClusterBus::new`], then [`ClusterBus::spawn`].
pub struct ClusterBus {
    links: Vec<Arc<Link>>,
    /// Each link's queue receiver, until [`ClusterBus::spawn`] hands it to the link's task.
    receivers: Mutex<Vec<mpsc::Receiver<Forward>>>,
    ack_timeout: Duration,
    /// Set on shutdown: pushes are refused from then on.
    closed: AtomicBool,
    /// Held while one push is offered to every link, so all gateways queue concurrent pushes in the same order.
    offering: Mutex<()>,
}

impl ClusterBus {
    /// Builds the links (nothing connects until [`ClusterBus::spawn`]). Fails on an address that is not
    /// `host:port`, or on a secret or certificate that cannot be used.
    pub fn new(config: &ClusterConfig, registry: &mut Registry) -> Result<Arc<Self>, String> {
        if config.gateways.is_empty() {
            return Err("gateways: herald logic needs at least one gateway (--gateways host:port,...)".to_owned());
        }
        let metrics = ClusterMetrics::register(registry);
        let header = SecretHeader::new(config.secret.as_ref())?;
        let mut links = Vec::new();
        let mut receivers = Vec::new();
        for (index, addr) in config.gateways.iter().enumerate() {
            if config.gateways[..index].contains(addr) {
                // Two links to one gateway would deliver every push twice.
                return Err(format!("gateways: `{addr}` is listed twice"));
            }
            let (queue, receiver) = mpsc::channel(config.queue_pushes);
            links.push(Arc::new(Link {
                addr: addr.clone(),
                endpoint: endpoint(addr, config)?,
                header: header.clone(),
                status_interval: config.status_interval,
                connect_timeout: config.connect_timeout,
                queue,
                capacity: config.queue_pushes,
                outstanding: AtomicUsize::new(0),
                up: AtomicBool::new(false),
                state: Mutex::new(LinkState::default()),
                metrics: LinkMetrics::new(&metrics, addr),
            }));
            receivers.push(receiver);
        }
        Ok(Arc::new(Self {
            links,
            receivers: Mutex::new(receivers),
            ack_timeout: config.ack_timeout,
            closed: AtomicBool::new(false),
            offering: Mutex::new(()),
        }))
    }

    /// Starts one task per gateway; they stop when `stop` is cancelled.
    pub fn spawn(self: &Arc<Self>, tracker: &TaskTracker, stop: CancellationToken) {
        let receivers = std::mem::take(&mut *self.receivers.lock());
        for (link, receiver) in self.links.iter().zip(receivers) {
            tracker.spawn(Arc::clone(link).run(receiver, stop.clone()));
        }
    }

    /// Refuses every push from now on (shutdown); pushes already forwarded still get their answers.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Gateways whose link is up.
    pub fn gateways_up(&self) -> usize {
        self.links.iter().filter(|link| link.is_up()).count()
    }

    async fn forward(&self, target: Target, items: Vec<Bytes>) -> Result<Accepted, Refused> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Refused::ShuttingDown);
        }
        let item_count = items.len();
        let push = pb::Push {
            target: Some(match target {
                Target::Room(room) => push::Target::Room(room.to_string()),
                Target::All => push::Target::All(pb::Everyone {}),
            }),
            items,
        };
        let deadline = Instant::now() + self.ack_timeout;
        let mut waiting = Vec::with_capacity(self.links.len());
        let mut answers = Vec::with_capacity(self.links.len());
        {
            // Offering never waits (a full queue is a refusal), so this lock is held for microseconds.
            let _in_order = self.offering.lock();
            for link in &self.links {
                match link.offer(push.clone()) {
                    Ok(reply) => waiting.push((link, reply)),
                    Err(outcome) => answers.push((link, outcome)),
                }
            }
        }
        // Every link works in its own task, so waiting for them one after another costs no more than the slowest.
        for (link, reply) in waiting {
            let outcome = match tokio::time::timeout_at(deadline, reply).await {
                Ok(Ok(Reply::Ack(ack))) => Outcome::from_ack(&ack),
                Ok(Ok(Reply::NotSent)) => Outcome::unreachable(),
                Ok(Ok(Reply::Lost) | Err(_)) => {
                    Outcome::Unconfirmed("the connection broke before the gateway answered")
                }
                Err(_) => Outcome::Unconfirmed("no answer within ack_timeout"),
            };
            answers.push((link, outcome));
        }
        self.conclude(item_count, answers)
    }

    fn conclude(&self, items: usize, answers: Vec<(&Arc<Link>, Outcome)>) -> Result<Accepted, Refused> {
        let mut tally = GatewayTally::default();
        let mut recipients = 0;
        let mut details = Vec::new();
        let mut retry_after_secs = 1;
        let mut too_many_items = None::<u64>;
        // Each result was counted where it was decided (the link), even if this answer was never awaited.
        for (link, outcome) in &answers {
            match outcome {
                Outcome::Accepted { recipients: r } => {
                    tally.accepted += 1;
                    recipients += *r as usize;
                }
                Outcome::Refused {
                    reason,
                    retry_after,
                    limit,
                } => {
                    tally.refused += 1;
                    retry_after_secs = retry_after_secs.max(*retry_after);
                    if let Some(limit) = limit {
                        too_many_items = Some(too_many_items.map_or(*limit, |l| l.min(*limit)));
                    }
                    let why = match (*reason, link.last_error()) {
                        ("unreachable", Some(error)) => format!("unreachable: {error}"),
                        (reason, _) => reason.replace('_', " "),
                    };
                    details.push(format!("{}: {why}", link.addr));
                }
                Outcome::Unconfirmed(why) => {
                    tally.unconfirmed += 1;
                    tracing::debug!(gateway = %link.addr, why, "push unconfirmed");
                }
            }
        }
        if tally.accepted + tally.unconfirmed > 0 {
            return Ok(Accepted {
                items,
                recipients: Some(recipients),
                gateways: Some(tally),
            });
        }
        match too_many_items {
            // Every gateway refused it as too large: retrying cannot help.
            Some(limit) if all_too_large(&answers) => Err(Refused::TooManyItems { limit: limit as usize }),
            _ => Err(Refused::Unavailable {
                retry_after_secs,
                detail: format!("no gateway took the push ({})", details.join("; ")),
            }),
        }
    }
}

fn all_too_large(answers: &[(&Arc<Link>, Outcome)]) -> bool {
    answers
        .iter()
        .all(|(_, outcome)| matches!(outcome, Outcome::Refused { limit: Some(_), .. }))
}

impl Bus for ClusterBus {
    fn push(&self, target: Target, items: Vec<Bytes>) -> PushFuture<'_> {
        Box::pin(self.forward(target, items))
    }

    fn stats(&self) -> Stats {
        let gateways: Vec<GatewayLink> = self.links.iter().map(|link| link.stats()).collect();
        let connections = gateways
            .iter()
            .filter_map(|link| link.status.as_ref())
            .map(|status| status.hub.connections)
            .sum();
        Stats::Cluster(ClusterStats {
            gateways_total: self.links.len() as u64,
            gateways_up: self.gateways_up() as u64,
            connections,
            gateways,
        })
    }
}

fn endpoint(addr: &str, config: &ClusterConfig) -> Result<Endpoint, String> {
    let host = addr
        .rsplit_once(':')
        .filter(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        .map(|(host, _)| host.trim_start_matches('[').trim_end_matches(']'))
        .ok_or_else(|| format!("gateways: `{addr}` is not host:port"))?;
    let scheme = if config.tls_ca_pem.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| format!("gateways: `{addr}`: {e}"))?
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    if let Some(ca) = &config.tls_ca_pem {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name(host);
        endpoint = endpoint.tls_config(tls).map_err(|e| format!("rpc_tls_ca: {e}"))?;
    }
    Ok(endpoint)
}

/// One push on its way to one gateway, with where its answer goes.
struct Forward {
    push: pb::Push,
    reply: oneshot::Sender<Reply>,
}

enum Reply {
    /// The gateway's answer.
    Ack(pb::Ack),
    /// Never sent: the link went down while the push waited in its queue.
    NotSent,
    /// Sent, but the stream broke before the gateway answered.
    Lost,
}

/// One gateway's answer to one push, as logic sums it up.
enum Outcome {
    Accepted {
        recipients: u64,
    },
    Refused {
        reason: &'static str,
        retry_after: u32,
        /// The gateway's item limit, when it refused the push as too large.
        limit: Option<u64>,
    },
    Unconfirmed(&'static str),
}

impl Outcome {
    fn unreachable() -> Self {
        Self::Refused {
            reason: "unreachable",
            retry_after: 1,
            limit: None,
        }
    }

    fn from_ack(ack: &pb::Ack) -> Self {
        match &ack.result {
            Some(ack::Result::Accepted(accepted)) => Self::Accepted {
                recipients: accepted.recipients,
            },
            Some(ack::Result::Refused(refusal)) => {
                let (reason, limit) = match refusal.reason() {
                    refused::Reason::QueueFull => ("gateway_queue_full", None),
                    refused::Reason::ShuttingDown => ("gateway_shutting_down", None),
                    refused::Reason::TooManyItems => ("gateway_too_many_items", Some(refusal.limit)),
                    refused::Reason::Invalid | refused::Reason::Unspecified => ("gateway_refused", None),
                };
                Self::Refused {
                    reason,
                    retry_after: refusal.retry_after_secs.max(1),
                    limit,
                }
            }
            None => Self::Refused {
                reason: "gateway_refused",
                retry_after: 1,
                limit: None,
            },
        }
    }

    fn result_label(&self) -> &'static str {
        match self {
            Self::Accepted { .. } => "accepted",
            Self::Refused { reason, .. } => reason,
            Self::Unconfirmed(_) => "unconfirmed",
        }
    }
}

/// How one connection to a gateway ended.
enum StreamEnd {
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
struct Link {
    addr: String,
    endpoint: Endpoint,
    header: SecretHeader,
    status_interval: Duration,
    connect_timeout: Duration,
    queue: mpsc::Sender<Forward>,
    /// Most pushes outstanding (queued or in flight, not yet answered): `gateway_queue`.
    capacity: usize,
    outstanding: AtomicUsize,
    /// The `Deliver` stream is open: pushes are taken into the queue only then.
    up: AtomicBool,
    state: Mutex<LinkState>,
    metrics: LinkMetrics,
}

#[derive(Default)]
struct LinkState {
    /// When the link last went up or down.
    since: Option<Instant>,
    last_error: Option<String>,
    /// The gateway's last reported status.
    status: Option<GatewayStatus>,
}

type Client = GatewayClient<InterceptedService<Channel, SecretHeader>>;

impl Link {
    fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn last_error(&self) -> Option<String> {
        self.state.lock().last_error.clone()
    }

    /// Queues a push for this gateway, or says at once why it cannot.
    fn offer(&self, push: pb::Push) -> Result<oneshot::Receiver<Reply>, Outcome> {
        if !self.is_up() {
            self.metrics.count("unreachable");
            return Err(Outcome::unreachable());
        }
        if self.outstanding.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.outstanding.fetch_sub(1, Ordering::AcqRel);
            self.metrics.count("queue_full");
            return Err(Outcome::Refused {
                reason: "queue_full",
                retry_after: 1,
                limit: None,
            });
        }
        self.metrics.queue_depth.inc();
        let (reply, answer) = oneshot::channel();
        match self.queue.try_send(Forward { push, reply }) {
            Ok(()) => Ok(answer),
            // The channel holds `capacity` and `outstanding` never exceeds it: only a closed channel refuses.
            Err(_) => {
                self.release();
                self.metrics.count("unreachable");
                Err(Outcome::unreachable())
            }
        }
    }

    fn release(&self) {
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
        self.metrics.queue_depth.dec();
    }

    /// Answers one outstanding push and counts how it ended.
    fn answer(&self, reply_to: oneshot::Sender<Reply>, reply: Reply) {
        self.release();
        self.metrics.count(match &reply {
            Reply::Ack(ack) => Outcome::from_ack(ack).result_label(),
            Reply::NotSent => "unreachable",
            Reply::Lost => "unconfirmed",
        });
        // The caller may have stopped waiting (ack_timeout, or the HTTP client left); it was counted anyway.
        let _ = reply_to.send(reply);
    }

    /// Connects, streams, and reconnects with backoff, until `stop`.
    async fn run(self: Arc<Self>, mut queue: mpsc::Receiver<Forward>, stop: CancellationToken) {
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
    async fn open(&self) -> Result<(Client, mpsc::Sender<pb::Push>, Streaming<pb::Ack>), String> {
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
    async fn connect_and_stream(
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

        // Status is fetched beside the stream, on the same HTTP/2 connection.
        let status_stop = stop.child_token();
        let _stop_status = status_stop.clone().drop_guard();
        tokio::spawn(Arc::clone(self).poll_status(client, status_stop));
        self.set_up();
        let up_since = Instant::now();

        let mut in_flight: VecDeque<oneshot::Sender<Reply>> = VecDeque::new();
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

    fn set_up(&self) {
        self.up.store(true, Ordering::Release);
        self.metrics.up.set(1);
        let mut state = self.state.lock();
        state.since = Some(Instant::now());
        tracing::info!(gateway = %self.addr, "gateway link up");
        state.last_error = None;
    }

    fn set_down(&self, error: String, stopping: bool) {
        self.up.store(false, Ordering::Release);
        self.metrics.up.set(0);
        self.metrics.connections.set(0);
        self.metrics.rooms.set(0);
        let mut state = self.state.lock();
        // What the gateway last reported no longer holds: it is not reachable through this link.
        state.status = None;
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
    async fn poll_status(self: Arc<Self>, mut client: Client, stop: CancellationToken) {
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

    fn stats(&self) -> GatewayLink {
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

/// The wait before reconnect attempt `failures` (1-based): doubling from [`RECONNECT_MIN`] up to [`RECONNECT_MAX`],
/// jittered to between half and all of it so that logic nodes restarted together do not reconnect in step.
pub(crate) fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    let full = RECONNECT_MIN.saturating_mul(1 << exponent).min(RECONNECT_MAX);
    full.mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// A gRPC status as an operator should read it.
fn describe(status: &tonic::Status) -> String {
    match status.code() {
        tonic::Code::Unauthenticated => format!("the gateway refused the cluster secret ({})", status.message()),
        code => format!("{code:?}: {}", status.message()),
    }
}

/// An error with its causes: tonic's transport errors say little on their own ("transport error").
fn error_chain(error: &dyn std::error::Error) -> String {
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GatewayLabel {
    gateway: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ForwardLabels {
    gateway: String,
    result: &'static str,
}

/// The cluster's metrics on logic (prefix `herald_cluster_`), labelled by gateway address.
#[derive(Clone, Default)]
struct ClusterMetrics {
    up: Family<GatewayLabel, Gauge>,
    connections: Family<GatewayLabel, Gauge>,
    rooms: Family<GatewayLabel, Gauge>,
    queue_depth: Family<GatewayLabel, Gauge>,
    disconnects: Family<GatewayLabel, Counter>,
    forwards: Family<ForwardLabels, Counter>,
}

impl ClusterMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "herald_cluster_gateway_up",
            "1 while logic's stream to the gateway is open",
            metrics.up.clone(),
        );
        registry.register(
            "herald_cluster_gateway_connections",
            "WebSocket connections on the gateway, as it last reported",
            metrics.connections.clone(),
        );
        registry.register(
            "herald_cluster_gateway_rooms",
            "Rooms with members on the gateway, as it last reported",
            metrics.rooms.clone(),
        );
        registry.register(
            "herald_cluster_gateway_queue_depth",
            "Pushes queued or in flight to the gateway, not yet answered",
            metrics.queue_depth.clone(),
        );
        registry.register(
            "herald_cluster_gateway_disconnects",
            "Times the link to the gateway went down or a connect attempt failed with a new error",
            metrics.disconnects.clone(),
        );
        registry.register(
            "herald_cluster_forwards",
            "Pushes forwarded, by gateway and result: accepted, unconfirmed, unreachable, queue_full (logic's queue), \
             gateway_queue_full, gateway_shutting_down, gateway_too_many_items, gateway_refused",
            metrics.forwards.clone(),
        );
        metrics
    }
}

/// One gateway's handles into [`ClusterMetrics`], taken once.
struct LinkMetrics {
    /// One counter per result, taken from the family once: counting a push allocates nothing.
    forwards: Vec<(&'static str, Counter)>,
    up: Gauge,
    connections: Gauge,
    rooms: Gauge,
    queue_depth: Gauge,
    disconnects: Counter,
}

/// Every result a forwarded push can have (the `result` label of `herald_cluster_forwards_total`).
const FORWARD_RESULTS: [&str; 8] = [
    "accepted",
    "unreachable",
    "queue_full",
    "unconfirmed",
    "gateway_queue_full",
    "gateway_shutting_down",
    "gateway_too_many_items",
    "gateway_refused",
];

impl LinkMetrics {
    /// Counts one push's result for this gateway.
    fn count(&self, result: &'static str) {
        if let Some((_, counter)) = self.forwards.iter().find(|(name, _)| *name == result) {
            counter.inc();
        }
    }

    fn new(metrics: &ClusterMetrics, addr: &str) -> Self {
        let label = GatewayLabel {
            gateway: addr.to_owned(),
        };
        let forward = |result: &'static str| {
            let labels = ForwardLabels {
                gateway: addr.to_owned(),
                result,
            };
            (result, metrics.forwards.get_or_create(&labels).clone())
        };
        Self {
            forwards: FORWARD_RESULTS.into_iter().map(forward).collect(),
            up: metrics.up.get_or_create(&label).clone(),
            connections: metrics.connections.get_or_create(&label).clone(),
            rooms: metrics.rooms.get_or_create(&label).clone(),
            queue_depth: metrics.queue_depth.get_or_create(&label).clone(),
            disconnects: metrics.disconnects.get_or_create(&label).clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_result_label_has_a_counter() {
        let outcomes = [
            Outcome::unreachable(),
            Outcome::Accepted { recipients: 0 },
            Outcome::Unconfirmed("test"),
        ];
        for outcome in outcomes {
            assert!(FORWARD_RESULTS.contains(&outcome.result_label()));
        }
        for reason in 0..=4 {
            let ack = pb::Ack {
                result: Some(ack::Result::Refused(pb::Refused {
                    reason,
                    retry_after_secs: 1,
                    limit: 1,
                })),
            };
            assert!(FORWARD_RESULTS.contains(&Outcome::from_ack(&ack).result_label()));
        }
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        for failures in 1..40 {
            let full = RECONNECT_MIN
                .saturating_mul(1 << (failures - 1).min(16))
                .min(RECONNECT_MAX);
            let wait = backoff(failures);
            assert!(wait >= full / 2 && wait <= full, "{failures}: {wait:?} vs {full:?}");
        }
        assert!(backoff(100) <= RECONNECT_MAX);
    }

    #[test]
    fn addresses_must_be_host_and_port() {
        let config = ClusterConfig {
            gateways: vec![],
            queue_pushes: 1,
            ack_timeout: Duration::from_secs(1),
            status_interval: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            secret: None,
            tls_ca_pem: None,
        };
        assert!(endpoint("127.0.0.1:7788", &config).is_ok());
        assert!(endpoint("gw-1.internal:7788", &config).is_ok());
        assert!(endpoint("[::1]:7788", &config).is_ok());
        for bad in ["127.0.0.1", ":7788", "host:port", "host:99999"] {
            let error = endpoint(bad, &config).unwrap_err();
            assert!(error.starts_with("gateways:"), "{bad}: {error}");
        }
    }
}
