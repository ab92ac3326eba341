//! herald on NATS: logic publishes each push on its room's subject, and each gateway subscribes to exactly the
//! rooms it has members in, so a gateway receives none of the traffic of rooms it does not hold.
//!
//! # Subjects
//! - `herald.room.<token>`: one room. `<token>` is the room name itself when it is made only of ASCII letters,
//!   digits, `-` and `_`; otherwise `~` followed by the name's bytes in unpadded URL-safe base64 (`~` cannot start
//!   a plain token, so the two forms never collide). Room names are at most 256 bytes, tokens at most 343.
//! - `herald.all`: broadcasts; every gateway subscribes.
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
//! # Layout
//! - this file: the settings, the connection, errors.
//! - `subjects`: subject names and the encoding of room names.
//! - `publisher`: logic's bus ([`NatsBus`]).
//! - `feed`: a gateway's subscriptions and announcements ([`spawn_gateway_feed`]).
//! - `metrics`: `herald_nats_*`.

mod feed;
mod metrics;
mod publisher;
mod subjects;

use std::time::Duration;

use async_nats::connection::State;
use herald_protocol::stats::NatsState;

pub use self::feed::{Announce, spawn_gateway_feed};
pub use self::metrics::NatsMetrics;
pub use self::publisher::NatsBus;
pub use self::subjects::{ALL_SUBJECT, ANNOUNCE_SUBJECT, subject};
pub use async_nats::Client;

/// What can go wrong setting herald up on NATS.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// A server address of `bus` does not parse.
    #[error("bus: `{url}`: {reason}")]
    BadUrl {
        /// The address as given.
        url: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The client could not be set up.
    #[error("bus: {0}")]
    Connect(#[from] async_nats::ConnectError),
    /// A second feed on one hub: its rooms' interest can be watched only once.
    #[error("the hub's interest is already watched")]
    InterestWatched,
}

/// Settings of herald on NATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// The NATS server(s): `nats://host:port`, several separated by commas.
    pub url: String,
    /// How often a gateway announces itself.
    pub announce_interval: Duration,
    /// Logic forgets a gateway it has not heard from for this long.
    pub gateway_ttl: Duration,
    /// Longest a push waits to be handed to the NATS client before it is answered 503.
    pub publish_timeout: Duration,
}

/// Connects to NATS, retrying in the background when it is not reachable yet: herald starts, and serves its
/// connected clients, whether or not NATS is up. Events (connects, disconnects, slow consumers) are logged and
/// counted in `metrics`.
pub async fn connect(config: &NatsConfig, name: &str, metrics: &NatsMetrics) -> Result<async_nats::Client, NatsError> {
    let events = metrics.clone();
    let servers: Vec<async_nats::ServerAddr> = config
        .url
        .split(',')
        .map(|url| {
            url.trim().parse().map_err(|e: std::io::Error| NatsError::BadUrl {
                url: url.trim().to_owned(),
                reason: e.to_string(),
            })
        })
        .collect::<Result<_, _>>()?;
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(|attempts| crate::hop::backoff(attempts.min(u32::MAX as usize) as u32))
        .event_callback(move |event| {
            let metrics = events.clone();
            async move { metrics.event(&event) }
        })
        .connect(servers)
        .await
        .map_err(NatsError::from)
}

pub(crate) fn nats_state(state: &State) -> NatsState {
    match state {
        State::Connected => NatsState::Connected,
        State::Disconnected => NatsState::Disconnected,
        State::Pending => NatsState::Connecting,
    }
}
