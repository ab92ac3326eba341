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
//!
//! # Layout
//! - [`batch`]: the merge decision for one room.
//! - `members`: a room's member list, walked without a lock.
//! - [`metrics`]: counters and gauges.

pub mod batch;
mod members;
pub mod metrics;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use herald_protocol::bus::{Accepted, Bus, PushFuture, Refused, Target};
use herald_protocol::push::push_frame;
use herald_protocol::stats::{HubStats, Stats};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::batch::{Batch, MergePolicy, Wake};
use crate::members::Members;
pub use crate::metrics::HubMetrics;

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
}

/// The fan-out engine. Create with [`Hub::new`], then [`Hub::spawn_workers`].
pub struct Hub<R> {
    shards: Box<[Shard<R>]>,
    broadcast: Shard<R>,
    hasher: RandomState,
    config: HubConfig,
    closed: AtomicBool,
    metrics: HubMetrics,
    /// Tasks one large fan-out is split over (the number of cores).
    parallelism: usize,
    /// Where changes of interest in rooms go, when someone asked ([`Hub::watch_interest`]).
    interest: OnceLock<mpsc::UnboundedSender<Interest>>,
}

/// A room gained its first member here, or lost its last one: what a gateway on a message bus subscribes and
/// unsubscribes by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interest {
    /// The room.
    pub room: Arc<str>,
    /// True when the room has members now, false when it has none left.
    pub wanted: bool,
}

struct Shard<R> {
    state: Mutex<ShardState<R>>,
    wake: Notify,
}

struct ShardState<R> {
    rooms: HashMap<Arc<str>, Room<R>>,
    /// Connections whose id falls in this shard: the broadcast's recipients.
    everyone: Members<R>,
    /// Rooms due now (room shards only).
    ready: Vec<Arc<str>>,
    /// Rooms due later (room shards only; entries may be stale: see [`Batch::is_due_at`]).
    timers: BinaryHeap<Reverse<(Instant, Arc<str>)>>,
    /// Items waiting in this shard's batches (bounded by `queue_items`).
    pending: usize,
    /// The broadcast's batch (used only in the hub's broadcast shard).
    broadcast: Batch,
    /// The worker made its final pass: nothing added now would ever be sent.
    stopped: bool,
}

struct Room<R> {
    members: Members<R>,
    batch: Batch,
}

/// A batch taken for sending, with who gets it.
struct Flush<R> {
    room: Option<Arc<str>>,
    items: Vec<Bytes>,
    members: Vec<Arc<Vec<Arc<R>>>>,
}

impl<R> Shard<R> {
    fn new() -> Self {
        Self {
            state: Mutex::new(ShardState {
                rooms: HashMap::new(),
                everyone: Members::default(),
                ready: Vec::new(),
                timers: BinaryHeap::new(),
                pending: 0,
                broadcast: Batch::default(),
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
        Arc::new(Self {
            shards: (0..config.shards).map(|_| Shard::new()).collect(),
            broadcast: Shard::new(),
            hasher: RandomState::new(),
            config,
            closed: AtomicBool::new(false),
            metrics,
            parallelism: std::thread::available_parallelism().map_or(1, usize::from),
            interest: OnceLock::new(),
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

    fn room_shard(&self, room: &str) -> &Shard<R> {
        &self.shards[self.hasher.hash_one(room) as usize % self.shards.len()]
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

    /// Rooms that have members now (for a watcher that starts late or resubscribes).
    pub fn rooms_with_members(&self) -> Vec<Arc<str>> {
        let mut rooms = Vec::new();
        for shard in self.shards.iter() {
            let state = shard.state.lock();
            rooms.extend(
                state
                    .rooms
                    .iter()
                    .filter(|(_, room)| !room.members.is_empty())
                    .map(|(name, _)| Arc::clone(name)),
            );
        }
        rooms
    }

    /// Called under the room's shard lock, so one room's events are sent in the order they happened.
    fn interest_changed(&self, room: &str, wanted: bool) {
        if let Some(watcher) = self.interest.get() {
            // A watcher gone (shutting down) has nothing left to subscribe.
            let _ = watcher.send(Interest {
                room: Arc::from(room),
                wanted,
            });
        }
    }

    /// Adds a new connection (it will receive broadcasts).
    pub fn register(&self, conn: &Arc<R>) {
        if self.conn_shard(conn.id()).state.lock().everyone.insert(conn) {
            self.metrics.connections.inc();
        }
    }

    /// Removes a connection from the hub and from each of `rooms`.
    pub fn unregister<'a>(&self, id: u64, rooms: impl IntoIterator<Item = &'a str>) {
        for room in rooms {
            self.leave(room, id);
        }
        if self.conn_shard(id).state.lock().everyone.remove(id) {
            self.metrics.connections.dec();
        }
    }

    /// Adds a connection to a room; false if it was a member already.
    pub fn join(&self, room: &str, conn: &Arc<R>) -> bool {
        let mut state = self.room_shard(room).state.lock();
        // `first`: the room had no member before this one.
        let (joined, first) = match state.rooms.get_mut(room) {
            Some(existing) => {
                let first = existing.members.is_empty();
                let joined = existing.members.insert(conn);
                (joined, joined && first)
            }
            None => {
                let mut created = Room {
                    members: Members::default(),
                    batch: Batch::default(),
                };
                created.members.insert(conn);
                state.rooms.insert(Arc::from(room), created);
                self.metrics.rooms.inc();
                (true, true)
            }
        };
        if joined {
            self.metrics.memberships.inc();
        }
        if first {
            self.interest_changed(room, true);
        }
        joined
    }

    /// Removes a connection from a room; false if it was not a member.
    pub fn leave(&self, room: &str, id: u64) -> bool {
        let mut state = self.room_shard(room).state.lock();
        let Some(existing) = state.rooms.get_mut(room) else {
            return false;
        };
        let left = existing.members.remove(id);
        let last = left && existing.members.is_empty();
        // A room with items still waiting stays until its worker flushes it (and then drops it).
        if existing.members.is_empty() && existing.batch.is_empty() {
            state.rooms.remove(room);
            self.metrics.rooms.dec();
        }
        if left {
            self.metrics.memberships.dec();
        }
        if last {
            self.interest_changed(room, false);
        }
        left
    }

    /// Current number of connections.
    pub fn connections(&self) -> usize {
        self.metrics.connections.get().max(0) as usize
    }

    fn push_room(&self, room: &Arc<str>, items: Vec<Bytes>) -> Result<Accepted, Refused> {
        let shard = self.room_shard(room);
        let count = items.len();
        let mut guard = shard.state.lock();
        let state = &mut *guard;
        if state.stopped {
            return Err(self.refuse_shutting_down());
        }
        let Some(entry) = state.rooms.get_mut(&**room) else {
            // Nobody to deliver to: say so (recipients 0) and count the items as dropped.
            self.metrics.items_unrouted.inc_by(count as u64);
            return Ok(Accepted {
                items: count,
                recipients: Some(0),
                gateways: None,
            });
        };
        if state.pending + count > self.config.queue_items {
            return Err(self.refuse_queue_full());
        }
        let recipients = entry.members.len();
        let wake = entry.batch.add(items, Instant::now(), self.config.merge);
        state.pending += count;
        match wake {
            Wake::Nothing => {}
            Wake::Now => state.ready.push(Arc::clone(room)),
            Wake::At(at) => state.timers.push(Reverse((at, Arc::clone(room)))),
        }
        drop(guard);
        if wake != Wake::Nothing {
            shard.wake.notify_one();
        }
        self.metrics.pending_items.inc_by(count as i64);
        Ok(Accepted {
            items: count,
            recipients: Some(recipients),
            gateways: None,
        })
    }

    fn push_all(&self, items: Vec<Bytes>) -> Result<Accepted, Refused> {
        let count = items.len();
        let mut state = self.broadcast.state.lock();
        if state.stopped {
            return Err(self.refuse_shutting_down());
        }
        if state.pending + count > self.config.queue_items {
            return Err(self.refuse_queue_full());
        }
        // The broadcast worker reads the batch's own deadline; any wake just makes it look again.
        let wake = state.broadcast.add(items, Instant::now(), self.config.merge);
        state.pending += count;
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
                    Some(_) => self.take_due_rooms(&mut state, stopping, &mut flushes),
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
            let Reverse((at, room)) = state.timers.pop().expect("peeked");
            if state.rooms.get(&room).is_some_and(|r| r.batch.is_due_at(at)) {
                due.push(room);
            }
        }
        for room in due {
            let Some(entry) = state.rooms.get_mut(&room) else {
                continue;
            };
            let items = entry
                .batch
                .take(now, self.config.merge, everything || entry.members.is_empty());
            if let Some(at) = entry.batch.deadline() {
                state.timers.push(Reverse((at, Arc::clone(&room))));
            }
            state.pending -= items.len();
            self.metrics.pending_items.dec_by(items.len() as i64);
            let members = vec![entry.members.snapshot()];
            if entry.members.is_empty() {
                state.rooms.remove(&room);
                self.metrics.rooms.dec();
            }
            if !items.is_empty() {
                out.push(Flush {
                    room: Some(room),
                    items,
                    members,
                });
            }
        }
        state.timers.peek().map(|Reverse((at, _))| *at)
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
            self.metrics.pending_items.dec_by(items.len() as i64);
            let members = self.shards.iter().map(|s| s.state.lock().everyone.snapshot()).collect();
            out.push(Flush {
                room: None,
                items,
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
        let frames: Arc<[Bytes]> = flush
            .items
            .chunks(self.config.merge.max_items)
            .map(|chunk| push_frame(flush.room.as_deref(), chunk))
            .collect();
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
            Target::Room(room) => self.push_room(room, items),
            Target::All => self.push_all(items),
        }?;
        match target {
            Target::Room(_) => self.metrics.pushes_room.inc(),
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
            memberships: gauge(&m.memberships),
            pending_items: gauge(&m.pending_items),
            pushes: m.pushes_room.get() + m.pushes_all.get(),
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

    fn stats(&self) -> Stats {
        Stats::Hub(Hub::stats(self))
    }
}

#[cfg(test)]
mod tests;
