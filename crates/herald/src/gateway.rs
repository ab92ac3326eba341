//! `herald gateway`: the WebSocket side and hub of a cluster. It is `herald serve` without the push API: logic
//! nodes stream pushes to its internal listener (`rpc_addr`, loopback by default) over gRPC, where operators also
//! read `/healthz`, `/stats` and `/metrics`. With `bus`, pushes come from NATS instead, for the rooms it holds.
//!
//! Pushes that arrive while it drains are answered "shutting down"; logic's streams end when the internal
//! listener stops, after the connections are closed.

use std::sync::Arc;

use herald_cluster::gateway::{RpcService, max_push_bytes, serve_internal};
use herald_gateway::Node;
use herald_http::HttpServing;
use herald_protocol::counts::CountsSource;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::bind;
use crate::config::Gateway;
use crate::nats_node::NatsNode;
use crate::running::Running;
use crate::server::Server;

/// Binds a gateway's WebSocket and internal listeners; the error names the address that failed.
pub async fn bind(config: &Gateway) -> anyhow::Result<(TcpListener, TcpListener)> {
    let ws = bind::websocket(&config.websocket)?;
    let rpc = bind::one(config.internal.addr, "rpc_addr").await?;
    Ok((ws, rpc))
}

/// Runs a gateway on already-bound listeners until `shutdown` is cancelled, then drains and returns.
pub async fn run(
    config: Gateway,
    ws: TcpListener,
    rpc: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (ws_addr, rpc_addr) = (ws.local_addr()?, rpc.local_addr()?);
    let mut registry = Registry::default();
    let mut running = Running::new(config.process.shutdown_grace);
    // NATS first: with history on, the hub must know the JetStream stream before it takes a connection.
    let nats = match &config.nats {
        Some(settings) => {
            Some(NatsNode::connect(settings, &config.hub.history, "herald-gateway", &mut registry).await?)
        }
        None => None,
    };
    let node = Node::start(
        ws,
        config.hub,
        config.websocket.limits,
        config.access.clone(),
        &mut registry,
        running.intake.clone(),
        nats.as_ref().and_then(NatsNode::history_epoch),
    );
    let ops = herald_logic::ops_router(node.hub.clone(), registry, running.intake.clone());
    let counts: Arc<dyn CountsSource> = Arc::new(node.counters());
    if let Some(nats) = nats {
        nats.feed_gateway(&node.hub, ws_addr, rpc_addr, Some(Arc::clone(&counts)))?;
        running.nats = Some(nats);
    }
    let hub = Arc::clone(&node.hub);
    let secret = config.secret.clone();
    let serving = HttpServing {
        header_read_timeout: config.http.header_read_timeout,
        tls: config.internal.tls.clone(),
    };
    let max_push_bytes = max_push_bytes(config.http.max_body_bytes);
    // On a thread of its own, as the push API of `serve`: a push from logic then wakes this loop and the hub's
    // worker, not a worker of the shared runtime to run the HTTP/2 connection and another for the stream's handler.
    // Its stop token also ends logic's open streams, so the server can finish.
    let internal = Server::on_own_threads("rpc", rpc, 1, running.failure_alarm(), move |rpc, stop| {
        let service = RpcService::new(Arc::clone(&hub), Arc::clone(&counts), stop.clone());
        let (ops, secret, serving) = (ops.clone(), secret.clone(), serving.clone());
        async move {
            serve_internal(rpc, service, ops, secret, serving, max_push_bytes, stop)
                .await
                .map_err(|e| anyhow::Error::new(e).context("internal listener (rpc_addr)"))
        }
    })?;
    running.node = Some(node);
    running.servers.push(internal);

    tracing::info!(
        ws = %ws_addr,
        rpc = %rpc_addr,
        tls = config.internal.tls.is_some(),
        secret = config.secret.is_some(),
        bus = config.nats.as_ref().map_or("grpc", |n| n.url.as_str()),
        "herald gateway serving"
    );
    running.until(shutdown).await
}
