//! What a mode runs, and its one shutdown. Each mode's `run()` starts the parts it needs and hands them to
//! [`Running`], which waits for SIGINT/SIGTERM (or for a listener to fail) and then stops every part in one order,
//! within the grace period:
//!
//! 1. stop intake: new connections are no longer accepted, pushes are refused (503) and `/healthz` turns 503;
//! 2. flush the hub: every batch still waiting is sent;
//! 3. drain and close sessions: each connection sends what is queued for it, then "going away" (1001);
//! 4. stop listeners: the push API and a gateway's internal listener finish the requests in progress;
//! 5. stop the bus: logic's links to its gateways, herald's NATS connection (a gateway announces that it leaves).

use std::sync::Arc;
use std::time::Duration;

use herald_cluster::logic::ClusterBus;
use herald_gateway::Node;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::nats_node::NatsNode;
use crate::server::Server;

/// The parts of one running mode.
pub(crate) struct Running {
    grace: Duration,
    /// Cancelled at the first step of shutdown: the accept loop stops and `/healthz` answers 503.
    pub(crate) intake: CancellationToken,
    /// Cancelled when a listener's server ended on its own: the process then shuts down, and says why.
    failed: CancellationToken,
    /// The WebSocket side and its hub (serve, gateway).
    pub(crate) node: Option<Node>,
    /// Logic's links to its gateways over gRPC, and their tasks.
    pub(crate) links: Option<(Arc<ClusterBus>, Tasks)>,
    /// The connection to NATS and its tasks.
    pub(crate) nats: Option<NatsNode>,
    /// The listeners' servers, stopped in this order.
    pub(crate) servers: Vec<Server>,
}

/// Background tasks stopped together: a token that tells them to stop, and a tracker to wait for them.
#[derive(Clone, Default)]
pub(crate) struct Tasks {
    pub(crate) stop: CancellationToken,
    pub(crate) tracker: TaskTracker,
}

impl Tasks {
    async fn stop(self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl Running {
    /// Nothing running yet; shutdown will take at most `grace`.
    pub(crate) fn new(grace: Duration) -> Self {
        Self {
            grace,
            intake: CancellationToken::new(),
            failed: CancellationToken::new(),
            node: None,
            links: None,
            nats: None,
            servers: Vec::new(),
        }
    }

    /// The token a listener's server cancels when it ends on its own (see [`Server`]).
    pub(crate) fn failure_alarm(&self) -> CancellationToken {
        self.failed.clone()
    }

    /// Runs until `shutdown` is cancelled or a listener fails, then shuts everything down in order. A listener that
    /// failed is the error returned.
    pub(crate) async fn until(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tokio::select! {
            () = shutdown.cancelled() => tracing::info!(grace = ?self.grace, "shutting down"),
            () = self.failed.cancelled() => tracing::error!("a listener stopped serving; shutting down"),
        }
        let grace = self.grace;
        let connections = self.node.as_ref().map(Node::connection_tasks);
        match tokio::time::timeout(grace, self.shut_down()).await {
            Ok(result) => {
                tracing::info!("stopped");
                result
            }
            Err(_) => {
                tracing::warn!(
                    connections_left = connections.map_or(0, |tasks| tasks.len()),
                    "grace period over, exiting with what is left"
                );
                Ok(())
            }
        }
    }

    async fn shut_down(self) -> anyhow::Result<()> {
        let Self {
            intake,
            node,
            links,
            nats,
            servers,
            ..
        } = self;
        // 1. Stop intake.
        intake.cancel();
        if let Some(node) = &node {
            node.refuse_pushes();
        }
        if let Some((bus, _)) = &links {
            bus.close();
        }
        if let Some(nats) = &nats {
            nats.close_bus();
        }
        // 2 and 3. Flush the hub, then drain and close the sessions.
        if let Some(node) = node {
            node.drain().await;
        }
        // 4. Stop the listeners; the first that had failed is the answer.
        let mut result = Ok(());
        for server in servers {
            let stopped = server.stop().await;
            if result.is_ok() {
                result = stopped;
            }
        }
        // 5. Stop the bus.
        if let Some((_, tasks)) = links {
            tasks.stop().await;
        }
        if let Some(nats) = nats {
            nats.stop().await;
        }
        result
    }
}
