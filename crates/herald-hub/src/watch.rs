//! The watcher of interest: told, in order, of every change of interest in a room or user (see [`Interest`]).

use std::collections::HashMap;
use std::sync::Arc;

use herald_protocol::bus::Target;
use tokio::sync::mpsc;

use crate::hub::Hub;
use crate::interest::Interest;
use crate::recipient::Recipient;
use crate::shard::Room;

impl<R: Recipient> Hub<R> {
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
    pub(crate) fn interest_changed(&self, change: Interest) {
        if let Some(watcher) = self.interest.get() {
            // A watcher gone (shutting down) has nothing left to subscribe.
            let _ = watcher.send(change);
        }
    }
}
