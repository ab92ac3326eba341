//! The herald under test: started by the bench by path (one `serve`, gateways and a logic node, or a NATS cluster)
//! or given, its readiness, the heartbeat timeout it says, its `/stats`, and its CPU and memory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use herald_protocol::stats::{HubStats, Stats};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::cli::Target;
use crate::{client, http, proc};

/// A herald under test: started by the bench (one `serve`, or gateways and a logic node), or given.
pub(crate) struct Server {
    /// WebSocket listeners: one, or one per gateway. Workers are spread over them.
    pub(crate) ws: Vec<SocketAddr>,
    /// Gateways logic must see before the run starts (a cluster or NATS), checked in its `/stats`.
    pub(crate) gateways: Option<usize>,
    pub(crate) api: Option<SocketAddr>,
    /// Every process of the server, whose CPU and memory are summed.
    pub(crate) pids: Vec<u32>,
    pub(crate) children: Vec<Child>,
    /// The HMAC secret the herald processes it starts verify tokens with (given by env, never as a flag).
    auth_secret: Option<String>,
    /// The JetStream store of the nats-server it starts with history on, removed when it stops.
    jetstream_dir: Option<PathBuf>,
}

impl Server {
    pub(crate) async fn start_or_attach(target: &Target) -> anyhow::Result<Self> {
        if let Some(ws) = target.ws {
            for addr in [Some(ws), target.api].into_iter().flatten() {
                if !target.allow_remote && !addr.ip().is_loopback() {
                    bail!("{addr} is outside loopback; pass --allow-remote to load a remote server");
                }
            }
            // A server of several processes (raw_fanout --processes) is measured whole: the pid and every process
            // below it.
            let pids = target
                .server_pid
                .map(|pid| [vec![pid], proc::descendants(pid)].concat())
                .unwrap_or_default();
            return Ok(Self {
                ws: vec![ws],
                api: target.api,
                pids,
                children: Vec::new(),
                gateways: None,
                auth_secret: None,
                jetstream_dir: None,
            });
        }
        let herald = target.herald_binary()?;
        let merge = [
            "--merge-window".to_owned(),
            target.merge_window.clone(),
            "--merge-max-items".to_owned(),
            target.merge_max_items.to_string(),
        ];
        let mut server = Self {
            ws: Vec::new(),
            api: None,
            pids: Vec::new(),
            children: Vec::new(),
            gateways: None,
            auth_secret: target.token_secret.clone(),
            jetstream_dir: None,
        };
        let api = free_port()?;
        match (target.cluster, target.nats) {
            (_, Some(gateways)) => {
                // With history on, JetStream keeps it: nats-server runs with -js, logic gets the same settings.
                let history = history_flags(&target.server_args);
                let url = server.start_nats(!history.is_empty()).await?;
                let ws = free_port()?;
                let mut rpcs = Vec::new();
                for _ in 0..gateways {
                    let rpc = free_port()?;
                    server.spawn(
                        &herald,
                        ["gateway", "--ws-addr", &ws.to_string(), "--rpc-addr", &rpc.to_string()],
                        ["--bus".to_owned(), url.clone(), "--reuse-port".to_owned()]
                            .iter()
                            .chain(&merge)
                            .chain(&target.server_args),
                    )?;
                    wait_healthy(rpc).await?;
                    rpcs.push(rpc);
                }
                server.ws.push(ws);
                // Before logic starts: it never hears of the connection that asks.
                server.refuse_pings_past_the_heartbeat(target, &rpcs).await?;
                server.spawn(
                    &herald,
                    ["logic", "--api-addr", &api.to_string(), "--bus", &url],
                    history.iter(),
                )?;
                server.gateways = Some(gateways.into());
            }
            (None, None) => {
                let ws = free_port()?;
                server.spawn(
                    &herald,
                    ["serve", "--ws-addr", &ws.to_string(), "--api-addr", &api.to_string()],
                    merge.iter().chain(&target.server_args),
                )?;
                server.ws.push(ws);
                wait_healthy(api).await?;
                server.refuse_pings_past_the_heartbeat(target, &[api]).await?;
            }
            (Some(gateways), None) => {
                server.gateways = Some(gateways.into());
                let mut rpcs = Vec::new();
                for _ in 0..gateways {
                    let (ws, rpc) = (free_port()?, free_port()?);
                    server.spawn(
                        &herald,
                        ["gateway", "--ws-addr", &ws.to_string(), "--rpc-addr", &rpc.to_string()],
                        merge.iter().chain(&target.server_args),
                    )?;
                    server.ws.push(ws);
                    rpcs.push(rpc);
                }
                // Logic's first connect should find every gateway listening.
                for &rpc in &rpcs {
                    wait_healthy(rpc).await?;
                }
                server.refuse_pings_past_the_heartbeat(target, &rpcs).await?;
                let rpcs: Vec<String> = rpcs.iter().map(ToString::to_string).collect();
                server.spawn(
                    &herald,
                    ["logic", "--api-addr", &api.to_string(), "--gateways", &rpcs.join(",")],
                    ["--status-interval".to_owned(), "200ms".to_owned()].iter(),
                )?;
            }
        }
        server.api = Some(api);
        let deadline = Instant::now() + Duration::from_secs(15);
        while !server.ready(api).await {
            if Instant::now() > deadline {
                bail!("herald did not become ready on {api}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(server)
    }

    /// Starts one herald process: `herald <args> --log warn <more>`.
    fn spawn<'a>(
        &mut self,
        herald: &Path,
        args: [&str; 5],
        more: impl Iterator<Item = &'a String>,
    ) -> anyhow::Result<()> {
        let mut command = Command::new(herald);
        if let Some(secret) = &self.auth_secret {
            command.env("HERALD_AUTH_HMAC_SECRETS", secret);
        }
        let child = command
            .args(args)
            .args(["--log", "warn"])
            .args(more)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} {}", herald.display(), args[0]))?;
        self.pids.extend(child.id());
        self.children.push(child);
        Ok(())
    }

    /// Refuses a PING interval that is not below the heartbeat timeout of the herald it started: that herald would
    /// close every connection that waits so long between PINGs (4001), and the run would report thousands of closes
    /// instead of what it measures. herald says its timeout in its answer to a handshake, whatever set it (flags,
    /// `HERALD_*` env, a file, the default): one connection to each WebSocket listener asks. It is gone again before
    /// this returns, from the count of every hub (`hubs`: the listeners serving a hub's own `/stats`), so that no
    /// figure of the run includes it. A herald given with `--ws` is the caller's own: not checked.
    async fn refuse_pings_past_the_heartbeat(&self, target: &Target, hubs: &[SocketAddr]) -> anyhow::Result<()> {
        let mut said = Vec::new();
        for &ws in &self.ws {
            said.push(heartbeat_timeout(ws, target.token_secret.as_deref()).await?);
        }
        wait_for_no_connection(hubs).await?;
        // The strictest listener's; none when one does not say it.
        let timeout = if said.contains(&None) {
            None
        } else {
            said.into_iter().flatten().min()
        };
        let Some(timeout) = timeout else {
            eprintln!(
                "herald-bench: the herald it started does not say its heartbeat_timeout (older than herald-bench?); \
                 --ping-secs {} is not checked against it",
                target.ping_secs
            );
            return Ok(());
        };
        let ping = Duration::from_secs_f64(target.ping_secs);
        if ping >= timeout {
            bail!(
                "--ping-secs {}: the herald this bench starts closes a connection silent for its heartbeat_timeout ({} s), so clients must PING more often than that; lower --ping-secs or raise the timeout (--server-arg=--heartbeat-timeout --server-arg={}s)",
                target.ping_secs,
                timeout.as_secs_f64(),
                (target.ping_secs * 2.0).ceil()
            );
        }
        Ok(())
    }

    /// Starts a nats-server of the bench's own on a free loopback port (with JetStream, its store in a directory of
    /// its own, when `jetstream`); returns its URL.
    pub(crate) async fn start_nats(&mut self, jetstream: bool) -> anyhow::Result<String> {
        let addr = free_port()?;
        let binary = std::env::var("HERALD_NATS_SERVER").unwrap_or_else(|_| {
            let on_path = std::env::var_os("PATH")
                .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join("nats-server").is_file()));
            if on_path {
                "nats-server"
            } else {
                "/usr/sbin/nats-server"
            }
            .to_owned()
        });
        let mut command = Command::new(&binary);
        if jetstream {
            let dir = std::env::temp_dir().join(format!("herald-bench-js-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            command.arg("-js").arg("-sd").arg(&dir);
            self.jetstream_dir = Some(dir);
        }
        let child = command
            .args(["-a", "127.0.0.1", "-p", &addr.port().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {binary} (install Debian's nats-server)"))?;
        self.pids.extend(child.id());
        self.children.push(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if Instant::now() > deadline {
                bail!("nats-server did not listen on {addr}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(format!("nats://{addr}"))
    }

    /// Healthy, and every gateway known to logic (linked over gRPC, or announced on NATS).
    pub(crate) async fn ready(&self, api: SocketAddr) -> bool {
        if !matches!(http::get(api, "/healthz").await, Ok((200, _))) {
            return false;
        }
        let Some(gateways) = self.gateways else {
            return true;
        };
        let known = match stats(api).await {
            Ok(Stats::Cluster(cluster)) => cluster.gateways_up,
            Ok(Stats::Nats(nats)) => nats.gateways_live,
            Ok(Stats::Hub(_)) | Err(_) => return false,
        };
        known == gateways as u64
    }

    /// CPU seconds of all the server's processes; `None` when a process is unknown or gone.
    pub(crate) fn cpu_secs(&self) -> Option<f64> {
        if self.pids.is_empty() {
            return None;
        }
        self.pids.iter().map(|&pid| proc::cpu_secs(pid)).sum()
    }

    /// CPU seconds the server's processes used since they had used `before` (from [`Server::cpu_secs`]), as a
    /// figure of the result: null when either reading is missing.
    pub(crate) fn cpu_since(&self, before: Option<f64>) -> serde_json::Value {
        match (before, self.cpu_secs()) {
            (Some(before), Some(now)) => serde_json::json!(now - before),
            _ => serde_json::Value::Null,
        }
    }

    /// Resident memory of all the server's processes; `None` when a process is unknown or gone.
    pub(crate) fn rss_bytes(&self) -> Option<u64> {
        if self.pids.is_empty() {
            return None;
        }
        self.pids.iter().map(|&pid| proc::rss_bytes(pid)).sum()
    }

    /// Proportional resident memory of all the server's processes (pages they share counted once between them);
    /// `None` when a process is unknown or gone.
    pub(crate) fn pss_bytes(&self) -> Option<u64> {
        if self.pids.is_empty() {
            return None;
        }
        self.pids.iter().map(|&pid| proc::pss_bytes(pid)).sum()
    }

    /// Samples the server's resident memory every 250 ms until the sampler is stopped, keeping the peak.
    pub(crate) fn sample_peak_rss(&self) -> PeakRss {
        let pids = self.pids.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = Arc::clone(&stop);
            async move {
                let mut peak = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let rss: Option<u64> = pids.iter().map(|&pid| proc::rss_bytes(pid)).sum();
                    peak = peak.max(rss.unwrap_or(0));
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                peak
            }
        });
        PeakRss { stop, task }
    }

    /// Stops the processes, logic before its gateways (in reverse order of start).
    pub(crate) async fn stop(mut self) {
        for (child, pid) in self.children.iter_mut().zip(&self.pids).rev() {
            let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
            if tokio::time::timeout(Duration::from_secs(15), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}

impl Drop for Server {
    /// The processes of a server dropped without [`Server::stop`] (the bench gave up: herald did not become ready,
    /// or the PING interval was refused) are killed, and the JetStream store goes with the server, stopped or not.
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.start_kill();
        }
        if let Some(dir) = self.jetstream_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The heartbeat timeout the herald listening on `ws` says in its answer to a handshake (with a token signed with
/// `token_secret`, for a herald that verifies them); `None` from a herald that does not say it.
async fn heartbeat_timeout(ws: SocketAddr, token_secret: Option<&str>) -> anyhow::Result<Option<Duration>> {
    let query = token_secret.map_or_else(String::new, |secret| client::token_query(secret, "herald-bench"));
    let ask = async {
        let mut stream = TcpStream::connect(ws).await?;
        client::upgrade(&mut stream, ws, &query, false).await
    };
    match tokio::time::timeout(Duration::from_secs(15), ask).await {
        Ok(answer) => {
            let head = answer.with_context(|| format!("a handshake with the herald it started, on {ws}"))?;
            Ok(client::heartbeat_timeout(&head))
        }
        Err(_) => bail!("the herald it started did not answer a handshake on {ws} within 15 s"),
    }
}

/// Waits until no hub behind `hubs` (listeners serving a hub's own `/stats`) counts a connection.
async fn wait_for_no_connection(hubs: &[SocketAddr]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    for &hub in hubs {
        // `herald serve --bus` answers its NATS document, which counts no connection of its own.
        while let Stats::Hub(HubStats {
            connections: connections @ 1..,
            ..
        }) = stats(hub).await?
        {
            if Instant::now() > deadline {
                bail!("the hub behind {hub} still counts {connections} connections of the bench's");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// The history settings among the flags given to the herald the bench starts (`--history-size 100` or
/// `--history-size=100`, ...), when history is on: logic needs them too on NATS.
fn history_flags(args: &[String]) -> Vec<String> {
    let mut flags = Vec::new();
    let mut on = false;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let Some(name) = ["--history-size", "--history-ttl", "--history-max-bytes"]
            .into_iter()
            .find(|name| arg == name || arg.starts_with(&format!("{name}=")))
        else {
            continue;
        };
        let value = match arg.split_once('=') {
            Some((_, value)) => value.to_owned(),
            None => args.next().cloned().unwrap_or_default(),
        };
        if name == "--history-size" {
            on = value.trim() != "0";
        }
        flags.extend([name.to_owned(), value]);
    }
    if on { flags } else { Vec::new() }
}

/// The peak of the server's memory while it is sampled ([`Server::sample_peak_rss`]).
pub(crate) struct PeakRss {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl PeakRss {
    /// Stops sampling; the highest resident memory seen, in bytes.
    pub(crate) async fn stop(self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Release);
        Ok(self.task.await?)
    }
}

/// Waits until `/healthz` at `addr` answers 200.
pub(crate) async fn wait_healthy(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !matches!(http::get(addr, "/healthz").await, Ok((200, _))) {
        if Instant::now() > deadline {
            bail!("herald did not become healthy on {addr}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

pub(crate) fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// The server's `GET /stats`.
pub(crate) async fn stats(api: SocketAddr) -> anyhow::Result<Stats> {
    let (status, body) = http::get(api, "/stats").await?;
    if status != 200 {
        bail!("/stats answered {status}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("/stats said {body}"))
}

/// Polls `/stats` until the room (or the server, for broadcasts) has `members` connections: herald serve's own
/// figure, or the sum of a logic node's gateways' reports.
pub(crate) async fn wait_for_members(api: SocketAddr, room: Option<&str>, members: usize) -> anyhow::Result<()> {
    let what = if room.is_some() { "memberships" } else { "connections" };
    let counted = |hub: &HubStats| {
        if room.is_some() {
            hub.memberships
        } else {
            hub.connections
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let have = match stats(api).await? {
            // On NATS: each connection joined one room, and a gateway's members count only once it has confirmed
            // its subscription (before that, pushes would not reach them).
            Stats::Nats(nats) => nats
                .gateways
                .iter()
                .filter(|g| room.is_none() || g.announced.subscriptions > 0)
                .map(|g| g.announced.connections)
                .sum(),
            Stats::Cluster(cluster) => cluster
                .gateways
                .iter()
                .filter_map(|g| g.status.as_ref())
                .map(|status| counted(&status.hub))
                .sum(),
            Stats::Hub(hub) => counted(&hub),
        };
        if have >= members as u64 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {have} of {members} {what} after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
