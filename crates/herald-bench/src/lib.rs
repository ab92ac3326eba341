//! `herald bench`: herald's own load generator, speaking the client protocol over real TCP.
//!
//! # Layout
//! - this file: the two scenarios (`connections`, `fanout`), run by a coordinator that starts herald (or targets
//!   a running one), spreads the connections over worker processes, publishes, and reports.
//! - [`worker`]: a worker process holding its share of connections on one thread.
//! - [`scan`]: finds items and their send timestamps in the byte stream without parsing frames or JSON.
//! - `publisher`: pushes through the push API at a fixed rate over one keep-alive HTTP/1.1 connection.
//! - [`proc`]: CPU, RSS and kernel slab memory from /proc.
//!
//! It links only what it needs to speak to herald from outside: of herald's crates, only the protocol crate, for the
//! `/stats` documents it reads.

pub mod proc;
mod publisher;
pub mod scan;
pub mod worker;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use herald_protocol::stats::{HubStats, Stats};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::worker::{Event, Plan, Report};

/// Connections one worker process holds at most (the per-process descriptor limit here is 20,000).
const CONNS_PER_WORKER: usize = 15_000;

/// `herald bench` scenarios.
#[derive(Debug, clap::Subcommand)]
pub enum Scenario {
    /// Open N connections in one room, keep them alive, report connect rate and memory per connection.
    Connections(ConnectionsArgs),
    /// Push at a fixed rate to N connections, report throughput, latency, loss and CPU.
    Fanout(FanoutArgs),
    /// Connect/disconnect storms while pushes flow: errors, latency of the connections that stay, and memory
    /// before, during and after.
    Churn(ChurnArgs),
}

/// Where the load goes, and how herald is started when the bench starts it.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// WebSocket address of a running herald (`ws://127.0.0.1:7777/connect` or `127.0.0.1:7777`); without it
    /// the bench starts `herald serve` itself
    #[arg(long, value_parser = parse_address)]
    pub ws: Option<SocketAddr>,
    /// Push-API address of the running herald (`http://127.0.0.1:7799` or `127.0.0.1:7799`; with --ws)
    #[arg(long, requires = "ws", value_parser = parse_address)]
    pub api: Option<SocketAddr>,
    /// PID of the running herald, to read its CPU and memory (with --ws)
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
}

impl Target {
    /// The clients' PING interval in milliseconds, as a worker's [`Plan`] takes it.
    fn ping_every_ms(&self) -> u64 {
        (self.ping_secs * 1000.0).round() as u64
    }
}

/// `herald bench connections`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionsArgs {
    /// Connections to open
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Seconds to hold them once open
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub target: Target,
}

/// `herald bench fanout`.
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
    /// Bytes per item
    #[arg(long, default_value_t = 100)]
    pub item_bytes: usize,
    /// Seconds of publishing
    #[arg(long, default_value_t = 10.0)]
    pub secs: f64,
    /// Room every connection joins and every push goes to
    #[arg(long, default_value = "bench", conflicts_with = "all")]
    pub room: String,
    /// Push to everyone (/push/all) instead of a room
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub target: Target,
}

/// `herald bench churn`.
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
    #[command(flatten)]
    #[allow(missing_docs)]
    pub target: Target,
}

/// Runs a scenario and prints its result.
pub fn run(scenario: Scenario) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let json = match &scenario {
        Scenario::Connections(args) => args.target.json,
        Scenario::Fanout(args) => args.target.json,
        Scenario::Churn(args) => args.target.json,
    };
    let result = runtime.block_on(async {
        match scenario {
            Scenario::Connections(args) => connections(args).await,
            Scenario::Fanout(args) => fanout(args).await,
            Scenario::Churn(args) => churn(args).await,
        }
    })?;
    if json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        print_table(&result);
    }
    Ok(())
}

/// A herald under test: started by the bench (one `serve`, or gateways and a logic node), or given.
struct Server {
    /// WebSocket listeners: one, or one per gateway. Workers are spread over them.
    ws: Vec<SocketAddr>,
    /// Gateways logic must see before the run starts (a cluster or NATS), checked in its `/stats`.
    gateways: Option<usize>,
    api: Option<SocketAddr>,
    /// Every process of the server, whose CPU and memory are summed.
    pids: Vec<u32>,
    children: Vec<Child>,
}

impl Server {
    async fn start_or_attach(target: &Target) -> anyhow::Result<Self> {
        if let Some(ws) = target.ws {
            for addr in [Some(ws), target.api].into_iter().flatten() {
                if !target.allow_remote && !addr.ip().is_loopback() {
                    bail!("{addr} is outside loopback; pass --allow-remote to load a remote server");
                }
            }
            return Ok(Self {
                ws: vec![ws],
                api: target.api,
                pids: target.server_pid.into_iter().collect(),
                children: Vec::new(),
                gateways: None,
            });
        }
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
        };
        let api = free_port()?;
        match (target.cluster, target.nats) {
            (_, Some(gateways)) => {
                let url = server.start_nats().await?;
                let ws = free_port()?;
                for _ in 0..gateways {
                    let rpc = free_port()?;
                    server.spawn(
                        ["gateway", "--ws-addr", &ws.to_string(), "--rpc-addr", &rpc.to_string()],
                        ["--bus".to_owned(), url.clone(), "--reuse-port".to_owned()]
                            .iter()
                            .chain(&merge)
                            .chain(&target.server_args),
                    )?;
                    wait_healthy(rpc).await?;
                }
                server.spawn(
                    ["logic", "--api-addr", &api.to_string(), "--bus", &url],
                    std::iter::empty(),
                )?;
                server.ws.push(ws);
                server.gateways = Some(gateways.into());
            }
            (None, None) => {
                let ws = free_port()?;
                server.spawn(
                    ["serve", "--ws-addr", &ws.to_string(), "--api-addr", &api.to_string()],
                    merge.iter().chain(&target.server_args),
                )?;
                server.ws.push(ws);
            }
            (Some(gateways), None) => {
                server.gateways = Some(gateways.into());
                let mut rpcs = Vec::new();
                for _ in 0..gateways {
                    let (ws, rpc) = (free_port()?, free_port()?);
                    server.spawn(
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
                let rpcs: Vec<String> = rpcs.iter().map(ToString::to_string).collect();
                server.spawn(
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
    fn spawn<'a>(&mut self, args: [&str; 5], more: impl Iterator<Item = &'a String>) -> anyhow::Result<()> {
        let child = Command::new(std::env::current_exe()?)
            .args(args)
            .args(["--log", "warn"])
            .args(more)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting herald {}", args[0]))?;
        self.pids.extend(child.id());
        self.children.push(child);
        Ok(())
    }

    /// Starts a nats-server of the bench's own on a free loopback port; returns its URL.
    async fn start_nats(&mut self) -> anyhow::Result<String> {
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
        let child = Command::new(&binary)
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
    async fn ready(&self, api: SocketAddr) -> bool {
        if !matches!(publisher::get(api, "/healthz").await, Ok((200, _))) {
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
    fn cpu_secs(&self) -> Option<f64> {
        if self.pids.is_empty() {
            return None;
        }
        self.pids.iter().map(|&pid| proc::cpu_secs(pid)).sum()
    }

    /// CPU seconds the server's processes used since they had used `before` (from [`Server::cpu_secs`]), as a
    /// figure of the result: null when either reading is missing.
    fn cpu_since(&self, before: Option<f64>) -> serde_json::Value {
        match (before, self.cpu_secs()) {
            (Some(before), Some(now)) => serde_json::json!(now - before),
            _ => serde_json::Value::Null,
        }
    }

    /// Resident memory of all the server's processes; `None` when a process is unknown or gone.
    fn rss_bytes(&self) -> Option<u64> {
        if self.pids.is_empty() {
            return None;
        }
        self.pids.iter().map(|&pid| proc::rss_bytes(pid)).sum()
    }

    /// Stops the processes, logic before its gateways (in reverse order of start).
    async fn stop(mut self) {
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

/// Waits until `/healthz` at `addr` answers 200.
async fn wait_healthy(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !matches!(publisher::get(addr, "/healthz").await, Ok((200, _))) {
        if Instant::now() > deadline {
            bail!("herald did not become healthy on {addr}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Reads a PING interval in seconds: at least a millisecond, at most a day.
fn parse_interval(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if (0.001..=86_400.0).contains(&secs) => Ok(secs),
        _ => Err(format!("{text}: not a number of seconds between 0.001 and 86400")),
    }
}

/// Reads `host:port`, or a `ws://`, `http://` URL naming one (its path is ignored: herald's paths are fixed).
fn parse_address(text: &str) -> Result<SocketAddr, String> {
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

fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// What the workers report once their connections are open.
#[derive(Debug, Default)]
struct Connected {
    conns: usize,
    errors: usize,
    secs: f64,
    /// Resident memory of all workers together.
    rss_bytes: u64,
}

/// The worker processes of one run.
struct Workers {
    procs: Vec<(Child, ChildStdin, Lines<BufReader<ChildStdout>>)>,
}

impl Workers {
    async fn start(server: &Server, conns: usize, room: Option<&str>, target: &Target) -> anyhow::Result<Self> {
        // At least one worker per WebSocket listener, so a cluster's gateways all get connections.
        let count = target
            .workers
            .unwrap_or(conns.div_ceil(CONNS_PER_WORKER))
            .max(server.ws.len())
            .clamp(1, 250);
        let mut procs = Vec::new();
        for index in 0..count {
            let share = conns / count + usize::from(index < conns % count);
            let plan = Plan {
                target: server.ws[index % server.ws.len()],
                conns: share,
                room: room.map(str::to_owned),
                index: index as u8,
                ping_every_ms: target.ping_every_ms(),
                churn_per_sec: 0.0,
                churn_hold_ms: 0,
                churn_secs: 0.0,
            };
            procs.push(spawn_worker(&plan).await?);
        }
        Ok(Self { procs })
    }

    /// Adds a worker that holds no connection and churns on its `churn` command; waits until it is ready.
    async fn add_churner(&mut self, plan: &Plan) -> anyhow::Result<()> {
        let mut worker = spawn_worker(plan).await?;
        worker.2.next_line().await?.context("the churn worker exited")?;
        self.procs.push(worker);
        Ok(())
    }

    /// Sends `command` to the last worker added and waits for its answer.
    async fn command_last(&mut self, command: &str) -> anyhow::Result<()> {
        let (_, stdin, lines) = self.procs.last_mut().context("no worker")?;
        stdin.write_all(format!("{command}\n").as_bytes()).await?;
        lines.next_line().await?.context("a bench worker exited")?;
        Ok(())
    }

    async fn next_events(&mut self) -> anyhow::Result<Vec<Event>> {
        let mut events = Vec::new();
        for (_, _, lines) in &mut self.procs {
            let line = lines.next_line().await?.context("a bench worker exited")?;
            events.push(serde_json::from_str(&line).with_context(|| format!("bench worker said {line:?}"))?);
        }
        Ok(events)
    }

    async fn command(&mut self, command: &str) -> anyhow::Result<Vec<Event>> {
        for (_, stdin, _) in &mut self.procs {
            stdin.write_all(format!("{command}\n").as_bytes()).await?;
        }
        self.next_events().await
    }

    /// Waits until every worker has opened its connections: (connections, errors, seconds).
    async fn connected(&mut self, progress: &ProgressBar) -> anyhow::Result<Connected> {
        let mut total = Connected::default();
        for event in self.next_events().await? {
            if let Event::Connected {
                conns,
                errors,
                secs,
                rss_bytes,
            } = event
            {
                total.conns += conns;
                total.errors += errors;
                total.secs = total.secs.max(secs);
                total.rss_bytes += rss_bytes;
                progress.inc(conns as u64);
            }
        }
        Ok(total)
    }

    /// Waits until `expected` items have arrived, or nothing more arrives for 5 s.
    async fn drain(&mut self, expected: u64) -> anyhow::Result<()> {
        let mut received = self.items().await?;
        let mut last_change = Instant::now();
        while received < expected && last_change.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.items().await?;
            if now != received {
                received = now;
                last_change = Instant::now();
            }
        }
        Ok(())
    }

    async fn items(&mut self) -> anyhow::Result<u64> {
        Ok(self
            .command("status")
            .await?
            .iter()
            .map(|e| if let Event::Status { items } = e { *items } else { 0 })
            .sum())
    }

    async fn finish(mut self) -> anyhow::Result<Vec<Report>> {
        let events = self.command("stop").await?;
        for (child, _, _) in &mut self.procs {
            let _ = child.wait().await;
        }
        Ok(events
            .into_iter()
            .filter_map(|e| {
                if let Event::Done(report) = e {
                    Some(report)
                } else {
                    None
                }
            })
            .collect())
    }
}

/// Where `chrt` (util-linux) is, if anywhere.
const CHRT: &str = "/usr/bin/chrt";

/// Moves this process, every thread of it, to SCHED_BATCH, as the workers are from their start. Called once the
/// servers are running (they must not inherit it) and before publishing: the publisher stands in for a business
/// service on another machine, but here each answer it gets wakes it on the server's core, and a normal task
/// preempts the server there, about once per push. Best effort: without `chrt`, the bench runs as it is.
pub(crate) async fn run_as_batch() {
    if Path::new(CHRT).is_file() {
        let pid = std::process::id().to_string();
        let _ = Command::new(CHRT)
            .args(["--all-tasks", "--batch", "--pid", "0", &pid])
            .status()
            .await;
    }
}

async fn spawn_worker(plan: &Plan) -> anyhow::Result<(Child, ChildStdin, Lines<BufReader<ChildStdout>>)> {
    // Workers run as SCHED_BATCH when the system can: a batch task does not preempt the running task when a frame
    // wakes it. The workers stand in for clients on other machines, which never take the server's CPU; without
    // this, every frame the server writes can hand its core to the woken worker mid fan-out, and the figures
    // measure the two processes' scheduling as much as the server. Workers still get their fair share of CPU.
    let exe = std::env::current_exe()?;
    let mut command = if Path::new(CHRT).is_file() {
        let mut command = Command::new(CHRT);
        command.args(["--batch", "0"]).arg(exe);
        command
    } else {
        Command::new(exe)
    };
    let mut child = command
        .arg("bench-worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting a bench worker")?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(format!("{}\n", serde_json::to_string(plan)?).as_bytes())
        .await?;
    let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    Ok((child, stdin, lines))
}

fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} {elapsed}").expect("template"));
    bar.set_message(what.to_owned());
    bar
}

/// The result of a scenario: one flat record, printed as a table or one JSON line.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Scenario name.
    pub scenario: &'static str,
    /// Figures, in order.
    pub figures: Vec<(&'static str, serde_json::Value)>,
}

impl Serialize for Outcome {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.figures.len() + 1))?;
        map.serialize_entry("scenario", self.scenario)?;
        for (name, value) in &self.figures {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

impl Outcome {
    fn put(&mut self, name: &'static str, value: impl Into<serde_json::Value>) {
        self.figures.push((name, value.into()));
    }
}

fn print_table(outcome: &Outcome) {
    println!("herald bench {}", outcome.scenario);
    for (name, value) in &outcome.figures {
        let value = match value {
            serde_json::Value::Number(n) if n.is_f64() => format!("{:.3}", n.as_f64().unwrap_or_default()),
            other => other.to_string(),
        };
        println!("  {name:<28} {value}");
    }
}

async fn connections(args: ConnectionsArgs) -> anyhow::Result<Outcome> {
    let server = Server::start_or_attach(&args.target).await?;
    let (rss_before, slab_before) = (server.rss_bytes(), proc::slab_bytes());
    let mut workers = Workers::start(&server, args.conns, Some("bench"), &args.target).await?;
    let bar = progress(args.conns as u64, "connecting");
    let Connected {
        conns,
        errors,
        secs,
        rss_bytes: loadgen_rss,
    } = workers.connected(&bar).await?;
    bar.finish_and_clear();
    // Let the server settle (connection tasks parked, allocator quiet) before reading memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_after, slab_after) = (server.rss_bytes(), proc::slab_bytes());
    let cpu_before_hold = server.cpu_secs();
    tokio::time::sleep(Duration::from_secs_f64(args.secs)).await;
    // The hold alone: what the open connections cost the server (their heartbeats), without the connects.
    let held_cpu = server.cpu_since(cpu_before_hold);
    let reports = workers.finish().await?;
    let loadgen_cpu: f64 = reports.iter().map(|r| r.cpu_secs).sum();
    let server_cpu = server.cpu_secs();
    server.stop().await;

    let per_conn = |before: Option<u64>, after: Option<u64>| match (before, after) {
        (Some(b), Some(a)) if conns > 0 => serde_json::json!((a.saturating_sub(b)) / conns as u64),
        _ => serde_json::Value::Null,
    };
    let mut out = Outcome {
        scenario: "connections",
        ..Outcome::default()
    };
    out.put("connections", conns);
    out.put("connect_errors", errors);
    put_closed_early(&mut out, &reports);
    put_heartbeats(&mut out, &reports);
    out.put("connect_secs", secs);
    out.put("connects_per_sec", conns as f64 / secs.max(1e-9));
    out.put(
        "server_rss_bytes",
        rss_after.map_or(serde_json::Value::Null, Into::into),
    );
    out.put("server_rss_per_conn_bytes", per_conn(rss_before, rss_after));
    out.put("kernel_slab_per_conn_bytes", per_conn(slab_before, slab_after));
    out.put(
        "server_cpu_secs",
        server_cpu.map_or(serde_json::Value::Null, Into::into),
    );
    out.put("server_cpu_held_secs", held_cpu);
    out.put("loadgen_cpu_secs", loadgen_cpu);
    out.put("loadgen_rss_per_conn_bytes", loadgen_rss / conns.max(1) as u64);
    Ok(out)
}

async fn fanout(args: FanoutArgs) -> anyhow::Result<Outcome> {
    let server = Server::start_or_attach(&args.target).await?;
    let api = server.api.context("fanout needs the push API: pass --api with --ws")?;
    let room = (!args.all).then_some(args.room.as_str());
    let mut workers = Workers::start(&server, args.conns, room, &args.target).await?;
    let bar = progress(args.conns as u64, "connecting");
    let Connected { conns, errors, .. } = workers.connected(&bar).await?;
    bar.finish_and_clear();
    // Joins are not acknowledged (go-push style): make sure the server has them all before publishing.
    wait_for_members(api, room, conns).await?;

    let cpu_before = server.cpu_secs();
    let plan = publisher::Plan {
        api,
        room: room.map(str::to_owned),
        rate: args.rate,
        items: args.items,
        item_bytes: args.item_bytes,
        duration: Duration::from_secs_f64(args.secs),
        members: conns as u64,
        fixed_members: false,
    };
    let bar = progress((args.rate * args.secs).round() as u64, "publishing");
    let published = publisher::run(&plan, &bar).await?;
    bar.finish_and_clear();

    workers.drain(published.expected_items).await?;
    let server_cpu = server.cpu_since(cpu_before);
    let reports = workers.finish().await?;
    server.stop().await;

    let mut out = Outcome {
        scenario: "fanout",
        ..Outcome::default()
    };
    out.put("connections", conns);
    out.put("connect_errors", errors);
    put_delivery(&mut out, &reports, &published);
    out.put("server_cpu_secs", server_cpu);
    out.put("loadgen_cpu_secs", reports.iter().map(|r| r.cpu_secs).sum::<f64>());
    Ok(out)
}

/// Puts the connections the server closed before the end, and how they ended (a close code: 4000 slow consumer,
/// 4001 heartbeat timeout, ...; or no close frame, reset): `{}` when none was.
fn put_closed_early(out: &mut Outcome, reports: &[Report]) {
    let mut by = std::collections::BTreeMap::<&str, u64>::new();
    for (how, count) in reports.iter().flat_map(|r| &r.closed_early_by) {
        *by.entry(how).or_default() += count;
    }
    out.put("closed_early", reports.iter().map(|r| r.closed_early).sum::<u64>());
    out.put("closed_early_by", serde_json::json!(by));
}

/// Puts the clients' heartbeats: PINGs sent and PONGs received. Answering them is part of the server's CPU (the
/// raw floor leaves them unanswered); a PONG missing beyond the PINGs still in flight at the end is a server bug.
fn put_heartbeats(out: &mut Outcome, reports: &[Report]) {
    out.put("pings_sent", reports.iter().map(|r| r.pings_sent).sum::<u64>());
    out.put("pongs_received", reports.iter().map(|r| r.pongs_received).sum::<u64>());
}

/// Puts what the receivers saw of `published`: pushes, items expected, received, lost, gaps, duplicates,
/// throughput and latency percentiles.
fn put_delivery(out: &mut Outcome, reports: &[Report], published: &publisher::Published) {
    let (mut latency, mut read_latency) = (worker::latency_histogram(), worker::latency_histogram());
    for report in reports {
        for (histogram, recorded) in [
            (&mut latency, &report.latency_us),
            (&mut read_latency, &report.read_latency_us),
        ] {
            for &(value, count) in recorded {
                histogram.record_n(value, count).expect("recorded values fit");
            }
        }
    }
    let sum = |f: fn(&Report) -> u64| reports.iter().map(f).sum::<u64>();
    let (items, frames) = (sum(|r| r.items), sum(|r| r.frames));
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    let secs = published.elapsed.as_secs_f64();
    out.put("pushes_sent", published.sent);
    out.put("pushes_refused", published.refused);
    out.put("publish_secs", secs);
    out.put("items_expected", published.expected_items);
    out.put("items_received", items);
    out.put("items_lost", published.expected_items.saturating_sub(items));
    out.put("sequence_gaps", sum(|r| r.gaps));
    out.put("duplicates", sum(|r| r.duplicates));
    put_closed_early(out, reports);
    put_heartbeats(out, reports);
    out.put("items_per_sec", items as f64 / secs);
    out.put("frames_per_sec", frames as f64 / secs);
    out.put("items_per_frame", items as f64 / (frames.max(1)) as f64);
    out.put("latency_p50_ms", ms(0.5));
    out.put("latency_p99_ms", ms(0.99));
    out.put("latency_p999_ms", ms(0.999));
    out.put("latency_max_ms", latency.max() as f64 / 1000.0);
    // The same items timed when the load generator read them: its own queue included (see worker.rs).
    out.put(
        "read_latency_p50_ms",
        read_latency.value_at_quantile(0.5) as f64 / 1000.0,
    );
    out.put(
        "read_latency_p99_ms",
        read_latency.value_at_quantile(0.99) as f64 / 1000.0,
    );
    // Reads the kernel gave no receive timestamp for: their latency is the read's (0 on Linux).
    out.put("latency_untimed_reads", sum(|r| r.untimed_reads));
}

async fn churn(args: ChurnArgs) -> anyhow::Result<Outcome> {
    let server = Server::start_or_attach(&args.target).await?;
    let api = server.api.context("churn needs the push API: pass --api with --ws")?;
    let room = Some(args.room.as_str());
    let mut workers = Workers::start(&server, args.conns, room, &args.target).await?;
    let bar = progress(args.conns as u64, "connecting");
    let Connected { conns, errors, .. } = workers.connected(&bar).await?;
    bar.finish_and_clear();
    wait_for_members(api, room, conns).await?;
    workers
        .add_churner(&Plan {
            target: server.ws[0],
            conns: 0,
            room: Some(args.room.clone()),
            index: 0,
            ping_every_ms: args.target.ping_every_ms(),
            churn_per_sec: args.churn,
            churn_hold_ms: args.hold_ms,
            churn_secs: args.secs,
        })
        .await?;
    // Settled, before the storm.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = server.rss_bytes();
    let cpu_before = server.cpu_secs();

    // Memory during the storm: sampled every 250 ms, the peak kept.
    let pids = server.pids.clone();
    let sampling = CancellationFlag::default();
    let sampler = tokio::spawn({
        let sampling = sampling.clone();
        async move {
            let mut peak = 0u64;
            while !sampling.is_set() {
                let rss: Option<u64> = pids.iter().map(|&pid| proc::rss_bytes(pid)).sum();
                peak = peak.max(rss.unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            peak
        }
    });
    workers.command_last("churn").await?;
    let plan = publisher::Plan {
        api,
        room: Some(args.room.clone()),
        rate: args.rate,
        items: 1,
        item_bytes: 100,
        duration: Duration::from_secs_f64(args.secs),
        members: conns as u64,
        fixed_members: true,
    };
    let bar = progress((args.rate * args.secs).round() as u64, "publishing");
    let published = publisher::run(&plan, &bar).await?;
    bar.finish_and_clear();
    workers.drain(published.expected_items).await?;
    sampling.set();
    let rss_peak = sampler.await?;
    // After the storm: churning connections closed and their memory given back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = server.rss_bytes();
    let server_cpu = server.cpu_since(cpu_before);
    let reports = workers.finish().await?;
    server.stop().await;

    let cycles: u64 = reports.iter().map(|r| r.churn_cycles).sum();
    let mut out = Outcome {
        scenario: "churn",
        ..Outcome::default()
    };
    out.put("connections", conns);
    out.put("connect_errors", errors);
    out.put("churn_asked_per_sec", args.churn);
    out.put("churn_cycles", cycles);
    out.put("churn_per_sec", cycles as f64 / published.elapsed.as_secs_f64());
    out.put("churn_errors", reports.iter().map(|r| r.churn_errors).sum::<u64>());
    put_delivery(&mut out, &reports, &published);
    let bytes = |value: Option<u64>| value.map_or(serde_json::Value::Null, Into::into);
    out.put("server_rss_before_bytes", bytes(rss_before));
    out.put("server_rss_peak_bytes", rss_peak);
    out.put("server_rss_after_bytes", bytes(rss_after));
    out.put(
        "server_rss_after_vs_before_pct",
        match (rss_before, rss_after) {
            (Some(b), Some(a)) if b > 0 => serde_json::json!((a as f64 - b as f64) * 100.0 / b as f64),
            _ => serde_json::Value::Null,
        },
    );
    out.put("server_cpu_secs", server_cpu);
    out.put("loadgen_cpu_secs", reports.iter().map(|r| r.cpu_secs).sum::<f64>());
    Ok(out)
}

/// A flag one task sets and another polls.
#[derive(Clone, Default)]
struct CancellationFlag(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl CancellationFlag {
    fn set(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }

    fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// The server's `GET /stats`.
async fn stats(api: SocketAddr) -> anyhow::Result<Stats> {
    let (status, body) = publisher::get(api, "/stats").await?;
    if status != 200 {
        bail!("/stats answered {status}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("/stats said {body}"))
}

/// Polls `/stats` until the room (or the server, for broadcasts) has `members` connections: herald serve's own
/// figure, or the sum of a logic node's gateways' reports.
async fn wait_for_members(api: SocketAddr, room: Option<&str>, members: usize) -> anyhow::Result<()> {
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
