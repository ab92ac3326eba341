//! The command line of `herald-bench`: the scenarios, where the load goes, and how herald is started.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::bail;

use crate::items::ItemsKind;

/// The scenarios of `herald-bench`.
#[derive(Debug, clap::Subcommand)]
pub enum Scenario {
    /// Open N connections in one room, keep them alive, report connect rate and memory per connection.
    Connections(ConnectionsArgs),
    /// Push at a fixed rate to N connections, report throughput, latency, loss and CPU.
    Fanout(FanoutArgs),
    /// Connect/disconnect storms while pushes flow: errors, latency of the connections that stay, and memory
    /// before, during and after.
    Churn(ChurnArgs),
    /// Normal clients receiving pushes while attackers of every kind work on the same herald (reply hogs, flooders,
    /// fresh-room churners, half-open sockets, slow readers): their loss and latency, and herald's memory.
    Hostile(HostileArgs),
}

impl Scenario {
    /// Where the scenario's load goes, and how the herald it starts is started.
    pub fn target(&self) -> &Target {
        match self {
            Self::Connections(args) => &args.target,
            Self::Fanout(args) => &args.target,
            Self::Churn(args) => &args.target,
            Self::Hostile(args) => &args.target,
        }
    }
}

/// Where the load goes, and how herald is started when the bench starts it.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// WebSocket address of a running herald (`ws://127.0.0.1:7777/connect` or `127.0.0.1:7777`); without it
    /// the bench starts `herald serve` itself
    #[arg(long, value_parser = parse_address)]
    pub ws: Option<SocketAddr>,
    /// The herald binary the bench starts (without --ws) [default: the `herald` beside this executable, as
    /// target/release/herald beside target/release/herald-bench]
    #[arg(long, env = "HERALD_BIN", value_name = "PATH")]
    pub herald: Option<PathBuf>,
    /// Push-API address of the running herald (`http://127.0.0.1:7799` or `127.0.0.1:7799`; with --ws)
    #[arg(long, requires = "ws", value_parser = parse_address)]
    pub api: Option<SocketAddr>,
    /// PID of the running herald, to read its CPU and memory (with --ws); the processes below it are counted too
    #[arg(long, requires = "ws")]
    pub server_pid: Option<u32>,
    /// Allow a target outside the loopback range
    #[arg(long)]
    pub allow_remote: bool,
    /// Merge window of the herald the bench starts
    #[arg(long, default_value = "1s")]
    pub merge_window: String,
    /// Merge max items of the herald the bench starts
    #[arg(long, default_value_t = 100)]
    pub merge_max_items: usize,
    /// Further flags for the herald the bench starts, its gateways with --cluster (repeat: --server-arg=--shards
    /// --server-arg=8)
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Start a cluster instead of `herald serve`: this many `herald gateway`s and one `herald logic` on loopback.
    /// Connections are spread over the gateways, pushes go to logic, CPU and memory are summed over all of them
    #[arg(long, conflicts_with = "ws", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub cluster: Option<u16>,
    /// Start herald on NATS instead: a nats-server of its own, this many `herald gateway --bus ... --reuse-port`
    /// sharing one WebSocket port, and one `herald logic --bus ...`. CPU and memory are summed over all of them,
    /// nats-server included
    #[arg(long, conflicts_with_all = ["ws", "cluster"], value_parser = clap::value_parser!(u16).range(1..=64))]
    pub nats: Option<u16>,
    /// Worker processes for the connections [default: one per 15,000 connections]
    #[arg(long)]
    pub workers: Option<usize>,
    /// Seconds between each connection's PINGs (the first at a random point of the first interval)
    #[arg(long, default_value_t = 20.0, value_parser = parse_interval)]
    pub ping_secs: f64,
    /// Print one JSON line instead of a table
    #[arg(long)]
    pub json: bool,
    /// Sign a connection token (HS256, one user per connection) with this secret for every connection; a herald the
    /// bench starts verifies them (it gets the secret as HERALD_AUTH_HMAC_SECRETS, never as a flag)
    #[arg(long, env = "HERALD_BENCH_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,
}

impl Target {
    /// The herald binary to start: `--herald`, or the `herald` beside this executable; an error that says how to
    /// build it when there is none.
    pub(crate) fn herald_binary(&self) -> anyhow::Result<PathBuf> {
        if let Some(path) = &self.herald {
            if !path.is_file() {
                bail!("--herald {}: no such file", path.display());
            }
            return Ok(path.clone());
        }
        let path = std::env::current_exe()?.with_file_name("herald");
        if !path.is_file() {
            let release = if path.parent().and_then(|dir| dir.file_name()) == Some("debug".as_ref()) {
                ""
            } else {
                " --release"
            };
            bail!(
                "no herald beside herald-bench ({} is missing): build it with `cargo build{release} -p herald`, or \
                 name one with --herald PATH",
                path.display()
            );
        }
        Ok(path)
    }

    /// The clients' PING interval in milliseconds, as a worker's [`Plan`] takes it.
    pub(crate) fn ping_every_ms(&self) -> u64 {
        (self.ping_secs * 1000.0).round() as u64
    }
}

/// `herald-bench connections`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionsArgs {
    /// Connections to open
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Seconds to hold them once open
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// Offer permessage-deflate on every connection (JOINs and PINGs then go compressed) and read compressed frames:
    /// each distinct payload is inflated once per worker, every copy counted
    #[arg(long)]
    pub compress: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub target: Target,
}

/// `herald-bench fanout`.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// Connections receiving
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Pushes per second
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Items per push
    #[arg(long, default_value_t = 1)]
    pub items: usize,
    /// Bytes per item (padding items only)
    #[arg(long, default_value_t = 100)]
    pub item_bytes: usize,
    /// What the items are: padding (compresses to almost nothing), chat messages (about 150 bytes) or market ticks,
    /// from a seeded generator
    #[arg(long, value_enum, default_value_t = ItemsKind::Padding)]
    pub items_kind: ItemsKind,
    /// Seconds of publishing
    #[arg(long, default_value_t = 10.0)]
    pub secs: f64,
    /// Room every connection joins and every push goes to
    #[arg(long, default_value = "bench", conflicts_with = "all")]
    pub room: String,
    /// Push to everyone (/push/all) instead of a room
    #[arg(long)]
    pub all: bool,
    /// Offer permessage-deflate on every connection (JOINs and PINGs then go compressed) and read compressed frames:
    /// each distinct payload is inflated once per worker, every copy counted
    #[arg(long)]
    pub compress: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub target: Target,
}

/// `herald-bench churn`.
#[derive(Debug, Clone, clap::Args)]
pub struct ChurnArgs {
    /// Connections that stay for the whole run; each must get every item once, in order
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Connections opened, joined and dropped per second during the run
    #[arg(long, default_value_t = 1000.0)]
    pub churn: f64,
    /// How long each churning connection stays, in milliseconds (dropped with a reset)
    #[arg(long, default_value_t = 50)]
    pub hold_ms: u64,
    /// Pushes per second to the room, during the churn
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Seconds of churn and pushes
    #[arg(long, default_value_t = 10.0)]
    pub secs: f64,
    /// Room every connection joins
    #[arg(long, default_value = "bench")]
    pub room: String,
    /// Churning connections resume: each JOINs with `since` at the last position a churner saw, reads what comes
    /// while it stays, and the run reports how many were recovered. The herald the bench starts keeps 100 items a
    /// room (`--history-size 100`, unless a --server-arg sets it)
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub target: Target,
}

/// `herald-bench hostile`.
#[derive(Debug, Clone, clap::Args)]
pub struct HostileArgs {
    /// Normal connections receiving; each must get every item once, in order
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Attackers of each kind (0: the baseline, no attack)
    #[arg(long, default_value_t = 100)]
    pub attackers: usize,
    /// The kinds of attacker, comma-separated
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "reply_hog,flooder,room_churner,half_open,slow_reader"
    )]
    pub kinds: Vec<crate::attack::Kind>,
    /// Messages a second of each rate-bound attacker (reply hogs, room churners); below the server's
    /// client_message_rate they are not closed for it
    #[arg(long, default_value_t = 50.0)]
    pub attack_rate: f64,
    /// Pushes per second to the room
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Seconds of pushes and attack
    #[arg(long, default_value_t = 20.0)]
    pub secs: f64,
    /// Room the normal clients (and the slow readers) join
    #[arg(long, default_value = "bench")]
    pub room: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub target: Target,
}

/// Reads a PING interval in seconds: at least a millisecond, at most a day.
pub(crate) fn parse_interval(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if (0.001..=86_400.0).contains(&secs) => Ok(secs),
        _ => Err(format!("{text}: not a number of seconds between 0.001 and 86400")),
    }
}

/// Reads `host:port`, or a `ws://`, `http://` URL naming one (its path is ignored: herald's paths are fixed).
pub(crate) fn parse_address(text: &str) -> Result<SocketAddr, String> {
    let rest = text.split_once("://").map_or(text, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    let default_port = if text.contains("://") { ":80" } else { "" };
    let with_port = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}{default_port}")
    };
    std::net::ToSocketAddrs::to_socket_addrs(&with_port)
        .map_err(|e| format!("{text}: {e}"))?
        .next()
        .ok_or_else(|| format!("{text}: no address"))
}
