//! herald on NATS: logic publishes each push on its room's subject, and each gateway subscribes to exactly the
//! rooms it has members in, so a gateway receives none of the traffic of rooms it does not hold.
//!
//! # Subjects
//! - `herald.room.<token>`: one room. `<token>` is the room name itself when it is made only of ASCII letters,
//!   digits, `-` and `_`; otherwise `~` followed by the name's bytes in unpadded URL-safe base64 (`~` cannot start
//!   a plain token, so the two forms never collide). Room names are at most 256 bytes, tokens at most 343.
//! - `herald.all`: broadcasts; every gateway subscribes.
//! - `herald.gateways`: each gateway announces itself here every `announce_interval` (connections, rooms,
//!   subscriptions) and once more when it leaves; logic lists the gateways it heard from within `gateway_ttl`.
//!
//! A message is a `herald.cluster.v1.Push` (protobuf, the same as the gRPC hop): the items as logic validated
//! them, never parsed on the way.
//!
//! # Guarantees, and what NATS does not give
//! Items pushed to one room through one logic node reach each connection in push order: one logic node publishes
//! on one NATS connection, NATS keeps a publisher's order per subject, and a gateway handles each room's
//! subscription in one task. Core NATS delivers at most once: a push published as NATS goes down can be lost
//! without logic knowing. While logic's NATS connection is down it answers pushes 503. A gateway that cannot keep
//! up with a subscription loses messages in the client (counted as `slow_consumer` events), and a push its hub
//! refuses is counted by reason: nothing is dropped without a count.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::connection::State;
use base64::Engine;
use bytes::Bytes;
use futures_util::StreamExt;
use herald_hub::{Hub, Interest, Recipient};
use herald_protocol::bus::{Accepted, Bus, PushFuture, Refused, Target};
use herald_protocol::stats::{Announcement, HeardGateway, NatsBusName, NatsConnection, NatsState, NatsStats, Stats};
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::gateway::take;

use crate::pb::{self, ack, push, refused};
pub use async_nats::Client;

/// Subject of broadcasts.
pub const ALL_SUBJECT: &str = "herald.all";
/// Subject of the gateways' announcements.
pub const ANNOUNCE_SUBJECT: &str = "herald.gateways";
const ROOM_PREFIX: &str = "herald.room.";

/// Settings of herald on NATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// The NATS server(s): `nats://host:port`, several separated by commas.
    pub url: String,
    /// How often a gateway announces itself.
    pub announce_interval: Duration,
    /// Logic forgets a gateway it has not heard from for this long.
    pub gateway_ttl: Duration,
    /// Longest a push waits to be handed to the NATS client before it is answered 503.
    pub publish_timeout: Duration,
}

/// The subject of a push's target (see the module docs for the encoding of room names).
pub fn subject(target: &Target) -> String {
    match target {
        Target::Room(room) => room_subject(room),
        Target::All => ALL_SUBJECT.to_owned(),
    }
}

fn room_subject(room: &str) -> String {
    let plain = room
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain && !room.is_empty() {
        format!("{ROOM_PREFIX}{room}")
    } else {
        format!(
            "{ROOM_PREFIX}~{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(room)
        )
    }
}

/// Connects to NATS, retrying in the background when it is not reachable yet: herald starts, and serves its
/// connected clients, whether or not NATS is up. Events (connects, disconnects, slow consumers) are logged and
/// counted in `metrics`.
pub async fn connect(config: &NatsConfig, name: &str, metrics: &NatsMetrics) -> Result<async_nats::Client, String> {
    let events = metrics.clone();
    let servers: Vec<async_nats::ServerAddr> = config
        .url
        .split(',')
        .map(|url| url.trim().parse().map_err(|e| format!("bus: `{url}`: {e}")))
        .collect::<Result<_, _>>()?;
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(|attempts| crate::logic::backoff(attempts.min(u32::MAX as usize) as u32))
        .event_callback(move |event| {
            let metrics = events.clone();
            async move { metrics.event(&event) }
        })
        .connect(servers)
        .await
        .map_err(|e| format!("bus: {e}"))
}

fn nats_state(state: &State) -> NatsState {
    match state {
        State::Connected => NatsState::Connected,
        State::Disconnected => NatsState::Disconnected,
        State::Pending => NatsState::Connecting,
    }
}

/// An announcement as it travels on NATS: JSON, read by logic (and by operators with `nats sub herald.gateways`).
fn encode_announcement(announcement: &Announcement) -> Bytes {
    Bytes::from(serde_json::to_vec(announcement).expect("an announcement serializes"))
}

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
}

impl NatsBus {
    /// A bus on `client`; starts listening to the gateways' announcements (until `stop`).
    pub fn start(
        client: async_nats::Client,
        config: &NatsConfig,
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

fn encode(target: Target, items: Vec<Bytes>) -> Bytes {
    let push = pb::Push {
        target: Some(match target {
            Target::Room(room) => push::Target::Room(room.to_string()),
            Target::All => push::Target::All(pb::Everyone {}),
        }),
        items,
    };
    Bytes::from(push.encode_to_vec())
}

impl Bus for NatsBus {
    fn push(&self, target: Target, items: Vec<Bytes>) -> PushFuture<'_> {
        Box::pin(self.publish(target, items))
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
) -> Result<(), String> {
    let interest = hub.watch_interest().ok_or("the hub's interest is already watched")?;
    let feed = Arc::new(Feed {
        probe_subject: format!("herald.probe.{:016x}", fastrand::u64(..)),
        client,
        hub,
        metrics,
        tracker: tracker.clone(),
    });
    tracker.spawn(Arc::clone(&feed).answer_probes(stop.clone()));
    tracker.spawn(Arc::clone(&feed).follow(ALL_SUBJECT.to_owned(), "all", stop.clone()));
    tracker.spawn(Arc::clone(&feed).follow_interest(interest, stop.clone()));
    tracker.spawn(feed.announce(announce, config.announce_interval, stop));
    Ok(())
}

struct Feed<R> {
    /// This gateway's own subject, answered by itself: a request to it comes back only after the server has
    /// processed everything this connection sent before it (see [`Feed::confirm`]).
    probe_subject: String,
    client: async_nats::Client,
    hub: Arc<Hub<R>>,
    metrics: NatsMetrics,
    tracker: TaskTracker,
}

impl<R: Recipient> Feed<R> {
    /// Subscribes to a room when its first member joins and unsubscribes when its last leaves.
    async fn follow_interest(
        self: Arc<Self>,
        mut interest: mpsc::UnboundedReceiver<Interest>,
        stop: CancellationToken,
    ) {
        let mut rooms: HashMap<Arc<str>, CancellationToken> = HashMap::new();
        // Rooms joined before the watch began (none when the feed starts with the gateway).
        for room in self.hub.rooms_with_members() {
            self.subscribe(&mut rooms, room, &stop);
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
                self.subscribe(&mut rooms, change.room, &stop);
            } else if let Some(unsubscribe) = rooms.remove(&change.room) {
                unsubscribe.cancel();
            }
        }
        for unsubscribe in rooms.into_values() {
            unsubscribe.cancel();
        }
    }

    fn subscribe(
        self: &Arc<Self>,
        rooms: &mut HashMap<Arc<str>, CancellationToken>,
        room: Arc<str>,
        stop: &CancellationToken,
    ) {
        let unsubscribe = stop.child_token();
        if let Some(previous) = rooms.insert(Arc::clone(&room), unsubscribe.clone()) {
            previous.cancel();
        }
        self.tracker
            .spawn(Arc::clone(self).follow(room_subject(&room), "room", unsubscribe));
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
        let confirmed = kind == "room"
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
        if let Some(ack::Result::Refused(refusal)) = take(&self.hub, push).result {
            self.metrics.refused(match refusal.reason() {
                refused::Reason::QueueFull => "queue_full",
                refused::Reason::ShuttingDown => "shutting_down",
                refused::Reason::TooManyItems => "too_many_items",
                refused::Reason::Invalid | refused::Reason::Unspecified => "invalid",
            });
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// herald's metrics on NATS (prefix `herald_nats_`).
#[derive(Clone, Default)]
pub struct NatsMetrics {
    connected: Gauge,
    events: Family<EventLabel, Counter>,
    publishes: Family<ResultLabel, Counter>,
    received: Family<KindLabel, Counter>,
    refused: Family<ReasonLabel, Counter>,
    subscriptions: Gauge,
    gateways_live: Gauge,
}

impl NatsMetrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "herald_nats_connected",
            "1 while connected to NATS",
            metrics.connected.clone(),
        );
        registry.register(
            "herald_nats_events",
            "NATS client events: connected, disconnected, slow_consumer (messages dropped in this client), \
             server_error, client_error, lame_duck, closed, subscribe_failed",
            metrics.events.clone(),
        );
        registry.register(
            "herald_nats_publishes",
            "logic: pushes published, by result: published, unavailable (NATS down, answered 503), timeout, error",
            metrics.publishes.clone(),
        );
        registry.register(
            "herald_nats_messages_received",
            "gateway: pushes received from NATS, by kind: room, all",
            metrics.received.clone(),
        );
        registry.register(
            "herald_nats_pushes_refused",
            "gateway: pushes from NATS the hub did not take (lost), by reason: queue_full, shutting_down, \
             too_many_items, invalid, undecodable",
            metrics.refused.clone(),
        );
        registry.register(
            "herald_nats_subscriptions",
            "gateway: rooms subscribed (rooms with a member here)",
            metrics.subscriptions.clone(),
        );
        registry.register(
            "herald_nats_gateways_live",
            "logic: gateways that announced themselves within gateway_ttl",
            metrics.gateways_live.clone(),
        );
        metrics
    }

    fn event(&self, event: &async_nats::Event) {
        let name = match event {
            async_nats::Event::Connected => {
                self.connected.set(1);
                tracing::info!("connected to NATS");
                "connected"
            }
            async_nats::Event::Disconnected => {
                self.connected.set(0);
                tracing::warn!("disconnected from NATS; reconnecting");
                "disconnected"
            }
            async_nats::Event::SlowConsumer(sid) => {
                tracing::warn!(sid, "NATS messages dropped: a subscription fell behind");
                "slow_consumer"
            }
            async_nats::Event::ServerError(e) => {
                tracing::warn!(error = %e, "NATS server error");
                "server_error"
            }
            async_nats::Event::ClientError(e) => {
                // While disconnected every failed reconnect attempt reports one; the disconnect was logged already.
                if self.connected.get() == 1 {
                    tracing::warn!(error = %e, "NATS client error");
                } else {
                    tracing::debug!(error = %e, "NATS reconnect attempt failed");
                }
                "client_error"
            }
            async_nats::Event::LameDuckMode => "lame_duck",
            async_nats::Event::Draining => "draining",
            async_nats::Event::Closed => {
                self.connected.set(0);
                "closed"
            }
        };
        self.event_named(name);
    }

    fn event_named(&self, name: &'static str) {
        self.events.get_or_create(&EventLabel { event: name }).inc();
    }

    fn publish(&self, result: &'static str) {
        self.publishes.get_or_create(&ResultLabel { result }).inc();
    }

    fn received(&self, kind: &'static str) {
        self.received.get_or_create(&KindLabel { kind }).inc();
    }

    fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabel { reason }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_room_names_are_their_own_token() {
        assert_eq!(subject(&Target::Room("news".into())), "herald.room.news");
        assert_eq!(subject(&Target::Room("user_42-a".into())), "herald.room.user_42-a");
        assert_eq!(subject(&Target::All), "herald.all");
    }

    #[test]
    fn other_names_are_encoded_so_they_cannot_collide_or_break_the_subject() {
        for room in ["a.b", "*", ">", "with space", "~x", "日本", "x.".repeat(128).as_str()] {
            let subject = subject(&Target::Room(room.into()));
            let token = subject.strip_prefix("herald.room.").unwrap();
            assert!(token.starts_with('~'), "{room}: {subject}");
            assert!(!token.contains(['.', '*', '>', ' ']), "{subject}");
            assert!(token.len() <= 343, "{}", token.len());
            let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&token[1..])
                .unwrap();
            assert_eq!(decoded, room.as_bytes());
        }
    }
}
