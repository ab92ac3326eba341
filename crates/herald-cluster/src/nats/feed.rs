//! A gateway's side on NATS: subscriptions that follow the rooms and users its hub holds, the broadcast
//! subscription, the answers to presence queries, and the announcements.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use bytes::Bytes;
use futures_util::StreamExt;
use herald_hub::history::Recovery;
use herald_hub::{Completion, Fetched, Hub, Interest, JoinRequest, Recipient};
use herald_protocol::bus::Target;
use herald_protocol::counts::CountsSource;
use herald_protocol::stats::Announcement;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection::{NatsConfig, NatsError};
use super::history::{RoomStore, store_subject};
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
    /// The gateway's counters, whose closes, drops and history each announcement carries (`None`: `herald serve`,
    /// whose own dashboard shows them).
    pub counts: Option<Arc<dyn CountsSource>>,
}

/// A gateway's side on NATS: subscriptions that follow the hub's rooms, the broadcast subscription, and the
/// announcements; with `history`, rooms read from JetStream (see `history`), where the hub keeps its history
/// ([`herald_hub::Hub::keep_history_elsewhere`], set before the hub's first connection).
/// Runs until `stop`, then announces that it leaves.
#[allow(clippy::too_many_arguments)]
pub fn spawn_gateway_feed<R: Recipient>(
    client: async_nats::Client,
    hub: Arc<Hub<R>>,
    history: Option<RoomStore>,
    announce: Announce,
    config: &NatsConfig,
    metrics: NatsMetrics,
    tracker: &TaskTracker,
    stop: CancellationToken,
) -> Result<(), NatsError> {
    let interest = hub.watch_interest().ok_or(NatsError::InterestWatched)?;
    if let Some(history) = &history {
        // Set when the hub was made (before its first connection), to this store's epoch.
        debug_assert_eq!(hub.history_elsewhere(), Some(history.epoch()));
    }
    let feed = Arc::new(Feed {
        id: announce.id.clone(),
        probe_subject: format!("herald.probe.{:016x}", fastrand::u64(..)),
        client,
        hub,
        history,
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
    /// Where room history is kept, when it is.
    history: Option<RoomStore>,
    metrics: NatsMetrics,
    tracker: TaskTracker,
}

/// How long a JOIN the hub cannot take yet waits before it is answered again (see [`Completion::Wait`]).
const JOIN_RETRY: Duration = Duration::from_millis(20);

/// A subscription of the feed: how to end it, and, for a room with history, where its JOINs go.
struct Followed {
    unsubscribe: CancellationToken,
    joins: Option<mpsc::UnboundedSender<JoinRequest>>,
}

impl<R: Recipient> Feed<R> {
    /// Subscribes to a room (or user) when its first member joins and unsubscribes when its last leaves.
    async fn follow_interest(
        self: Arc<Self>,
        mut interest: mpsc::UnboundedReceiver<Interest>,
        stop: CancellationToken,
    ) {
        let mut rooms: HashMap<Target, Followed> = HashMap::new();
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
            match change {
                Interest::Wanted(topic) => self.subscribe(&mut rooms, topic, &stop),
                Interest::Unwanted(topic) => {
                    if let Some(followed) = rooms.remove(&topic) {
                        followed.unsubscribe.cancel();
                    }
                }
                Interest::Join(request) => {
                    let topic = Target::Room(Arc::clone(&request.room));
                    if !rooms.contains_key(&topic) {
                        // Its room's Wanted comes first; should one not have, the JOIN still gets its answer.
                        self.subscribe(&mut rooms, topic.clone(), &stop);
                    }
                    if let Some(joins) = rooms.get(&topic).and_then(|followed| followed.joins.as_ref()) {
                        let _ = joins.send(request);
                    }
                }
            }
        }
        for followed in rooms.into_values() {
            followed.unsubscribe.cancel();
        }
    }

    fn subscribe(self: &Arc<Self>, rooms: &mut HashMap<Target, Followed>, topic: Target, stop: &CancellationToken) {
        let unsubscribe = stop.child_token();
        let subject = subject(&topic);
        let (kind, room) = match &topic {
            Target::User(_) => ("user", None),
            Target::Room(room) => ("room", Some(Arc::clone(room))),
            Target::All => ("all", None),
        };
        let joins = match (room, &self.history) {
            (Some(room), Some(_)) => {
                let (joins, requests) = mpsc::unbounded_channel();
                let channel = (joins.clone(), requests);
                self.tracker
                    .spawn(Arc::clone(self).follow_room(room, subject, unsubscribe.clone(), channel));
                Some(joins)
            }
            _ => {
                self.tracker
                    .spawn(Arc::clone(self).follow(subject, kind, unsubscribe.clone()));
                None
            }
        };
        let followed = Followed { unsubscribe, joins };
        if let Some(previous) = rooms.insert(topic, followed) {
            previous.unsubscribe.cancel();
        }
    }

    /// Subscribes to `subject`; `None` (logged, counted) only when the client itself is closed: the room's members
    /// then get nothing from NATS.
    async fn subscribe_to(&self, subject: &str) -> Option<async_nats::Subscriber> {
        match self.client.subscribe(subject.to_owned()).await {
            Ok(subscriber) => Some(subscriber),
            Err(e) => {
                tracing::error!(%subject, error = %e, "cannot subscribe");
                self.metrics.event_named("subscribe_failed");
                None
            }
        }
    }

    /// Hands every message on `subject` to the hub, in order, until `unsubscribe`.
    async fn follow(self: Arc<Self>, subject: String, kind: &'static str, unsubscribe: CancellationToken) {
        let Some(mut subscriber) = self.subscribe_to(&subject).await else {
            return;
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

    /// Follows a room whose history JetStream keeps: hands its items to the hub one by one in the stream's order
    /// (dropping what it handed already, reading from the stream what it missed), and answers its JOINs from the
    /// stream between two items, until `unsubscribe`.
    async fn follow_room(
        self: Arc<Self>,
        room: Arc<str>,
        subject: String,
        unsubscribe: CancellationToken,
        (retry, mut joins): (mpsc::UnboundedSender<JoinRequest>, mpsc::UnboundedReceiver<JoinRequest>),
    ) {
        let history = self
            .history
            .clone()
            .expect("rooms are followed this way only with history");
        let store = store_subject(&subject);
        let Some(mut subscriber) = self.subscribe_to(&subject).await else {
            return;
        };
        let confirmed = tokio::select! {
            confirmed = self.confirm() => confirmed,
            () = unsubscribe.cancelled() => false,
        };
        if confirmed {
            self.metrics.subscriptions.inc();
        }
        // Subscribed: every item stored from now on reaches this subscription. Where the stream stands now is
        // where the room stands for this gateway: no later item of the room is at or below it.
        let Some(mut stands) = self.stream_position(&history, &unsubscribe).await else {
            if confirmed {
                self.metrics.subscriptions.dec();
            }
            return;
        };
        loop {
            tokio::select! {
                biased;
                () = unsubscribe.cancelled() => break,
                Some(request) = joins.recv() => {
                    stands = self.answer_join(&history, &room, &store, request, stands, &retry).await;
                }
                message = subscriber.next() => match message {
                    Some(message) => {
                        self.metrics.received("room");
                        stands = self.take_stored(&history, &room, &store, message, stands).await;
                    }
                    None => break,
                },
            }
        }
        if confirmed {
            self.metrics.subscriptions.dec();
        }
        let _ = subscriber.unsubscribe().await;
    }

    /// The stream's last sequence, asked until it answers (for up to 5 s; then 0: the room's JOINs are told they
    /// did not resume, which stays true); `None` once unsubscribed.
    async fn stream_position(&self, history: &RoomStore, unsubscribe: &CancellationToken) -> Option<u64> {
        for _ in 0..25 {
            if unsubscribe.is_cancelled() {
                return None;
            }
            match history.last_sequence().await {
                Ok(last) => return Some(last),
                Err(error) => {
                    tracing::warn!(%error, "JetStream does not say where the history stream stands; asking again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        self.metrics.event_named("history_unavailable");
        Some(0)
    }

    /// Answers a pending JOIN from the stream (see herald_hub::stored), or sends it to `retry` again a little later
    /// when the hub cannot take it yet; returns where the room stands after.
    #[allow(clippy::too_many_arguments)]
    async fn answer_join(
        &self,
        history: &RoomStore,
        room: &Arc<str>,
        store: &str,
        request: JoinRequest,
        mut stands: u64,
        retry: &mpsc::UnboundedSender<JoinRequest>,
    ) -> u64 {
        let fetched = match &request.since {
            None => Fetched {
                stands_at: stands,
                ..Fetched::default()
            },
            Some(since) => {
                if since.offset > stands && since.epoch == **history.epoch() {
                    // The client saw items this gateway has not taken yet (another gateway was ahead): take them
                    // first.
                    stands = self.catch_up(history, room, store, stands, since.offset).await;
                }
                let missed = history.missed(store, since.offset, &since.epoch, stands).await;
                let resumed = missed.outcome == Some(Recovery::Recovered);
                Fetched {
                    since: resumed.then_some(since.offset),
                    stands_at: stands,
                    items: missed.items,
                    outcome: missed.outcome,
                }
            }
        };
        if self.hub.complete_join(&request, fetched) == Completion::Wait {
            // Items the client has still wait for their frame here (this gateway is behind the one it saw them
            // on): ask again, with a fresh read, once they went out.
            let retry = retry.clone();
            self.tracker.spawn(async move {
                tokio::time::sleep(JOIN_RETRY).await;
                let _ = retry.send(request);
            });
        }
        stands
    }

    /// Hands the hub the room's stored items after `stands` up to and including `upto`, read from the stream;
    /// returns where the room stands then (`upto` itself when the stream has reached it).
    async fn catch_up(&self, history: &RoomStore, room: &Arc<str>, store: &str, stands: u64, upto: u64) -> u64 {
        // Where the stream stands first: read after it, the room's items up to `upto` are all there to be read (an
        // offset the stream has not reached is the client's invention, and moves nothing).
        let mut reached = false;
        for _ in 0..3 {
            match history.last_sequence().await {
                Ok(last) => {
                    reached = last >= upto;
                    break;
                }
                // A slow answer under load is no reason to tell the client it cannot resume: ask again.
                Err(error) => tracing::debug!(%error, "JetStream does not say where the stream stands; asking again"),
            }
        }
        match self.hand_stored(history, room, store, stands, upto + 1).await {
            Ok(now) if reached => now.max(upto),
            Ok(now) => now,
            Err(error) => {
                tracing::warn!(%error, "cannot read room history from JetStream");
                stands
            }
        }
    }

    /// Takes one message of a room with history: drops it if handed already, reads what was missed before it, and
    /// hands it to the hub; returns where the room stands after.
    async fn take_stored(
        &self,
        history: &RoomStore,
        room: &Arc<str>,
        store: &str,
        message: async_nats::Message,
        stands: u64,
    ) -> u64 {
        // The constants, not their text: the client files the headers it knows under them.
        let header = |name: async_nats::header::HeaderName| -> Option<u64> {
            message.headers.as_ref()?.get(name)?.as_str().parse().ok()
        };
        let previous = header(async_nats::header::NATS_LAST_SEQUENCE).unwrap_or(0);
        let Some(offset) = header(async_nats::header::NATS_SEQUENCE) else {
            // Published around the stream (a logic node without history): no offset to carry.
            self.metrics.refused("not_stored");
            return stands;
        };
        if offset <= stands {
            return stands;
        }
        let mut stands = stands;
        if previous > stands {
            // Messages this subscription lost (a slow consumer): read them from the stream, in order, first.
            match self.hand_stored(history, room, store, stands, offset).await {
                Ok(now) => {
                    if now != previous {
                        // The stream no longer holds some of them (removed by its limits meanwhile): lost here.
                        self.metrics.refused("history_gap");
                    }
                    stands = now;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read the messages a room subscription lost from JetStream");
                    self.metrics.refused("history_gap");
                }
            }
        }
        let Ok(push) = pb::Push::decode(message.payload) else {
            self.metrics.refused("undecodable");
            return offset;
        };
        match <[Bytes; 1]>::try_from(push.items) {
            Ok([item]) => self.hand(room, item, offset, stands),
            Err(_) => self.metrics.refused("invalid"),
        }
        offset
    }

    /// Reads the room's items in `(stands, upto)` from the stream and hands them to the hub, in order; returns where
    /// the room stands then.
    async fn hand_stored(
        &self,
        history: &RoomStore,
        room: &Arc<str>,
        store: &str,
        mut stands: u64,
        upto: u64,
    ) -> Result<u64, String> {
        for (offset, item) in history.between(store, stands, upto).await? {
            self.hand(room, item, offset, stands);
            stands = offset;
        }
        Ok(stands)
    }

    /// Hands one stored item to the hub.
    fn hand(&self, room: &Arc<str>, item: Bytes, offset: u64, before: u64) {
        match self.hub.push_stored(room, vec![item], vec![offset], before) {
            // The room had it already (from a reader of it that was replaced): nothing lost.
            Ok(accepted) if accepted.items == 0 => self.metrics.event_named("history_duplicate"),
            Ok(_) => {}
            Err(refused) => self.metrics.refused(hop::refusal(refused).reason.label()),
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
                counts: who.counts.as_ref().map(|counts| counts.counts()),
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
