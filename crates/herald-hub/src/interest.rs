//! What the watcher of interest (a gateway on a message bus) is told: a room or user gained its first member here
//! or lost its last, so it subscribes only to what someone here receives; and, with history kept elsewhere, a JOIN
//! it must answer from the store. `watch.rs` sends them.

use std::sync::Arc;

use herald_protocol::bus::Target;

/// What a gateway on a message bus subscribes and unsubscribes by, in the order it happened for each room or user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interest {
    /// A room or user ([`Target::Room`] or [`Target::User`]) gained its first member here (or, with history kept
    /// elsewhere, its first pending JOIN).
    Wanted(Target),
    /// It lost its last member (and pending JOIN).
    Unwanted(Target),
    /// A JOIN waiting for the store (history kept elsewhere): answer it with [`crate::Hub::complete_join`].
    Join(JoinRequest),
}

/// A JOIN the store must answer (see [`crate::stored`]).
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
