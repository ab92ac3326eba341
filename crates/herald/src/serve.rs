//! `herald serve`: the embedded default, everything in one process, pushes handed to the hub in memory.
//!
//! Shutdown runs in order, within the grace period: stop accepting connections and refuse new pushes (503,
//! `/healthz` turns 503) → the hub sends every batch still waiting → each connection sends what is queued for
//! it, then a "going away" close frame (1001) → the push API stops.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use herald_gateway::Gateway;
use herald_gateway::metrics::GatewayMetrics;
use herald_hub::{Hub, HubMetrics};
use herald_logic::ApiMetrics;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;

/// Binds both listeners from the configuration; the error names the address that failed.
pub async fn bind(config: &Config) -> anyhow::Result<(TcpListener, TcpListener)> {
    let ws = bind_one(config.ws_addr, "ws_addr").await?;
    let api = bind_one(config.api_addr, "api_addr").await?;
    Ok((ws, api))
}

async fn bind_one(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{key}: cannot listen on {addr}"))
}

/// Runs herald on already-bound listeners until `shutdown` is cancelled, then drains and returns.
pub async fn run(config: Config, ws: TcpListener, api: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (ws_addr, api_addr) = (ws.local_addr()?, api.local_addr()?);
    let mut registry = Registry::default();
    let hub = Hub::new(config.hub, HubMetrics::register(&mut registry));
    let gateway = Gateway::new(
        Arc::clone(&hub),
        config.gateway,
        GatewayMetrics::register(&mut registry),
    );
    let api_metrics = ApiMetrics::register(&mut registry);

    let hub_stop = CancellationToken::new();
    let hub_tasks = TaskTracker::new();
    hub.spawn_workers(&hub_tasks, hub_stop.clone());

    let stop_accepting = CancellationToken::new();
    let close_sessions = CancellationToken::new();
    let connections = TaskTracker::new();
    let accept_loop = tokio::spawn(Arc::clone(&gateway).serve(
        ws,
        stop_accepting.clone(),
        close_sessions.clone(),
        connections.clone(),
    ));

    let api_stop = CancellationToken::new();
    let router = herald_logic::router(
        hub.clone(),
        Arc::new(registry),
        api_metrics,
        config.api,
        stop_accepting.clone(),
    );
    let api_server = tokio::spawn(std::future::IntoFuture::into_future(
        axum::serve(api, router.into_make_service()).with_graceful_shutdown(api_stop.clone().cancelled_owned()),
    ));

    tracing::info!(ws = %ws_addr, api = %api_addr, "herald serving");
    shutdown.cancelled().await;
    tracing::info!(grace = ?config.shutdown_grace, "shutting down");

    let drain = async {
        // Hub first: once /healthz (which follows stop_accepting) says 503, pushes are refused too.
        hub.close();
        stop_accepting.cancel();
        let _ = accept_loop.await;
        hub_stop.cancel();
        hub_tasks.close();
        hub_tasks.wait().await;
        close_sessions.cancel();
        connections.close();
        connections.wait().await;
    };
    if tokio::time::timeout(config.shutdown_grace, drain).await.is_err() {
        tracing::warn!(
            left = connections.len(),
            "grace period over, dropping the connections left"
        );
    }
    api_stop.cancel();
    match api_server.await {
        Ok(result) => result.context("push API")?,
        Err(e) => tracing::warn!(error = %e, "push API task failed"),
    }
    tracing::info!("stopped");
    Ok(())
}
