//! Configuration: a TOML file (`--config`), `HERALD_*` environment variables and flags, in rising precedence,
//! parsed once at start into typed, validated values. Unknown keys and bad values are errors that name the key.
//! Every setting, its default and its meaning: docs/configuration.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use herald_cluster::Secret;
use herald_cluster::gateway::ServerTls;
use herald_cluster::logic::ClusterConfig;
use herald_cluster::nats::NatsConfig;
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
    /// Threads serving the push API, each with its own event loop [default: 1]
    #[arg(long, env = "HERALD_API_THREADS")]
    pub api_threads: Option<usize>,
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
    /// gateway: internal listener for logic's gRPC stream, `/healthz`, `/stats`, `/metrics` [default: 127.0.0.1:7788]
    #[arg(long, env = "HERALD_RPC_ADDR", help_heading = "Cluster")]
    pub rpc_addr: Option<SocketAddr>,
    /// logic: the gateways' internal listeners, `host:port,host:port,...`
    #[arg(long, env = "HERALD_GATEWAYS", value_delimiter = ',', help_heading = "Cluster")]
    pub gateways: Option<Vec<String>>,
    /// gateway and logic: shared secret required on the internal hop (prefer the env var or the file to a flag)
    #[arg(
        long,
        env = "HERALD_CLUSTER_SECRET",
        hide_env_values = true,
        help_heading = "Cluster"
    )]
    pub cluster_secret: Option<String>,
    /// gateway: PEM certificate chain; with --rpc-tls-key, the internal listener speaks TLS
    #[arg(long, env = "HERALD_RPC_TLS_CERT", help_heading = "Cluster")]
    pub rpc_tls_cert: Option<PathBuf>,
    /// gateway: PEM private key of --rpc-tls-cert
    #[arg(long, env = "HERALD_RPC_TLS_KEY", help_heading = "Cluster")]
    pub rpc_tls_key: Option<PathBuf>,
    /// logic: PEM certificate(s) to trust; connect to the gateways over TLS
    #[arg(long, env = "HERALD_RPC_TLS_CA", help_heading = "Cluster")]
    pub rpc_tls_ca: Option<PathBuf>,
    /// logic: pushes queued or in flight per gateway; past it, that gateway is skipped for the push [default: 10000]
    #[arg(long, env = "HERALD_GATEWAY_QUEUE", help_heading = "Cluster")]
    pub gateway_queue: Option<usize>,
    /// logic: longest wait for the gateways' acks before answering a push [default: 5s]
    #[arg(long, env = "HERALD_ACK_TIMEOUT", help_heading = "Cluster")]
    pub ack_timeout: Option<DurationValue>,
    /// logic: how often each gateway's status is fetched [default: 1s]
    #[arg(long, env = "HERALD_STATUS_INTERVAL", help_heading = "Cluster")]
    pub status_interval: Option<DurationValue>,
    /// serve, gateway and logic: run on NATS (`nats://host:port`, several comma-separated) instead of in memory or gRPC
    #[arg(long, env = "HERALD_BUS", help_heading = "Cluster")]
    pub bus: Option<String>,
    /// serve and gateway: open the WebSocket listener with SO_REUSEPORT, so several processes share the port
    #[arg(long, env = "HERALD_REUSE_PORT", num_args = 0..=1, default_missing_value = "true", help_heading = "Cluster")]
    pub reuse_port: Option<bool>,
}

fn read_file(key: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{key}: reading {}", path.display()))
}

/// The validated configuration of `herald serve`, `herald gateway` and `herald logic` (each uses its part).
#[derive(Debug, Clone)]
pub struct Config {
    /// WebSocket listener address.
    pub ws_addr: SocketAddr,
    /// Push-API listener address.
    pub api_addr: SocketAddr,
    /// Threads serving the push API.
    pub api_threads: usize,
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
    /// A gateway's internal listener address.
    pub rpc_addr: SocketAddr,
    /// TLS of a gateway's internal listener.
    pub rpc_tls: Option<ServerTls>,
    /// Logic's links to its gateways (the secret is the gateway's too).
    pub cluster: ClusterConfig,
    /// Run on NATS instead of in memory (serve) or gRPC (gateway, logic).
    pub nats: Option<NatsConfig>,
    /// Open the WebSocket listener with SO_REUSEPORT.
    pub reuse_port: bool,
}

/// More push-API threads than this is a typo, not a deployment.
const MAX_API_THREADS: usize = 256;

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
            ws_addr, api_addr, api_threads, merge_window, merge_max_items, shards, queue_items, max_connections,
            max_rooms_per_connection, max_message_bytes, outbox_frames, max_body_bytes, handshake_timeout,
            heartbeat_timeout, write_timeout, shutdown_grace, log, rpc_addr, gateways, cluster_secret, rpc_tls_cert,
            rpc_tls_key, rpc_tls_ca, gateway_queue, ack_timeout, status_interval, bus, reuse_port)
    }

    /// Fills defaults and validates.
    pub fn resolve(self) -> anyhow::Result<Config> {
        let duration =
            |value: Option<DurationValue>, default: u64| value.map_or(Duration::from_millis(default), |d| d.0);
        let config = Config {
            ws_addr: self.ws_addr.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 7777))),
            api_addr: self.api_addr.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7799))),
            api_threads: self.api_threads.unwrap_or(1),
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
            rpc_addr: self.rpc_addr.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7788))),
            rpc_tls: match (&self.rpc_tls_cert, &self.rpc_tls_key) {
                (Some(cert), Some(key)) => Some(ServerTls {
                    cert_pem: read_file("rpc_tls_cert", cert)?,
                    key_pem: read_file("rpc_tls_key", key)?,
                }),
                (None, None) => None,
                (Some(_), None) => bail!("rpc_tls_key: needed with rpc_tls_cert"),
                (None, Some(_)) => bail!("rpc_tls_cert: needed with rpc_tls_key"),
            },
            cluster: ClusterConfig {
                gateways: self.gateways.unwrap_or_default(),
                queue_pushes: self.gateway_queue.unwrap_or(10_000),
                ack_timeout: duration(self.ack_timeout, 5_000),
                status_interval: duration(self.status_interval, 1_000),
                connect_timeout: Duration::from_secs(5),
                secret: match self.cluster_secret {
                    Some(secret) if secret.is_empty() => bail!("cluster_secret: must not be empty"),
                    secret => secret.map(Secret::new),
                },
                tls_ca_pem: self.rpc_tls_ca.map(|path| read_file("rpc_tls_ca", &path)).transpose()?,
            },
            nats: self.bus.map(|url| NatsConfig {
                url,
                announce_interval: Duration::from_secs(1),
                gateway_ttl: Duration::from_secs(3),
                publish_timeout: duration(self.ack_timeout, 5_000),
            }),
            reuse_port: self.reuse_port.unwrap_or(false),
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
        at_least("api_threads", self.api_threads, 1)?;
        if self.api_threads > MAX_API_THREADS {
            bail!(
                "api_threads: must be at most {MAX_API_THREADS}, got {}",
                self.api_threads
            );
        }
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
        at_least("gateway_queue", self.cluster.queue_pushes, 1)?;
        positive("ack_timeout", self.cluster.ack_timeout)?;
        positive("status_interval", self.cluster.status_interval)?;
        if let Some(secret) = &self.cluster.secret
            && !secret.as_str().bytes().all(|b| b.is_ascii_graphic())
        {
            bail!("cluster_secret: must be printable ASCII without spaces");
        }
        if let Some(nats) = &self.nats {
            for url in nats.url.split(',') {
                if !url.trim().starts_with("nats://") && !url.trim().starts_with("tls://") {
                    bail!(
                        "bus: `{}` is not nats://HOST:PORT (several are separated by commas)",
                        url.trim()
                    );
                }
            }
            if !self.cluster.gateways.is_empty() {
                bail!("gateways: not used with bus (on NATS, logic finds the gateways by their announcements)");
            }
        }
        if self.api.max_body_bytes > herald_cluster::MAX_MESSAGE_BYTES / 2 {
            bail!(
                "max_body_bytes: must be at most {} (a push must fit one cluster message)",
                herald_cluster::MAX_MESSAGE_BYTES / 2
            );
        }
        tracing_subscriber::EnvFilter::try_new(&self.log).map_err(|e| anyhow::anyhow!("log: {e}"))?;
        Ok(())
    }
}

/// The arguments of `herald serve`, `gateway` and `logic`: an optional file plus every setting as a flag.
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
        for threads in [0, MAX_API_THREADS + 1] {
            let error = Settings {
                api_threads: Some(threads),
                ..Settings::default()
            }
            .resolve()
            .unwrap_err();
            assert!(error.to_string().starts_with("api_threads:"), "{error}");
        }
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
