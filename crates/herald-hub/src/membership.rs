//! Membership: connections registering with the hub, joining and leaving rooms, and belonging to their user.

use std::sync::Arc;

use bytes::Bytes;
use herald_protocol::bus::Target;
use herald_protocol::client::Since;
use herald_protocol::position::{JoinAnswer, Position};
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

use crate::frames::{Frames, Offsets};
use crate::hub::Hub;
use crate::interest::Interest;
use crate::outcomes::Recovery;
use crate::recipient::Recipient;
use crate::shard::{Kind, Room, RoomShard};

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

impl<R: Recipient> Hub<R> {
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
    /// With history kept elsewhere, a JOIN of a new member waits for the store instead (see [`crate::stored`]): it is
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
                                Recovery::Recovered
                            }
                            Err(not) => not,
                        };
                        self.metrics.recovery(outcome, replay.len());
                        outcome == Recovery::Recovered
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
                    let frames = Frames::new(
                        &self.encoding,
                        target,
                        replay,
                        self.config.merge.max_items,
                        Offsets::From(&first),
                    );
                    for frame in frames.of(conn.form()) {
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

    /// Refuses a new room when the hub holds `max_rooms` already. The count is of every shard: a few JOINs racing
    /// on other shards may pass it together. Counted by the caller (the gateway's
    /// `herald_bad_input_total{reason="too_many_rooms_total"}`).
    pub(crate) fn room_limit(&self) -> Result<(), RoomLimit> {
        let limit = self.config.max_rooms;
        if limit > 0 && self.metrics.rooms.get() >= limit as i64 {
            return Err(RoomLimit);
        }
        Ok(())
    }

    pub(crate) fn kind_gauge(&self, kind: Kind) -> &Gauge {
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
        then: impl FnOnce(&mut RoomShard<R>, &Arc<str>, bool),
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
                if kind == Kind::Room {
                    self.room_limit()?;
                }
                let mut created = Room::new();
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
                state.queue.remove(&items, &self.metrics);
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
}
