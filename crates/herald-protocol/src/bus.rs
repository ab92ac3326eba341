//! The bus: how the push API hands a validated push to whatever delivers it.
//!
//! `herald serve` implements it with the in-process hub. The trait is synchronous on purpose: every
//! implementation takes a push by putting it into a bounded queue, and answers at once whether it could.

use std::sync::Arc;

use bytes::Bytes;

/// Where a push goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every connection that has joined this room.
    Room(Arc<str>),
    /// Every connection.
    All,
}

/// What the bus took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Accepted {
    /// Items accepted for delivery.
    pub items: usize,
    /// Connections that were members of the target when the push was taken (every connection for `All`).
    pub recipients: usize,
}

/// Why the bus refused a push. Nothing of a refused push is delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The bounded queue in front of the fan-out is full; the caller should retry after the given seconds.
    #[error("push queue full, retry later")]
    QueueFull {
        /// Suggested delay before retrying, in seconds.
        retry_after_secs: u32,
    },
    /// The server is shutting down and takes no new pushes.
    #[error("shutting down")]
    ShuttingDown,
    /// The push holds more items than the queue can ever hold; retrying cannot help.
    #[error("more than the {limit} items the push queue holds")]
    TooManyItems {
        /// The most items one push may carry.
        limit: usize,
    },
}

/// Something that takes pushes and delivers them.
pub trait Bus: Send + Sync + 'static {
    /// Takes `items` (each one complete JSON value) for `target`, or refuses all of them.
    fn push(&self, target: &Target, items: Vec<Bytes>) -> Result<Accepted, Refused>;

    /// A JSON snapshot of the bus's state, for `GET /stats`.
    fn stats(&self) -> serde_json::Value;
}
