//! The bus: how the push API hands a validated push to whatever delivers it.
//!
//! `herald serve` implements it with the in-process hub, which answers at once (a bounded queue took the push or
//! not). `herald logic` implements it with the cluster bus, which answers once every gateway has acknowledged the
//! push or a deadline passed. Either way the answer tells what happened; nothing is refused silently.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

pub use crate::presence::{Census, Query};
use crate::stats::Stats;

/// Where a push goes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// Every connection that has joined this room.
    Room(Arc<str>),
    /// Every connection of this user (the `sub` of its token), on every gateway.
    User(Arc<str>),
    /// Every connection.
    All,
}

/// What the bus took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Accepted {
    /// Items accepted for delivery.
    pub items: usize,
    /// Connections that were members of the target when the push was taken (every connection for `All`); `None`
    /// when the bus cannot know (NATS: logic publishes without hearing from the gateways).
    pub recipients: Option<usize>,
    /// In a cluster: what each gateway answered. Absent for the in-process bus.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateways: Option<GatewayTally>,
}

/// How the gateways of a cluster answered one push.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct GatewayTally {
    /// Gateways that took the push (their members are counted in `recipients`).
    pub accepted: usize,
    /// Gateways that did not take it: unreachable, queue full, or refused by the gateway. They deliver nothing.
    pub refused: usize,
    /// Gateways the push was sent to that did not answer in time: they may or may not deliver it.
    pub unconfirmed: usize,
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
    /// In a cluster: what delivers the push cannot be reached (no gateway took it, or NATS is down).
    #[error("{detail}")]
    Unavailable {
        /// Suggested delay before retrying, in seconds.
        retry_after_secs: u32,
        /// What went wrong (each gateway's answer, NATS's state), for the operator reading the 503.
        detail: String,
    },
}

/// The answer to a push, once the bus knows it.
pub type PushFuture<'a> = Pin<Box<dyn Future<Output = Result<Accepted, Refused>> + Send + 'a>>;

/// The answer to a [`Query`], once every gateway that could be asked has answered (or the bound passed).
pub type QueryFuture<'a> = Pin<Box<dyn Future<Output = Result<Census, Refused>> + Send + 'a>>;

/// Something that takes pushes and delivers them.
pub trait Bus: Send + Sync + 'static {
    /// Takes `items` (each one complete JSON value) for `target`, or refuses all of them.
    fn push(&self, target: Target, items: Vec<Bytes>) -> PushFuture<'_>;

    /// Asks every gateway about a room or a user (presence), or has them close a user's connections; the
    /// answers are summed into one [`Census`].
    fn query(&self, query: Query) -> QueryFuture<'_>;

    /// A snapshot of the bus's state, for `GET /stats`.
    fn stats(&self) -> Stats;
}
