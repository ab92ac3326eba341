//! A gateway's side on NATS: subscriptions that follow the rooms and users its hub holds, the broadcast
//! subscription, the answers to presence queries, and the announcements.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use bytes::Bytes;
use futures_util::StreamExt;
use herald_hub::{Hub, Interest, Recipient};
use herald_protocol::bus::Target;
use herald_protocol::stats::Announcement;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection::{NatsConfig, NatsError};
use super::metrics::NatsMetrics;
use super::subjects::{ALL_SUBJECT, ANNOUNCE_SUBJECT, QUERY_SUBJECT, subject};
use crate::hop;
use crate::pb;

/// An announcement as it travels on NATS: JSON, read by logic (and by operators with `nats sub herald.gateways`).
pub(super) fn encode_announcement(announcement: &Announcement) -> Bytes {
    Bytes::from(serde_json::to_vec(announcement).expect("an announcement serializes"))
}

/// What a gateway says about itself in its announcements.
#[derive(Debug, Clone)]
pub struct Announce {
    /// Unique while the process lives: host, process id, WebSocket address and the process's other listener.
    pub id: String,
    /// The gateway's WebSocket listener, as clients should reach it.
    pub ws_addr: String,
}

/// A gateway's side on NATS: subscriptions that follow the hub's rooms, the broadcast subscription, and the
/// announcements. Runs until `stop`, then announces that it leaves.
pub fn spawn_gateway_feed<R: Recipient>(
    client: async_nats::Client,
    hub: Arc<Hub<R>>,
    announce: Announce,
    config: &NatsConfig,
    metrics: NatsMetrics,
    tracker: &TaskTracker,
    stop: CancellationToken,
) -> Result<(), NatsError> {
    let interest = hub.watch_interest().ok_or(NatsError::InterestWatched)?;
    let feed = Arc::new(Feed {
        id: announce.id.clone(),
        probe_subject: format!("herald.probe.{:016x}", fastrand::u64(..)),
        client,
        hub,
        metrics,
        tracker: tracker.clone(),
    });
    tracker.spawn(Arc::clone(&feed).answer_probes(stop.clone()));
    tracker.spawn(Arc::clone(&feed).follow(ALL_SUBJECT.to_owned(), "all", stop.clone()));
    tracker.spawn(Arc::clone(&feed).answer_queries(stop.clone()));
    tracker.spawn(Arc::clone(&feed).follow_interest(interest, stop.clone()));
    tracker.spawn(feed.announce(announce, config.announce_interval, stop));
    Ok(())
}

struct Feed<R> {
    /// The id this gateway announces itself with; its answers to queries carry it.
    id: String,
    /// This gateway's own subject, answered by itself: a request to it comes back only after the server has
    /// processed everything this connection sent before it (see [`Feed::confirm`]).
    probe_subject: String,
    client: async_nats::Client,
    hub: Arc<Hub<R>>,
    metrics: NatsMetrics,
    tracker: TaskTracker,
}

impl<R: Recipient> Feed<R> {
    /// Subscribes to a room (or user) when its first member joins and unsubscribes when its last leaves.
    async fn follow_interest(
        self: Arc<Self>,
        mut interest: mpsc::UnboundedReceiver<Interest>,
        stop: CancellationToken,
    ) {
        let mut rooms: HashMap<Target, CancellationToken> = HashMap::new();
        // Rooms and users joined before the watch began (none when the feed starts with the gateway).
        for topic in self.hub.topics_with_members() {
            self.subscribe(&mut rooms, topic, &stop);
        }
        loop {
            let change = tokio::select! {
                () = stop.cancelled() => break,
                change = interest.recv() => match change {
                    Some(change) => change,
                    None => break,
                },
            };
            if change.wanted {
                self.subscribe(&mut rooms, change.topic, &stop);
            } else if let Some(unsubscribe) = rooms.remove(&change.topic) {
                unsubscribe.cancel();
            }
        }
        for unsubscribe in rooms.into_values() {
            unsubscribe.cancel();
        }
    }

    fn subscribe(
        self: &Arc<Self>,
        rooms: &mut HashMap<Target, CancellationToken>,
        topic: Target,
        stop: &CancellationToken,
    ) {
        let unsubscribe = stop.child_token();
        let kind = if matches!(topic, Target::User(_)) {
            "user"
        } else {
            "room"
        };
        let subject = subject(&topic);
        if let Some(previous) = rooms.insert(topic, unsubscribe.clone()) {
            previous.cancel();
        }
        self.tracker.spawn(Arc::clone(self).follow(subject, kind, unsubscribe));
    }

    /// Hands every message on `subject` to the hub, in order, until `unsubscribe`.
    async fn follow(self: Arc<Self>, subject: String, kind: &'static str, unsubscribe: CancellationToken) {
        let mut subscriber = match self.client.subscribe(subject.clone()).await {
            Ok(subscriber) => subscriber,
            Err(e) => {
                // Only when the client itself is closed; the room's members then get nothing from NATS.
                tracing::error!(%subject, error = %e, "cannot subscribe");
                self.metrics.event_named("subscribe_failed");
                return;
            }
        };
        // The gauge counts only subscriptions the server has confirmed: from then on this gateway gets the
        // subject's messages.
        let confirmed = kind != "all"
            && tokio::select! {
                confirmed = self.confirm() => confirmed,
                () = unsubscribe.cancelled() => false,
            };
        if confirmed {
            self.metrics.subscriptions.inc();
        }
        loop {
            tokio::select! {
                biased;
                () = unsubscribe.cancelled() => {
                    if confirmed {
                        self.metrics.subscriptions.dec();
                    }
                    let _ = subscriber.unsubscribe().await;
                    return;
                }
                message = subscriber.next() => match message {
                    Some(message) => self.deliver(kind, message.payload),
                    None => {
                        if confirmed {
                            self.metrics.subscriptions.dec();
                        }
                        return;
                    }
                },
            }
        }
    }

    /// Answers every presence query and disconnect on [`QUERY_SUBJECT`] from the hub.
    async fn answer_queries(self: Arc<Self>, stop: CancellationToken) {
        let Ok(mut queries) = self.client.subscribe(QUERY_SUBJECT).await else {
            return;
        };
        loop {
            let query = tokio::select! {
                () = stop.cancelled() => return,
                query = queries.next() => match query {
                    Some(query) => query,
                    None => return,
                },
            };
            let (Some(reply), Ok(request)) = (query.reply, pb::QueryRequest::decode(query.payload)) else {
                self.metrics.refused("undecodable");
                continue;
            };
            let Some(mut answer) = hop::answer(&self.hub, request) else {
                self.metrics.refused("invalid");
                continue;
            };
            answer.gateway = self.id.clone();
            if let Err(error) = self.client.publish(reply, Bytes::from(answer.encode_to_vec())).await {
                // Too large for NATS's max_payload (a room's users are listed), or the connection is gone: logic
                // then says `partial`.
                tracing::warn!(%error, "cannot answer a presence query");
                self.metrics.event_named("query_answer_failed");
            }
        }
    }

    /// Answers requests on the probe subject (for [`Feed::confirm`]).
    async fn answer_probes(self: Arc<Self>, stop: CancellationToken) {
        let Ok(mut probes) = self.client.subscribe(self.probe_subject.clone()).await else {
            return;
        };
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                probe = probes.next() => match probe {
                    Some(probe) => {
                        if let Some(reply) = probe.reply {
                            let _ = self.client.publish(reply, Bytes::new()).await;
                        }
                    }
                    None => return,
                },
            }
        }
    }

    /// Waits until the server has processed what this connection sent so far (a subscription, say). NATS handles
    /// one connection's messages in order, so the answer to a request sent now proves it; a flush alone only
    /// proves the bytes left this process. False if NATS does not answer for a while (it is down: the client
    /// resubscribes everything when it is back).
    async fn confirm(&self) -> bool {
        for _ in 0..50 {
            let request = self.client.request(self.probe_subject.clone(), Bytes::new());
            match tokio::time::timeout(Duration::from_secs(1), request).await {
                Ok(Ok(_)) => return true,
                // No responder yet (the probe subscription itself is on its way) or no answer: try again.
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        false
    }

    fn deliver(&self, kind: &'static str, payload: Bytes) {
        self.metrics.received(kind);
        let Ok(push) = pb::Push::decode(payload) else {
            self.metrics.refused("undecodable");
            return;
        };
        if let Err(refusal) = hop::take(&self.hub, push) {
            self.metrics.refused(refusal.reason.label());
        }
    }

    /// Announces the gateway every `every` until `stop`, then once more to say it leaves.
    async fn announce(self: Arc<Self>, who: Announce, every: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let status = Announcement {
                id: who.id.clone(),
                leaving: false,
                ws_addr: who.ws_addr.clone(),
                serving: self.hub.is_open(),
                connections: self.hub.connections() as u64,
                rooms: self.hub.rooms(),
                subscriptions: self.metrics.subscriptions.get().max(0) as u64,
                pending_items: self.hub.pending_items(),
            };
            // Not connected: the announcement would only wait in the client's buffer; the next one will do.
            if self.client.connection_state() == State::Connected {
                let _ = self
                    .client
                    .publish(ANNOUNCE_SUBJECT, encode_announcement(&status))
                    .await;
            }
        }
        let leaving = Announcement {
            id: who.id,
            leaving: true,
            ..Announcement::default()
        };
        let _ = self
            .client
            .publish(ANNOUNCE_SUBJECT, encode_announcement(&leaving))
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.flush()).await;
    }
}
