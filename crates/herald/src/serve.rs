//! `herald serve`: the embedded default, everything in one process: the WebSocket side and its hub, and the push
//! API handing pushes to the hub in memory (or, with `bus`, through NATS, which brings them back to this hub and
//! every other one subscribed).

use std::sync::Arc;

use herald_gateway::Node;
use herald_protocol::bus::Bus;
use herald_protocol::counts::CountsSource;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::bind;
use crate::config::Serve;
use crate::nats_node::NatsNode;
use crate::running::Running;
use crate::server::{self, Server};

/// Binds both listeners from the configuration: the WebSocket listener, then the push API's.
pub async fn bind(config: &Serve) -> anyhow::Result<(TcpListener, TcpListener)> {
    let ws = bind::websocket(&config.websocket)?;
    let api = bind::one(config.api.addr, "api_addr").await?;
    Ok((ws, api))
}

/// Runs herald on already-bound listeners until `shutdown` is cancelled, then drains and returns.
pub async fn run(config: Serve, ws: TcpListener, api: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (ws_addr, api_addr) = (ws.local_addr()?, api.local_addr()?);
    let mut registry = Registry::default();
    let mut running = Running::new(config.process.shutdown_grace);
    // NATS first: with history on, the hub must know the JetStream stream before it takes a connection.
    let nats = match &config.nats {
        Some(settings) => Some(NatsNode::connect(settings, &config.hub.history, "herald-serve", &mut registry).await?),
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
    let bus: Arc<dyn Bus> = match nats {
        Some(nats) => {
            // Its push API (and so its dashboard) is in this process, beside the counts: none are announced.
            nats.feed_gateway(&node.hub, ws_addr, api_addr, None)?;
            let bus = nats.logic_bus();
            running.nats = Some(nats);
            bus
        }
        None => node.hub.clone(),
    };
    let counts: Arc<dyn CountsSource> = Arc::new(node.counters());
    let router = herald_logic::router(
        bus,
        registry,
        Some(counts),
        config.api.limits.clone(),
        running.intake.clone(),
    );
    running.node = Some(node);
    let alarm = running.failure_alarm();
    running.servers.push(Server::on_own_threads(
        "api",
        api,
        config.api.threads,
        alarm,
        server::http(router, config.http),
    )?);

    let bus_name = config.nats.as_ref().map_or("memory", |n| n.url.as_str());
    tracing::info!(ws = %ws_addr, api = %api_addr, bus = bus_name, "herald serving");
    running.until(shutdown).await
}
