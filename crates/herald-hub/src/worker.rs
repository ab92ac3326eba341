//! Each shard's worker: it takes the batches that are due under the shard's lock, sends them after, and sleeps
//! until the next is due or a push wakes it.

use std::cmp::Reverse;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::fanout::Flush;
use crate::hub::Hub;
use crate::recipient::Recipient;
use crate::shard::{BroadcastShard, Kind, RoomShard, Shard};

impl<R: Recipient> Hub<R> {
    /// The worker of shard `own`: `take` moves its due batches (all of them when told to) into flushes under the
    /// lock and returns when the next is due.
    pub(crate) async fn run_worker<S>(
        &self,
        own: &Shard<S>,
        take: impl Fn(&mut S, bool, &mut Vec<Flush<R>>) -> Option<Instant>,
        stop: CancellationToken,
    ) {
        let mut flushes = Vec::new();
        loop {
            let stopping = stop.is_cancelled();
            let next_timer = take(&mut own.state.lock(), stopping, &mut flushes);
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

    /// Takes the batches of a room shard that are due (all of them when `everything`: the final pass, after which
    /// pushes are refused under this same lock) and evicts the history items that aged out; returns when the next
    /// batch or item is due.
    pub(crate) fn take_due_rooms(
        &self,
        state: &mut RoomShard<R>,
        everything: bool,
        out: &mut Vec<Flush<R>>,
    ) -> Option<Instant> {
        state.queue.stopped = everything;
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
            state.queue.remove(&items, &self.metrics);
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
        let batches = state.timers.peek().map(|Reverse((at, _))| *at);
        earliest(batches, self.sweep_history(state))
    }

    /// Evicts the history items that aged out; returns when the next one does.
    fn sweep_history(&self, state: &mut RoomShard<R>) -> Option<Instant> {
        if !self.config.history.is_on() {
            return None;
        }
        let RoomShard { rooms, histories, .. } = state;
        histories.sweep(
            Instant::now(),
            self.config.history.ttl,
            |room| rooms.contains_key(room),
            &self.metrics,
        )
    }

    /// Takes the broadcast batch when due (or when `everything`, as [`Hub::take_due_rooms`]); returns its timer.
    pub(crate) fn take_due_broadcast(
        &self,
        state: &mut BroadcastShard,
        everything: bool,
        out: &mut Vec<Flush<R>>,
    ) -> Option<Instant> {
        state.queue.stopped = everything;
        let now = Instant::now();
        if !state.batch.is_empty() && (everything || state.batch.is_due(now)) {
            let items = state.batch.take(now, self.config.merge, everything);
            state.queue.remove(&items, &self.metrics);
            let members = self.shards.iter().map(|s| s.state.lock().everyone.snapshot()).collect();
            out.push(Flush {
                target: herald_protocol::bus::Target::All,
                items,
                first: None,
                offsets: Vec::new(),
                members,
            });
        }
        state.batch.deadline()
    }
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
