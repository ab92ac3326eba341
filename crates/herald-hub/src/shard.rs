//! What one shard holds: a room shard's rooms, users, connections and timers, or the broadcast's batch; each with
//! the queue that bounds the items waiting in it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use herald_protocol::bus::Target;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::batch::{Batch, Wake};
use crate::config::HubConfig;
use crate::history::Histories;
use crate::members::Members;
use crate::metrics::HubMetrics;
use crate::stored::StoredRooms;

/// One bucket: its state under its own lock, and its worker's wake-up.
pub(crate) struct Shard<S> {
    pub(crate) state: Mutex<S>,
    pub(crate) wake: Notify,
}

impl<S> Shard<S> {
    pub(crate) fn new(state: S) -> Self {
        Self {
            state: Mutex::new(state),
            wake: Notify::new(),
        }
    }
}

/// What waits in one shard's batches, bounded by `queue_items` and `queue_bytes`.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    items: usize,
    bytes: usize,
    /// The worker made its final pass: nothing added now would ever be sent.
    pub(crate) stopped: bool,
}

impl Queue {
    /// Whether `count` more items of `bytes` would overfill it. A push of any size goes into an empty queue (the
    /// push API bounded it already), so that it can go out.
    pub(crate) fn would_overfill(&self, count: usize, bytes: usize, config: &HubConfig) -> bool {
        self.items + count > config.queue_items || (self.bytes > 0 && self.bytes + bytes > config.queue_bytes)
    }

    /// Counts items that joined a batch.
    pub(crate) fn add(&mut self, count: usize, bytes: usize, metrics: &HubMetrics) {
        self.items += count;
        self.bytes += bytes;
        metrics.pending_items.inc_by(count as i64);
    }

    /// Counts items that left their batch (sent, or dropped with it).
    pub(crate) fn remove(&mut self, items: &[Bytes], metrics: &HubMetrics) {
        self.items -= items.len();
        self.bytes -= bytes_of(items);
        metrics.pending_items.dec_by(items.len() as i64);
    }
}

/// A room shard: the rooms and users whose name hashes here, the connections whose id does, and when their batches
/// are due.
pub(crate) struct RoomShard<R> {
    pub(crate) rooms: HashMap<Arc<str>, Room<R>>,
    /// Users with their connections: merged and delivered like rooms.
    pub(crate) users: HashMap<Arc<str>, Room<R>>,
    /// Connections whose id falls in this shard: the broadcast's recipients.
    pub(crate) everyone: Members<R>,
    /// Rooms and users due now.
    pub(crate) ready: Vec<Target>,
    /// Rooms and users due later (entries may be stale: see [`Batch::is_due_at`]).
    pub(crate) timers: BinaryHeap<Reverse<(Instant, Target)>>,
    pub(crate) queue: Queue,
    /// The histories of this shard's rooms (empty with history off or kept elsewhere).
    pub(crate) histories: Histories,
    /// With history kept elsewhere: JOINs waiting for the store, and where the rooms stand.
    pub(crate) stored: StoredRooms<R>,
}

/// The broadcast's shard: one batch for every connection.
#[derive(Default)]
pub(crate) struct BroadcastShard {
    pub(crate) batch: Batch,
    pub(crate) queue: Queue,
}

/// A room's (or a user's) members and its batch. The batch is made at the first push: an entry that is never
/// pushed to (most users, idle rooms) keeps only its members.
pub(crate) struct Room<R> {
    pub(crate) members: Members<R>,
    pub(crate) batch: Option<Box<Batch>>,
}

impl<R> Room<R> {
    pub(crate) fn new() -> Self {
        Self {
            members: Members::default(),
            batch: None,
        }
    }

    pub(crate) fn has_items(&self) -> bool {
        self.batch.as_ref().is_some_and(|batch| !batch.is_empty())
    }
}

/// Rooms and users live in maps of their own, side by side in each shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Room,
    User,
}

impl Kind {
    pub(crate) fn of(topic: &Target) -> Self {
        match topic {
            Target::Room(_) => Self::Room,
            Target::User(_) => Self::User,
            Target::All => unreachable!("broadcasts have no entry in a shard"),
        }
    }

    pub(crate) fn topic(self, name: Arc<str>) -> Target {
        match self {
            Self::Room => Target::Room(name),
            Self::User => Target::User(name),
        }
    }
}

impl<R> RoomShard<R> {
    pub(crate) fn new(history_budget: usize) -> Self {
        Self {
            rooms: HashMap::new(),
            users: HashMap::new(),
            everyone: Members::default(),
            ready: Vec::new(),
            timers: BinaryHeap::new(),
            queue: Queue::default(),
            histories: Histories::new(history_budget),
            stored: StoredRooms::default(),
        }
    }

    /// Files the wake-up `topic`'s batch asked for.
    pub(crate) fn schedule(&mut self, topic: Target, wake: Wake) {
        match wake {
            Wake::Nothing => {}
            Wake::Now => self.ready.push(topic),
            Wake::At(at) => self.timers.push(Reverse((at, topic))),
        }
    }

    pub(crate) fn map(&mut self, kind: Kind) -> &mut HashMap<Arc<str>, Room<R>> {
        match kind {
            Kind::Room => &mut self.rooms,
            Kind::User => &mut self.users,
        }
    }

    /// The map a topic lives in, and its name.
    pub(crate) fn entries<'a>(&mut self, topic: &'a Target) -> (&mut HashMap<Arc<str>, Room<R>>, &'a Arc<str>) {
        (self.map(Kind::of(topic)), topic_name(topic))
    }
}

/// The name of a room or a user.
pub(crate) fn topic_name(topic: &Target) -> &Arc<str> {
    match topic {
        Target::Room(name) | Target::User(name) => name,
        Target::All => unreachable!("broadcasts have no entry in a shard"),
    }
}

/// The bytes of a push's items (what `queue_bytes` bounds).
pub(crate) fn bytes_of(items: &[Bytes]) -> usize {
    items.iter().map(Bytes::len).sum()
}
