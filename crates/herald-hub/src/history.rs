//! Room history in memory: the last items pushed to each room, with their offsets, so that a client that comes
//! back can be given exactly what it missed, or be told that it cannot.
//!
//! Each shard keeps the histories of its rooms beside the rooms themselves, under the same lock, so an item gets
//! its offset, joins the room's batch and is retained in one step, and a JOIN sees the history and the batch as
//! one state (see [`crate::Hub::join_with`]).
//!
//! # Offsets and epochs
//! A room's offsets count its items from 1, one by one, in push order. The epoch names one such count: the
//! process's random epoch and a number the hub gives each history it starts, so a restart of the process, or a
//! history forgotten and started again, never reuses an (epoch, offset) pair.
//!
//! # What leaves a history
//! - by size: beyond `history_size` items, the oldest goes;
//! - by age: an item older than `history_ttl` goes (the shard's worker sweeps when the oldest item is due);
//! - by memory: when a shard's items cost more than its share of `history_max_bytes` (the bound split evenly over
//!   the shards), the oldest items of the shard go first, whatever their room, but never an item of the push
//!   being stored: one push larger than a shard's share is kept whole, and the shard is over its share until the
//!   next push or sweep.
//!
//! A history that holds no item and whose room has no entry (no member, nothing waiting) is forgotten: the next
//! push to the room starts a new epoch.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use herald_protocol::position::Position;
use tokio::time::Instant;

use crate::metrics::HubMetrics;
use crate::outcomes::Evicted;
// Where callers have always found it.
pub use crate::outcomes::Recovery;

/// History settings (off when `size` is 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Items kept per room; 0 turns history off.
    pub size: usize,
    /// How long an item is kept.
    pub ttl: Duration,
    /// What the retained items of the whole hub may cost, in bytes (see the module docs).
    pub max_bytes: usize,
}

impl HistoryConfig {
    /// History off.
    pub const OFF: Self = Self {
        size: 0,
        ttl: Duration::from_secs(300),
        max_bytes: 64 << 20,
    };

    /// Whether rooms keep history.
    pub fn is_on(&self) -> bool {
        self.size > 0
    }
}

/// What one retained item costs beyond its own bytes: its handle, its time, its slot in the queue and the
/// allocator's rounding (measured: 178 bytes of RSS an item of 95 bytes, 100 items a room).
pub const ITEM_OVERHEAD: usize = std::mem::size_of::<Item>() + 32;
/// What a history that holds items costs beyond them: its map entry, its epoch, its queue, its heap entry.
pub const HISTORY_OVERHEAD: usize = 192;

/// The epochs a hub gives its histories: unique to this process, then numbered.
#[derive(Debug)]
pub(crate) struct Epochs {
    process: String,
    next: AtomicU64,
}

impl Epochs {
    pub(crate) fn new() -> Self {
        Self {
            process: format!("{:016x}", fastrand::u64(..)),
            next: AtomicU64::new(1),
        }
    }

    fn next(&self) -> Arc<str> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Arc::from(format!("{}-{n}", self.process))
    }
}

#[derive(Debug)]
struct Item {
    at: Instant,
    bytes: Bytes,
}

/// One room's history.
#[derive(Debug)]
struct History {
    epoch: Arc<str>,
    /// The offset the next item gets.
    next: u64,
    items: VecDeque<Item>,
}

impl History {
    fn new(epochs: &Epochs) -> Self {
        Self {
            epoch: epochs.next(),
            next: 1,
            items: VecDeque::new(),
        }
    }

    /// The offset of the oldest item retained (`next` when none is).
    fn first(&self) -> u64 {
        self.next - self.items.len() as u64
    }

    fn position(&self, offset: u64) -> Position {
        Position {
            offset,
            epoch: Arc::clone(&self.epoch),
        }
    }
}

/// The histories of one shard's rooms.
#[derive(Debug)]
pub(crate) struct Histories {
    rooms: HashMap<Arc<str>, History>,
    /// One entry per history that holds items, keyed no later than its oldest item's time: what ages out next,
    /// and what goes first when memory is short. (An entry whose history lost items by size is re-keyed when it
    /// comes up.)
    oldest: BinaryHeap<Reverse<(Instant, Arc<str>)>>,
    /// What the retained items cost ([`ITEM_OVERHEAD`] and [`HISTORY_OVERHEAD`] included).
    bytes: usize,
    /// This shard's share of `history_max_bytes`.
    budget: usize,
}

impl Histories {
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            rooms: HashMap::new(),
            oldest: BinaryHeap::new(),
            bytes: 0,
            budget,
        }
    }

    /// Retains `items` pushed to `room` at `now`; returns the offset of the first. `key` makes the history's key
    /// when it is new (the room's shared name, when it has an entry); `has_entry` says which rooms have an entry
    /// (a history emptied to make room is forgotten unless its room has one).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn append(
        &mut self,
        room: &str,
        key: impl FnOnce() -> Arc<str>,
        items: &[Bytes],
        now: Instant,
        config: &HistoryConfig,
        epochs: &Epochs,
        has_entry: impl Fn(&str) -> bool,
        metrics: &HubMetrics,
    ) -> u64 {
        if !self.rooms.contains_key(room) {
            self.rooms.insert(key(), History::new(epochs));
        }
        let (name, _) = self.rooms.get_key_value(room).expect("inserted above");
        let name = Arc::clone(name);
        let history = self.rooms.get_mut(room).expect("inserted above");
        let first = history.next;
        let mut added = 0;
        if history.items.is_empty() && !items.is_empty() {
            self.oldest.push(Reverse((now, name)));
            added += HISTORY_OVERHEAD;
        }
        for item in items {
            // A copy of its own: the pushed item may be a slice of a large request body.
            let bytes = Bytes::copy_from_slice(item);
            added += bytes.len() + ITEM_OVERHEAD;
            history.items.push_back(Item { at: now, bytes });
        }
        history.next += items.len() as u64;
        metrics.history_items.inc_by(items.len() as u64);
        let mut removed = 0;
        while history.items.len() > config.size {
            let item = history.items.pop_front().expect("longer than size");
            removed += item.bytes.len() + ITEM_OVERHEAD;
            metrics.evicted(Evicted::Size, 1);
        }
        self.charge(added, removed, metrics);
        self.shed(room, first, has_entry, metrics);
        first
    }

    /// Evicts the shard's oldest items while it is over its budget, keeping those of `room` from offset `keep`.
    fn shed(&mut self, room: &str, keep: u64, has_entry: impl Fn(&str) -> bool, metrics: &HubMetrics) {
        while self.bytes > self.budget {
            let Some(Reverse((at, name))) = self.oldest.pop() else {
                return;
            };
            let Some(history) = self.rooms.get_mut(&name) else {
                continue;
            };
            let Some(front) = history.items.front() else {
                continue;
            };
            if front.at > at {
                // Its oldest items left by size since: key it by the one it has now.
                self.oldest.push(Reverse((front.at, name)));
                continue;
            }
            if *name == *room && history.first() >= keep {
                self.oldest.push(Reverse((at, name)));
                return;
            }
            let item = history.items.pop_front().expect("has a front");
            let mut removed = item.bytes.len() + ITEM_OVERHEAD;
            metrics.evicted(Evicted::Memory, 1);
            match history.items.front() {
                Some(next) => self.oldest.push(Reverse((next.at, name))),
                None => {
                    removed += HISTORY_OVERHEAD;
                    if !has_entry(&name) {
                        self.rooms.remove(&name);
                    }
                }
            }
            self.charge(0, removed, metrics);
        }
    }

    /// Evicts every item older than `ttl` at `now`; forgets the emptied histories of rooms without an entry
    /// (`has_entry` says which have one). Returns when the next item ages out.
    pub(crate) fn sweep(
        &mut self,
        now: Instant,
        ttl: Duration,
        has_entry: impl Fn(&str) -> bool,
        metrics: &HubMetrics,
    ) -> Option<Instant> {
        while let Some(Reverse((at, _))) = self.oldest.peek() {
            if *at + ttl > now {
                return Some(*at + ttl);
            }
            let Reverse((_, name)) = self.oldest.pop().expect("peeked");
            self.expire(&name, now, ttl, metrics);
            if let Some(history) = self.rooms.get(&name) {
                match history.items.front() {
                    Some(front) => self.oldest.push(Reverse((front.at, name))),
                    None if !has_entry(&name) => {
                        self.rooms.remove(&name);
                    }
                    None => {}
                }
            }
        }
        None
    }

    /// Evicts the items of one room older than `ttl` at `now` (its heap entry is left as it is: a stale key is
    /// re-keyed when it comes up).
    fn expire(&mut self, room: &str, now: Instant, ttl: Duration, metrics: &HubMetrics) {
        let Some(history) = self.rooms.get_mut(room) else {
            return;
        };
        let mut removed = 0;
        while history.items.front().is_some_and(|item| item.at + ttl <= now) {
            let item = history.items.pop_front().expect("has a front");
            removed += item.bytes.len() + ITEM_OVERHEAD;
            metrics.evicted(Evicted::Age, 1);
        }
        if removed > 0 && history.items.is_empty() {
            removed += HISTORY_OVERHEAD;
        }
        self.charge(0, removed, metrics);
    }

    /// Forgets the history of a room whose entry is gone, if it holds no item.
    pub(crate) fn forget_if_empty(&mut self, room: &str) {
        if self.rooms.get(room).is_some_and(|history| history.items.is_empty()) {
            self.rooms.remove(room);
        }
    }

    /// The position of the first of `pending` items still waiting in the room's batch (the last `pending` items
    /// pushed), for the frame that carries them.
    pub(crate) fn first_pending(&self, room: &str, pending: usize) -> Option<Position> {
        let history = self.rooms.get(room)?;
        Some(history.position(history.next.saturating_sub(pending as u64)))
    }

    /// Where a room stands for a connection joining it now, while `pending` items wait in its batch (those reach
    /// the new member live): the offset of the last item that does not. Starts the room's history if it has none.
    pub(crate) fn join_position(&mut self, room: &Arc<str>, pending: usize, epochs: &Epochs) -> Position {
        let history = self
            .rooms
            .entry(Arc::clone(room))
            .or_insert_with(|| History::new(epochs));
        history.position(history.next.saturating_sub(1 + pending as u64))
    }

    /// Whether every item after `since` up to `upto` (a [`Histories::join_position`]) is retained in `room`, and
    /// those items when it is. Items older than `ttl` at `now` count as gone (the sweep may not have reached them).
    pub(crate) fn replay(
        &self,
        room: &str,
        since: &herald_protocol::client::Since<'_>,
        upto: &Position,
        now: Instant,
        ttl: Duration,
    ) -> Result<Vec<Bytes>, Recovery> {
        let Some(history) = self.rooms.get(room) else {
            return Err(Recovery::OtherEpoch);
        };
        if *since.epoch != *history.epoch {
            return Err(Recovery::OtherEpoch);
        }
        if since.offset >= upto.offset {
            // Nothing to replay: the client has everything up to where live items begin (or claims more).
            return if since.offset == upto.offset {
                Ok(Vec::new())
            } else {
                Err(Recovery::Ahead)
            };
        }
        let expired = history.items.iter().take_while(|item| item.at + ttl <= now).count();
        let first = history.first() + expired as u64;
        if since.offset + 1 < first {
            return Err(Recovery::Gone);
        }
        let skip = (since.offset + 1 - history.first()) as usize;
        let take = (upto.offset - since.offset) as usize;
        Ok(history
            .items
            .iter()
            .skip(skip)
            .take(take)
            .map(|item| item.bytes.clone())
            .collect())
    }

    fn charge(&mut self, added: usize, removed: usize, metrics: &HubMetrics) {
        self.bytes = self.bytes + added - removed;
        metrics.history_bytes.inc_by(added as i64 - removed as i64);
    }

    /// What the retained items cost now.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Histories held (with items or not).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.rooms.len()
    }
}
