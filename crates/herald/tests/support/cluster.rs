//! A cluster for tests: gateways and logic nodes, either in this process (on port 0) or as real `herald`
//! processes whose addresses are read from their "serving" log line.

use std::net::SocketAddr;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use herald_protocol::stats::{ClusterStats, GatewayLink, NatsStats, Stats};

use super::{Client, FAILSAFE, PushApi};

/// A gateway running in this process.
pub struct TestGateway {
    pub ws: SocketAddr,
    /// The internal listener: gRPC for logic, `/healthz`, `/stats`, `/metrics`.
    pub rpc: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestGateway {
    /// Starts a gateway with `flags` on loopback port 0 (both listeners, unless `flags` name them).
    pub async fn start(flags: Vec<String>) -> Self {
        let config = super::gateway_config(&flags);
        let (ws, rpc) = herald::gateway::bind(&config).await.expect("bind");
        let (ws_addr, rpc_addr) = (ws.local_addr().unwrap(), rpc.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(herald::gateway::run(config, ws, rpc, shutdown.clone()));
        Self {
            ws: ws_addr,
            rpc: rpc_addr,
            shutdown,
            task,
        }
    }

    pub async fn member(&self, room: &str) -> Client {
        Client::member(self.ws, room).await
    }

    /// The plain-HTTP side of the internal listener.
    pub fn internal(&self) -> PushApi {
        PushApi(self.rpc)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(FAILSAFE, self.task)
            .await
            .expect("gateway stops")
            .unwrap()
            .unwrap();
    }
}

/// A logic node running in this process.
pub struct TestLogic {
    pub api: PushApi,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestLogic {
    /// Starts logic forwarding to `gateways` (unless `flags` name them), with a fast status poll.
    pub async fn start(gateways: &[SocketAddr], flags: Vec<String>) -> Self {
        let mut all = super::flags(&["--status-interval", "100ms"]);
        if !gateways.is_empty() {
            let list: Vec<String> = gateways.iter().map(ToString::to_string).collect();
            all.extend(["--gateways".to_owned(), list.join(",")]);
        }
        all.extend(flags);
        let config = super::logic_config(&all);
        let api = herald::logic::bind(&config).await.expect("bind");
        let api_addr = api.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(herald::logic::run(config, api, shutdown.clone()));
        Self {
            api: PushApi(api_addr),
            shutdown,
            task,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(FAILSAFE, self.task)
            .await
            .expect("logic stops")
            .unwrap()
            .unwrap();
    }
}

impl std::ops::Deref for TestLogic {
    type Target = PushApi;

    fn deref(&self) -> &PushApi {
        &self.api
    }
}

impl PushApi {
    /// This logic node's view of the gateway at `addr` in `/stats`.
    pub async fn gateway_stats(&self, addr: SocketAddr) -> GatewayLink {
        let stats = self.cluster_stats().await;
        stats
            .gateways
            .iter()
            .find(|g| g.addr == addr.to_string())
            .cloned()
            .unwrap_or_else(|| panic!("no gateway {addr} in {stats:?}"))
    }

    /// `GET /stats` of logic on gRPC.
    pub async fn cluster_stats(&self) -> ClusterStats {
        match self.stats().await {
            Stats::Cluster(cluster) => cluster,
            other => panic!("not logic's /stats on gRPC: {other:?}"),
        }
    }

    /// Waits until `/stats` satisfies `condition`; returns that snapshot.
    pub async fn wait_stats(&self, what: &str, condition: impl Fn(&Stats) -> bool) -> Stats {
        let deadline = tokio::time::Instant::now() + FAILSAFE;
        loop {
            let stats = self.stats().await;
            if condition(&stats) {
                return stats;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "waited for {what}; last /stats: {stats:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Waits until logic's `/stats` on gRPC satisfies `condition`; returns that snapshot.
    pub async fn wait_cluster(&self, what: &str, condition: impl Fn(&ClusterStats) -> bool) -> ClusterStats {
        let stats = self
            .wait_stats(what, |s| matches!(s, Stats::Cluster(c) if condition(c)))
            .await;
        let Stats::Cluster(cluster) = stats else { unreachable!() };
        cluster
    }

    /// Waits until `/stats` on NATS satisfies `condition`; returns that snapshot.
    pub async fn wait_nats(&self, what: &str, condition: impl Fn(&NatsStats) -> bool) -> NatsStats {
        let stats = self
            .wait_stats(what, |s| matches!(s, Stats::Nats(n) if condition(n)))
            .await;
        let Stats::Nats(nats) = stats else { unreachable!() };
        nats
    }

    /// Waits until every gateway's link is up.
    pub async fn wait_all_up(&self) {
        self.wait_cluster("every gateway up", |s| s.gateways_up == s.gateways_total)
            .await;
    }
}

/// A number no other call in this process has drawn.
fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A `herald` process (gateway or logic) with the addresses it logged.
pub struct HeraldProcess {
    pub child: Child,
    /// `key=value` pairs of its "serving" log line (`ws`, `rpc`, `api`).
    pub addrs: Vec<(String, SocketAddr)>,
}

impl HeraldProcess {
    /// Runs `herald <args>` and waits for its "serving" line; the rest of its log is copied to the test's stderr.
    pub async fn start(args: &[&str]) -> Self {
        Self::spawn(Command::new(env!("CARGO_BIN_EXE_herald")).args(args), args).await
    }

    /// As [`HeraldProcess::start`], with the process's soft limit of open files lowered to `limit`.
    pub async fn start_with_fd_limit(limit: u32, args: &[&str]) -> Self {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_herald"))
            .args(args);
        Self::spawn(&mut command, args).await
    }

    async fn spawn(command: &mut Command, args: &[&str]) -> Self {
        let mut child = command
            .env("HERALD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn herald");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let serving = tokio::time::timeout(FAILSAFE, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                eprintln!("[herald {}] {line}", args[0]);
                if line.contains(" serving ") {
                    return line;
                }
            }
            panic!("herald {args:?} exited before serving");
        })
        .await
        .expect("herald serves in time");
        let addrs = serving
            .split_whitespace()
            .filter_map(|word| word.split_once('='))
            .filter_map(|(key, value)| Some((key.to_owned(), value.parse().ok()?)))
            .collect();
        let name = args[0].to_owned();
        // Keep reading, or a full pipe would block the process.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[herald {name}] {line}");
            }
        });
        Self { child, addrs }
    }

    pub fn addr(&self, key: &str) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, addr)| *addr)
            .unwrap_or_else(|| panic!("no {key}= in the serving line: {:?}", self.addrs))
    }
}

/// A `nats-server` of the test's own, on a free loopback port, stopped when dropped.
pub struct NatsServer {
    pub port: u16,
    /// Its monitoring endpoint (`/subsz`), when started by [`NatsServer::start`].
    monitor: Option<SocketAddr>,
    /// JetStream's private store directory, removed when the server is dropped.
    store: Option<std::path::PathBuf>,
    child: Child,
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if let Some(store) = &self.store {
            let _ = std::fs::remove_dir_all(store);
        }
    }
}

impl NatsServer {
    /// The binary: `HERALD_NATS_SERVER`, else `nats-server` on the PATH, else Debian's /usr/sbin/nats-server
    /// (scripts/test installs the package when none is there).
    fn binary() -> String {
        if let Ok(path) = std::env::var("HERALD_NATS_SERVER") {
            return path;
        }
        let on_path = std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join("nats-server").is_file()))
            .unwrap_or(false);
        if on_path {
            "nats-server".to_owned()
        } else {
            "/usr/sbin/nats-server".to_owned()
        }
    }

    /// Starts on a port nats-server picks itself (`-p -1`) and reports in its ports file: a port picked here and
    /// handed over could be taken by a parallel test's server in between, and two tests would share one server.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Starts with JetStream (`-js`), its store in a directory of its own.
    pub async fn start_jetstream() -> Self {
        let store = std::env::temp_dir().join(format!("herald-nats-js-{}-{}", std::process::id(), next_id()));
        std::fs::create_dir_all(&store).unwrap();
        Self::start_with(Some(store)).await
    }

    async fn start_with(store: Option<std::path::PathBuf>) -> Self {
        let dir = std::env::temp_dir().join(format!("herald-nats-ports-{}-{}", std::process::id(), next_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut command = Command::new(Self::binary());
        if let Some(store) = &store {
            command.arg("-js").arg("-sd").arg(store);
        }
        let child = command
            .args(["-a", "127.0.0.1", "-p", "-1", "-m", "-1", "--ports_file_dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server (scripts/test installs it)");
        let ports_file = dir.join(format!("nats-server_{}.ports", child.id().expect("running")));
        let deadline = tokio::time::Instant::now() + FAILSAFE;
        let (port, monitor) = loop {
            let ports = std::fs::read_to_string(&ports_file).ok().and_then(|text| {
                let ports: serde_json::Value = serde_json::from_str(&text).ok()?;
                let port = ports["nats"][0].as_str()?.rsplit(':').next()?.parse::<u16>().ok()?;
                let monitor = ports["monitoring"][0].as_str()?.strip_prefix("http://")?.parse().ok()?;
                Some((port, monitor))
            });
            if let Some(ports) = ports {
                break ports;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server wrote no ports file"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        let _ = std::fs::remove_dir_all(&dir);
        Self {
            port,
            monitor: Some(monitor),
            store,
            child,
        }
    }

    /// The configuration of a JetStream stream, as the server's monitoring endpoint (`/jsz`) shows it.
    pub async fn stream_config(&self, name: &str) -> serde_json::Value {
        let monitor = self.monitor.expect("started with monitoring");
        let answer = super::http(monitor, "GET", "/jsz?streams=true&config=true", None, b"").await;
        let json = answer.json();
        json["account_details"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|account| account["stream_detail"].as_array().into_iter().flatten())
            .find(|stream| stream["name"] == name)
            .map(|stream| stream["config"].clone())
            .unwrap_or_else(|| panic!("no stream {name} in {json}"))
    }

    /// The subjects of the subscriptions the server itself holds (its `/subsz`) that start with `prefix`: what is
    /// on the wire, whatever herald's own counters say.
    pub async fn subjects(&self, prefix: &str) -> Vec<String> {
        let monitor = self.monitor.expect("started with monitoring");
        let answer = super::http(monitor, "GET", "/subsz?subs=1&limit=100000", None, b"").await;
        let mut subjects: Vec<String> = answer.json()["subscriptions_list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|sub| sub["subject"].as_str())
            .filter(|subject| subject.starts_with(prefix))
            .map(str::to_owned)
            .collect();
        subjects.sort();
        subjects
    }

    /// Waits until the server holds `count` subscriptions whose subject starts with `prefix`.
    pub async fn wait_subjects(&self, prefix: &str, count: usize) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + FAILSAFE;
        loop {
            let subjects = self.subjects(prefix).await;
            if subjects.len() == count {
                return subjects;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server holds {subjects:?} under {prefix}, expected {count}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Starts on `port` (again, after [`NatsServer::kill`]: the same address clients reconnect to).
    pub async fn start_on(port: u16) -> Self {
        let child = Command::new(Self::binary())
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server (scripts/test installs it)");
        let deadline = tokio::time::Instant::now() + FAILSAFE;
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server did not listen on {port}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Self {
            port,
            monitor: None,
            store: None,
            child,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Flags that put a herald on this server.
    pub fn bus(&self) -> Vec<String> {
        vec!["--bus".to_owned(), self.url()]
    }

    /// Kills the server (as a crash would) and waits until it is gone; returns its port.
    pub async fn kill(mut self) -> u16 {
        self.child.kill().await.unwrap();
        self.port
    }
}

impl PushApi {
    /// A sample of `GET /metrics`, or 0 when the sample does not exist (yet).
    pub async fn metric_or_zero(&self, sample: &str) -> f64 {
        let text = self.http("GET", "/metrics", None, b"").await.body;
        text.lines()
            .find_map(|line| line.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')))
            .map_or(0.0, |value| value.trim().parse().unwrap())
    }

    /// Waits until `sample` equals `value`.
    pub async fn wait_metric_eq(&self, sample: &str, value: f64) {
        let deadline = tokio::time::Instant::now() + FAILSAFE;
        loop {
            let now = self.metric_or_zero(sample).await;
            if now == value {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{sample} stayed at {now}, expected {value}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}
