//! herald's settings on NATS, and its connection: retried in the background, its events logged and counted.

use std::time::Duration;

use async_nats::connection::State;
use herald_protocol::stats::NatsState;

use super::metrics::NatsMetrics;

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
