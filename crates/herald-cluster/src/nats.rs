//! herald on NATS: logic publishes each push on its room's subject, and each gateway subscribes to exactly the
//! rooms it has members in, so a gateway receives none of the traffic of rooms it does not hold.
//!
//! # Subjects
//! - `herald.room.<token>`: one room. `<token>` is the room name itself when it is made only of ASCII letters,
//!   digits, `-` and `_`; otherwise `~` followed by the name's bytes in unpadded URL-safe base64 (`~` cannot start
//!   a plain token, so the two forms never collide). Room names are at most 256 bytes, tokens at most 343.
//! - `herald.user.<token>`: one user's pushes, encoded like rooms; a gateway subscribes while it holds a
//!   connection of that user.
//! - `herald.all`: broadcasts; every gateway subscribes.
//! - `herald.store.room.<token>`: with room history on, what logic publishes a room's items to, one message an
//!   item; the JetStream stream `HERALD_ROOMS` stores them and republishes each on `herald.room.<token>`.
//! - `herald.query`: presence queries and disconnects (`herald.cluster.v1.QueryRequest`); every gateway answers
//!   each on the request's reply inbox, and logic sums what comes within one second.
//! - `herald.gateways`: each gateway announces itself here every `announce_interval` (connections, rooms,
//!   subscriptions) and once more when it leaves; logic lists the gateways it heard from within `gateway_ttl`.
//!
//! A message is a `herald.cluster.v1.Push` (protobuf, the same as the gRPC hop): the items as logic validated
//! them, never parsed on the way.
//!
//! # Guarantees, and what NATS does not give
//! Items pushed to one room through one logic node reach each connection in push order: one logic node publishes
//! on one NATS connection, NATS keeps a publisher's order per subject, and a gateway handles each room's
//! subscription in one task. Core NATS delivers at most once: a push published as NATS goes down can be lost
//! without logic knowing. While logic's NATS connection is down it answers pushes 503. A gateway that cannot keep
//! up with a subscription loses messages in the client (counted as `slow_consumer` events), and a push its hub
//! refuses is counted by reason: nothing is dropped without a count.
//!
//! With room history on, room pushes go through JetStream instead, which does give these guarantees: logic answers
//! 200 only once the stream holds every item, every gateway takes a room's items in the stream's order whichever logic
//! node published them, and a gateway reads from the stream what its subscription lost (see `history`).

//!
//! # Layout
//! - `connection`: the settings, the connection, errors.
//! - `subjects`: subject names and the encoding of room names.
//! - `publisher`: logic's bus ([`NatsBus`]).
//! - `feed`: a gateway's subscriptions and announcements ([`spawn_gateway_feed`]).
//! - `history`: room history in JetStream ([`RoomStore`]): the stream, offsets, what a JOIN missed.
//! - `metrics`: `herald_nats_*`.

mod connection;
mod feed;
mod history;
mod metrics;
mod publisher;
mod subjects;

pub use self::connection::{NatsConfig, NatsError, connect};
pub use self::feed::{Announce, spawn_gateway_feed};
pub use self::history::{RoomStore, STREAM, StoreError};
pub use self::metrics::NatsMetrics;
pub use self::publisher::NatsBus;
pub use self::publisher::QUERY_WAIT;
pub use self::subjects::{ALL_SUBJECT, ANNOUNCE_SUBJECT, QUERY_SUBJECT, subject};
pub use async_nats::Client;
