//! herald's fan-out engine: rooms in sharded buckets, per-room merging, and delivery of frames encoded once per
//! wire form.
//!
//! No network here: a connection is anything that implements [`Recipient`] (the gateway's session, or a test
//! double), and pushes arrive through the [`herald_protocol::bus::Bus`] trait.
//!
//! # What happens to a pushed message
//! 1. [`Hub::push`] (the bus) picks the room's shard by hash, and under that shard's lock appends the items to
//!    the room's [`batch::Batch`]. A push that would overfill the shard's queue is refused (503 upstream). Every
//!    way in (a push to a room, to a user, to everyone, a stored push from JetStream) passes the same checks
//!    (`intake`).
//! 2. The batch says when to flush: at once when the room was quiet for a window or the batch is full, else at
//!    one window after the room's last frame. The shard's worker task is woken or given a timer.
//! 3. The worker takes due batches and a copy-on-write snapshot of their members under the lock, releases it,
//!    and hands every member the batch's frames in the member's wire form: each form's frames are encoded the
//!    first time a member of that form needs them, then shared by refcount ([`Recipient::deliver`], which never
//!    blocks). A large fan-out is split over one task per runtime worker thread, each connection in one slice.
//!    One worker per shard flushes that shard's rooms and waits for every slice before its next flush, so frames
//!    of one room reach every connection in push order.
//! 4. Broadcasts (`/push/all`) merge the same way in one hub-wide batch, whose worker walks every shard's
//!    connection list.
//! 5. A user is merged like a room: each authenticated connection is a member of its user's entry (in the shard
//!    of the user's name, beside the rooms), so `/push/user` is step 1 to 3 with the user for the room. The
//!    user's name is one shared `Arc<str>` for all its connections.
//! 6. With history on (`history_size` > 0), a room push also gets offsets and is retained in the room's history
//!    under the same lock, and its frames carry the position of their last item; a JOIN with `since` is given
//!    what it missed under that lock too, before any live frame (see [`history`]).
//! 7. With history kept elsewhere (JetStream, on NATS), the store gives the offsets and keeps the items, and a
//!    JOIN waits, not yet a member, until the store's reader has fetched what it missed (see [`stored`]).
//!
//! The hub also answers presence and the server's disconnect ([`Hub::census`]) from the same member lists.
//!
//! # Layout
//! - `hub`: the [`Hub`] itself and its shards' lookup; `config`: its settings; `shard`: what one shard holds.
//! - `recipient`: a connection as the hub sees it.
//! - `membership`: connections registering, joining and leaving rooms and users.
//! - `interest`: what the watcher is told when a room or user gains its first member or loses its last (and
//!   the JOINs it answers from a store); `watch`: telling it.
//! - `intake`: every way a push comes in, and the one set of checks and counters it passes.
//! - `worker`: each shard's worker, which takes due batches; `fanout`: their delivery; `frames`: a batch's
//!   frames, built once per wire form.
//! - `census`: presence and disconnects; `stats`: `/stats` and the [`herald_protocol::bus::Bus`] implementation.
//! - [`batch`]: the merge decision for one room. `members`: a room's member list, walked without a lock.
//! - [`history`]: the items retained per room, their offsets and epochs; `outcomes`: what became of them.
//! - [`stored`]: history kept elsewhere: pending JOINs, and offsets from the store; `joins`: those JOINs' answers.
//! - [`metrics`]: counters and gauges.

pub mod batch;
mod census;
mod config;
mod fanout;
mod frames;
pub mod history;
mod hub;
mod intake;
mod interest;
mod joins;
mod members;
mod membership;
pub mod metrics;
mod outcomes;
mod recipient;
mod shard;
mod stats;
pub mod stored;
mod watch;
mod worker;

pub use crate::config::HubConfig;
pub use crate::hub::Hub;
pub use crate::interest::{Interest, JoinRequest, StoredSince};
pub use crate::membership::{Joined, RoomLimit};
pub use crate::metrics::HubMetrics;
pub use crate::recipient::Recipient;
pub use crate::stored::{Ack, Completion, Fetched};

#[cfg(test)]
mod tests;
