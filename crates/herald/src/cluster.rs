//! `herald gateway` and `herald logic`: the two tiers of a cluster, run apart and joined by gRPC over HTTP/2.
//!
//! A gateway is `herald serve` without the push API: the WebSocket listener, the hub, and an internal listener
//! (`rpc_addr`, loopback by default) where logic nodes stream pushes and operators read `/healthz`, `/stats` and
//! `/metrics`. A logic node is the push API with the cluster bus: it forwards each push to every gateway in
//! `gateways` and answers with what they said.
//!
//! Shutdown of a gateway runs as in `serve` (pushes arriving meanwhile are answered "shutting down"), then ends
//! logic's streams and stops the internal listener. Shutdown of logic refuses new pushes, waits for the pushes in
//! progress to be answered, then closes its links.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use herald_cluster::gateway::{RpcService, serve_internal};
use herald_cluster::logic::ClusterBus;
use herald_cluster::nats::{Announce, NatsBus, NatsConfig, NatsMetrics, spawn_gateway_feed};
use herald_gateway::session::Session;
use herald_hub::Hub;
use herald_logic::ApiMetrics;
use herald_protocol::bus::Bus;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::serve::{GatewayNode, HttpServer, bind_one, bind_ws, on_own_loop};

/// Longest wait for the internal listener to close once the gateway has drained.
const INTERNAL_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds a gateway's WebSocket and internal listeners; the error names the address that failed.
pub async fn bind_gateway(config: &Config) -> anyhow::Result<(TcpListener, TcpListener)> {
    let ws = bind_ws(config)?;
    let rpc = bind_one(config.rpc_addr, "rpc_addr").await?;
    Ok((ws, rpc))
}

/// Runs a gateway on already-bound listeners until `shutdown` is cancelled, then drains and returns.
pub async fn run_gateway(
    config: Config,
    ws: TcpListener,
    rpc: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (ws_addr, rpc_addr) = (ws.local_addr()?, rpc.local_addr()?);
    let mut registry = Registry::default();
    let node = GatewayNode::start(&config, ws, &mut registry);
    let nats = match &config.nats {
        Some(nats) => {
            let nats = NatsNode::connect(nats, "herald-gateway", &mut registry).await?;
            nats.feed_gateway(&node.hub, ws_addr, rpc_addr)?;
            Some(nats)
        }
        None => None,
    };
    let ops_metrics = ApiMetrics::register(&mut registry);
    let ops = herald_logic::ops_router(
        node.hub.clone(),
        Arc::new(registry),
        ops_metrics,
        node.stop_accepting.clone(),
    );
    let end_streams = CancellationToken::new();
    let stop_internal = CancellationToken::new();
    // On a thread of its own, as the push API of `serve`: a push from logic then wakes this loop and the hub's
    // worker, not a worker of the shared runtime to run the HTTP/2 connection and another for the stream's handler.
    let service = RpcService::new(node.hub.clone(), end_streams.clone());
    let (secret, tls, stopped) = (
        config.cluster.secret.clone(),
        config.rpc_tls.clone(),
        stop_internal.clone(),
    );
    let rpc = rpc.into_std()?;
    let mut internal = on_own_loop("herald-rpc".to_owned(), move || async move {
        let rpc = TcpListener::from_std(rpc)?;
        Ok(serve_internal(rpc, service, ops, secret, tls, stopped.cancelled_owned()).await)
    })
    .context("starting the internal listener's thread")?;

    tracing::info!(
        ws = %ws_addr,
        rpc = %rpc_addr,
        tls = config.rpc_tls.is_some(),
        secret = config.cluster.secret.is_some(),
        bus = config.nats.as_ref().map_or("grpc", |n| n.url.as_str()),
        "herald gateway serving"
    );
    let failed = tokio::select! {
        () = shutdown.cancelled() => None,
        ended = &mut internal => Some(ended),
    };
    tracing::info!(grace = ?config.shutdown_grace, "shutting down");
    node.drain(config.shutdown_grace).await;
    if let Some(nats) = nats {
        nats.stop().await;
    }
    end_streams.cancel();
    stop_internal.cancel();
    let ended = match failed {
        Some(ended) => ended,
        None => match tokio::time::timeout(INTERNAL_STOP_TIMEOUT, internal).await {
            Ok(ended) => ended,
            Err(_) => {
                tracing::warn!("internal listener did not close in time");
                return Ok(());
            }
        },
    };
    ended
        .context("internal listener: its thread panicked")?
        .context("internal listener: its event loop")?
        .context("internal listener (rpc_addr)")?;
    tracing::info!("stopped");
    Ok(())
}

/// The threads a logic node runs on. With the default single push-API thread, everything runs on one event loop:
/// the push API, the links to the gateways and their HTTP/2 connections. A push then never crosses threads on its
/// way to the gateways and back (request, link task, HTTP/2 connection, acks, answer), and each crossing was a
/// sleeping thread woken: on the 2-core VM a push cost logic 322 µs of CPU on a multi-threaded runtime with the API
/// on its own thread, 161 µs on one loop (`herald bench fanout --ws <gateway> --api <logic> --server-pid <logic>
/// --conns 100 --rate 1000 --secs 15`, two gateways). More push-API threads (`api_threads`) take more pushes per
/// node at a higher cost per push: the API on its own threads, the links on a runtime with a worker per core.
pub fn logic_threads(config: &Config) -> Threads {
    if config.api_threads == 1 {
        Threads::One
    } else {
        Threads::PerCore
    }
}

/// How many threads run a server process's tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// One event loop on the main thread.
    One,
    /// A multi-threaded runtime, one worker per core.
    PerCore,
}

/// Runs a logic node on an already-bound push-API listener until `shutdown` is cancelled.
pub async fn run_logic(config: Config, api: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let api_addr = api.local_addr()?;
    let mut registry = Registry::default();
    let links = TaskTracker::new();
    let stop_links = CancellationToken::new();
    let (mut grpc, mut nats) = (None, None);
    let bus: Arc<dyn Bus> = match &config.nats {
        Some(settings) => {
            let node = NatsNode::connect(settings, "herald-logic", &mut registry).await?;
            let bus = node.logic_bus();
            nats = Some(node);
            bus
        }
        None => {
            let bus = ClusterBus::new(&config.cluster, &mut registry).map_err(anyhow::Error::msg)?;
            bus.spawn(&links, stop_links.clone());
            grpc = Some(Arc::clone(&bus));
            bus
        }
    };
    let stopping = CancellationToken::new();
    let api_metrics = ApiMetrics::register(&mut registry);
    let router = herald_logic::router(bus, Arc::new(registry), api_metrics, config.api, stopping.clone());
    // With one push-API thread, logic is one event loop (see `logic_threads`): the API is served on it too.
    let server = match config.api_threads {
        1 => HttpServer::spawn_here(api, router),
        threads => HttpServer::start(api, router, threads)?,
    };

    match &config.nats {
        Some(settings) => tracing::info!(api = %api_addr, bus = %settings.url, "herald logic serving"),
        None => tracing::info!(api = %api_addr, gateways = ?config.cluster.gateways, "herald logic serving"),
    }
    shutdown.cancelled().await;
    tracing::info!(grace = ?config.shutdown_grace, "shutting down");
    if let Some(bus) = &grpc {
        bus.close();
    }
    if let Some(node) = &nats {
        node.close_bus();
    }
    stopping.cancel();
    let stopped = tokio::time::timeout(config.shutdown_grace, server.stop("push API")).await;
    stop_links.cancel();
    links.close();
    links.wait().await;
    if let Some(node) = nats {
        node.stop().await;
    }
    match stopped {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!("grace period over with pushes still waiting for gateways");
            Ok(())
        }
    }
}

/// herald's connection to NATS and the tasks that use it: a gateway's feed (subscriptions that follow its rooms,
/// announcements) and, for the push API, the NATS bus.
pub(crate) struct NatsNode {
    config: NatsConfig,
    client: herald_cluster::nats::Client,
    metrics: NatsMetrics,
    tasks: TaskTracker,
    stop: CancellationToken,
    bus: OnceLock<Arc<NatsBus>>,
}

impl NatsNode {
    /// Connects (in the background if NATS is not up yet) and registers the NATS metrics.
    pub(crate) async fn connect(config: &NatsConfig, name: &str, registry: &mut Registry) -> anyhow::Result<Self> {
        let metrics = NatsMetrics::register(registry);
        let client = herald_cluster::nats::connect(config, name, &metrics)
            .await
            .map_err(anyhow::Error::msg)?;
        Ok(Self {
            config: config.clone(),
            client,
            metrics,
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            bus: OnceLock::new(),
        })
    }

    /// Makes `hub` follow NATS: its rooms' subjects and broadcasts, and announces it as a gateway. `own_addr`
    /// (the process's other listener) keeps the id unique when processes share the WebSocket port.
    pub(crate) fn feed_gateway(
        &self,
        hub: &Arc<Hub<Session>>,
        ws_addr: SocketAddr,
        own_addr: SocketAddr,
    ) -> anyhow::Result<()> {
        let announce = Announce {
            id: format!("{}/{}/{ws_addr}/{own_addr}", hostname(), std::process::id()),
            ws_addr: ws_addr.to_string(),
        };
        spawn_gateway_feed(
            self.client.clone(),
            Arc::clone(hub),
            announce,
            &self.config,
            self.metrics.clone(),
            &self.tasks,
            self.stop.clone(),
        )
        .map_err(anyhow::Error::msg)
    }

    /// The bus the push API publishes through.
    pub(crate) fn logic_bus(&self) -> Arc<NatsBus> {
        let bus = self.bus.get_or_init(|| {
            NatsBus::start(
                self.client.clone(),
                &self.config,
                self.metrics.clone(),
                &self.tasks,
                self.stop.clone(),
            )
        });
        Arc::clone(bus)
    }

    /// Refuses pushes from now on (shutdown).
    pub(crate) fn close_bus(&self) {
        if let Some(bus) = self.bus.get() {
            bus.close();
        }
    }

    /// Stops the feed (announcing that the gateway leaves) and flushes what is still buffered for NATS.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(NATS_STOP_TIMEOUT, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("NATS tasks did not stop in time");
        }
        let _ = tokio::time::timeout(NATS_STOP_TIMEOUT, self.client.flush()).await;
    }
}

/// Longest wait for the NATS side to stop and flush.
const NATS_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// This machine's name, for the gateway's id in its announcements.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "herald".to_owned())
}
