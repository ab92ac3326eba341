//! `herald logic`: the push API of a cluster. It forwards each push to every gateway in `gateways` over gRPC and
//! answers with what they said, or, with `bus`, publishes it on NATS for the gateways that hold its room.
//!
//! Shutdown refuses new pushes, waits for the pushes in progress to be answered, then closes its links.

use std::sync::Arc;

use herald_cluster::logic::ClusterBus;
use herald_protocol::bus::Bus;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::bind;
use crate::config::Logic;
use crate::nats_node::NatsNode;
use crate::running::{Running, Tasks};
use crate::runtime::Threads;
use crate::server::{self, Server};

/// Binds the push API's listener.
pub async fn bind(config: &Logic) -> anyhow::Result<TcpListener> {
    bind::one(config.api.addr, "api_addr").await
}

/// The threads a logic node runs on. With the default single push-API thread, everything runs on one event loop:
/// the push API, the links to the gateways and their HTTP/2 connections. A push then never crosses threads on its
/// way to the gateways and back (request, link task, HTTP/2 connection, acks, answer), and each crossing was a
/// sleeping thread woken (BENCHMARKS.md: what a push costs through logic). More push-API threads (`api_threads`)
/// take more pushes per node at a higher cost per push: the API on its own threads, the links on a runtime with a
/// worker per core.
pub fn threads(config: &Logic) -> Threads {
    if config.api.threads == 1 {
        Threads::One
    } else {
        Threads::PerCore
    }
}

/// Runs a logic node on an already-bound push-API listener until `shutdown` is cancelled.
pub async fn run(config: Logic, api: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let api_addr = api.local_addr()?;
    let mut registry = Registry::default();
    let mut running = Running::new(config.process.shutdown_grace);
    let bus: Arc<dyn Bus> = match &config.nats {
        Some(settings) => {
            let nats = NatsNode::connect(settings, &config.history, "herald-logic", &mut registry).await?;
            let bus = nats.logic_bus();
            running.nats = Some(nats);
            bus
        }
        None => {
            let bus = ClusterBus::new(&config.cluster, &mut registry)?;
            let tasks = Tasks::default();
            bus.spawn(&tasks.tracker, tasks.stop.clone());
            running.links = Some((Arc::clone(&bus), tasks));
            bus
        }
    };
    // Logic holds no connection: its dashboard adds up the counts the gateways report.
    let router = herald_logic::router(bus, registry, None, config.api.limits.clone(), running.intake.clone());
    let alarm = running.failure_alarm();
    // With one push-API thread, logic is one event loop (see `threads`): the API is served on it too.
    let api_server = match config.api.threads {
        1 => Server::here("api", api, alarm, server::http(router, config.http)),
        threads => Server::on_own_threads("api", api, threads, alarm, server::http(router, config.http))?,
    };
    running.servers.push(api_server);

    match &config.nats {
        Some(settings) => tracing::info!(api = %api_addr, bus = %settings.url, "herald logic serving"),
        None => tracing::info!(api = %api_addr, gateways = ?config.cluster.gateways, "herald logic serving"),
    }
    running.until(shutdown).await
}
