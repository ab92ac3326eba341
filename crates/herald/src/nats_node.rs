//! herald's connection to NATS and the tasks that use it: a gateway's feed (subscriptions that follow its rooms,
//! announcements) and, for the push API, the NATS bus. Every mode on NATS runs one.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use herald_cluster::nats::{Announce, NatsBus, NatsConfig, NatsMetrics, RoomStore, spawn_gateway_feed};
use herald_gateway::Session;
use herald_hub::Hub;
use herald_hub::history::HistoryConfig;
use herald_protocol::counts::CountsSource;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// herald's connection to NATS and the tasks that use it: a gateway's feed (subscriptions that follow its rooms,
/// announcements) and, for the push API, the NATS bus.
pub(crate) struct NatsNode {
    config: NatsConfig,
    client: herald_cluster::nats::Client,
    metrics: NatsMetrics,
    tasks: TaskTracker,
    stop: CancellationToken,
    bus: OnceLock<Arc<NatsBus>>,
    /// Room history in JetStream, when kept.
    history: Option<RoomStore>,
}

impl NatsNode {
    /// Connects (in the background if NATS is not up yet) and registers the NATS metrics. With room history on,
    /// creates or updates its JetStream stream first, waiting up to [`STORE_WAIT`] for JetStream: herald does not
    /// start without it then, since no push could be answered truthfully.
    pub(crate) async fn connect(
        config: &NatsConfig,
        history: &HistoryConfig,
        name: &str,
        registry: &mut Registry,
    ) -> anyhow::Result<Self> {
        let metrics = NatsMetrics::register(registry);
        let client = herald_cluster::nats::connect(config, name, &metrics).await?;
        let history = if history.is_on() {
            let store = RoomStore::open(client.clone(), history, STORE_WAIT)
                .await
                .context("history_size: room history on NATS is kept in JetStream (nats-server -js)")?;
            Some(store)
        } else {
            None
        };
        Ok(Self {
            config: config.clone(),
            client,
            metrics,
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            bus: OnceLock::new(),
            history,
        })
    }

    /// Makes `hub` follow NATS: its rooms' subjects and broadcasts, and announces it as a gateway, with the
    /// closes, drops and history of `counts` when given. `own_addr` (the process's other listener) keeps the id
    /// unique when processes share the WebSocket port.
    pub(crate) fn feed_gateway(
        &self,
        hub: &Arc<Hub<Session>>,
        ws_addr: SocketAddr,
        own_addr: SocketAddr,
        counts: Option<Arc<dyn CountsSource>>,
    ) -> anyhow::Result<()> {
        let announce = Announce {
            id: format!("{}/{}/{ws_addr}/{own_addr}", hostname(), std::process::id()),
            ws_addr: ws_addr.to_string(),
            counts,
        };
        spawn_gateway_feed(
            self.client.clone(),
            Arc::clone(hub),
            self.history.clone(),
            announce,
            &self.config,
            self.metrics.clone(),
            &self.tasks,
            self.stop.clone(),
        )?;
        Ok(())
    }

    /// The epoch of the JetStream stream that keeps room history, when it is kept.
    pub(crate) fn history_epoch(&self) -> Option<Arc<str>> {
        self.history.as_ref().map(|store| Arc::clone(store.epoch()))
    }

    /// The bus the push API publishes through.
    pub(crate) fn logic_bus(&self) -> Arc<NatsBus> {
        let bus = self.bus.get_or_init(|| {
            NatsBus::start(
                self.client.clone(),
                &self.config,
                self.history.clone(),
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

/// Longest wait at start for JetStream to take the history stream.
const STORE_WAIT: Duration = Duration::from_secs(30);

/// Longest wait for the NATS side to stop and flush.
const NATS_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// This machine's name, for the gateway's id in its announcements.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "herald".to_owned())
}
