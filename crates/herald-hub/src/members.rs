//! The members of one room (or one user's connections): a copy-on-write list that fan-out can walk without holding
//! any lock.

use std::collections::HashMap;
use std::sync::Arc;

use crate::recipient::Recipient;

/// Up to this many members, a member is found by walking the list; past it, by an index kept beside the list.
/// Most rooms, and nearly every user, have a few members: an index for them would cost more memory (a hash table
/// of its own) than the walk costs time.
const INDEXED_ABOVE: usize = 16;

/// A set of connections. Fan-out takes a [`Members::snapshot`] (one refcount) under the shard lock and walks it
/// after releasing the lock; a join or leave while a snapshot is out copies the list once (copy-on-write).
///
/// A lone member is held as itself, without a list: a user's only connection, a private room. Its snapshot is a
/// list made when asked (a fan-out to one connection pays one small allocation; an idle one pays none).
#[derive(Default)]
pub(crate) enum Members<R> {
    #[default]
    Empty,
    One(Arc<R>),
    /// Behind a box, so the common cases above (and every room and user entry) stay two words.
    Many(Box<Many<R>>),
}

pub(crate) struct Many<R> {
    list: Arc<Vec<Arc<R>>>,
    /// Position of each member in `list`, kept only once the list is longer than [`INDEXED_ABOVE`].
    index: Option<HashMap<u64, usize>>,
}

impl<R: Recipient> Members<R> {
    /// Adds a connection; false if it was already a member.
    pub(crate) fn insert(&mut self, member: &Arc<R>) -> bool {
        let id = member.id();
        if self.contains(id) {
            return false;
        }
        match self {
            Self::Empty => *self = Self::One(Arc::clone(member)),
            Self::One(first) => {
                let list = vec![Arc::clone(first), Arc::clone(member)];
                *self = Self::Many(Box::new(Many {
                    list: Arc::new(list),
                    index: None,
                }));
            }
            Self::Many(many) => {
                let list = Arc::make_mut(&mut many.list);
                list.push(Arc::clone(member));
                match &mut many.index {
                    Some(index) => {
                        index.insert(id, list.len() - 1);
                    }
                    None if list.len() > INDEXED_ABOVE => {
                        many.index = Some(list.iter().enumerate().map(|(slot, m)| (m.id(), slot)).collect());
                    }
                    None => {}
                }
            }
        }
        true
    }

    /// Removes a connection; false if it was not a member.
    pub(crate) fn remove(&mut self, id: u64) -> bool {
        let Some(slot) = self.position(id) else {
            return false;
        };
        let Self::Many(many) = self else {
            // The lone member.
            *self = Self::Empty;
            return true;
        };
        let list = Arc::make_mut(&mut many.list);
        list.swap_remove(slot);
        if let Some(table) = &mut many.index {
            table.remove(&id);
            if let Some(moved) = list.get(slot) {
                table.insert(moved.id(), slot);
            }
            if list.len() <= INDEXED_ABOVE / 2 {
                // Small again: drop the index (not at INDEXED_ABOVE itself, so a room at the edge does not
                // rebuild it on every join and leave).
                many.index = None;
            }
        }
        if list.len() == 1 {
            // Give the memory of a room that emptied back (rooms can be very large, then idle for long).
            *self = Self::One(list.pop().expect("one left"));
        }
        true
    }

    fn position(&self, id: u64) -> Option<usize> {
        match self {
            Self::Empty => None,
            Self::One(member) => (member.id() == id).then_some(0),
            Self::Many(many) => match &many.index {
                Some(index) => index.get(&id).copied(),
                None => many.list.iter().position(|member| member.id() == id),
            },
        }
    }

    /// Whether the connection `id` is a member.
    pub(crate) fn contains(&self, id: u64) -> bool {
        self.position(id).is_some()
    }

    /// The current members, for walking outside the lock.
    pub(crate) fn snapshot(&self) -> Arc<Vec<Arc<R>>> {
        match self {
            Self::Empty => Arc::default(),
            Self::One(member) => Arc::new(vec![Arc::clone(member)]),
            Self::Many(many) => Arc::clone(&many.list),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Empty => 0,
            Self::One(_) => 1,
            Self::Many(many) => many.list.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        matches!(self, Self::Empty)
    }
}

#[cfg(test)]
mod tests {
    use herald_protocol::forms::WireForm;

    use super::*;

    struct Member(u64);

    impl Recipient for Member {
        fn id(&self) -> u64 {
            self.0
        }
        fn form(&self) -> WireForm {
            WireForm::WebSocket
        }
        fn deliver(&self, _frame: &bytes::Bytes) {}
        fn user(&self) -> Option<&Arc<str>> {
            None
        }
        fn info(&self) -> Option<&serde_json::value::RawValue> {
            None
        }
        fn disconnect(&self) {}
    }

    #[test]
    fn finds_members_with_and_without_the_index() {
        let mut members = Members::default();
        let all: Vec<Arc<Member>> = (0..40).map(|id| Arc::new(Member(id))).collect();
        for (n, member) in all.iter().enumerate() {
            assert!(members.insert(member));
            assert!(!members.insert(member), "twice");
            let indexed = matches!(&members, Members::Many(many) if many.index.is_some());
            assert_eq!(indexed, n + 1 > INDEXED_ABOVE);
        }
        assert!(all.iter().all(|m| members.contains(m.0)));
        for id in (0..40).step_by(3) {
            assert!(members.remove(id));
            assert!(!members.remove(id));
        }
        let left: Vec<u64> = (0..40).filter(|id| id % 3 != 0).collect();
        assert_eq!(members.len(), left.len());
        assert!(left.iter().all(|&id| members.contains(id)));
        for &id in &left {
            assert!(members.remove(id));
            assert!(members.snapshot().iter().all(|m| members.contains(m.0)));
        }
        assert!(members.is_empty());
    }
}
