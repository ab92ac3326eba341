//! The settings, in groups by the part of herald that reads them. A mode's flags are the groups of the parts it
//! runs (see `config.rs`), so a flag of another mode is refused by the parser. Every field is optional here: the
//! layers (flags and env, the file, `defaults.toml`) are laid over each other first, then each group resolves into
//! the typed settings of its part and checks them; an error names the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use herald_cluster::Secret;
use herald_cluster::logic::ClusterConfig;
use herald_cluster::nats::NatsConfig;
use herald_gateway::GatewayConfig;
use herald_gateway::access::AccessConfig;
use herald_http::ServerTls;
use herald_hub::HubConfig;
use herald_hub::batch::MergePolicy;
use herald_hub::history::HistoryConfig;
use herald_logic::ApiConfig;
use herald_protocol::deflate::Compression;
use herald_protocol::token::{PublicKeyPem, RoomPatterns, Verifier};
use serde::Deserialize;

use super::duration::DurationValue;

/// One group of settings: laid over a lower layer of the same group.
pub trait Part: serde::de::DeserializeOwned {
    /// These settings, with `lower` filling what these leave unset.
    fn over(self, lower: Self) -> Self;
}

macro_rules! part {
    ($group:ident { $($field:ident),* $(,)? }) => {
        impl Part for $group {
            fn over(self, lower: Self) -> Self {
                Self { $($field: self.$field.or(lower.$field)),* }
            }
        }
    };
}

/// The value of a setting that `defaults.toml` gives a default to, once the layers are laid.
fn given<T>(value: Option<T>) -> T {
    value.expect("defaults.toml gives this setting a default")
}

fn at_least(key: &str, value: usize, min: usize) -> anyhow::Result<usize> {
    if value < min {
        bail!("{key}: must be at least {min}, got {value}");
    }
    Ok(value)
}

fn at_most(key: &str, value: usize, max: usize) -> anyhow::Result<usize> {
    if value > max {
        bail!("{key}: must be at most {max}, got {value}");
    }
    Ok(value)
}

fn positive(key: &str, value: Option<DurationValue>) -> anyhow::Result<Duration> {
    let value = given(value).0;
    if value.is_zero() {
        bail!("{key}: must be longer than 0");
    }
    Ok(value)
}

/// A rate a second: 0 (off) or positive.
fn rate(key: &str, value: f64) -> anyhow::Result<f64> {
    if !(value >= 0.0 && value.is_finite()) {
        bail!("{key}: must be 0 (off) or a positive number, got {value}");
    }
    Ok(value)
}

fn read_file(key: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{key}: reading {}", path.display()))
}

/// Settings of the process itself (every mode).
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
pub struct ProcessSettings {
    /// On SIGINT/SIGTERM, the longest herald drains before it exits
    #[arg(long, env = "HERALD_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<DurationValue>,
    /// Log filter, in tracing's env-filter syntax (`info`, `herald_gateway=debug`)
    #[arg(long, env = "HERALD_LOG")]
    pub log: Option<String>,
}
part!(ProcessSettings { shutdown_grace, log });

/// What every mode's process runs with.
#[derive(Debug, Clone)]
pub struct Process {
    /// Longest drain on shutdown.
    pub shutdown_grace: Duration,
    /// Log filter.
    pub log: String,
}

impl ProcessSettings {
    pub(crate) fn resolve(self) -> anyhow::Result<Process> {
        let log = given(self.log);
        tracing_subscriber::EnvFilter::try_new(&log).map_err(|e| anyhow::anyhow!("log: {e}"))?;
        Ok(Process {
            shutdown_grace: given(self.shutdown_grace).0,
            log,
        })
    }
}

/// The WebSocket side (serve, gateway).
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[command(next_help_heading = "WebSocket side")]
pub struct WebSocketSettings {
    /// WebSocket listener, public (`/connect`, demo page at `/`)
    #[arg(long, env = "HERALD_WS_ADDR")]
    pub ws_addr: Option<SocketAddr>,
    /// Open the WebSocket listener with SO_REUSEPORT, so several processes share the port
    #[arg(long, env = "HERALD_REUSE_PORT", num_args = 0..=1, default_missing_value = "true")]
    pub reuse_port: Option<bool>,
    /// Threads running the connections and the fan-out: 0 is one per core, 1 one event loop (several processes a host)
    #[arg(long, env = "HERALD_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// Connections held at once; more get 503 at the handshake
    #[arg(long, env = "HERALD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Rooms one connection may join
    #[arg(long, env = "HERALD_MAX_ROOMS_PER_CONNECTION")]
    pub max_rooms_per_connection: Option<usize>,
    /// Largest client message, in bytes; larger closes with 1009
    #[arg(long, env = "HERALD_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Frames that may wait for one connection; one more closes it as a slow consumer (4000)
    #[arg(long, env = "HERALD_OUTBOX_FRAMES")]
    pub outbox_frames: Option<usize>,
    /// Bytes that may wait for one connection; a frame past it closes it as a slow consumer (4000)
    #[arg(long, env = "HERALD_OUTBOX_BYTES")]
    pub outbox_bytes: Option<usize>,
    /// Handshakes in progress at once (connections whose HTTP request has not been answered); more get 503
    #[arg(long, env = "HERALD_MAX_HANDSHAKES")]
    pub max_handshakes: Option<usize>,
    /// Time a new connection has to send its HTTP request
    #[arg(long, env = "HERALD_HANDSHAKE_TIMEOUT")]
    pub handshake_timeout: Option<DurationValue>,
    /// A connection silent this long is closed (4001)
    #[arg(long, env = "HERALD_HEARTBEAT_TIMEOUT")]
    pub heartbeat_timeout: Option<DurationValue>,
    /// A write stalled this long closes the connection as a slow consumer (4000)
    #[arg(long, env = "HERALD_WRITE_TIMEOUT")]
    pub write_timeout: Option<DurationValue>,
    /// Messages a second one connection may send (bursts of two seconds' worth); more closes it (4005); 0 is off
    #[arg(long, env = "HERALD_CLIENT_MESSAGE_RATE")]
    pub client_message_rate: Option<f64>,
    /// Accept permessage-deflate: frames to connections that offer it go out compressed, once per batch
    #[arg(long, env = "HERALD_COMPRESSION", num_args = 0..=1, default_missing_value = "true")]
    pub compression: Option<bool>,
}
part!(WebSocketSettings {
    ws_addr,
    reuse_port,
    worker_threads,
    max_connections,
    max_rooms_per_connection,
    max_message_bytes,
    outbox_frames,
    outbox_bytes,
    max_handshakes,
    handshake_timeout,
    heartbeat_timeout,
    write_timeout,
    client_message_rate,
    compression,
});

/// The WebSocket listener and its limits.
#[derive(Debug, Clone)]
pub struct WebSocket {
    /// Listener address.
    pub addr: SocketAddr,
    /// Open it with SO_REUSEPORT.
    pub reuse_port: bool,
    /// Threads of the process's runtime; 0 is one per core.
    pub worker_threads: usize,
    /// Limits of the connections.
    pub limits: GatewayConfig,
}

impl WebSocketSettings {
    pub(crate) fn resolve(self) -> anyhow::Result<WebSocket> {
        let limits = GatewayConfig {
            max_connections: at_least("max_connections", given(self.max_connections), 1)?,
            max_rooms_per_connection: at_least("max_rooms_per_connection", given(self.max_rooms_per_connection), 1)?,
            // A client must at least be able to send a JOIN for a room name of the longest allowed length.
            max_message_bytes: at_least("max_message_bytes", given(self.max_message_bytes), 512)?,
            outbox_frames: at_least("outbox_frames", given(self.outbox_frames), 1)?,
            // Room for a handful of replies, so a client is not closed for the PONG of one PING.
            outbox_bytes: at_least("outbox_bytes", given(self.outbox_bytes), 4096)?,
            max_handshakes: at_least("max_handshakes", given(self.max_handshakes), 1)?,
            handshake_timeout: positive("handshake_timeout", self.handshake_timeout)?,
            heartbeat_timeout: positive("heartbeat_timeout", self.heartbeat_timeout)?,
            write_timeout: positive("write_timeout", self.write_timeout)?,
            client_message_rate: rate("client_message_rate", given(self.client_message_rate))?,
            compression: given(self.compression),
        };
        Ok(WebSocket {
            addr: given(self.ws_addr),
            reuse_port: given(self.reuse_port),
            worker_threads: at_most("worker_threads", given(self.worker_threads), MAX_WORKER_THREADS)?,
            limits,
        })
    }
}

/// Who may connect and join what (serve, gateway).
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[command(next_help_heading = "Identity")]
pub struct AccessSettings {
    /// HS256 secrets that verify connection tokens; any may (so keys rotate). Prefer the env var or the file
    #[arg(
        long = "auth-hmac-secret",
        id = "auth_hmac_secrets",
        env = "HERALD_AUTH_HMAC_SECRETS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub auth_hmac_secrets: Option<Vec<String>>,
    /// PEM public keys (RSA: RS256, P-256: ES256, Ed25519: EdDSA) that verify tokens; a key's kid is its file name
    #[arg(
        long = "auth-public-key",
        id = "auth_public_keys",
        env = "HERALD_AUTH_PUBLIC_KEYS",
        value_delimiter = ','
    )]
    pub auth_public_keys: Option<Vec<PathBuf>>,
    /// With auth on: a token's `iss` must be this
    #[arg(long, env = "HERALD_AUTH_ISSUER")]
    pub auth_issuer: Option<String>,
    /// With auth on: a token's `aud` must name this
    #[arg(long, env = "HERALD_AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,
    /// With auth on: rooms any authenticated connection may join (names, or prefixes ending in `*`)
    #[arg(long, env = "HERALD_PUBLIC_ROOMS", value_delimiter = ',')]
    pub public_rooms: Option<Vec<String>>,
    /// Origins a browser may connect from (`https://app.example.com`, `https://*.example.com`); none means any
    #[arg(long, env = "HERALD_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,
    /// Connections one user may hold on one gateway; one more gets 429 at the handshake; 0 means no limit
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_USER")]
    pub max_connections_per_user: Option<usize>,
    /// Handshakes a second from one source address (a token bucket); over it, 429 with Retry-After; 0 means off
    #[arg(long, env = "HERALD_HANDSHAKE_RATE_PER_IP")]
    pub handshake_rate_per_ip: Option<f64>,
}
part!(AccessSettings {
    auth_hmac_secrets,
    auth_public_keys,
    auth_issuer,
    auth_audience,
    public_rooms,
    allowed_origins,
    max_connections_per_user,
    handshake_rate_per_ip,
});

impl AccessSettings {
    pub(crate) fn resolve(self) -> anyhow::Result<AccessConfig> {
        let secrets: Vec<Vec<u8>> = self
            .auth_hmac_secrets
            .unwrap_or_default()
            .into_iter()
            .map(String::into_bytes)
            .collect();
        let mut public_keys = Vec::new();
        for path in self.auth_public_keys.unwrap_or_default() {
            let kid = path
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
                .with_context(|| format!("auth_public_keys: {} names no file", path.display()))?;
            public_keys.push(PublicKeyPem {
                pem: read_file("auth_public_keys", &path)?,
                kid,
            });
        }
        let verifier = Verifier::new(&secrets, &public_keys, self.auth_issuer, self.auth_audience)?;
        let public_rooms = self.public_rooms.unwrap_or_default();
        let public_rooms = RoomPatterns::new(&public_rooms)
            .context("public_rooms: each must be a room name or a prefix ending in `*`, 1 to 256 bytes")?;
        let allowed_origins = self.allowed_origins.unwrap_or_default();
        if let Some(bad) = allowed_origins.iter().find(|origin| !origin.contains("://")) {
            bail!("allowed_origins: `{bad}` is not scheme://host (e.g. https://app.example.com)");
        }
        let rate = rate("handshake_rate_per_ip", given(self.handshake_rate_per_ip))?;
        Ok(AccessConfig {
            verifier: verifier.map(std::sync::Arc::new),
            public_rooms,
            allowed_origins,
            max_connections_per_user: given(self.max_connections_per_user),
            handshake_rate_per_ip: rate,
        })
    }
}

/// The fan-out engine (serve, gateway).
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[command(next_help_heading = "Fan-out")]
pub struct HubSettings {
    /// At most one frame per room per window; `0` turns merging off
    #[arg(long, env = "HERALD_MERGE_WINDOW")]
    pub merge_window: Option<DurationValue>,
    /// Items that send a batch early, and the most items in one frame
    #[arg(long, env = "HERALD_MERGE_MAX_ITEMS")]
    pub merge_max_items: Option<usize>,
    /// Shards (buckets) of rooms and connections, each with its own lock and worker
    #[arg(long, env = "HERALD_SHARDS")]
    pub shards: Option<usize>,
    /// Items that may wait for their frame in one shard; a push beyond gets 503
    #[arg(long, env = "HERALD_QUEUE_ITEMS")]
    pub queue_items: Option<usize>,
    /// Bytes of items that may wait in one shard; a push beyond gets 503 (one is always taken into an empty shard)
    #[arg(long, env = "HERALD_QUEUE_BYTES")]
    pub queue_bytes: Option<usize>,
    /// Rooms held at most; a JOIN of one more is refused (too_many_rooms_total); 0 means no limit
    #[arg(long, env = "HERALD_MAX_ROOMS")]
    pub max_rooms: Option<usize>,
    /// deflate level of compressed frames, 1 (fastest) to 9 (smallest)
    #[arg(long, env = "HERALD_COMPRESSION_LEVEL")]
    pub compression_level: Option<usize>,
    /// Frames whose payload is shorter go out uncompressed
    #[arg(long, env = "HERALD_COMPRESSION_MIN_BYTES")]
    pub compression_min_bytes: Option<usize>,
}
part!(HubSettings {
    merge_window,
    merge_max_items,
    shards,
    queue_items,
    queue_bytes,
    max_rooms,
    compression_level,
    compression_min_bytes,
});

impl HubSettings {
    pub(crate) fn resolve(self, history: HistorySettings) -> anyhow::Result<HubConfig> {
        let shards = at_least("shards", given(self.shards), 1)?;
        Ok(HubConfig {
            shards: at_most("shards", shards, 4096)?,
            merge: MergePolicy {
                window: given(self.merge_window).0,
                max_items: at_least("merge_max_items", given(self.merge_max_items), 1)?,
            },
            queue_items: at_least("queue_items", given(self.queue_items), 1)?,
            queue_bytes: at_least("queue_bytes", given(self.queue_bytes), 1)?,
            max_rooms: given(self.max_rooms),
            history: history.resolve(shards)?,
            compression: Compression {
                level: at_most(
                    "compression_level",
                    at_least("compression_level", given(self.compression_level), 1)?,
                    9,
                )? as u8,
                min_bytes: given(self.compression_min_bytes),
            },
        })
    }
}

/// Room history (serve and gateways keep it; on NATS it is a JetStream stream, which logic and the gateways
/// create or update with these settings).
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[command(next_help_heading = "History")]
pub struct HistorySettings {
    /// Items each room keeps for clients that resume (JOIN with since); 0 turns history off
    #[arg(long, env = "HERALD_HISTORY_SIZE")]
    pub history_size: Option<usize>,
    /// How long a room keeps an item in its history
    #[arg(long, env = "HERALD_HISTORY_TTL")]
    pub history_ttl: Option<DurationValue>,
    /// Bytes all room histories of the process (on NATS: of the stream) may hold; past it the oldest items go first
    #[arg(long, env = "HERALD_HISTORY_MAX_BYTES")]
    pub history_max_bytes: Option<usize>,
}
part!(HistorySettings {
    history_size,
    history_ttl,
    history_max_bytes,
});

impl HistorySettings {
    /// With `shards`, each of which gets an even share of `history_max_bytes`.
    pub(crate) fn resolve(self, shards: usize) -> anyhow::Result<HistoryConfig> {
        Ok(HistoryConfig {
            size: given(self.history_size),
            ttl: positive("history_ttl", self.history_ttl)?,
            max_bytes: at_least("history_max_bytes", given(self.history_max_bytes), shards)?,
        })
    }
}

/// More push-API threads than this is a typo, not a deployment.
pub const MAX_API_THREADS: usize = 256;

/// More runtime threads than this is a typo too.
pub const MAX_WORKER_THREADS: usize = 256;

/// The push API (serve, logic).
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[command(next_help_heading = "Push API")]
pub struct PushApiSettings {
    /// Push-API listener, private by default
    #[arg(long, env = "HERALD_API_ADDR")]
    pub api_addr: Option<SocketAddr>,
    /// Threads serving the push API, each with its own event loop
    #[arg(long, env = "HERALD_API_THREADS")]
    pub api_threads: Option<usize>,
    /// Time a push-API request has to send its whole body once its head is in (408 past it)
    #[arg(long, env = "HERALD_BODY_READ_TIMEOUT")]
    pub body_read_timeout: Option<DurationValue>,
    /// Keys callers must send as `Authorization: Bearer KEY` (all but /healthz). Prefer the env var or the file
    #[arg(
        long = "api-key",
        id = "api_keys",
        env = "HERALD_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Option<Vec<String>>,
}
part!(PushApiSettings {
    api_addr,
    api_threads,
    body_read_timeout,
    api_keys,
});

/// The push API's listener and limits.
#[derive(Debug, Clone)]
pub struct PushApi {
    /// Listener address.
    pub addr: SocketAddr,
    /// Threads serving it.
    pub threads: usize,
    /// Limits of a request.
    pub limits: ApiConfig,
}

impl PushApiSettings {
    pub(crate) fn resolve(self, http: &Http) -> anyhow::Result<PushApi> {
        let threads = at_least("api_threads", given(self.api_threads), 1)?;
        Ok(PushApi {
            addr: given(self.api_addr),
            threads: at_most("api_threads", threads, MAX_API_THREADS)?,
            limits: ApiConfig {
                max_body_bytes: http.max_body_bytes,
                body_read_timeout: positive("body_read_timeout", self.body_read_timeout)?,
                api_keys: checked_keys(self.api_keys.unwrap_or_default())?,
            },
        })
    }
}

/// What every HTTP listener (the push API, a gateway's internal listener) bounds (serve, gateway, logic).
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[command(next_help_heading = "HTTP listeners")]
pub struct HttpSettings {
    /// Largest push-API request body, in bytes; larger is answered 413 (a gateway decodes pushes of this size)
    #[arg(long, env = "HERALD_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Time an HTTP connection has for its TLS handshake and each request head, and may stay idle between requests
    #[arg(long, env = "HERALD_HEADER_READ_TIMEOUT")]
    pub header_read_timeout: Option<DurationValue>,
}
part!(HttpSettings {
    max_body_bytes,
    header_read_timeout,
});

/// What every HTTP listener bounds, resolved.
#[derive(Debug, Clone, Copy)]
pub struct Http {
    /// Largest push body: the push API answers 413 past it; a gateway's decoder refuses a push message past
    /// [`herald_cluster::gateway::max_push_bytes`] of it.
    pub max_body_bytes: usize,
    /// See `header_read_timeout` in docs/configuration.md.
    pub header_read_timeout: Duration,
}

impl HttpSettings {
    pub(crate) fn resolve(self) -> anyhow::Result<Http> {
        let max_body_bytes = at_least("max_body_bytes", given(self.max_body_bytes), 64)?;
        // A push must fit one cluster message (gRPC or NATS), framing included.
        let max_body_bytes = at_most("max_body_bytes", max_body_bytes, herald_cluster::MAX_MESSAGE_BYTES / 2)?;
        Ok(Http {
            max_body_bytes,
            header_read_timeout: positive("header_read_timeout", self.header_read_timeout)?,
        })
    }
}

fn checked_keys(keys: Vec<String>) -> anyhow::Result<Vec<String>> {
    if keys
        .iter()
        .any(|key| key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()))
    {
        bail!("api_keys: each key must be non-empty printable ASCII without spaces");
    }
    Ok(keys)
}

/// The cluster's shared secret (gateway, logic).
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[command(next_help_heading = "Cluster")]
pub struct SecretSettings {
    /// Shared secret required on the internal hop (prefer the env var or the file to a flag)
    #[arg(long, env = "HERALD_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
}
part!(SecretSettings { cluster_secret });

impl SecretSettings {
    pub(crate) fn resolve(self) -> anyhow::Result<Option<Secret>> {
        match self.cluster_secret {
            None => Ok(None),
            Some(secret) if secret.is_empty() => bail!("cluster_secret: must not be empty"),
            Some(secret) if !secret.bytes().all(|b| b.is_ascii_graphic()) => {
                bail!("cluster_secret: must be printable ASCII without spaces")
            }
            Some(secret) => Ok(Some(Secret::new(secret))),
        }
    }
}

/// A gateway's internal listener.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[command(next_help_heading = "Cluster")]
pub struct InternalSettings {
    /// Internal listener for logic's gRPC stream, `/healthz`, `/stats`, `/metrics`
    #[arg(long, env = "HERALD_RPC_ADDR")]
    pub rpc_addr: Option<SocketAddr>,
    /// PEM certificate chain; with --rpc-tls-key, the internal listener speaks TLS
    #[arg(long, env = "HERALD_RPC_TLS_CERT")]
    pub rpc_tls_cert: Option<PathBuf>,
    /// PEM private key of --rpc-tls-cert
    #[arg(long, env = "HERALD_RPC_TLS_KEY")]
    pub rpc_tls_key: Option<PathBuf>,
}
part!(InternalSettings {
    rpc_addr,
    rpc_tls_cert,
    rpc_tls_key,
});

/// A gateway's internal listener, resolved.
#[derive(Debug, Clone)]
pub struct Internal {
    /// Listener address.
    pub addr: SocketAddr,
    /// TLS, when configured.
    pub tls: Option<ServerTls>,
}

impl InternalSettings {
    pub(crate) fn resolve(self) -> anyhow::Result<Internal> {
        let tls = match (&self.rpc_tls_cert, &self.rpc_tls_key) {
            (Some(cert), Some(key)) => Some(ServerTls {
                cert_pem: read_file("rpc_tls_cert", cert)?,
                key_pem: read_file("rpc_tls_key", key)?,
            }),
            (None, None) => None,
            (Some(_), None) => bail!("rpc_tls_key: needed with rpc_tls_cert"),
            (None, Some(_)) => bail!("rpc_tls_cert: needed with rpc_tls_key"),
        };
        Ok(Internal {
            addr: given(self.rpc_addr),
            tls,
        })
    }
}

/// Logic's links to its gateways over gRPC.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[command(next_help_heading = "Cluster")]
pub struct LinkSettings {
    /// The gateways' internal listeners, `host:port,host:port,...`
    #[arg(long, env = "HERALD_GATEWAYS", value_delimiter = ',')]
    pub gateways: Option<Vec<String>>,
    /// PEM certificate(s) to trust; connect to the gateways over TLS
    #[arg(long, env = "HERALD_RPC_TLS_CA")]
    pub rpc_tls_ca: Option<PathBuf>,
    /// Pushes queued or in flight per gateway; past it, that gateway is skipped for the push
    #[arg(long, env = "HERALD_GATEWAY_QUEUE")]
    pub gateway_queue: Option<usize>,
    /// Bytes of pushes queued or in flight per gateway; past it, that gateway is skipped for the push
    #[arg(long, env = "HERALD_GATEWAY_QUEUE_BYTES")]
    pub gateway_queue_bytes: Option<usize>,
    /// Longest wait for the gateways' acks before answering a push
    #[arg(long, env = "HERALD_ACK_TIMEOUT")]
    pub ack_timeout: Option<DurationValue>,
    /// How often each gateway's status is fetched
    #[arg(long, env = "HERALD_STATUS_INTERVAL")]
    pub status_interval: Option<DurationValue>,
}
part!(LinkSettings {
    gateways,
    rpc_tls_ca,
    gateway_queue,
    gateway_queue_bytes,
    ack_timeout,
    status_interval,
});

impl LinkSettings {
    /// The links' settings; `gateways` may be empty here (logic on NATS has none; on gRPC, the bus refuses that).
    pub(crate) fn resolve(self, secret: Option<Secret>) -> anyhow::Result<ClusterConfig> {
        Ok(ClusterConfig {
            gateways: self.gateways.unwrap_or_default(),
            queue_pushes: at_least("gateway_queue", given(self.gateway_queue), 1)?,
            queue_bytes: at_least("gateway_queue_bytes", given(self.gateway_queue_bytes), 1)?,
            ack_timeout: positive("ack_timeout", self.ack_timeout)?,
            status_interval: positive("status_interval", self.status_interval)?,
            connect_timeout: Duration::from_secs(5),
            secret,
            tls_ca_pem: self.rpc_tls_ca.map(|path| read_file("rpc_tls_ca", &path)).transpose()?,
        })
    }
}

/// Running on NATS (every mode).
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[command(next_help_heading = "NATS")]
pub struct BusSettings {
    /// Run on NATS (`nats://host:port`, several comma-separated) instead of in memory or gRPC
    #[arg(long, env = "HERALD_BUS")]
    pub bus: Option<String>,
}
part!(BusSettings { bus });

/// Publishing pushes on NATS (serve, logic).
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[command(next_help_heading = "NATS")]
pub struct PublishSettings {
    /// With --bus: longest a push waits to be handed to the NATS client before it is answered 503
    #[arg(long, env = "HERALD_PUBLISH_TIMEOUT")]
    pub publish_timeout: Option<DurationValue>,
}
part!(PublishSettings { publish_timeout });

impl BusSettings {
    /// NATS settings when `bus` is set; `publish` where the mode publishes pushes (a gateway does not: it keeps
    /// the default, which it never uses).
    pub(crate) fn resolve(self, publish: PublishSettings) -> anyhow::Result<Option<NatsConfig>> {
        let Some(url) = self.bus else {
            return Ok(None);
        };
        for server in url.split(',') {
            let server = server.trim();
            if !server.starts_with("nats://") && !server.starts_with("tls://") {
                bail!("bus: `{server}` is not nats://HOST:PORT (several are separated by commas)");
            }
        }
        Ok(Some(NatsConfig {
            url,
            announce_interval: Duration::from_secs(1),
            gateway_ttl: Duration::from_secs(3),
            publish_timeout: positive("publish_timeout", publish.publish_timeout)?,
        }))
    }
}
