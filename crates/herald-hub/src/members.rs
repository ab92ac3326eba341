//! The members of one room: a copy-on-write list that fan-out can walk without holding any lock.

use std::collections::HashMap;
use std::sync::Arc;

use crate::Recipient;

/// A set of connections. Fan-out takes a [`Members::snapshot`] (one refcount) under the shard lock and walks it
/// after releasing the lock; a join or leave while a snapshot is out copies the list once (copy-on-write).
pub(crate) struct Members<R> {
    list: Arc<Vec<Arc<R>>>,
    index: HashMap<u64, usize>,
}

impl<R> Default for Members<R> {
    fn default() -> Self {
        Self {
            list: Arc::default(),
            index: HashMap::new(),
        }
    }
}

impl<R: Recipient> Members<R> {
    /// Adds a connection; false if it was already a member.
    pub(crate) fn insert(&mut self, member: &Arc<R>) -> bool {
        let id = member.id();
        if self.index.contains_key(&id) {
            return false;
        }
        let list = Arc::make_mut(&mut self.list);
        self.index.insert(id, list.len());
        list.push(Arc::clone(member));
        true
    }

    /// Removes a connection; false if it was not a member.
    pub(crate) fn remove(&mut self, id: u64) -> bool {
        let Some(slot) = self.index.remove(&id) else {
            return false;
        };
        let list = Arc::make_mut(&mut self.list);
        list.swap_remove(slot);
        if let Some(moved) = list.get(slot) {
            self.index.insert(moved.id(), slot);
        }
        if list.is_empty() {
            // Give the memory of a room that emptied back (rooms can be very large, then idle for long).
            self.index = HashMap::new();
        }
        true
    }

    /// The current members, for walking outside the lock.
    pub(crate) fn snapshot(&self) -> Arc<Vec<Arc<R>>> {
        Arc::clone(&self.list)
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}
