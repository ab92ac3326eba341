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
//! # Presence and disconnects
//! A query (`GET /rooms/{room}`, `GET /users/{user}`, `POST /disconnect/user`) is asked of every gateway at once,
//! beside the push stream on the same connection, and the answers are summed (users united). A gateway whose link
//! is down, or that does not answer within `ack_timeout`, makes the answer `partial`.
//!
//! # When a gateway goes away
//! Pushes still queued for it are answered refused at once; pushes in flight are answered unconfirmed. The link
//! reconnects with exponential backoff (100 ms doubling to 5 s, each wait jittered to between half and all of it),
//! and delivery resumes on the new connection without any action on logic.
//!
//! # Layout
//! - this file: the bus, and how one push's answers from every gateway become one answer.
//! - `link`: one gateway's queue, connection, stream and reconnects.
//! - `outcome`: one gateway's answer to one push.
//! - `metrics`: `herald_cluster_*`.

mod link;
mod metrics;
mod outcome;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use herald_protocol::bus::{Accepted, Bus, Census, GatewayTally, PushFuture, Query, QueryFuture, Refused, Target};
use herald_protocol::stats::{ClusterStats, GatewayLink, Stats};
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use self::link::{Forward, Link, LinkState, Reply};
use self::metrics::{ClusterMetrics, LinkMetrics};
use self::outcome::Outcome;
use crate::Secret;
use crate::auth::SecretHeader;
use crate::hop::{census_of, wire_push, wire_query};

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
    /// Bytes of pushes waiting for one gateway (queued and in flight, each counted by its encoded size); a push that
    /// would go past it is refused for that gateway, unless nothing waits.
    pub queue_bytes: usize,
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

/// Settings of the links that cannot be used; each names its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// No gateway configured.
    #[error("gateways: herald logic needs at least one gateway (--gateways host:port,...)")]
    NoGateways,
    /// One gateway listed twice (it would get every push twice).
    #[error("gateways: `{0}` is listed twice")]
    ListedTwice(String),
    /// An address that is not `host:port`.
    #[error("gateways: `{0}` is not host:port")]
    NotHostPort(String),
    /// An address the HTTP/2 client does not take.
    #[error("gateways: `{addr}`: {reason}")]
    BadAddress {
        /// The address as given.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The CA certificate cannot be used.
    #[error("rpc_tls_ca: {0}")]
    Tls(String),
    /// A secret that cannot be sent as a header.
    #[error("cluster_secret: must be printable ASCII")]
    Secret,
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
    pub fn new(config: &ClusterConfig, registry: &mut Registry) -> Result<Arc<Self>, ConfigError> {
        if config.gateways.is_empty() {
            return Err(ConfigError::NoGateways);
        }
        let metrics = ClusterMetrics::register(registry);
        let header = SecretHeader::new(config.secret.as_ref()).map_err(|_| ConfigError::Secret)?;
        let mut links = Vec::new();
        let mut receivers = Vec::new();
        for (index, addr) in config.gateways.iter().enumerate() {
            if config.gateways[..index].contains(addr) {
                // Two links to one gateway would deliver every push twice.
                return Err(ConfigError::ListedTwice(addr.clone()));
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
                capacity_bytes: config.queue_bytes,
                outstanding_bytes: AtomicUsize::new(0),
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
        let push = wire_push(target, items);
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

    async fn ask(&self, query: Query) -> Result<Census, Refused> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Refused::ShuttingDown);
        }
        let request = wire_query(&query);
        let asked = self.links.iter().map(|link| {
            let request = request.clone();
            async move { tokio::time::timeout(self.ack_timeout, link.query(request)).await }
        });
        let answers = futures_util::future::join_all(asked).await;
        if answers.iter().all(|answer| !matches!(answer, Ok(Some(_)))) {
            return Err(Refused::Unavailable {
                retry_after_secs: 1,
                detail: "no gateway answered the query".to_owned(),
            });
        }
        let mut census = Census::default();
        for answer in answers {
            match answer {
                Ok(Some(reply)) => census.add(census_of(reply)),
                _ => census.partial = true,
            }
        }
        Ok(census)
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
                    detail,
                } => {
                    tally.refused += 1;
                    retry_after_secs = retry_after_secs.max(*retry_after);
                    if let Some(limit) = limit {
                        too_many_items = Some(too_many_items.map_or(*limit, |l| l.min(*limit)));
                    }
                    let why = match (*reason, link.last_error(), detail) {
                        ("unreachable", Some(error), _) => format!("unreachable: {error}"),
                        (reason, _, Some(detail)) => format!("{}: {detail}", reason.replace('_', " ")),
                        (reason, _, None) => reason.replace('_', " "),
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

    fn query(&self, query: Query) -> QueryFuture<'_> {
        Box::pin(self.ask(query))
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

fn endpoint(addr: &str, config: &ClusterConfig) -> Result<Endpoint, ConfigError> {
    let host = addr
        .rsplit_once(':')
        .filter(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        .map(|(host, _)| host.trim_start_matches('[').trim_end_matches(']'))
        .ok_or_else(|| ConfigError::NotHostPort(addr.to_owned()))?;
    let scheme = if config.tls_ca_pem.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| ConfigError::BadAddress {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    if let Some(ca) = &config.tls_ca_pem {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name(host);
        endpoint = endpoint.tls_config(tls).map_err(|e| ConfigError::Tls(e.to_string()))?;
    }
    Ok(endpoint)
}

#[cfg(test)]
mod tests {
    use super::metrics::FORWARD_RESULTS;
    use super::*;
    use crate::pb::{self, ack};

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
        for reason in 0..=5 {
            let ack = pb::Ack {
                result: Some(ack::Result::Refused(pb::Refused {
                    reason,
                    retry_after_secs: 1,
                    limit: 1,
                    detail: String::new(),
                })),
            };
            assert!(FORWARD_RESULTS.contains(&Outcome::from_ack(&ack).result_label()));
        }
    }

    #[test]
    fn a_gateway_that_lacks_its_store_is_unavailable_not_shutting_down() {
        let ack = pb::Ack {
            result: Some(ack::Result::Refused(pb::Refused {
                reason: pb::refused::Reason::Unavailable as i32,
                retry_after_secs: 1,
                limit: 0,
                detail: "room history is kept in JetStream".to_owned(),
            })),
        };
        let Outcome::Refused {
            reason,
            retry_after,
            limit,
            detail,
        } = Outcome::from_ack(&ack)
        else {
            panic!("a refusal")
        };
        assert_eq!((reason, retry_after, limit), ("gateway_unavailable", 1, None));
        assert_eq!(detail.as_deref(), Some("room history is kept in JetStream"));
    }

    #[test]
    fn addresses_must_be_host_and_port() {
        let config = ClusterConfig {
            gateways: vec![],
            queue_pushes: 1,
            queue_bytes: 1,
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
            let error = endpoint(bad, &config).unwrap_err().to_string();
            assert!(error.starts_with("gateways:"), "{bad}: {error}");
        }
    }
}
