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

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use herald_cluster::gateway::{RpcService, serve_internal};
use herald_cluster::logic::ClusterBus;
use herald_logic::ApiMetrics;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::serve::{GatewayNode, HttpServer, bind_one};

/// Longest wait for the internal listener to close once the gateway has drained.
const INTERNAL_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds a gateway's WebSocket and internal listeners; the error names the address that failed.
pub async fn bind_gateway(config: &Config) -> anyhow::Result<(TcpListener, TcpListener)> {
    let ws = bind_one(config.ws_addr, "ws_addr").await?;
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
    let ops_metrics = ApiMetrics::register(&mut registry);
    let ops = herald_logic::ops_router(
        node.hub.clone(),
        Arc::new(registry),
        ops_metrics,
        node.stop_accepting.clone(),
    );
    let end_streams = CancellationToken::new();
    let stop_internal = CancellationToken::new();
    let mut internal = tokio::spawn(serve_internal(
        rpc,
        RpcService::new(node.hub.clone(), end_streams.clone()),
        ops,
        config.cluster.secret.clone(),
        config.rpc_tls.clone(),
        stop_internal.clone().cancelled_owned(),
    ));

    tracing::info!(
        ws = %ws_addr,
        rpc = %rpc_addr,
        tls = config.rpc_tls.is_some(),
        secret = config.cluster.secret.is_some(),
        "herald gateway serving"
    );
    let failed = tokio::select! {
        () = shutdown.cancelled() => None,
        ended = &mut internal => Some(ended),
    };
    tracing::info!(grace = ?config.shutdown_grace, "shutting down");
    node.drain(config.shutdown_grace).await;
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
        .context("internal listener task")?
        .context("internal listener (rpc_addr)")?;
    tracing::info!("stopped");
    Ok(())
}

/// Runs a logic node on an already-bound push-API listener until `shutdown` is cancelled.
pub async fn run_logic(config: Config, api: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let api_addr = api.local_addr()?;
    let mut registry = Registry::default();
    let bus = ClusterBus::new(&config.cluster, &mut registry).map_err(anyhow::Error::msg)?;
    let links = TaskTracker::new();
    let stop_links = CancellationToken::new();
    bus.spawn(&links, stop_links.clone());
    let stopping = CancellationToken::new();
    let api_metrics = ApiMetrics::register(&mut registry);
    let router = herald_logic::router(
        bus.clone(),
        Arc::new(registry),
        api_metrics,
        config.api,
        stopping.clone(),
    );
    let server = HttpServer::start(api, router);

    tracing::info!(api = %api_addr, gateways = ?config.cluster.gateways, "herald logic serving");
    shutdown.cancelled().await;
    tracing::info!(grace = ?config.shutdown_grace, "shutting down");
    bus.close();
    stopping.cancel();
    let stopped = tokio::time::timeout(config.shutdown_grace, server.stop("push API")).await;
    stop_links.cancel();
    links.close();
    links.wait().await;
    match stopped {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!("grace period over with pushes still waiting for gateways");
            Ok(())
        }
    }
}
