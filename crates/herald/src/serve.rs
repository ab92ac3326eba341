//! `herald serve`: the embedded default, everything in one process, pushes handed to the hub in memory.
//!
//! Shutdown runs in order, within the grace period: stop accepting connections and refuse new pushes (503,
//! `/healthz` turns 503) → the hub sends every batch still waiting → each connection sends what is queued for
//! it, then a "going away" close frame (1001) → the push API stops.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use herald_gateway::Gateway;
use herald_gateway::metrics::GatewayMetrics;
use herald_gateway::session::Session;
use herald_hub::{Hub, HubMetrics};
use herald_logic::ApiMetrics;
use herald_protocol::bus::Bus;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::NatsNode;
use crate::config::Config;

/// Binds both listeners from the configuration; the error names the address that failed.
pub async fn bind(config: &Config) -> anyhow::Result<(TcpListener, TcpListener)> {
    let ws = bind_ws(config)?;
    let api = bind_one(config.api_addr, "api_addr").await?;
    Ok((ws, api))
}

/// Binds the WebSocket listener, with SO_REUSEPORT when `reuse_port` is set (the kernel then spreads new
/// connections over every process listening on the port).
pub fn bind_ws(config: &Config) -> anyhow::Result<TcpListener> {
    let addr = config.ws_addr;
    let bind = || -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        if config.reuse_port {
            socket.set_reuseport(true)?;
        }
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    bind().with_context(|| format!("ws_addr: cannot listen on {addr}"))
}

/// Pending connections the kernel queues for the WebSocket listener (capped by net.core.somaxconn).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds one listener; the error names the setting.
pub async fn bind_one(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{key}: cannot listen on {addr}"))
}

/// Runs herald on already-bound listeners until `shutdown` is cancelled, then drains and returns.
pub async fn run(config: Config, ws: TcpListener, api: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (ws_addr, api_addr) = (ws.local_addr()?, api.local_addr()?);
    let mut registry = Registry::default();
    let node = GatewayNode::start(&config, ws, &mut registry);
    // On NATS, pushes go out through NATS and come back to this hub (and every other) by subscription.
    let nats = match &config.nats {
        Some(nats) => Some(NatsNode::connect(nats, "herald-serve", &mut registry).await?),
        None => None,
    };
    let bus: Arc<dyn Bus> = match &nats {
        Some(nats) => {
            nats.feed_gateway(&node.hub, ws_addr, api_addr)?;
            nats.logic_bus()
        }
        None => node.hub.clone(),
    };
    let api_metrics = ApiMetrics::register(&mut registry);
    let router = herald_logic::router(
        bus,
        Arc::new(registry),
        api_metrics,
        config.api,
        node.stop_accepting.clone(),
    );
    let api_server = HttpServer::start(api, router, config.api_threads)?;

    tracing::info!(ws = %ws_addr, api = %api_addr, bus = config.nats.as_ref().map_or("memory", |n| n.url.as_str()), "herald serving");
    shutdown.cancelled().await;
    tracing::info!(grace = ?config.shutdown_grace, "shutting down");
    if let Some(nats) = &nats {
        nats.close_bus();
    }
    node.drain(config.shutdown_grace).await;
    if let Some(nats) = nats {
        nats.stop().await;
    }
    api_server.stop("push API").await
}

/// The WebSocket side and its hub: what `herald serve` and `herald gateway` both run.
pub(crate) struct GatewayNode {
    pub(crate) hub: Arc<Hub<Session>>,
    /// Cancelled when shutdown begins; `/healthz` follows it.
    pub(crate) stop_accepting: CancellationToken,
    hub_stop: CancellationToken,
    hub_tasks: TaskTracker,
    close_sessions: CancellationToken,
    connections: TaskTracker,
    accept_loop: JoinHandle<()>,
}

impl GatewayNode {
    /// Starts the hub's workers and the accept loop on `ws`; metrics go into `registry`.
    pub(crate) fn start(config: &Config, ws: TcpListener, registry: &mut Registry) -> Self {
        let hub = Hub::new(config.hub, HubMetrics::register(registry));
        let gateway = Gateway::new(Arc::clone(&hub), config.gateway, GatewayMetrics::register(registry));
        let hub_stop = CancellationToken::new();
        let hub_tasks = TaskTracker::new();
        hub.spawn_workers(&hub_tasks, hub_stop.clone());
        let stop_accepting = CancellationToken::new();
        let close_sessions = CancellationToken::new();
        let connections = TaskTracker::new();
        let accept_loop =
            tokio::spawn(gateway.serve(ws, stop_accepting.clone(), close_sessions.clone(), connections.clone()));
        Self {
            hub,
            stop_accepting,
            hub_stop,
            hub_tasks,
            close_sessions,
            connections,
            accept_loop,
        }
    }

    /// Refuses new pushes and connections, sends every waiting batch, then closes every connection with 1001,
    /// within `grace`.
    pub(crate) async fn drain(self, grace: Duration) {
        let connections = self.connections.clone();
        let drain = async {
            // Hub first: once /healthz (which follows stop_accepting) says 503, pushes are refused too.
            self.hub.close();
            self.stop_accepting.cancel();
            let _ = self.accept_loop.await;
            self.hub_stop.cancel();
            self.hub_tasks.close();
            self.hub_tasks.wait().await;
            self.close_sessions.cancel();
            self.connections.close();
            self.connections.wait().await;
        };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!(
                left = connections.len(),
                "grace period over, dropping the connections left"
            );
        }
    }
}

/// The push API: an axum server on threads of its own, each a single-threaded event loop, stopped gracefully on
/// request.
///
/// Not on the shared multi-threaded runtime: there, hyper wakes its own connection task when a request's body
/// arrives while the handler reads it, tokio takes that for a yield and wakes the idle second worker to look for
/// work, and every push paid for two context switches it did not need (~25 µs of ~70 µs a push on the 2-core
/// VM). On its own loop a push costs one wake-up; the handler hands items to the hub, whose workers stay on the
/// shared runtime. [`HttpServer::spawn_here`] serves on the caller's runtime instead, for a process that is itself
/// one event loop (a logic node, see `cluster::run_logic`).
pub(crate) struct HttpServer {
    stop: CancellationToken,
    threads: Vec<tokio::sync::oneshot::Receiver<std::io::Result<()>>>,
}

impl HttpServer {
    /// Serves `router` on `listener` from `threads` threads; each takes connections from the same listener.
    pub(crate) fn start(listener: TcpListener, router: axum::Router, threads: usize) -> anyhow::Result<Self> {
        let stop = CancellationToken::new();
        let listener = listener.into_std()?;
        let mut done = Vec::with_capacity(threads);
        for index in 0..threads {
            let (router, stopped) = (router.clone(), stop.clone());
            let started = listener.try_clone().and_then(|listener| {
                on_own_loop(format!("herald-api-{index}"), move || async move {
                    axum::serve(TcpListener::from_std(listener)?, router.into_make_service())
                        .with_graceful_shutdown(stopped.cancelled_owned())
                        .await
                })
            });
            match started {
                Ok(receiver) => done.push(receiver),
                Err(error) => {
                    // The threads already serving stop too: herald does not run with part of its push API.
                    stop.cancel();
                    return Err(error).context("starting a push-API thread");
                }
            }
        }
        Ok(Self { stop, threads: done })
    }

    /// Serves `router` on `listener` from a task on the current runtime.
    pub(crate) fn spawn_here(listener: TcpListener, router: axum::Router) -> Self {
        let stop = CancellationToken::new();
        let (finished, receiver) = tokio::sync::oneshot::channel();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, router.into_make_service())
                .with_graceful_shutdown(stopped.cancelled_owned())
                .await;
            let _ = finished.send(served);
        });
        Self {
            stop,
            threads: vec![receiver],
        }
    }

    /// Stops taking connections, waits for requests in progress, and reports how the server ended.
    pub(crate) async fn stop(self, name: &str) -> anyhow::Result<()> {
        self.stop.cancel();
        for thread in self.threads {
            match thread.await {
                Ok(result) => result.with_context(|| name.to_owned())?,
                Err(_) => tracing::warn!("{name}: a thread ended without a result (it panicked)"),
            }
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Runs the future `task` makes on a thread named `name`, on a single-threaded event loop of its own; the receiver
/// gets its output, or an error if the loop could not be built (the sender is dropped unsent if the task panics).
/// For a listener whose every request would otherwise wake a worker of the shared runtime (see [`HttpServer`]).
pub(crate) fn on_own_loop<F, Fut, T>(
    name: String,
    task: F,
) -> std::io::Result<tokio::sync::oneshot::Receiver<std::io::Result<T>>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = std::io::Result<T>>,
    T: Send + 'static,
{
    let (finished, receiver) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name(name).spawn(move || {
        let ended = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .and_then(|runtime| runtime.block_on(task()));
        let _ = finished.send(ended);
    })?;
    Ok(receiver)
}
