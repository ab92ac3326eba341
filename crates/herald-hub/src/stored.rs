//! Room history kept elsewhere: in NATS JetStream, which gives each item its offset (its stream sequence), keeps
//! the items, and answers for them on every gateway alike. The hub then retains no item. It keeps where each of its
//! rooms stands, carries the store's offsets on its frames, and hands every JOIN of a new member to whoever reads
//! the store (the NATS feed), which answers it with [`Hub::complete_join`] once it has read what the JOIN missed.
//! This module holds that state and the types the reader deals in; `joins.rs` answers the JOINs, and the intake
//! takes the store's items ([`Hub::push_stored`]).
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
//!
//! [`Hub::complete_join`]: crate::Hub::complete_join
//! [`Hub::join_with`]: crate::Hub::join_with
//! [`Hub::push_stored`]: crate::Hub::push_stored
//! [`Interest::Join`]: crate::Interest::Join
//! [`Interest::Wanted`]: crate::Interest::Wanted

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use herald_protocol::position::JoinAnswer;

use crate::outcomes::Recovery;
use crate::recipient::Recipient;

/// The acknowledgement a JOIN sends when it is taken: given where the room stands, the frame to deliver, if any.
pub type Ack = Box<dyn FnOnce(Option<&JoinAnswer>) -> Option<Bytes> + Send>;

/// A JOIN waiting for the store.
pub(crate) struct PendingJoin<R> {
    /// Which JOIN this is ([`crate::JoinRequest::id`]): a late answer to one that was left is not taken for a newer
    /// one.
    pub(crate) id: u64,
    pub(crate) conn: Arc<R>,
    pub(crate) ack: Ack,
    /// The acknowledgements of JOINs the connection sent again while this one waited: answered as a member's.
    pub(crate) again: Vec<Ack>,
}

/// One shard's JOINs waiting for the store, and where its rooms stand (used only with history elsewhere).
pub(crate) struct StoredRooms<R> {
    pub(crate) joining: HashMap<Arc<str>, Vec<PendingJoin<R>>>,
    /// The offset of the last item handed to each room that has an entry or a pending JOIN.
    pub(crate) stands_at: HashMap<Arc<str>, u64>,
    /// The id the next pending JOIN of this shard gets.
    pub(crate) next_id: u64,
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

    /// The key of `room`'s pending JOINs, when it has some.
    pub(crate) fn joining_key(&self, room: &str) -> Option<&Arc<str>> {
        self.joining.get_key_value(room).map(|(key, _)| key)
    }

    /// Whether the item at offset `last` of `room` was handed to the room already.
    pub(crate) fn has_handed(&self, room: &str, last: u64) -> bool {
        self.stands_at.get(room).is_some_and(|at| *at >= last)
    }

    /// Records that the items of `room` up to offset `last` were handed to it.
    pub(crate) fn handed(&mut self, room: Arc<str>, last: u64) {
        let at = self.stands_at.entry(room).or_insert(0);
        *at = (*at).max(last);
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

/// What became of a pending JOIN the store's reader answered ([`crate::Hub::complete_join`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Completion {
    /// Answered (or gone with its connection).
    Done,
    /// Still pending: ask again once the room's batch went out.
    Wait,
}
