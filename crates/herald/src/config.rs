//! Configuration: flags, `HERALD_*` environment variables, a TOML file (`--config`) and `defaults.toml`, in falling
//! precedence, parsed once at start into typed, validated values. Unknown keys and bad values are errors that
//! name the key. Every setting, its default and its meaning: docs/configuration.md.
//!
//! Each mode takes exactly the flags of the parts it runs ([`ServeArgs`], [`GatewayArgs`], [`LogicArgs`]): a flag
//! of another mode is refused at start. A file (or an environment) may be shared by several modes: each reads the
//! keys of its own parts, and a key no mode knows is refused.
//!
//! # Layout
//! - this file: the three modes' arguments and resolved settings, the file, the defaults.
//! - `duration`: how a duration is written (`10ms`, `1s`, `2m`).
//! - `parts`: the groups of settings, one per part of herald (process, WebSocket side, fan-out, push API, a
//!   gateway's internal listener, logic's links, the cluster secret, NATS), each resolving into its typed settings.
//! - `defaults.toml`: every default, written once.

mod duration;
mod parts;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Command};
use herald_cluster::logic::ClusterConfig;
use herald_cluster::nats::NatsConfig;
use herald_gateway::access::AccessConfig;
use herald_hub::HubConfig;
use herald_hub::history::HistoryConfig;

pub use self::duration::DurationValue;
pub use self::parts::{
    AccessSettings, BusSettings, HistorySettings, Http, HttpSettings, HubSettings, Internal, InternalSettings,
    LinkSettings, MAX_API_THREADS, MAX_WORKER_THREADS, Part, Process, ProcessSettings, PublishSettings, PushApi,
    PushApiSettings, SecretSettings, WebSocket, WebSocketSettings,
};

/// Every default (see `defaults.toml`).
pub const DEFAULTS: &str = include_str!("config/defaults.toml");

/// A TOML text of settings: a file, or [`DEFAULTS`]. Each group of settings is read from it on its own.
#[derive(Debug, Clone)]
pub struct SettingsFile {
    text: String,
    /// Where the text came from, for errors.
    origin: String,
}

impl SettingsFile {
    /// Takes a TOML text; a key that is no setting of any mode is an error that names it.
    pub fn parse(text: String, origin: String) -> anyhow::Result<Self> {
        let table: toml::Table = toml::from_str(&text).with_context(|| format!("in {origin}"))?;
        let known = setting_keys();
        if let Some(unknown) = table.keys().find(|key| !known.contains(key)) {
            bail!("{unknown}: not a setting of herald (in {origin}; see docs/configuration.md)");
        }
        Ok(Self { text, origin })
    }

    /// Reads a settings file.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(text, path.display().to_string())
    }

    /// No file.
    pub fn empty() -> Self {
        Self {
            text: String::new(),
            origin: "no file".to_owned(),
        }
    }

    /// The defaults.
    pub fn defaults() -> Self {
        Self::parse(DEFAULTS.to_owned(), "defaults.toml".to_owned()).expect("defaults.toml names only settings")
    }

    /// Resolves and checks every setting this text gives, over the defaults, as the modes that read it would.
    pub fn check(&self) -> anyhow::Result<()> {
        let layers = Layers {
            file: self.clone(),
            defaults: Self::defaults(),
        };
        layers.under(ProcessSettings::default())?.resolve()?;
        layers.under(WebSocketSettings::default())?.resolve()?;
        layers.under(AccessSettings::default())?.resolve()?;
        layers
            .under(HubSettings::default())?
            .resolve(layers.under(HistorySettings::default())?)?;
        let http = layers.under(HttpSettings::default())?.resolve()?;
        layers.under(PushApiSettings::default())?.resolve(&http)?;
        layers.under(InternalSettings::default())?.resolve()?;
        let secret = layers.under(SecretSettings::default())?.resolve()?;
        layers.under(LinkSettings::default())?.resolve(secret)?;
        layers
            .under(BusSettings::default())?
            .resolve(layers.under(PublishSettings::default())?)?;
        Ok(())
    }

    /// One group of settings as this text gives them (keys of other groups are left to those).
    pub fn part<T: Part>(&self) -> anyhow::Result<T> {
        toml::from_str(&self.text).with_context(|| format!("in {}", self.origin))
    }
}

/// The layers under the flags and env: the file (or none) and the defaults.
struct Layers {
    file: SettingsFile,
    defaults: SettingsFile,
}

impl Layers {
    fn read(path: Option<&Path>) -> anyhow::Result<Self> {
        Ok(Self {
            file: path.map_or_else(|| Ok(SettingsFile::empty()), SettingsFile::read)?,
            defaults: SettingsFile::defaults(),
        })
    }

    /// `flags` (flags and env), over the file, over the defaults.
    fn under<T: Part>(&self, flags: T) -> anyhow::Result<T> {
        Ok(flags.over(self.file.part()?).over(self.defaults.part()?))
    }
}

/// The names of every setting of every mode (the file's keys).
pub fn setting_keys() -> Vec<String> {
    fn ids<T: Args>(keys: &mut Vec<String>) {
        let group = T::augment_args(Command::new("settings"));
        keys.extend(group.get_arguments().map(|arg| arg.get_id().to_string()));
    }
    let mut keys = Vec::new();
    ids::<ProcessSettings>(&mut keys);
    ids::<WebSocketSettings>(&mut keys);
    ids::<AccessSettings>(&mut keys);
    ids::<HubSettings>(&mut keys);
    ids::<HistorySettings>(&mut keys);
    ids::<PushApiSettings>(&mut keys);
    ids::<HttpSettings>(&mut keys);
    ids::<SecretSettings>(&mut keys);
    ids::<InternalSettings>(&mut keys);
    ids::<LinkSettings>(&mut keys);
    ids::<BusSettings>(&mut keys);
    ids::<PublishSettings>(&mut keys);
    keys
}

/// Adds each setting's default (from [`DEFAULTS`]) to its flag's help in a mode's `command` (serve, gateway, logic;
/// other commands, such as the bench's, have flags of the same names with defaults of their own).
pub fn show_defaults(command: Command) -> Command {
    let defaults: toml::Table = toml::from_str(DEFAULTS).expect("defaults.toml is TOML");
    let annotate = |arg: clap::Arg| match defaults.get(arg.get_id().as_str()) {
        Some(value) => {
            let shown = value.as_str().map_or_else(|| value.to_string(), str::to_owned);
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            arg.help(format!("{help} [default: {shown}]"))
        }
        None => arg,
    };
    command.mut_args(annotate)
}

/// `herald serve`: gateway, hub and push API in one process.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "serve", args_override_self = true)]
pub struct ServeArgs {
    /// TOML file with settings (same names as the flags, with underscores); flags and env override it
    #[arg(long, env = "HERALD_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub process: ProcessSettings,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub websocket: WebSocketSettings,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub access: AccessSettings,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub hub: HubSettings,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub history: HistorySettings,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub api: PushApiSettings,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub http: HttpSettings,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub bus: BusSettings,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub publish: PublishSettings,
}

/// The settings of `herald serve`.
#[derive(Debug, Clone)]
pub struct Serve {
    /// Shutdown and logging.
    pub process: Process,
    /// The WebSocket listener and its limits.
    pub websocket: WebSocket,
    /// Who may connect and join what.
    pub access: AccessConfig,
    /// The fan-out engine.
    pub hub: HubConfig,
    /// The push API.
    pub api: PushApi,
    /// What the push API's listener bounds.
    pub http: Http,
    /// On NATS instead of in memory.
    pub nats: Option<NatsConfig>,
}

impl ServeArgs {
    /// Flags and env over the file over the defaults, validated.
    pub fn resolve(self) -> anyhow::Result<Serve> {
        let layers = Layers::read(self.config.as_deref())?;
        let http = layers.under(self.http)?.resolve()?;
        let hub = layers.under(self.hub)?.resolve(layers.under(self.history)?)?;
        let nats = layers.under(self.bus)?.resolve(layers.under(self.publish)?)?;
        Ok(Serve {
            process: layers.under(self.process)?.resolve()?,
            websocket: layers.under(self.websocket)?.resolve()?,
            access: layers.under(self.access)?.resolve()?,
            hub,
            api: layers.under(self.api)?.resolve(&http)?,
            http,
            nats,
        })
    }
}

/// `herald gateway`: the WebSocket side and hub of a cluster, fed by logic nodes.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "gateway", args_override_self = true)]
pub struct GatewayArgs {
    /// TOML file with settings (same names as the flags, with underscores); flags and env override it
    #[arg(long, env = "HERALD_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub process: ProcessSettings,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub websocket: WebSocketSettings,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub access: AccessSettings,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub hub: HubSettings,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub history: HistorySettings,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub internal: InternalSettings,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub http: HttpSettings,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub secret: SecretSettings,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub bus: BusSettings,
}

/// The settings of `herald gateway`.
#[derive(Debug, Clone)]
pub struct Gateway {
    /// Shutdown and logging.
    pub process: Process,
    /// The WebSocket listener and its limits.
    pub websocket: WebSocket,
    /// Who may connect and join what.
    pub access: AccessConfig,
    /// The fan-out engine.
    pub hub: HubConfig,
    /// The internal listener (gRPC from logic, `/healthz`, `/stats`, `/metrics`).
    pub internal: Internal,
    /// What the internal listener bounds.
    pub http: Http,
    /// The secret logic nodes must present.
    pub secret: Option<herald_cluster::Secret>,
    /// On NATS instead of gRPC.
    pub nats: Option<NatsConfig>,
}

impl GatewayArgs {
    /// Flags and env over the file over the defaults, validated.
    pub fn resolve(self) -> anyhow::Result<Gateway> {
        let layers = Layers::read(self.config.as_deref())?;
        let hub = layers.under(self.hub)?.resolve(layers.under(self.history)?)?;
        // A gateway publishes no pushes: the publish timeout keeps its default, unused.
        let nats = layers
            .under(self.bus)?
            .resolve(layers.under(PublishSettings::default())?)?;
        Ok(Gateway {
            process: layers.under(self.process)?.resolve()?,
            websocket: layers.under(self.websocket)?.resolve()?,
            access: layers.under(self.access)?.resolve()?,
            hub,
            internal: layers.under(self.internal)?.resolve()?,
            http: layers.under(self.http)?.resolve()?,
            secret: layers.under(self.secret)?.resolve()?,
            nats,
        })
    }
}

/// `herald logic`: the push API of a cluster, forwarding to the gateways.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "logic", args_override_self = true)]
pub struct LogicArgs {
    /// TOML file with settings (same names as the flags, with underscores); flags and env override it
    #[arg(long, env = "HERALD_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub process: ProcessSettings,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub api: PushApiSettings,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub http: HttpSettings,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub links: LinkSettings,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub secret: SecretSettings,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub bus: BusSettings,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub publish: PublishSettings,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub history: HistorySettings,
}

/// The settings of `herald logic`.
#[derive(Debug, Clone)]
pub struct Logic {
    /// Shutdown and logging.
    pub process: Process,
    /// The push API.
    pub api: PushApi,
    /// What the push API's listener bounds.
    pub http: Http,
    /// The links to the gateways (gRPC); their list is empty on NATS.
    pub cluster: ClusterConfig,
    /// On NATS instead of gRPC.
    pub nats: Option<NatsConfig>,
    /// Room history: on NATS, the JetStream stream's limits (on gRPC the gateways keep it; not used here).
    pub history: HistoryConfig,
}

impl LogicArgs {
    /// Flags and env over the file over the defaults, validated.
    pub fn resolve(self) -> anyhow::Result<Logic> {
        let layers = Layers::read(self.config.as_deref())?;
        let secret = layers.under(self.secret)?.resolve()?;
        let http = layers.under(self.http)?.resolve()?;
        let logic = Logic {
            process: layers.under(self.process)?.resolve()?,
            api: layers.under(self.api)?.resolve(&http)?,
            http,
            cluster: layers.under(self.links)?.resolve(secret)?,
            nats: layers.under(self.bus)?.resolve(layers.under(self.publish)?)?,
            history: layers.under(self.history)?.resolve(1)?,
        };
        if logic.nats.is_some() && !logic.cluster.gateways.is_empty() {
            bail!("gateways: not used with bus (on NATS, logic finds the gateways by their announcements)");
        }
        Ok(logic)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::*;

    fn serve(flags: &[&str]) -> anyhow::Result<Serve> {
        ServeArgs::try_parse_from(std::iter::once("serve").chain(flags.iter().copied()))?.resolve()
    }

    fn file(text: &str) -> anyhow::Result<SettingsFile> {
        SettingsFile::parse(text.to_owned(), "test.toml".to_owned())
    }

    /// Every default docs/configuration.md states, as the part that reads it receives it (another test checks
    /// that the table and `defaults.toml` agree): a default mapped to the wrong field, or lost on the way, fails here.
    #[test]
    fn every_documented_default_reaches_its_part() {
        let secs = Duration::from_secs;
        let config = serve(&[]).unwrap();
        assert_eq!(
            (config.process.shutdown_grace, config.process.log.as_str()),
            (secs(15), "info")
        );
        assert_eq!(config.websocket.addr.to_string(), "0.0.0.0:7777");
        assert!(!config.websocket.reuse_port);
        assert_eq!(
            config.websocket.limits,
            herald_gateway::GatewayConfig {
                max_connections: 100_000,
                max_handshakes: 1024,
                max_rooms_per_connection: 64,
                max_message_bytes: 4096,
                handshake_timeout: secs(10),
                heartbeat_timeout: secs(60),
                write_timeout: secs(10),
                outbox_frames: 1024,
                outbox_bytes: 1 << 20,
                client_message_rate: 100.0,
                compression: true,
            }
        );
        assert!(config.access.verifier.is_none());
        assert_eq!(
            (
                config.access.max_connections_per_user,
                config.access.handshake_rate_per_ip
            ),
            (0, 0.0)
        );
        assert!(config.access.allowed_origins.is_empty());
        assert_eq!(
            config.hub,
            HubConfig {
                shards: 16,
                merge: herald_hub::batch::MergePolicy {
                    window: secs(1),
                    max_items: 100,
                },
                queue_items: 100_000,
                queue_bytes: 32 << 20,
                max_rooms: 1_000_000,
                history: herald_hub::history::HistoryConfig {
                    size: 0,
                    ttl: secs(300),
                    max_bytes: 64 << 20,
                },
                compression: herald_protocol::deflate::Compression::default(),
            }
        );
        assert_eq!(
            (config.api.addr.to_string(), config.api.threads),
            ("127.0.0.1:7799".to_owned(), 1)
        );
        assert!(config.api.limits.api_keys.is_empty());
        assert_eq!(
            (
                config.api.limits.max_body_bytes,
                config.api.limits.body_read_timeout,
                config.http.max_body_bytes,
                config.http.header_read_timeout
            ),
            (1 << 20, secs(30), 1 << 20, secs(30))
        );
        assert!(config.nats.is_none());
        let on_nats = serve(&["--bus", "nats://127.0.0.1:4222"]).unwrap().nats.unwrap();
        assert_eq!(on_nats.publish_timeout, secs(5));
        let kept = serve(&["--bus", "nats://127.0.0.1:4222", "--history-size", "10"]).unwrap();
        assert_eq!(kept.hub.history.size, 10, "history on NATS lives in JetStream");

        let gateway = GatewayArgs::try_parse_from(["gateway"]).unwrap().resolve().unwrap();
        assert_eq!(gateway.internal.addr.to_string(), "127.0.0.1:7788");
        assert!(gateway.internal.tls.is_none() && gateway.secret.is_none());
        assert_eq!(
            (gateway.http.max_body_bytes, gateway.http.header_read_timeout),
            (1 << 20, secs(30))
        );

        let logic = LogicArgs::try_parse_from(["logic"]).unwrap().resolve().unwrap();
        assert_eq!(
            (
                logic.cluster.queue_pushes,
                logic.cluster.queue_bytes,
                logic.cluster.ack_timeout,
                logic.cluster.status_interval
            ),
            (10_000, 64 << 20, secs(5), secs(1))
        );
        assert!(logic.cluster.gateways.is_empty());
        assert_eq!(logic.api.addr.to_string(), "127.0.0.1:7799");
    }

    /// Each default docs/configuration.md states is the one `defaults.toml` sets, and every setting is documented.
    #[test]
    fn the_documented_defaults_are_the_defaults() {
        let docs = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md"));
        let defaults: toml::Table = toml::from_str(DEFAULTS).unwrap();
        let rows: Vec<Vec<&str>> = docs
            .lines()
            .filter(|line| line.starts_with("| `"))
            .map(|line| {
                line.split(" | ")
                    .map(|cell| cell.trim_matches(['|', ' ', '`']))
                    .collect()
            })
            .collect();
        for key in setting_keys() {
            let row = rows
                .iter()
                .find(|row| row[0].split("`, `").any(|documented| documented == key))
                .unwrap_or_else(|| panic!("{key} is not in docs/configuration.md"));
            if let Some(value) = defaults.get(&key) {
                let default = value.as_str().map_or_else(|| value.to_string(), str::to_owned);
                assert_eq!(row[3], default, "the documented default of {key}");
            }
        }
    }

    #[test]
    fn flags_override_the_file() {
        let layers = Layers {
            file: file("merge_window = \"10ms\"\nshards = 4\n").unwrap(),
            defaults: SettingsFile::defaults(),
        };
        let flags = HubSettings {
            shards: Some(8),
            ..HubSettings::default()
        };
        let history = layers.under(HistorySettings::default()).unwrap();
        let hub = layers.under(flags).unwrap().resolve(history).unwrap();
        assert_eq!((hub.shards, hub.merge.window), (8, Duration::from_millis(10)));
    }

    #[test]
    fn one_file_serves_every_mode() {
        let shared = file("merge_window = \"10ms\"\ngateways = [\"127.0.0.1:7788\"]\nack_timeout = \"1s\"\n").unwrap();
        let layers = Layers {
            file: shared,
            defaults: SettingsFile::defaults(),
        };
        let history = layers.under(HistorySettings::default()).unwrap();
        let hub = layers.under(HubSettings::default()).unwrap().resolve(history).unwrap();
        assert_eq!(hub.merge.window, Duration::from_millis(10));
        let links = layers.under(LinkSettings::default()).unwrap().resolve(None).unwrap();
        assert_eq!(links.gateways, ["127.0.0.1:7788"]);
    }

    #[test]
    fn errors_name_the_key() {
        let unknown = file("merge_windw = \"1s\"").unwrap_err().to_string();
        assert!(unknown.starts_with("merge_windw:"), "{unknown}");
        let bad_duration = format!(
            "{:#}",
            file("merge_window = \"soon\"")
                .unwrap()
                .part::<HubSettings>()
                .unwrap_err()
        );
        assert!(bad_duration.contains("merge_window"), "{bad_duration}");
        let zero = serve(&["--merge-max-items", "0"]).unwrap_err();
        assert!(zero.to_string().starts_with("merge_max_items:"), "{zero}");
        for threads in [0, MAX_API_THREADS + 1] {
            let error = serve(&["--api-threads", &threads.to_string()]).unwrap_err();
            assert!(error.to_string().starts_with("api_threads:"), "{error}");
        }
        let workers = serve(&["--worker-threads", &(MAX_WORKER_THREADS + 1).to_string()]).unwrap_err();
        assert!(workers.to_string().starts_with("worker_threads:"), "{workers}");
        assert_eq!(serve(&["--worker-threads", "1"]).unwrap().websocket.worker_threads, 1);
        let no_heartbeat = serve(&["--heartbeat-timeout", "0"]).unwrap_err();
        assert!(
            no_heartbeat.to_string().starts_with("heartbeat_timeout:"),
            "{no_heartbeat}"
        );
    }

    #[test]
    fn a_flag_of_another_mode_is_refused() {
        let error = LogicArgs::try_parse_from(["logic", "--merge-window", "5s"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::UnknownArgument);
        let error = ServeArgs::try_parse_from(["serve", "--gateways", "127.0.0.1:7788"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::UnknownArgument);
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!("0".parse::<DurationValue>().unwrap().0, Duration::ZERO);
        assert_eq!("10ms".parse::<DurationValue>().unwrap().0, Duration::from_millis(10));
        assert_eq!("1m 30s".parse::<DurationValue>().unwrap().0, Duration::from_secs(90));
        assert!("ten".parse::<DurationValue>().is_err());
    }
}
