//! herald's fan-out engine: rooms in sharded buckets, per-room merging, and delivery of frames encoded once.
//!
//! No network here: a connection is anything that implements [`Recipient`] (the gateway's session, or a test
//! double), and pushes arrive through the [`herald_protocol::bus::Bus`] trait.
//!
//! # What happens to a pushed message
//! 1. [`Hub::push`] (the bus) picks the room's shard by hash, and under that shard's lock appends the items to
//!    the room's [`batch::Batch`]. A push that would overfill the shard's queue is refused (503 upstream).
//! 2. The batch says when to flush: at once when the room was quiet for a window or the batch is full, else at
//!    one window after the room's last frame. The shard's worker task is woken or given a timer.
//! 3. The worker takes due batches and a copy-on-write snapshot of their members under the lock, releases it,
//!    encodes each batch once into a complete WebSocket frame, and hands the same refcounted bytes to every
//!    member ([`Recipient::deliver`], which never blocks). A large fan-out is split over one task per core, each
//!    connection in one slice. One worker per shard flushes that shard's rooms and waits for every slice before
//!    its next flush, so frames of one room reach every connection in push order.
//! 4. Broadcasts (`/push/all`) merge the same way in one hub-wide batch, whose worker walks every shard's
//!    connection list.
//! 5. A user is merged like a room: each authenticated connection is a member of its user's entry (in the shard
//!    of the user's name, beside the rooms), so `/push/user` is step 1 to 3 with the user for the room. The
//!    user's name is one shared `Arc<str>` for all its connections.
//!
//! 6. With history on (`history_size` > 0), a room push also gets offsets and is retained in the room's history
//!    under the same lock, and its frames carry the position of their last item; a JOIN with `since` is given
//!    what it missed under that lock too, before any live frame (see [`history`]).
//!
//! 7. With history kept elsewhere (JetStream, on NATS), the store gives the offsets and keeps the items, and a
//!    JOIN waits, not yet a member, until the store's reader has fetched what it missed (see [`stored`]).
//!
//! The hub also answers presence and the server's disconnect ([`Hub::census`]) from the same member lists.
//!
//! # Layout
//! - [`batch`]: the merge decision for one room.
//! - [`history`]: the items retained per room, their offsets and epochs.
//! - `members`: a room's member list, walked without a lock.
//! - [`stored`]: history kept elsewhere: pending JOINs, and offsets from the store.
//! - [`metrics`]: counters and gauges.

pub mod batch;
pub mod history;
mod members;
pub mod metrics;
pub mod stored;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use herald_protocol::bus::{Accepted, Bus, Census, PushFuture, Query, QueryFuture, Refused, Target};
use herald_protocol::client::Since;
use herald_protocol::position::{JoinAnswer, Position};
use herald_protocol::push::push_frame_at;
use herald_protocol::stats::{HubStats, Stats};
use parking_lot::Mutex;
use serde_json::value::RawValue;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::batch::{Batch, MergePolicy, Wake};
use crate::history::{Epochs, Histories, HistoryConfig};
use crate::members::Members;
pub use crate::metrics::HubMetrics;
use crate::stored::StoredRooms;
pub use crate::stored::{Ack, Completion, Fetched, JoinRequest, StoredSince};

/// Deliveries a worker makes before it lets other tasks run.
const DELIVERIES_PER_YIELD: usize = 4096;
/// Below this many recipients per task, splitting a fan-out costs more than it saves.
const MIN_DELIVERIES_PER_TASK: usize = 256;

/// A connection as the hub sees it.
pub trait Recipient: Send + Sync + 'static {
    /// A process-unique id.
    fn id(&self) -> u64;

    /// Hands one complete WebSocket frame to the connection. Must never block: a connection that cannot take it
    /// deals with that itself (the gateway closes it as a slow consumer).
    fn deliver(&self, frame: &Bytes);

    /// The connection's user (its token's `sub`), when it has one. The hub makes it a member of that user's
    /// entry for as long as it is registered.
    fn user(&self) -> Option<&Arc<str>>;

    /// The `info` claim of its token, as JSON text, for presence.
    fn info(&self) -> Option<&RawValue>;

    /// Closes the connection because the push API asked (`POST /disconnect/user`). Must never block.
    fn disconnect(&self);
}

/// Hub settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubConfig {
    /// Number of shards (buckets), each with its own lock and worker.
    pub shards: usize,
    /// When frames go out.
    pub merge: MergePolicy,
    /// Items that may wait for their frame in one shard (and in the broadcast batch); a push beyond is refused.
    pub queue_items: usize,
    /// Bytes of items that may wait in one shard (and in the broadcast batch); a push beyond is refused, unless the
    /// shard holds nothing (so a push of any size the push API took can go out).
    pub queue_bytes: usize,
    /// Rooms the hub holds at most; a JOIN that would make one more is refused ([`RoomLimit`]). 0: no limit.
    pub max_rooms: usize,
    /// What rooms keep of their items for clients that come back.
    pub history: HistoryConfig,
}

/// A JOIN taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The room's name as the hub holds it: one copy shared by the room's entry and every member that keeps it.
    pub room: Arc<str>,
    /// The connection was not a member before.
    pub new: bool,
}

/// A JOIN refused because the hub holds `max_rooms` rooms already (joining one of them is still taken).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the server holds the most rooms it takes (max_rooms)")]
pub struct RoomLimit;

/// The fan-out engine. Create with [`Hub::new`], then [`Hub::spawn_workers`].
pub struct Hub<R> {
    shards: Box<[Shard<R>]>,
    broadcast: Shard<R>,
    hasher: RandomState,
    config: HubConfig,
    closed: AtomicBool,
    metrics: HubMetrics,
    /// Tasks one large fan-out is split over: the runtime's worker threads (more tasks than threads would only
    /// take turns on them).
    parallelism: usize,
    /// Where changes of interest in rooms go, when someone asked ([`Hub::watch_interest`]).
    interest: OnceLock<mpsc::UnboundedSender<Interest>>,
    /// The epochs this hub gives the histories it starts.
    epochs: Epochs,
    /// The store's epoch, when room history is kept elsewhere ([`stored`]).
    elsewhere: OnceLock<Arc<str>>,
}

/// What a gateway on a message bus subscribes and unsubscribes by, in the order it happened for each room or user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interest {
    /// A room or user ([`Target::Room`] or [`Target::User`]) gained its first member here (or, with history kept
    /// elsewhere, its first pending JOIN).
    Wanted(Target),
    /// It lost its last member (and pending JOIN).
    Unwanted(Target),
    /// A JOIN waiting for the store (history kept elsewhere): answer it with [`Hub::complete_join`].
    Join(JoinRequest),
}

struct Shard<R> {
    state: Mutex<ShardState<R>>,
    wake: Notify,
}

struct ShardState<R> {
    rooms: HashMap<Arc<str>, Room<R>>,
    /// Users whose name hashes to this shard, with their connections: merged and delivered like rooms.
    users: HashMap<Arc<str>, Room<R>>,
    /// Connections whose id falls in this shard: the broadcast's recipients.
    everyone: Members<R>,
    /// Rooms and users due now (room shards only).
    ready: Vec<Target>,
    /// Rooms and users due later (room shards only; entries may be stale: see [`Batch::is_due_at`]).
    timers: BinaryHeap<Reverse<(Instant, Target)>>,
    /// Items waiting in this shard's batches (bounded by `queue_items`).
    pending: usize,
    /// Their bytes (bounded by `queue_bytes`).
    pending_bytes: usize,
    /// The broadcast's batch (used only in the hub's broadcast shard).
    broadcast: Batch,
    /// The histories of this shard's rooms (empty with history off or kept elsewhere, and in the broadcast shard).
    histories: Histories,
    /// With history kept elsewhere: JOINs waiting for the store, and where the rooms stand.
    stored: StoredRooms<R>,
    /// The worker made its final pass: nothing added now would ever be sent.
    stopped: bool,
}

/// A room's (or a user's) members and its batch. The batch is made at the first push: an entry that is never
/// pushed to (most users, idle rooms) keeps only its members.
struct Room<R> {
    members: Members<R>,
    batch: Option<Box<Batch>>,
}

impl<R> Room<R> {
    fn has_items(&self) -> bool {
        self.batch.as_ref().is_some_and(|batch| !batch.is_empty())
    }
}

/// Rooms and users live in maps of their own, side by side in each shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Room,
    User,
}

impl Kind {
    fn of(topic: &Target) -> Self {
        match topic {
            Target::Room(_) => Self::Room,
            Target::User(_) => Self::User,
            Target::All => unreachable!("broadcasts have no entry in a shard"),
        }
    }

    fn topic(self, name: Arc<str>) -> Target {
        match self {
            Self::Room => Target::Room(name),
            Self::User => Target::User(name),
        }
    }
}

impl<R> ShardState<R> {
    /// Counts `count` items of `bytes` that joined `topic`'s batch, and files the wake-up the batch asked for.
    fn queued(&mut self, topic: &Target, wake: Wake, count: usize, bytes: usize) {
        self.pending += count;
        self.pending_bytes += bytes;
        match wake {
            Wake::Nothing => {}
            Wake::Now => self.ready.push(topic.clone()),
            Wake::At(at) => self.timers.push(Reverse((at, topic.clone()))),
        }
    }

    fn map(&mut self, kind: Kind) -> &mut HashMap<Arc<str>, Room<R>> {
        match kind {
            Kind::Room => &mut self.rooms,
            Kind::User => &mut self.users,
        }
    }

    /// The map a topic lives in, and its name.
    fn entries<'a>(&mut self, topic: &'a Target) -> (&mut HashMap<Arc<str>, Room<R>>, &'a Arc<str>) {
        (self.map(Kind::of(topic)), topic_name(topic))
    }
}

/// The name of a room or a user.
fn topic_name(topic: &Target) -> &Arc<str> {
    match topic {
        Target::Room(name) | Target::User(name) => name,
        Target::All => unreachable!("broadcasts have no entry in a shard"),
    }
}

/// A batch taken for sending, with who gets it.
struct Flush<R> {
    target: Target,
    items: Vec<Bytes>,
    /// The position of the first item, in a room with history here.
    first: Option<Position>,
    /// Each item's offset, in a room with history kept elsewhere (else empty).
    offsets: Vec<u64>,
    members: Vec<Arc<Vec<Arc<R>>>>,
}

/// The offsets a room's frames carry.
#[derive(Clone, Copy)]
enum Offsets<'a> {
    /// Counted from the first item's position, one by one (history here); none without history.
    From(Option<&'a Position>),
    /// Each item's own, in this epoch (history elsewhere).
    Each(&'a [u64], &'a Arc<str>),
}

impl<R> Shard<R> {
    fn new(history_budget: usize) -> Self {
        Self {
            state: Mutex::new(ShardState {
                rooms: HashMap::new(),
                users: HashMap::new(),
                everyone: Members::default(),
                ready: Vec::new(),
                timers: BinaryHeap::new(),
                pending: 0,
                pending_bytes: 0,
                broadcast: Batch::default(),
                histories: Histories::new(history_budget),
                stored: StoredRooms::default(),
                stopped: false,
            }),
            wake: Notify::new(),
        }
    }
}

impl<R: Recipient> Hub<R> {
    /// Creates a hub; nothing is sent until [`Hub::spawn_workers`].
    pub fn new(config: HubConfig, metrics: HubMetrics) -> Arc<Self> {
        assert!(
            config.shards > 0 && config.merge.max_items > 0 && config.queue_items > 0,
            "validated config"
        );
        let history_budget = config.history.max_bytes / config.shards;
        Arc::new(Self {
            shards: (0..config.shards).map(|_| Shard::new(history_budget)).collect(),
            broadcast: Shard::new(0),
            hasher: RandomState::new(),
            config,
            closed: AtomicBool::new(false),
            metrics,
            parallelism: tokio::runtime::Handle::try_current()
                .map(|runtime| runtime.metrics().num_workers())
                .or_else(|_| std::thread::available_parallelism().map(usize::from))
                .unwrap_or(1),
            interest: OnceLock::new(),
            epochs: Epochs::new(),
            elsewhere: OnceLock::new(),
        })
    }

    /// Starts one worker per shard plus the broadcast worker on `tracker`. When `stop` is cancelled the hub takes
    /// no more pushes, the workers send every batch still waiting (ignoring the window), and exit.
    pub fn spawn_workers(self: &Arc<Self>, tracker: &TaskTracker, stop: CancellationToken) {
        for index in 0..self.shards.len() {
            tracker.spawn(Arc::clone(self).run_worker(Some(index), stop.clone()));
        }
        tracker.spawn(Arc::clone(self).run_worker(None, stop));
    }

    /// The shard of a room's or a user's entry (a room and a user of the same name share one; nothing else).
    fn room_shard(&self, name: &str) -> &Shard<R> {
        &self.shards[self.hasher.hash_one(name) as usize % self.shards.len()]
    }

    fn conn_shard(&self, id: u64) -> &Shard<R> {
        &self.shards[id as usize % self.shards.len()]
    }

    /// Reports every change of interest from now on: a room's first member joining, its last leaving. The events
    /// of one room come in the order they happened (they are sent under the room's shard lock); the channel is
    /// unbounded because joins and leaves are bounded by the connections' own messages. At most one watcher.
    pub fn watch_interest(&self) -> Option<mpsc::UnboundedReceiver<Interest>> {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.interest.set(sender).ok()?;
        Some(receiver)
    }

    /// Rooms and users that have members now (for a watcher that starts late or resubscribes).
    pub fn topics_with_members(&self) -> Vec<Target> {
        let mut topics = Vec::new();
        for shard in self.shards.iter() {
            let state = shard.state.lock();
            let held = |entries: &HashMap<Arc<str>, Room<R>>| {
                entries
                    .iter()
                    .filter(|(_, entry)| !entry.members.is_empty())
                    .map(|(name, _)| Arc::clone(name))
                    .collect::<Vec<_>>()
            };
            let mut rooms = held(&state.rooms);
            rooms.extend(
                state
                    .stored
                    .joining_rooms()
                    .filter(|room| state.rooms.get(&***room).is_none_or(|entry| entry.members.is_empty()))
                    .cloned(),
            );
            topics.extend(rooms.into_iter().map(Target::Room));
            topics.extend(held(&state.users).into_iter().map(Target::User));
        }
        topics
    }

    /// Called under the topic's shard lock, so one topic's events are sent in the order they happened.
    fn interest_changed(&self, change: Interest) {
        if let Some(watcher) = self.interest.get() {
            // A watcher gone (shutting down) has nothing left to subscribe.
            let _ = watcher.send(change);
        }
    }

    /// Adds a new connection (it will receive broadcasts, and pushes to its user when it has one).
    pub fn register(&self, conn: &Arc<R>) {
        if self.conn_shard(conn.id()).state.lock().everyone.insert(conn) {
            self.metrics.connections.inc();
        }
        if let Some(user) = conn.user() {
            // Users are bounded by connections, not by max_rooms: this never fails.
            let _ = self.add_member(Kind::User, user, || Arc::clone(user), conn, |_, _, _| {});
        }
    }

    /// Removes a connection from the hub, from its user, and from each of `rooms`.
    pub fn unregister<'a>(&self, conn: &R, rooms: impl IntoIterator<Item = &'a str>) {
        let id = conn.id();
        for room in rooms {
            self.leave(room, id);
        }
        if let Some(user) = conn.user() {
            self.remove_member(Kind::User, user, id);
        }
        if self.conn_shard(id).state.lock().everyone.remove(id) {
            self.metrics.connections.dec();
        }
    }

    /// The one shared copy of a user's name, when the user already has a connection here (so a user's
    /// connections do not each hold one); a new copy otherwise.
    pub fn user_name(&self, user: &str) -> Arc<str> {
        let state = self.room_shard(user).state.lock();
        match state.users.get_key_value(user) {
            Some((name, _)) => Arc::clone(name),
            None => Arc::from(user),
        }
    }

    /// Adds a connection to a room. A new room beyond `max_rooms` is refused.
    pub fn join(&self, room: &str, conn: &Arc<R>) -> Result<Joined, RoomLimit> {
        self.join_with(room, conn, None, |_| None)
    }

    /// Adds a connection to a room, and under the room's lock (so before any frame of the room reaches it):
    /// delivers the acknowledgement `ack` makes, then, for a JOIN that resumes from `since` in a room with
    /// history, every item after `since` (when the history still holds them all). `ack` is given where the room
    /// stands and whether it resumed, when the room keeps history; `None` when it does not.
    ///
    /// With history kept elsewhere, a JOIN of a new member waits for the store instead (see [`stored`]): it is
    /// acknowledged, and the connection made a member, when the store's reader completes it.
    pub fn join_with(
        &self,
        room: &str,
        conn: &Arc<R>,
        since: Option<&Since<'_>>,
        ack: impl FnOnce(Option<&JoinAnswer>) -> Option<Bytes> + Send + 'static,
    ) -> Result<Joined, RoomLimit> {
        if let Some(epoch) = self.elsewhere.get() {
            return self.join_pending(room, conn, since, Box::new(ack), epoch);
        }
        let (new, room) = self.add_member(
            Kind::Room,
            room,
            || Arc::from(room),
            conn,
            |state, room, new| {
                let mut replay = Vec::new();
                let answer = self.config.history.is_on().then(|| {
                    let pending = state
                        .rooms
                        .get(room)
                        .and_then(|r| r.batch.as_ref())
                        .map_or(0, |b| b.len());
                    let position = state.histories.join_position(room, pending, &self.epochs);
                    let recovered = since.filter(|_| new).map(|since| {
                        let ttl = self.config.history.ttl;
                        let outcome = match state.histories.replay(room, since, &position, Instant::now(), ttl) {
                            Ok(items) => {
                                replay = items;
                                history::Recovery::Recovered
                            }
                            Err(not) => not,
                        };
                        self.metrics.recovery(outcome, replay.len());
                        outcome == history::Recovery::Recovered
                    });
                    JoinAnswer { position, recovered }
                });
                if let Some(frame) = ack(answer.as_ref()) {
                    conn.deliver(&frame);
                }
                if let (Some(since), Some(answer)) = (since, &answer) {
                    let target = Target::Room(Arc::clone(room));
                    let first = Position {
                        offset: since.offset + 1,
                        epoch: Arc::clone(&answer.position.epoch),
                    };
                    for frame in self.frames(&target, &replay, Offsets::From(Some(&first))).iter() {
                        conn.deliver(frame);
                    }
                }
            },
        )?;
        if new {
            self.metrics.memberships.inc();
        }
        Ok(Joined { room, new })
    }

    /// Removes a connection from a room; false if it was not a member.
    pub fn leave(&self, room: &str, id: u64) -> bool {
        let left = self.remove_member(Kind::Room, room, id);
        if left {
            self.metrics.memberships.dec();
        }
        left
    }

    fn kind_gauge(&self, kind: Kind) -> &prometheus_client::metrics::gauge::Gauge {
        match kind {
            Kind::Room => &self.metrics.rooms,
            Kind::User => &self.metrics.users,
        }
    }

    /// Adds a member to a room's or a user's entry; false if it was one already. `key` makes the entry's key when
    /// the entry is new (a room's name is copied then; a user's is the connection's shared one).
    fn add_member(
        &self,
        kind: Kind,
        name: &str,
        key: impl FnOnce() -> Arc<str>,
        conn: &Arc<R>,
        then: impl FnOnce(&mut ShardState<R>, &Arc<str>, bool),
    ) -> Result<(bool, Arc<str>), RoomLimit> {
        let mut state = self.room_shard(name).state.lock();
        // A room with a JOIN waiting for the store is wanted already.
        let joining = kind == Kind::Room && state.stored.is_joining(name);
        let entries = state.map(kind);
        // `first`: the entry had no member before this one.
        let (joined, first) = match entries.get_mut(name) {
            Some(existing) => {
                let first = existing.members.is_empty() && !joining;
                let joined = existing.members.insert(conn);
                (joined, joined && first)
            }
            None => {
                // The count is of every shard: a few JOINs racing on other shards may pass it together.
                let limit = self.config.max_rooms;
                // Counted by the caller (the gateway's herald_bad_input_total{reason="too_many_rooms_total"}).
                if kind == Kind::Room && limit > 0 && self.metrics.rooms.get() >= limit as i64 {
                    return Err(RoomLimit);
                }
                let mut created = Room {
                    members: Members::default(),
                    batch: None,
                };
                created.members.insert(conn);
                entries.insert(key(), created);
                self.kind_gauge(kind).inc();
                (true, !joining)
            }
        };
        let (key, _) = entries.get_key_value(name).expect("present under the same lock");
        let key = Arc::clone(key);
        if first {
            self.interest_changed(Interest::Wanted(kind.topic(Arc::clone(&key))));
        }
        then(&mut *state, &key, joined);
        Ok((joined, key))
    }

    /// Removes a member from a room's or a user's entry; false if it was not one.
    fn remove_member(&self, kind: Kind, name: &str, id: u64) -> bool {
        let mut state = self.room_shard(name).state.lock();
        let stopped_joining = kind == Kind::Room && state.stored.drop_joins(name, id);
        let joining = kind == Kind::Room && state.stored.is_joining(name);
        let entries = state.map(kind);
        let Some((key, existing)) = entries.get_key_value(name) else {
            if stopped_joining && !joining {
                state.stored.forget(name);
                self.interest_changed(Interest::Unwanted(Target::Room(Arc::from(name))));
            }
            return false;
        };
        let emptied = existing.members.is_empty() || (existing.members.len() == 1 && existing.members.contains(id));
        let last = emptied && !joining && (stopped_joining || existing.members.contains(id));
        let topic = last.then(|| kind.topic(Arc::clone(key)));
        let existing = entries.get_mut(name).expect("present under the same lock");
        let left = existing.members.remove(id);
        // An entry with items still waiting stays until its worker flushes it (and then drops it); with history
        // elsewhere a room nobody wants any more goes at once with its batch, which no one would receive: the
        // store's next reader of the room starts from where the store stands, and must find no batch of before.
        let drop_waiting = kind == Kind::Room && !joining && self.elsewhere.get().is_some();
        if existing.members.is_empty() && (drop_waiting || !existing.has_items()) {
            let gone = entries.remove(name).expect("present under the same lock");
            self.kind_gauge(kind).dec();
            if let Some(mut batch) = gone.batch {
                let items = batch.take(Instant::now(), self.config.merge, true);
                state.pending -= items.len();
                state.pending_bytes -= bytes_of(&items);
                self.metrics.pending_items.dec_by(items.len() as i64);
                self.metrics.items_unrouted.inc_by(items.len() as u64);
            }
            if kind == Kind::Room {
                state.histories.forget_if_empty(name);
                state.stored.forget(name);
            }
        }
        if let Some(topic) = topic {
            self.interest_changed(Interest::Unwanted(topic));
        }
        left
    }

    /// Answers a presence query, or closes a user's connections, from the member lists (taken under the shard
    /// lock, walked after it).
    pub fn census(&self, query: &Query) -> Census {
        let (topic, name) = match query {
            Query::Room(room) => (Target::Room(Arc::clone(room)), room),
            Query::User(user) | Query::Disconnect(user) => (Target::User(Arc::clone(user)), user),
        };
        let members = {
            let mut state = self.room_shard(name).state.lock();
            let (entries, name) = state.entries(&topic);
            match entries.get(&**name) {
                Some(entry) => entry.members.snapshot(),
                None => return Census::default(),
            }
        };
        let mut census = Census {
            connections: members.len() as u64,
            ..Census::default()
        };
        match query {
            Query::Room(_) => census.users = members.iter().filter_map(|m| m.user().cloned()).collect(),
            Query::User(_) => {
                census.info = members
                    .iter()
                    .filter_map(|m| m.info().map(RawValue::to_owned))
                    .collect()
            }
            Query::Disconnect(_) => members.iter().for_each(|member| member.disconnect()),
        }
        census
    }

    /// Current number of connections.
    pub fn connections(&self) -> usize {
        self.metrics.connections.get().max(0) as usize
    }

    /// A push to a room or a user.
    fn push_topic(&self, topic: &Target, items: Vec<Bytes>) -> Result<Accepted, Refused> {
        if self.elsewhere.get().is_some() && Kind::of(topic) == Kind::Room {
            // Its items would have no offsets: a room's items come from the store (see `push_stored`).
            return Err(Refused::Unavailable {
                retry_after_secs: 1,
                detail: "room history is kept in JetStream: room pushes come through it".to_owned(),
            });
        }
        let name = topic_name(topic);
        let shard = self.room_shard(name);
        let count = items.len();
        let mut guard = shard.state.lock();
        let state = &mut *guard;
        if state.stopped {
            return Err(self.refuse_shutting_down());
        }
        let now = Instant::now();
        let keeps_history = self.config.history.is_on() && Kind::of(topic) == Kind::Room;
        let (entries, name) = state.entries(topic);
        let Some(entry) = entries.get_mut(&**name) else {
            if keeps_history {
                let room = &**name;
                self.retain(state, room, || Arc::from(room), &items, now);
            }
            return Ok(self.unrouted(count));
        };
        let recipients = entry.members.len();
        let bytes = bytes_of(&items);
        if self.over_queue(state, count, bytes) {
            return Err(self.refuse_queue_full());
        }
        if keeps_history {
            let (entries, name) = state.entries(topic);
            let (room, _) = entries
                .get_key_value(&**name)
                .expect("found above, under the same lock");
            let room = Arc::clone(room);
            self.retain(state, &room, || Arc::clone(&room), &items, now);
        }
        let (entries, name) = state.entries(topic);
        let entry = entries.get_mut(&**name).expect("found above, under the same lock");
        let wake = entry.batch.get_or_insert_default().add(items, now, self.config.merge);
        state.queued(topic, wake, count, bytes);
        drop(guard);
        Ok(self.woken(shard, wake, count, recipients))
    }

    /// A push to a room or user with no entry here: nobody to deliver to, said so (recipients 0), and its items
    /// counted as not delivered here.
    fn unrouted(&self, count: usize) -> Accepted {
        self.metrics.items_unrouted.inc_by(count as u64);
        Accepted {
            items: count,
            recipients: Some(0),
            gateways: None,
        }
    }

    /// After a push joined a batch (and the shard's lock is released): wakes the shard's worker when the batch
    /// asked, counts what waits, and says what was taken.
    fn woken(&self, shard: &Shard<R>, wake: Wake, count: usize, recipients: usize) -> Accepted {
        if wake != Wake::Nothing {
            shard.wake.notify_one();
        }
        self.metrics.pending_items.inc_by(count as i64);
        Accepted {
            items: count,
            recipients: Some(recipients),
            gateways: None,
        }
    }

    /// Retains a room push's items in the room's history (`key` names a history that is new).
    fn retain(
        &self,
        state: &mut ShardState<R>,
        room: &str,
        key: impl FnOnce() -> Arc<str>,
        items: &[Bytes],
        now: Instant,
    ) {
        let ShardState { rooms, histories, .. } = state;
        histories.append(
            room,
            key,
            items,
            now,
            &self.config.history,
            &self.epochs,
            |name| rooms.contains_key(name),
            &self.metrics,
        );
    }

    fn push_all(&self, items: Vec<Bytes>) -> Result<Accepted, Refused> {
        let count = items.len();
        let mut state = self.broadcast.state.lock();
        if state.stopped {
            return Err(self.refuse_shutting_down());
        }
        let bytes = bytes_of(&items);
        if self.over_queue(&state, count, bytes) {
            return Err(self.refuse_queue_full());
        }
        // The broadcast worker reads the batch's own deadline; any wake just makes it look again.
        let wake = state.broadcast.add(items, Instant::now(), self.config.merge);
        state.pending += count;
        state.pending_bytes += bytes;
        drop(state);
        if wake != Wake::Nothing {
            self.broadcast.wake.notify_one();
        }
        self.metrics.pending_items.inc_by(count as i64);
        Ok(Accepted {
            items: count,
            recipients: Some(self.connections()),
            gateways: None,
        })
    }

    /// Whether `count` more items of `bytes` would overfill a shard's queue.
    fn over_queue(&self, state: &ShardState<R>, count: usize, bytes: usize) -> bool {
        state.pending + count > self.config.queue_items
            || (state.pending_bytes > 0 && state.pending_bytes + bytes > self.config.queue_bytes)
    }

    fn refuse_shutting_down(&self) -> Refused {
        self.metrics.refused_shutting_down.inc();
        Refused::ShuttingDown
    }

    fn refuse_queue_full(&self) -> Refused {
        self.metrics.refused_queue_full.inc();
        // One window is when the waiting batches have gone out, at the latest.
        let retry_after_secs = self.config.merge.window.as_secs().clamp(1, 60) as u32;
        Refused::QueueFull { retry_after_secs }
    }

    /// The worker of one shard (`Some(index)`) or of the broadcast (`None`).
    async fn run_worker(self: Arc<Self>, shard: Option<usize>, stop: CancellationToken) {
        let own = match shard {
            Some(index) => &self.shards[index],
            None => &self.broadcast,
        };
        let mut flushes = Vec::new();
        loop {
            let stopping = stop.is_cancelled();
            let next_timer = {
                let mut state = own.state.lock();
                // The final pass takes everything, and from then on pushes are refused under this same lock.
                state.stopped = stopping;
                match shard {
                    Some(_) => {
                        let batches = self.take_due_rooms(&mut state, stopping, &mut flushes);
                        let aging = self.sweep_history(&mut state);
                        earliest(batches, aging)
                    }
                    None => self.take_due_broadcast(&mut state, stopping, &mut flushes),
                }
            };
            let worked = !flushes.is_empty();
            for flush in flushes.drain(..) {
                self.send(flush).await;
            }
            if stopping {
                return;
            }
            if worked {
                continue;
            }
            tokio::select! {
                () = own.wake.notified() => {}
                () = sleep_until_some(next_timer) => {}
                () = stop.cancelled() => {}
            }
        }
    }

    /// Takes the batches of this shard that are due (all of them when `everything`); returns the next timer.
    fn take_due_rooms(&self, state: &mut ShardState<R>, everything: bool, out: &mut Vec<Flush<R>>) -> Option<Instant> {
        let now = Instant::now();
        let mut due = std::mem::take(&mut state.ready);
        while let Some(Reverse((at, _))) = state.timers.peek() {
            if *at > now && !everything {
                break;
            }
            let Reverse((at, topic)) = state.timers.pop().expect("peeked");
            let (entries, name) = state.entries(&topic);
            if entries
                .get(&**name)
                .and_then(|r| r.batch.as_ref())
                .is_some_and(|batch| batch.is_due_at(at))
            {
                due.push(topic);
            }
        }
        for topic in due {
            let (entries, name) = state.entries(&topic);
            let Some(entry) = entries.get_mut(&**name) else {
                continue;
            };
            let Some(batch) = entry.batch.as_mut() else {
                continue;
            };
            let pending = batch.len();
            let items = batch.take(now, self.config.merge, everything || entry.members.is_empty());
            let offsets = batch.take_offsets(items.len());
            let deadline = batch.deadline();
            let members = vec![entry.members.snapshot()];
            let gone = entry.members.is_empty();
            if gone {
                entries.remove(&**name);
                self.kind_gauge(Kind::of(&topic)).dec();
            }
            let first = match Kind::of(&topic) {
                Kind::Room if self.config.history.is_on() => state.histories.first_pending(name, pending),
                _ => None,
            };
            if gone {
                state.histories.forget_if_empty(name);
                state.stored.forget(name);
            }
            if let Some(at) = deadline {
                state.timers.push(Reverse((at, topic.clone())));
            }
            state.pending -= items.len();
            state.pending_bytes -= bytes_of(&items);
            self.metrics.pending_items.dec_by(items.len() as i64);
            if !items.is_empty() {
                out.push(Flush {
                    target: topic,
                    items,
                    first,
                    offsets,
                    members,
                });
            }
        }
        state.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Evicts the history items that aged out; returns when the next one does.
    fn sweep_history(&self, state: &mut ShardState<R>) -> Option<Instant> {
        if !self.config.history.is_on() {
            return None;
        }
        let ShardState { rooms, histories, .. } = state;
        histories.sweep(
            Instant::now(),
            self.config.history.ttl,
            |room| rooms.contains_key(room),
            &self.metrics,
        )
    }

    /// Takes the broadcast batch when due (or when `everything`); returns its timer.
    fn take_due_broadcast(
        &self,
        state: &mut ShardState<R>,
        everything: bool,
        out: &mut Vec<Flush<R>>,
    ) -> Option<Instant> {
        let now = Instant::now();
        if !state.broadcast.is_empty() && (everything || state.broadcast.is_due(now)) {
            let items = state.broadcast.take(now, self.config.merge, everything);
            state.pending -= items.len();
            state.pending_bytes -= bytes_of(&items);
            self.metrics.pending_items.dec_by(items.len() as i64);
            let members = self.shards.iter().map(|s| s.state.lock().everyone.snapshot()).collect();
            out.push(Flush {
                target: Target::All,
                items,
                first: None,
                offsets: Vec::new(),
                members,
            });
        }
        state.broadcast.deadline()
    }

    /// Encodes a batch once per frame and hands the same bytes to every member.
    ///
    /// A large fan-out is split into contiguous slices of the member lists delivered by parallel tasks (one per
    /// core): each connection sits in exactly one slice, which gets the frames in order, and the worker waits for
    /// every slice before its next flush, so per-connection order holds.
    async fn send(&self, flush: Flush<R>) {
        let recipients: usize = flush.members.iter().map(|m| m.len()).sum();
        if recipients == 0 {
            self.metrics.items_unrouted.inc_by(flush.items.len() as u64);
            return;
        }
        let offsets = match (self.elsewhere.get(), &flush.target) {
            (Some(epoch), Target::Room(_)) => Offsets::Each(&flush.offsets, epoch),
            _ => Offsets::From(flush.first.as_ref()),
        };
        let frames = self.frames(&flush.target, &flush.items, offsets);
        for (frame, chunk) in frames.iter().zip(flush.items.chunks(self.config.merge.max_items)) {
            self.metrics.frames.inc();
            self.metrics.frame_items.inc_by(chunk.len() as u64);
            self.metrics.deliveries.inc_by(recipients as u64);
            self.metrics.delivered_bytes.inc_by((frame.len() * recipients) as u64);
        }
        let mut slices = partition(&flush.members, self.fanout_tasks(recipients));
        let own = slices.pop().expect("at least one slice");
        let helpers: Vec<_> = slices
            .into_iter()
            .map(|slice| tokio::spawn(deliver(slice, Arc::clone(&frames))))
            .collect();
        deliver(own, frames).await;
        for helper in helpers {
            // A panic in a recipient is a bug; surface it rather than lose track of the slice.
            helper.await.expect("fan-out task panicked");
        }
    }

    /// The frames of `items` pushed to `target`, at most `merge_max_items` each; in a room with history each frame
    /// carries the position of its last item.
    fn frames(&self, target: &Target, items: &[Bytes], offsets: Offsets<'_>) -> Arc<[Bytes]> {
        let mut end = 0usize;
        items
            .chunks(self.config.merge.max_items)
            .map(|chunk| {
                end += chunk.len();
                let last = match offsets {
                    Offsets::From(None) => None,
                    Offsets::From(Some(first)) => Some(Position {
                        offset: first.offset + end as u64 - 1,
                        epoch: Arc::clone(&first.epoch),
                    }),
                    Offsets::Each(each, epoch) => each.get(end - 1).map(|offset| Position {
                        offset: *offset,
                        epoch: Arc::clone(epoch),
                    }),
                };
                push_frame_at(target, chunk, last.as_ref())
            })
            .collect()
    }

    /// How many tasks deliver to `recipients` connections.
    fn fanout_tasks(&self, recipients: usize) -> usize {
        (recipients / MIN_DELIVERIES_PER_TASK).clamp(1, self.parallelism)
    }

    /// Refuses every push from now on (shutdown).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

/// A contiguous run of one member list.
type Slice<R> = Vec<(Arc<Vec<Arc<R>>>, std::ops::Range<usize>)>;

/// Cuts the member lists into `parts` slices of about equal size.
fn partition<R>(lists: &[Arc<Vec<Arc<R>>>], parts: usize) -> Vec<Slice<R>> {
    let total: usize = lists.iter().map(|l| l.len()).sum();
    let per_part = total.div_ceil(parts.max(1)).max(1);
    let mut slices = vec![Vec::new()];
    let mut room_left = per_part;
    for list in lists {
        let mut start = 0;
        while start < list.len() {
            if room_left == 0 {
                slices.push(Vec::new());
                room_left = per_part;
            }
            let end = (start + room_left).min(list.len());
            slices
                .last_mut()
                .expect("never empty")
                .push((Arc::clone(list), start..end));
            room_left -= end - start;
            start = end;
        }
    }
    slices
}

/// Hands every frame, in order, to every member of `slice`, yielding now and then so a large fan-out does not
/// hold a runtime thread away from sessions and timers.
async fn deliver<R: Recipient>(slice: Slice<R>, frames: Arc<[Bytes]>) {
    let mut delivered = 0usize;
    for (list, range) in slice {
        for member in &list[range] {
            for frame in frames.iter() {
                member.deliver(frame);
            }
            delivered += 1;
            if delivered % DELIVERIES_PER_YIELD == 0 {
                tokio::task::yield_now().await;
            }
        }
    }
}

/// The bytes of a push's items (what `queue_bytes` bounds).
fn bytes_of(items: &[Bytes]) -> usize {
    items.iter().map(Bytes::len).sum()
}

/// The earlier of two deadlines, either of which may be absent.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl<R: Recipient> Hub<R> {
    /// Takes a push, or refuses all of it; answers at once (this is the whole of the in-process bus, and what a
    /// cluster gateway calls for each push it receives).
    pub fn push(&self, target: &Target, items: Vec<Bytes>) -> Result<Accepted, Refused> {
        if self.closed.load(Ordering::Acquire) {
            return Err(self.refuse_shutting_down());
        }
        if items.len() > self.config.queue_items {
            // It could never fit, however long the caller waits: not a 503.
            return Err(Refused::TooManyItems {
                limit: self.config.queue_items,
            });
        }
        let count = items.len() as u64;
        let accepted = match target {
            Target::Room(_) | Target::User(_) => self.push_topic(target, items),
            Target::All => self.push_all(items),
        }?;
        match target {
            Target::Room(_) => self.metrics.pushes_room.inc(),
            Target::User(_) => self.metrics.pushes_user.inc(),
            Target::All => self.metrics.pushes_all.inc(),
        };
        self.metrics.items.inc_by(count);
        Ok(accepted)
    }

    /// The hub's statistics, as `GET /stats` shows them.
    pub fn stats(&self) -> HubStats {
        let m = &self.metrics;
        let gauge = |gauge: &prometheus_client::metrics::gauge::Gauge| gauge.get().max(0) as u64;
        HubStats {
            connections: gauge(&m.connections),
            rooms: gauge(&m.rooms),
            users: gauge(&m.users),
            memberships: gauge(&m.memberships),
            pending_items: gauge(&m.pending_items),
            pushes: m.pushes_room.get() + m.pushes_all.get() + m.pushes_user.get(),
            items: m.items.get(),
            frames: m.frames.get(),
            frame_items: m.frame_items.get(),
            deliveries: m.deliveries.get(),
            delivered_bytes: m.delivered_bytes.get(),
            items_unrouted: m.items_unrouted.get(),
            pushes_refused: m.refused_queue_full.get() + m.refused_shutting_down.get(),
            shards: self.shards.len() as u64,
            merge_window_ms: self.config.merge.window.as_millis() as u64,
            merge_max_items: self.config.merge.max_items as u64,
        }
    }

    /// Rooms with at least one member.
    pub fn rooms(&self) -> u64 {
        self.metrics.rooms.get() as u64
    }

    /// Items waiting in merge batches.
    pub fn pending_items(&self) -> u64 {
        self.metrics.pending_items.get() as u64
    }

    /// Whether the hub still takes pushes (false once [`Hub::close`] ran).
    pub fn is_open(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
    }
}

impl<R: Recipient> Bus for Hub<R> {
    fn push(&self, target: Target, items: Vec<Bytes>) -> PushFuture<'_> {
        Box::pin(std::future::ready(Hub::push(self, &target, items)))
    }

    fn query(&self, query: Query) -> QueryFuture<'_> {
        Box::pin(std::future::ready(Ok(self.census(&query))))
    }

    fn stats(&self) -> Stats {
        Stats::Hub(Hub::stats(self))
    }
}

#[cfg(test)]
mod tests;
