//! The answers to JOINs with room history kept elsewhere (see [`crate::stored`]): a JOIN of a new member waits
//! for the store's reader, which completes it with what the JOIN missed.

use std::sync::Arc;

use bytes::Bytes;
use herald_protocol::bus::Target;
use herald_protocol::client::Since;
use herald_protocol::position::{JoinAnswer, Position};

use crate::frames::{Frames, Offsets};
use crate::hub::Hub;
use crate::interest::{Interest, JoinRequest, StoredSince};
use crate::membership::{Joined, RoomLimit};
use crate::outcomes::Recovery;
use crate::recipient::Recipient;
use crate::shard::{Room, RoomShard};
use crate::stored::{Ack, Completion, Fetched, PendingJoin};

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
                self.room_limit()?;
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
        state.stored.handed(Arc::clone(&key), fetched.stands_at);
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
            let frames = Frames::new(
                &self.encoding,
                target,
                items,
                self.config.merge.max_items,
                Offsets::Each(&offsets, epoch),
            );
            for frame in frames.of(first.form()) {
                first.deliver(frame);
            }
        }
        let created = !state.rooms.contains_key(&key);
        let entry = state.rooms.entry(Arc::clone(&key)).or_insert_with(Room::new);
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
}

/// The offset of the first item waiting in a room's batch, if any waits.
fn waiting_from<R>(state: &RoomShard<R>, room: &str) -> Option<u64> {
    state
        .rooms
        .get(room)
        .and_then(|entry| entry.batch.as_ref())
        .and_then(|batch| batch.first_offset())
}

/// Where a room stands for a JOIN now: the offset of the last item that will not reach a new member live (the item
/// before those waiting in the room's batch, when some wait).
fn stands_at<R>(state: &RoomShard<R>, room: &str, epoch: &Arc<str>) -> Position {
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
