//! Logic's side on NATS: the bus that publishes each push on its target's subject, and the list of the gateways
//! that announce themselves.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::connection::State;
use bytes::Bytes;
use futures_util::StreamExt;
use herald_protocol::bus::{Accepted, Bus, Census, PushFuture, Query, QueryFuture, Refused, Target};
use herald_protocol::stats::{Announcement, HeardGateway, NatsBusName, NatsConnection, NatsStats, Stats};
use parking_lot::Mutex;
use prost::Message as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection::{NatsConfig, nats_state};
use super::history::{RoomStore, store_subject};
use super::metrics::NatsMetrics;
use super::subjects::{ANNOUNCE_SUBJECT, QUERY_SUBJECT, subject};
use crate::hop::{census_of, wire_push, wire_query};
use crate::pb;

/// How long a query waits for every gateway heard from to answer; past it the answer is `partial`.
pub const QUERY_WAIT: Duration = Duration::from_secs(1);

/// Logic's bus on NATS: publishes each push on its target's subject, and lists the gateways that announce
/// themselves.
pub struct NatsBus {
    client: async_nats::Client,
    publish_timeout: Duration,
    gateway_ttl: Duration,
    /// Gateways heard from: id → (when, what it said).
    gateways: Mutex<HashMap<String, (Instant, Announcement)>>,
    metrics: NatsMetrics,
    closed: AtomicBool,
    /// Room history, when kept: room pushes go through JetStream (see `history`).
    history: Option<RoomStore>,
}

impl NatsBus {
    /// A bus on `client` (storing room pushes in `history` when given); starts listening to the gateways'
    /// announcements (until `stop`).
    pub fn start(
        client: async_nats::Client,
        config: &NatsConfig,
        history: Option<RoomStore>,
        metrics: NatsMetrics,
        tracker: &TaskTracker,
        stop: CancellationToken,
    ) -> Arc<Self> {
        let bus = Arc::new(Self {
            client,
            publish_timeout: config.publish_timeout,
            gateway_ttl: config.gateway_ttl,
            gateways: Mutex::new(HashMap::new()),
            metrics,
            closed: AtomicBool::new(false),
            history,
        });
        tracker.spawn(Arc::clone(&bus).listen_to_gateways(stop));
        bus
    }

    /// Refuses every push from now on (shutdown).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    async fn listen_to_gateways(self: Arc<Self>, stop: CancellationToken) {
        let mut announcements = match self.client.subscribe(ANNOUNCE_SUBJECT).await {
            Ok(subscriber) => subscriber,
            Err(e) => {
                tracing::error!(error = %e, "cannot subscribe to gateway announcements");
                return;
            }
        };
        let mut prune = tokio::time::interval(self.gateway_ttl / 2);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = prune.tick() => self.prune(),
                message = announcements.next() => match message {
                    Some(message) => self.heard(&message.payload),
                    None => return,
                },
            }
        }
    }

    fn heard(&self, payload: &[u8]) {
        let announcement = match serde_json::from_slice::<Announcement>(payload) {
            Ok(announcement) => announcement,
            Err(error) => {
                tracing::debug!(%error, "ignoring an announcement that is not one");
                return;
            }
        };
        let mut gateways = self.gateways.lock();
        if announcement.leaving {
            if gateways.remove(&announcement.id).is_some() {
                tracing::info!(gateway = %announcement.id, "gateway left");
            }
        } else {
            let id = announcement.id.clone();
            if gateways.insert(id.clone(), (Instant::now(), announcement)).is_none() {
                tracing::info!(gateway = %id, "gateway joined");
            }
        }
        self.metrics.gateways_live.set(gateways.len() as i64);
    }

    fn prune(&self) {
        let mut gateways = self.gateways.lock();
        gateways.retain(|id, (seen, _)| {
            let alive = seen.elapsed() < self.gateway_ttl;
            if !alive {
                tracing::warn!(gateway = %id, "gateway stopped announcing; dropped from the list");
            }
            alive
        });
        self.metrics.gateways_live.set(gateways.len() as i64);
    }

    async fn publish(&self, target: Target, items: Vec<Bytes>) -> Result<Accepted, Refused> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Refused::ShuttingDown);
        }
        let state = self.client.connection_state();
        if state != State::Connected {
            self.metrics.publish("unavailable");
            return Err(Refused::Unavailable {
                retry_after_secs: 1,
                detail: format!("NATS is {}", nats_state(&state).label()),
            });
        }
        let count = items.len();
        let subject = subject(&target);
        if let (Target::Room(_), Some(history)) = (&target, &self.history) {
            // Answered 200 only once JetStream holds every item, with its offset.
            return match history
                .store(store_subject(&subject), &target, items, self.publish_timeout)
                .await
            {
                Ok(()) => {
                    self.metrics.publish("stored");
                    self.metrics.history_items.inc_by(count as u64);
                    Ok(Accepted {
                        items: count,
                        recipients: None,
                        gateways: None,
                    })
                }
                Err(error) => {
                    self.metrics.publish("store_failed");
                    Err(Refused::Unavailable {
                        retry_after_secs: 1,
                        detail: format!("room history (JetStream) did not take the push: {error}"),
                    })
                }
            };
        }
        let payload = encode(target, items);
        match tokio::time::timeout(self.publish_timeout, self.client.publish(subject, payload)).await {
            Ok(Ok(())) => {
                self.metrics.publish("published");
                Ok(Accepted {
                    items: count,
                    recipients: None,
                    gateways: None,
                })
            }
            Ok(Err(e)) => {
                self.metrics.publish("error");
                Err(Refused::Unavailable {
                    retry_after_secs: 1,
                    detail: format!("NATS publish failed: {e}"),
                })
            }
            Err(_) => {
                self.metrics.publish("timeout");
                Err(Refused::Unavailable {
                    retry_after_secs: 1,
                    detail: "NATS did not take the push in time".to_owned(),
                })
            }
        }
    }
}

impl NatsBus {
    /// Asks every gateway (a request on [`QUERY_SUBJECT`], answered by each on the request's inbox) and sums every
    /// answer that comes within [`QUERY_WAIT`], or until each gateway heard from has answered. `partial` when one
    /// of those did not; `503` when none did.
    async fn ask(&self, query: Query) -> Result<Census, Refused> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Refused::ShuttingDown);
        }
        let state = self.client.connection_state();
        if state != State::Connected {
            return Err(Refused::Unavailable {
                retry_after_secs: 1,
                detail: format!("NATS is {}", nats_state(&state).label()),
            });
        }
        let expected = self.live_gateways();
        let unavailable = |e: &dyn std::fmt::Display| Refused::Unavailable {
            retry_after_secs: 1,
            detail: format!("NATS query failed: {e}"),
        };
        let inbox = self.client.new_inbox();
        let mut answers = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| unavailable(&e))?;
        let payload = Bytes::from(wire_query(&query).encode_to_vec());
        self.client
            .publish_with_reply(QUERY_SUBJECT, inbox, payload)
            .await
            .map_err(|e| unavailable(&e))?;
        let deadline = Instant::now() + QUERY_WAIT;
        let mut census = Census::default();
        let mut answered = HashSet::new();
        // With no gateway heard from, answers are still taken until the deadline: one may have just started.
        while expected.is_empty() || !expected.is_subset(&answered) {
            let Ok(Some(message)) = tokio::time::timeout_at(deadline, answers.next()).await else {
                break;
            };
            let Ok(mut reply) = pb::QueryReply::decode(message.payload) else {
                continue;
            };
            // Every gateway that answers counts (one that has not announced itself yet holds connections too),
            // each once.
            if answered.insert(std::mem::take(&mut reply.gateway)) {
                census.add(census_of(reply));
            }
        }
        if !expected.is_empty() && expected.is_disjoint(&answered) {
            return Err(Refused::Unavailable {
                retry_after_secs: 1,
                detail: format!("none of the {} gateways answered the query", expected.len()),
            });
        }
        census.partial = !expected.is_subset(&answered);
        Ok(census)
    }

    /// The ids of the serving gateways heard from within `gateway_ttl`.
    fn live_gateways(&self) -> HashSet<String> {
        let gateways = self.gateways.lock();
        gateways
            .iter()
            .filter(|(_, (seen, announced))| seen.elapsed() < self.gateway_ttl && announced.serving)
            .map(|(id, _)| id.clone())
            .collect()
    }
}

fn encode(target: Target, items: Vec<Bytes>) -> Bytes {
    Bytes::from(wire_push(target, items).encode_to_vec())
}

impl Bus for NatsBus {
    fn push(&self, target: Target, items: Vec<Bytes>) -> PushFuture<'_> {
        Box::pin(self.publish(target, items))
    }

    fn query(&self, query: Query) -> QueryFuture<'_> {
        Box::pin(self.ask(query))
    }

    fn stats(&self) -> Stats {
        let gateways = self.gateways.lock();
        let live: Vec<HeardGateway> = gateways
            .values()
            .filter(|(seen, _)| seen.elapsed() < self.gateway_ttl)
            .map(|(seen, announced)| HeardGateway {
                announced: announced.clone(),
                last_seen_ms: seen.elapsed().as_millis() as u64,
            })
            .collect();
        Stats::Nats(NatsStats {
            bus: NatsBusName::Nats,
            nats: NatsConnection {
                state: nats_state(&self.client.connection_state()),
            },
            gateways_live: live.len() as u64,
            connections: live.iter().map(|g| g.announced.connections).sum(),
            gateways: live,
        })
    }
}
