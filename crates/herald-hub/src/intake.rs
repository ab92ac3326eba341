//! Every way a push comes into the hub, through one set of checks and counters: a push to a room, a user or
//! everyone (the push API, or the bus from logic), and a room's items read from the store that keeps its history
//! (JetStream, see [`crate::stored`]).
//!
//! In order: a closed hub refuses; a push larger than a queue could ever hold is refused (retrying cannot help);
//! under the shard's lock, a stopped shard refuses, a stored item handed already is dropped as a duplicate, a push
//! nobody here receives is taken and counted unrouted, a push that would overfill the shard's queue is refused;
//! then the push is recorded (a room's history, or where a stored room stands) and joins its batch. Every refusal
//! is counted by reason; every push that took an item is counted by target.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use herald_protocol::bus::{Accepted, Refused, Target};
use tokio::time::Instant;

use crate::batch::Wake;
use crate::hub::Hub;
use crate::recipient::Recipient;
use crate::shard::{Kind, RoomShard, Shard, bytes_of, topic_name};

/// A push on its way in.
enum Intake<'a> {
    /// From the push API or the bus: to a room, a user or everyone.
    Live(&'a Target),
    /// A room's items as the store that keeps its history handed them: `offsets[i]` is `items[i]`'s, increasing,
    /// all above `before`, the offset of the item the store's reader handed before them.
    Stored {
        room: Target,
        offsets: Vec<u64>,
        before: u64,
    },
}

impl Intake<'_> {
    fn target(&self) -> &Target {
        match self {
            Self::Live(target) => target,
            Self::Stored { room, .. } => room,
        }
    }
}

impl<R: Recipient> Hub<R> {
    /// Takes a push, or refuses all of it; answers at once (this is the whole of the in-process bus, and what a
    /// cluster gateway calls for each push it receives).
    pub fn push(&self, target: &Target, items: Vec<Bytes>) -> Result<Accepted, Refused> {
        self.take(Intake::Live(target), items)
    }

    /// A push of room items whose offsets the store gave: `offsets[i]` is `items[i]`'s, increasing, all above
    /// `before`, the offset of the room's item the reader handed before them. An item at or below where the room
    /// stands was handed already (by a reader of the room that was replaced): it is taken and dropped, and the
    /// answer says no item was taken.
    pub fn push_stored(
        &self,
        room: &Arc<str>,
        items: Vec<Bytes>,
        offsets: Vec<u64>,
        before: u64,
    ) -> Result<Accepted, Refused> {
        debug_assert_eq!(items.len(), offsets.len());
        let intake = Intake::Stored {
            room: Target::Room(Arc::clone(room)),
            offsets,
            before,
        };
        self.take(intake, items)
    }

    /// The one way in.
    fn take(&self, intake: Intake<'_>, items: Vec<Bytes>) -> Result<Accepted, Refused> {
        let pushes = match intake.target() {
            Target::Room(_) => &self.metrics.pushes_room,
            Target::User(_) => &self.metrics.pushes_user,
            Target::All => &self.metrics.pushes_all,
        };
        let taken = self.admit(&intake, items.len()).and_then(|()| match intake {
            Intake::Live(Target::All) => self.take_broadcast(items),
            intake => self.take_topic(intake, items),
        });
        match taken {
            Ok(accepted) => {
                // A push that took no item (a stored duplicate) is no push.
                if accepted.items > 0 {
                    pushes.inc();
                    self.metrics.items.inc_by(accepted.items as u64);
                }
                Ok(accepted)
            }
            Err(refused) => Err(self.count_refusal(refused)),
        }
    }

    /// The checks that need no lock.
    fn admit(&self, intake: &Intake<'_>, count: usize) -> Result<(), Refused> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Refused::ShuttingDown);
        }
        if count > self.config.queue_items {
            // It could never fit, however long the caller waits: not a 503.
            return Err(Refused::TooManyItems {
                limit: self.config.queue_items,
            });
        }
        if let Intake::Live(Target::Room(_)) = intake
            && self.elsewhere.get().is_some()
        {
            // Its items would have no offsets: a room's items come from the store (see `push_stored`).
            return Err(Refused::Unavailable {
                retry_after_secs: 1,
                detail: "room history is kept in JetStream: room pushes come through it".to_owned(),
            });
        }
        Ok(())
    }

    /// A push to a room or a user, live or stored.
    fn take_topic(&self, intake: Intake<'_>, items: Vec<Bytes>) -> Result<Accepted, Refused> {
        let target = intake.target();
        let kind = Kind::of(target);
        let name = topic_name(target);
        let shard = self.room_shard(name);
        let count = items.len();
        let now = Instant::now();
        let mut guard = shard.state.lock();
        let state = &mut *guard;
        if state.queue.stopped {
            return Err(Refused::ShuttingDown);
        }
        if let Intake::Stored { offsets, before, .. } = &intake
            && state
                .stored
                .has_handed(name, offsets.last().copied().unwrap_or(*before))
            && (state.rooms.contains_key(&**name) || state.stored.is_joining(name))
        {
            // Handed already (by a reader of this room that was replaced, say): taken, and dropped as a duplicate.
            return Ok(Accepted {
                items: 0,
                recipients: Some(0),
                gateways: None,
            });
        }
        let Some(entry) = state.map(kind).get(&**name) else {
            self.record(state, &intake, &items, now);
            self.metrics.items_unrouted.inc_by(count as u64);
            return Ok(Accepted {
                items: count,
                recipients: Some(0),
                gateways: None,
            });
        };
        let recipients = entry.members.len();
        let bytes = bytes_of(&items);
        if state.queue.would_overfill(count, bytes, &self.config) {
            return Err(self.queue_full());
        }
        self.record(state, &intake, &items, now);
        let entries = state.map(kind);
        let (key, _) = entries
            .get_key_value(&**name)
            .expect("found above, under the same lock");
        let topic = kind.topic(Arc::clone(key));
        let entry = entries.get_mut(&**name).expect("found above, under the same lock");
        let batch = entry.batch.get_or_insert_default();
        let wake = match intake {
            Intake::Live(_) => batch.add(items, now, self.config.merge),
            Intake::Stored { offsets, before, .. } => batch.add_stored(items, offsets, before, now, self.config.merge),
        };
        state.queue.add(count, bytes, &self.metrics);
        state.schedule(topic, wake);
        drop(guard);
        Ok(self.woken(shard, wake, count, recipients))
    }

    /// What a room keeps of a push it takes (with members here or not): its items in the room's history, when it
    /// keeps one here; where it stands, when the store keeps it and the room has members or a JOIN waiting.
    fn record(&self, state: &mut RoomShard<R>, intake: &Intake<'_>, items: &[Bytes], now: Instant) {
        match intake {
            Intake::Live(Target::Room(room)) if self.config.history.is_on() => {
                let key = state.rooms.get_key_value(&**room).map(|(key, _)| Arc::clone(key));
                let RoomShard { rooms, histories, .. } = state;
                histories.append(
                    room,
                    || key.unwrap_or_else(|| Arc::clone(room)),
                    items,
                    now,
                    &self.config.history,
                    &self.epochs,
                    |name| rooms.contains_key(name),
                    &self.metrics,
                );
            }
            Intake::Stored {
                room: Target::Room(room),
                offsets,
                before,
            } => {
                let key = state
                    .rooms
                    .get_key_value(&**room)
                    .map(|(key, _)| key)
                    .or_else(|| state.stored.joining_key(room))
                    .cloned();
                if let Some(key) = key {
                    state.stored.handed(key, offsets.last().copied().unwrap_or(*before));
                }
            }
            _ => {}
        }
    }

    /// A push to everyone: its own batch, in the broadcast's shard.
    fn take_broadcast(&self, items: Vec<Bytes>) -> Result<Accepted, Refused> {
        let count = items.len();
        let bytes = bytes_of(&items);
        let mut state = self.broadcast.state.lock();
        if state.queue.stopped {
            return Err(Refused::ShuttingDown);
        }
        if state.queue.would_overfill(count, bytes, &self.config) {
            return Err(self.queue_full());
        }
        // The broadcast worker reads the batch's own deadline; any wake just makes it look again.
        let wake = state.batch.add(items, Instant::now(), self.config.merge);
        state.queue.add(count, bytes, &self.metrics);
        drop(state);
        Ok(self.woken(&self.broadcast, wake, count, self.connections()))
    }

    /// After a push joined a batch (and the shard's lock is released): wakes the shard's worker when the batch
    /// asked, and says what was taken.
    fn woken<S>(&self, shard: &Shard<S>, wake: Wake, count: usize, recipients: usize) -> Accepted {
        if wake != Wake::Nothing {
            shard.wake.notify_one();
        }
        Accepted {
            items: count,
            recipients: Some(recipients),
            gateways: None,
        }
    }

    fn queue_full(&self) -> Refused {
        // One window is when the waiting batches have gone out, at the latest.
        let retry_after_secs = self.config.merge.window.as_secs().clamp(1, 60) as u32;
        Refused::QueueFull { retry_after_secs }
    }

    /// Counts a refusal under its reason (`herald_pushes_refused_total`).
    fn count_refusal(&self, refused: Refused) -> Refused {
        match refused {
            Refused::QueueFull { .. } => &self.metrics.refused_queue_full,
            Refused::ShuttingDown => &self.metrics.refused_shutting_down,
            Refused::TooManyItems { .. } => &self.metrics.refused_too_many_items,
            Refused::Unavailable { .. } => &self.metrics.refused_unavailable,
        }
        .inc();
        refused
    }
}
