//! A running WebSocket side: the hub's workers, the accept loop and every connection's task, started together and
//! drained in order. `herald serve` and `herald gateway` both run one.

use std::sync::Arc;

use herald_hub::{Hub, HubConfig, HubMetrics};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::AccessConfig;
use crate::config::GatewayConfig;
use crate::listener::Gateway;
use crate::metrics::{GatewayMetrics, NodeCounters};
use crate::session::Session;

/// The hub, the accept loop and the connections of one process.
pub struct Node {
    /// The fan-out engine the connections joined rooms in; the bus (in-process, gRPC or NATS) pushes into it.
    pub hub: Arc<Hub<Session>>,
    counters: NodeCounters,
    hub_stop: CancellationToken,
    hub_tasks: TaskTracker,
    close_sessions: CancellationToken,
    connections: TaskTracker,
    accept_loop: JoinHandle<()>,
}

impl Node {
    /// Starts the hub's workers and accepts connections on `listener`, admitted by `access`, until `intake` is
    /// cancelled (the first step of shutdown); metrics go into `registry`.
    pub fn start(
        listener: TcpListener,
        hub: HubConfig,
        limits: GatewayConfig,
        access: AccessConfig,
        registry: &mut Registry,
        intake: CancellationToken,
        history_elsewhere: Option<Arc<str>>,
    ) -> Self {
        let counters = NodeCounters {
            hub: HubMetrics::register(registry),
            gateway: GatewayMetrics::register(registry),
        };
        let hub = Hub::new(hub, counters.hub.clone());
        // Before the first connection: every JOIN must find the history where it is kept.
        if let Some(epoch) = history_elsewhere {
            hub.keep_history_elsewhere(epoch);
        }
        let gateway = Gateway::new(Arc::clone(&hub), limits, access, counters.gateway.clone());
        let (hub_stop, hub_tasks) = (CancellationToken::new(), TaskTracker::new());
        hub.spawn_workers(&hub_tasks, hub_stop.clone());
        let (close_sessions, connections) = (CancellationToken::new(), TaskTracker::new());
        let accept_loop = tokio::spawn(gateway.serve(listener, intake, close_sessions.clone(), connections.clone()));
        Self {
            hub,
            counters,
            hub_stop,
            hub_tasks,
            close_sessions,
            connections,
            accept_loop,
        }
    }

    /// The closes, drops and history this node counts, for what reports them (a gateway's status and
    /// announcements, the dashboard of `herald serve`).
    pub fn counters(&self) -> NodeCounters {
        self.counters.clone()
    }

    /// Refuses every push from now on (part of the first step of shutdown, with cancelling the intake token).
    pub fn refuse_pushes(&self) {
        self.hub.close();
    }

    /// The rest of the WebSocket side's shutdown, once the intake is stopped: the accept loop ends, the hub sends
    /// every batch still waiting, then each connection sends what is queued for it and a "going away" close frame
    /// (1001), and its task ends.
    pub async fn drain(self) {
        let _ = self.accept_loop.await;
        self.hub_stop.cancel();
        self.hub_tasks.close();
        self.hub_tasks.wait().await;
        self.close_sessions.cancel();
        self.connections.close();
        self.connections.wait().await;
    }

    /// The connections' tasks, to count those left when a drain is cut short by the grace period.
    pub fn connection_tasks(&self) -> TaskTracker {
        self.connections.clone()
    }
}
