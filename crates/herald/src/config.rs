//! Configuration: a TOML file (`--config`), `HERALD_*` environment variables and flags, in rising precedence,
//! parsed once at start into typed, validated values. Unknown keys and bad values are errors that name the key.
//! Every setting, its default and its meaning: docs/configuration.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use herald_gateway::GatewayConfig;
use herald_hub::HubConfig;
use herald_hub::batch::MergePolicy;
use herald_logic::ApiConfig;
use serde::Deserialize;

/// A duration written as `10ms`, `1s`, `2m`, `1h 30m`; a bare `0` is zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationValue(pub Duration);

impl FromStr for DurationValue {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.trim() == "0" {
            return Ok(Self(Duration::ZERO));
        }
        humantime::parse_duration(text.trim())
            .map(Self)
            .map_err(|e| format!("{e} (write a duration like 10ms, 1s, 2m)"))
    }
}

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Every setting, each optional: the same struct is read from flags and env (clap) and from the file (serde).
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// WebSocket listener, public (`/connect`, demo page at `/`) [default: 0.0.0.0:7777]
    #[arg(long, env = "HERALD_WS_ADDR")]
    pub ws_addr: Option<SocketAddr>,
    /// Push-API listener, private by default [default: 127.0.0.1:7799]
    #[arg(long, env = "HERALD_API_ADDR")]
    pub api_addr: Option<SocketAddr>,
    /// At most one frame per room per window; `0` turns merging off [default: 1s]
    #[arg(long, env = "HERALD_MERGE_WINDOW")]
    pub merge_window: Option<DurationValue>,
    /// Items that send a batch early, and the most items in one frame [default: 100]
    #[arg(long, env = "HERALD_MERGE_MAX_ITEMS")]
    pub merge_max_items: Option<usize>,
    /// Shards (buckets) of rooms and connections, each with its own lock and worker [default: 16]
    #[arg(long, env = "HERALD_SHARDS")]
    pub shards: Option<usize>,
    /// Items that may wait for their frame in one shard; a push beyond gets 503 [default: 100000]
    #[arg(long, env = "HERALD_QUEUE_ITEMS")]
    pub queue_items: Option<usize>,
    /// Connections held at once; more get 503 at the handshake [default: 100000]
    #[arg(long, env = "HERALD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Rooms one connection may join [default: 64]
    #[arg(long, env = "HERALD_MAX_ROOMS_PER_CONNECTION")]
    pub max_rooms_per_connection: Option<usize>,
    /// Largest client message, in bytes; larger closes with 1009 [default: 4096]
    #[arg(long, env = "HERALD_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Frames waiting in one connection's outbox before it is closed as a slow consumer [default: 1024]
    #[arg(long, env = "HERALD_OUTBOX_FRAMES")]
    pub outbox_frames: Option<usize>,
    /// Largest push-API body, in bytes; larger gets 413 [default: 1048576]
    #[arg(long, env = "HERALD_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Time to send the complete WebSocket handshake request [default: 10s]
    #[arg(long, env = "HERALD_HANDSHAKE_TIMEOUT")]
    pub handshake_timeout: Option<DurationValue>,
    /// A connection silent this long is closed with 4001 [default: 60s]
    #[arg(long, env = "HERALD_HEARTBEAT_TIMEOUT")]
    pub heartbeat_timeout: Option<DurationValue>,
    /// A write stalled this long closes the connection as a slow consumer, 4000 [default: 10s]
    #[arg(long, env = "HERALD_WRITE_TIMEOUT")]
    pub write_timeout: Option<DurationValue>,
    /// On SIGINT/SIGTERM, the longest herald drains before it exits [default: 15s]
    #[arg(long, env = "HERALD_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<DurationValue>,
    /// Log filter, in tracing's env-filter syntax (`info`, `herald_gateway=debug`) [default: info]
    #[arg(long, env = "HERALD_LOG")]
    pub log: Option<String>,
}

/// The validated configuration of `herald serve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// WebSocket listener address.
    pub ws_addr: SocketAddr,
    /// Push-API listener address.
    pub api_addr: SocketAddr,
    /// Fan-out engine settings.
    pub hub: HubConfig,
    /// WebSocket-side limits.
    pub gateway: GatewayConfig,
    /// Push-API limits.
    pub api: ApiConfig,
    /// Longest drain on shutdown.
    pub shutdown_grace: Duration,
    /// Log filter.
    pub log: String,
}

macro_rules! overlay {
    ($high:expr, $low:expr; $($field:ident),* $(,)?) => {
        Settings { $($field: $high.$field.or($low.$field)),* }
    };
}

impl Settings {
    /// Reads a TOML settings file; unknown keys are errors.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("in {}", path.display()))
    }

    /// These settings, with `lower` filling what these leave unset.
    pub fn over(self, lower: Settings) -> Settings {
        overlay!(self, lower;
            ws_addr, api_addr, merge_window, merge_max_items, shards, queue_items, max_connections,
            max_rooms_per_connection, max_message_bytes, outbox_frames, max_body_bytes, handshake_timeout,
            heartbeat_timeout, write_timeout, shutdown_grace, log)
    }

    /// Fills defaults and validates.
    pub fn resolve(self) -> anyhow::Result<Config> {
        let duration =
            |value: Option<DurationValue>, default: u64| value.map_or(Duration::from_millis(default), |d| d.0);
        let config = Config {
            ws_addr: self.ws_addr.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 7777))),
            api_addr: self.api_addr.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7799))),
            hub: HubConfig {
                shards: self.shards.unwrap_or(16),
                merge: MergePolicy {
                    window: duration(self.merge_window, 1000),
                    max_items: self.merge_max_items.unwrap_or(100),
                },
                queue_items: self.queue_items.unwrap_or(100_000),
            },
            gateway: GatewayConfig {
                max_connections: self.max_connections.unwrap_or(100_000),
                max_rooms_per_connection: self.max_rooms_per_connection.unwrap_or(64),
                max_message_bytes: self.max_message_bytes.unwrap_or(4096),
                handshake_timeout: duration(self.handshake_timeout, 10_000),
                heartbeat_timeout: duration(self.heartbeat_timeout, 60_000),
                write_timeout: duration(self.write_timeout, 10_000),
                outbox_frames: self.outbox_frames.unwrap_or(1024),
            },
            api: ApiConfig {
                max_body_bytes: self.max_body_bytes.unwrap_or(1 << 20),
            },
            shutdown_grace: duration(self.shutdown_grace, 15_000),
            log: self.log.unwrap_or_else(|| "info".to_owned()),
        };
        config.validate()?;
        Ok(config)
    }
}

impl Config {
    fn validate(&self) -> anyhow::Result<()> {
        let at_least = |key: &str, value: usize, min: usize| -> anyhow::Result<()> {
            if value < min {
                bail!("{key}: must be at least {min}, got {value}");
            }
            Ok(())
        };
        let positive = |key: &str, value: Duration| -> anyhow::Result<()> {
            if value.is_zero() {
                bail!("{key}: must be longer than 0");
            }
            Ok(())
        };
        at_least("merge_max_items", self.hub.merge.max_items, 1)?;
        at_least("shards", self.hub.shards, 1)?;
        if self.hub.shards > 4096 {
            bail!("shards: must be at most 4096, got {}", self.hub.shards);
        }
        at_least("queue_items", self.hub.queue_items, 1)?;
        at_least("max_connections", self.gateway.max_connections, 1)?;
        at_least("max_rooms_per_connection", self.gateway.max_rooms_per_connection, 1)?;
        // A client must at least be able to send a JOIN for a room name of the longest allowed length.
        at_least("max_message_bytes", self.gateway.max_message_bytes, 512)?;
        at_least("outbox_frames", self.gateway.outbox_frames, 1)?;
        at_least("max_body_bytes", self.api.max_body_bytes, 64)?;
        positive("handshake_timeout", self.gateway.handshake_timeout)?;
        positive("heartbeat_timeout", self.gateway.heartbeat_timeout)?;
        positive("write_timeout", self.gateway.write_timeout)?;
        tracing_subscriber::EnvFilter::try_new(&self.log).map_err(|e| anyhow::anyhow!("log: {e}"))?;
        Ok(())
    }
}

/// `herald serve`'s arguments: an optional file plus every setting as a flag.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// TOML file with settings (same names as the flags, with underscores); flags and env override it
    #[arg(long, env = "HERALD_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub settings: Settings,
}

impl ServeArgs {
    /// Flags and env over the file over defaults, validated.
    pub fn resolve(self) -> anyhow::Result<Config> {
        let file = match &self.config {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        self.settings.over(file).resolve()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_go_push_ports_and_valid() {
        let config = Settings::default().resolve().unwrap();
        assert_eq!(config.ws_addr.to_string(), "0.0.0.0:7777");
        assert_eq!(config.api_addr.to_string(), "127.0.0.1:7799");
        assert_eq!(config.hub.merge.window, Duration::from_secs(1));
    }

    #[test]
    fn flags_override_the_file() {
        let file: Settings = toml::from_str("merge_window = \"10ms\"\nshards = 4\n").unwrap();
        let flags = Settings {
            shards: Some(8),
            ..Settings::default()
        };
        let config = flags.over(file).resolve().unwrap();
        assert_eq!(
            (config.hub.shards, config.hub.merge.window),
            (8, Duration::from_millis(10))
        );
    }

    #[test]
    fn errors_name_the_key() {
        let unknown = toml::from_str::<Settings>("merge_windw = \"1s\"")
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("merge_windw"), "{unknown}");
        let bad_duration = toml::from_str::<Settings>("merge_window = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(bad_duration.contains("merge_window"), "{bad_duration}");
        let zero = Settings {
            merge_max_items: Some(0),
            ..Settings::default()
        }
        .resolve()
        .unwrap_err();
        assert!(zero.to_string().starts_with("merge_max_items:"), "{zero}");
        let no_heartbeat = Settings {
            heartbeat_timeout: Some("0".parse().unwrap()),
            ..Settings::default()
        };
        assert!(
            no_heartbeat
                .resolve()
                .unwrap_err()
                .to_string()
                .starts_with("heartbeat_timeout:")
        );
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!("0".parse::<DurationValue>().unwrap().0, Duration::ZERO);
        assert_eq!("10ms".parse::<DurationValue>().unwrap().0, Duration::from_millis(10));
        assert_eq!("1m 30s".parse::<DurationValue>().unwrap().0, Duration::from_secs(90));
        assert!("ten".parse::<DurationValue>().is_err());
    }
}
