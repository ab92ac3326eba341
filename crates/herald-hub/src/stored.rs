//! Room history kept elsewhere: in NATS JetStream, which gives each item its offset (its stream sequence), keeps
//! the items, and answers for them on every gateway alike. The hub then retains no item. It keeps where each of its
//! rooms stands, carries the store's offsets on its frames, and hands every JOIN of a new member to whoever reads
//! the store (the NATS feed), which answers it with [`Hub::complete_join`] once it has read what the JOIN missed.
//!
//! # A JOIN, step by step
//! 1. [`Hub::join_with`] records the JOIN as pending in its room's shard (the connection is not a member yet, so no
//!    frame of the room reaches it) and reports [`Interest::Join`] to the watcher, after [`Interest::Wanted`] when
//!    the room had neither a member nor a pending JOIN.
//! 2. The watcher, which hands the room's items to the hub one by one in the store's order, subscribes to the room
//!    if it had not, reads from the store every item after `since`, and calls [`Hub::complete_join`] with where it
//!    stands: the offset of the last item it handed to the hub.
//! 3. Under the room's lock, `complete_join` delivers the ACK (the offset of the last item that will not reach the
//!    connection live: items still waiting in the room's batch will), the missed items up to there, and makes the
//!    connection a member, so every later item reaches it live, in order, once.
//!
//! A connection that leaves or closes before step 3 is forgotten with its pending JOIN, and a late answer to it is
//! not taken for a newer one (each pending JOIN has its id). A JOIN sent again while the first waits is answered
//! with it; a re-JOIN of a member is answered at once with where the room stands.
//!
//! Two rules keep a resuming client free of duplicates across readers: an item at or below where the room stands
//! is dropped (a reader of the room that was replaced may still hand some), and a room left with neither a member
//! nor a pending JOIN is dropped at once with its batch, so that the room's next reader, which starts from where the
//! store stands, finds no batch of before in front of its first JOIN. A JOIN whose client already has items that
//! still wait in the batch here (it saw them on a faster gateway) waits for that batch to go out
//! ([`Completion::Wait`]).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use herald_protocol::bus::{Accepted, Refused, Target};
use herald_protocol::client::Since;
use herald_protocol::position::{JoinAnswer, Position};
use tokio::time::Instant;

use crate::history::Recovery;
use crate::members::Members;
use crate::{Hub, Interest, Joined, Offsets, Recipient, Room, RoomLimit, ShardState};

/// The acknowledgement a JOIN sends when it is taken: given where the room stands, the frame to deliver, if any.
pub type Ack = Box<dyn FnOnce(Option<&JoinAnswer>) -> Option<Bytes> + Send>;

struct PendingJoin<R> {
    /// Which JOIN this is ([`JoinRequest::id`]): a late answer to one that was left is not taken for a newer one.
    id: u64,
    conn: Arc<R>,
    ack: Ack,
    /// The acknowledgements of JOINs the connection sent again while this one waited: answered as a member's.
    again: Vec<Ack>,
}

/// One shard's JOINs waiting for the store, and where its rooms stand (used only with history elsewhere).
pub(crate) struct StoredRooms<R> {
    joining: HashMap<Arc<str>, Vec<PendingJoin<R>>>,
    /// The offset of the last item handed to each room that has an entry or a pending JOIN.
    stands_at: HashMap<Arc<str>, u64>,
    /// The id the next pending JOIN of this shard gets.
    next_id: u64,
}

impl<R> Default for StoredRooms<R> {
    fn default() -> Self {
        Self {
            joining: HashMap::new(),
            stands_at: HashMap::new(),
            next_id: 1,
        }
    }
}

impl<R: Recipient> StoredRooms<R> {
    /// Whether `room` has a JOIN waiting.
    pub(crate) fn is_joining(&self, room: &str) -> bool {
        self.joining.contains_key(room)
    }

    /// The rooms with a JOIN waiting.
    pub(crate) fn joining_rooms(&self) -> impl Iterator<Item = &Arc<str>> {
        self.joining.keys()
    }

    /// Drops the pending JOINs of connection `id` in `room`; whether it had one.
    pub(crate) fn drop_joins(&mut self, room: &str, id: u64) -> bool {
        let Some(list) = self.joining.get_mut(room) else {
            return false;
        };
        let before = list.len();
        list.retain(|pending| pending.conn.id() != id);
        let dropped = list.len() < before;
        if list.is_empty() {
            self.joining.remove(room);
        }
        dropped
    }

    /// Forgets where a room stands once it has neither an entry (the caller knows) nor a pending JOIN.
    pub(crate) fn forget(&mut self, room: &str) {
        if !self.joining.contains_key(room) {
            self.stands_at.remove(room);
        }
    }
}

/// A JOIN the store must answer (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    /// Which pending JOIN this is (unique in its room's shard).
    pub id: u64,
    /// The room, as the hub holds its name.
    pub room: Arc<str>,
    /// The connection's id.
    pub conn: u64,
    /// Where it resumes from, when it does.
    pub since: Option<StoredSince>,
}

/// A resuming JOIN's position, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSince {
    /// The offset of the last item the client has.
    pub offset: u64,
    /// The epoch that offset is of.
    pub epoch: String,
}

/// What the store's reader found for a pending JOIN.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Fetched {
    /// The offset the JOIN resumes from, when it does: no item at or below it may reach the connection.
    pub since: Option<u64>,
    /// The offset of the last item the reader handed to the room (or, before any, a position no later item of the
    /// room is at or below).
    pub stands_at: u64,
    /// The items after `since`, with their offsets, in order; those up to where the room stands are replayed.
    pub items: Vec<(u64, Bytes)>,
    /// How the JOIN resumed; `None` for a JOIN without `since`.
    pub outcome: Option<Recovery>,
}

impl<R: Recipient> Hub<R> {
    /// Keeps room history elsewhere, under the store's `epoch` (see the module docs); call before the first JOIN.
    /// False when it was set already.
    pub fn keep_history_elsewhere(&self, epoch: Arc<str>) -> bool {
        self.elsewhere.set(epoch).is_ok()
    }

    /// The epoch of the store that keeps the history, when it is kept elsewhere.
    pub fn history_elsewhere(&self) -> Option<&Arc<str>> {
        self.elsewhere.get()
    }

    /// A JOIN with history elsewhere: answered at once for a member, else left pending for the store's reader.
    pub(crate) fn join_pending(
        &self,
        room: &str,
        conn: &Arc<R>,
        since: Option<&Since<'_>>,
        ack: Ack,
        epoch: &Arc<str>,
    ) -> Result<Joined, RoomLimit> {
        let mut guard = self.room_shard(room).state.lock();
        let state = &mut *guard;
        let entry = state.rooms.get_key_value(room);
        if let Some((key, existing)) = entry
            && existing.members.contains(conn.id())
        {
            let key = Arc::clone(key);
            let answer = JoinAnswer {
                position: stands_at(state, &key, epoch),
                recovered: None,
            };
            if let Some(frame) = ack(Some(&answer)) {
                conn.deliver(&frame);
            }
            return Ok(Joined { room: key, new: false });
        }
        // Sent again while its first JOIN waits: answered with it, as a member's.
        if let Some(pending) = state
            .stored
            .joining
            .get_mut(room)
            .and_then(|list| list.iter_mut().find(|pending| pending.conn.id() == conn.id()))
        {
            pending.again.push(ack);
            let key = Arc::clone(state.stored.joining.get_key_value(room).expect("found above").0);
            return Ok(Joined { room: key, new: false });
        }
        let joining = state.stored.joining.get_key_value(room).map(|(key, _)| Arc::clone(key));
        let key = match (entry.map(|(key, _)| Arc::clone(key)), joining.clone()) {
            (Some(key), _) | (None, Some(key)) => key,
            (None, None) => {
                // Counted by the caller, as for a room with its history here.
                let limit = self.config.max_rooms;
                if limit > 0 && self.metrics.rooms.get() >= limit as i64 {
                    return Err(RoomLimit);
                }
                Arc::from(room)
            }
        };
        let has_members = state
            .rooms
            .get(room)
            .is_some_and(|existing| !existing.members.is_empty());
        if joining.is_none() && !has_members {
            self.interest_changed(Interest::Wanted(Target::Room(Arc::clone(&key))));
        }
        let id = state.stored.next_id;
        state.stored.next_id += 1;
        state
            .stored
            .joining
            .entry(Arc::clone(&key))
            .or_default()
            .push(PendingJoin {
                id,
                conn: Arc::clone(conn),
                ack,
                again: Vec::new(),
            });
        self.interest_changed(Interest::Join(JoinRequest {
            id,
            room: Arc::clone(&key),
            conn: conn.id(),
            since: since.map(|since| StoredSince {
                offset: since.offset,
                epoch: since.epoch.to_string(),
            }),
        }));
        Ok(Joined { room: key, new: true })
    }

    /// Completes the pending JOIN `request` with what the store's reader found (see the module docs); nothing when
    /// its connection left or closed meanwhile. [`Completion::Wait`] when an item the client has already (at or
    /// below `since`) still waits in the room's batch: it would reach the connection again with the batch's frame,
    /// so the JOIN stays pending; ask again (with a fresh read) once the batch went out.
    pub fn complete_join(&self, request: &JoinRequest, fetched: Fetched) -> Completion {
        let Some(epoch) = self.elsewhere.get() else {
            return Completion::Done;
        };
        let room = &*request.room;
        let mut guard = self.room_shard(room).state.lock();
        let state = &mut *guard;
        let Some(index) = state
            .stored
            .joining
            .get(room)
            .and_then(|list| list.iter().position(|pending| pending.id == request.id))
        else {
            return Completion::Done;
        };
        if let Some(since) = fetched.since
            && waiting_from(state, room).is_some_and(|first| first <= since)
        {
            return Completion::Wait;
        }
        let key = Arc::clone(
            state
                .stored
                .joining
                .get_key_value(room)
                .expect("found above, under the same lock")
                .0,
        );
        let list = state
            .stored
            .joining
            .get_mut(room)
            .expect("found above, under the same lock");
        let pending = list.remove(index);
        if list.is_empty() {
            state.stored.joining.remove(room);
        }
        let first = Arc::clone(&pending.conn);
        let at = state.stored.stands_at.entry(Arc::clone(&key)).or_insert(0);
        *at = (*at).max(fetched.stands_at);
        let position = stands_at(state, &key, epoch);
        let after = fetched.since.unwrap_or(0);
        let (offsets, items): (Vec<u64>, Vec<Bytes>) = fetched
            .items
            .into_iter()
            .filter(|(offset, _)| *offset > after && *offset <= position.offset)
            .unzip();
        let recovered = fetched.outcome.map(|outcome| outcome == Recovery::Recovered);
        if let Some(outcome) = fetched.outcome {
            self.metrics
                .recovery(outcome, if recovered == Some(true) { items.len() } else { 0 });
        }
        let answer = JoinAnswer {
            position: position.clone(),
            recovered,
        };
        if let Some(frame) = (pending.ack)(Some(&answer)) {
            first.deliver(&frame);
        }
        if recovered == Some(true) {
            let target = Target::Room(Arc::clone(&key));
            for frame in self.frames(&target, &items, Offsets::Each(&offsets, epoch)).iter() {
                first.deliver(frame);
            }
        }
        let created = !state.rooms.contains_key(&key);
        let entry = state.rooms.entry(Arc::clone(&key)).or_insert_with(|| Room {
            members: Members::default(),
            batch: None,
        });
        if entry.members.insert(&first) {
            self.metrics.memberships.inc();
        }
        if created {
            self.metrics.rooms.inc();
        }
        // Later JOINs of the same connection, sent while the first waited: acknowledged as a member's.
        let again = JoinAnswer {
            position,
            recovered: None,
        };
        for ack in pending.again {
            if let Some(frame) = ack(Some(&again)) {
                first.deliver(&frame);
            }
        }
        Completion::Done
    }

    /// A push of room items whose offsets the store gave: `offsets[i]` is `items[i]`'s, increasing, all above
    /// `before`, the offset of the room's item the reader handed before them.
    pub fn push_stored(
        &self,
        room: &str,
        items: Vec<Bytes>,
        offsets: Vec<u64>,
        before: u64,
    ) -> Result<Accepted, Refused> {
        debug_assert_eq!(items.len(), offsets.len());
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(self.refuse_shutting_down());
        }
        let accepted = self.take_stored(room, items, offsets, before)?;
        // A duplicate dropped (no item taken) is no push.
        if accepted.items > 0 {
            self.metrics.pushes_room.inc();
            self.metrics.items.inc_by(accepted.items as u64);
        }
        Ok(accepted)
    }

    fn take_stored(&self, room: &str, items: Vec<Bytes>, offsets: Vec<u64>, before: u64) -> Result<Accepted, Refused> {
        let shard = self.room_shard(room);
        let count = items.len();
        let mut guard = shard.state.lock();
        let state = &mut *guard;
        if state.stopped {
            return Err(self.refuse_shutting_down());
        }
        let last = offsets.last().copied().unwrap_or(before);
        let known = state.rooms.contains_key(room) || state.stored.is_joining(room);
        if known && state.stored.stands_at.get(room).is_some_and(|at| *at >= last) {
            // Handed already (by a reader of this room that was replaced, say): taken, and dropped as a duplicate.
            return Ok(Accepted {
                items: 0,
                recipients: Some(0),
                gateways: None,
            });
        }
        if known {
            let key = match state.rooms.get_key_value(room) {
                Some((key, _)) => Arc::clone(key),
                None => Arc::clone(
                    state
                        .stored
                        .joining
                        .get_key_value(room)
                        .expect("joining, under the same lock")
                        .0,
                ),
            };
            let at = state.stored.stands_at.entry(key).or_insert(0);
            *at = (*at).max(last);
        }
        let Some(entry) = state.rooms.get_mut(room) else {
            return Ok(self.unrouted(count));
        };
        let recipients = entry.members.len();
        let bytes = crate::bytes_of(&items);
        if self.over_queue(state, count, bytes) {
            return Err(self.refuse_queue_full());
        }
        let entry = state.rooms.get_mut(room).expect("found above, under the same lock");
        let now = Instant::now();
        let wake = entry
            .batch
            .get_or_insert_default()
            .add_stored(items, offsets, before, now, self.config.merge);
        let (key, _) = state
            .rooms
            .get_key_value(room)
            .expect("found above, under the same lock");
        let topic = Target::Room(Arc::clone(key));
        state.queued(&topic, wake, count, bytes);
        drop(guard);
        Ok(self.woken(shard, wake, count, recipients))
    }
}

/// What became of a pending JOIN the store's reader answered ([`Hub::complete_join`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Completion {
    /// Answered (or gone with its connection).
    Done,
    /// Still pending: ask again once the room's batch went out.
    Wait,
}

/// The offset of the first item waiting in a room's batch, if any waits.
fn waiting_from<R>(state: &ShardState<R>, room: &str) -> Option<u64> {
    state
        .rooms
        .get(room)
        .and_then(|entry| entry.batch.as_ref())
        .and_then(|batch| batch.first_offset())
}

/// Where a room stands for a JOIN now: the offset of the last item that will not reach a new member live (the item
/// before those waiting in the room's batch, when some wait).
fn stands_at<R>(state: &ShardState<R>, room: &str, epoch: &Arc<str>) -> Position {
    let waiting = state
        .rooms
        .get(room)
        .and_then(|entry| entry.batch.as_ref())
        .filter(|batch| !batch.is_empty());
    let offset = match waiting {
        Some(batch) => batch.before(),
        None => state.stored.stands_at.get(room).copied().unwrap_or(0),
    };
    Position {
        offset,
        epoch: Arc::clone(epoch),
    }
}
