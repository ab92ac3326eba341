//! The cluster's metrics on logic (prefix `herald_cluster_`), labelled by gateway address.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct GatewayLabel {
    pub(super) gateway: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ForwardLabels {
    pub(super) gateway: String,
    pub(super) result: &'static str,
}

/// The cluster's metrics on logic (prefix `herald_cluster_`), labelled by gateway address.
#[derive(Clone, Default)]
pub(super) struct ClusterMetrics {
    pub(super) up: Family<GatewayLabel, Gauge>,
    pub(super) connections: Family<GatewayLabel, Gauge>,
    pub(super) rooms: Family<GatewayLabel, Gauge>,
    pub(super) queue_depth: Family<GatewayLabel, Gauge>,
    pub(super) disconnects: Family<GatewayLabel, Counter>,
    pub(super) forwards: Family<ForwardLabels, Counter>,
}

impl ClusterMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "herald_cluster_gateway_up",
            "1 while logic's stream to the gateway is open",
            metrics.up.clone(),
        );
        registry.register(
            "herald_cluster_gateway_connections",
            "WebSocket connections on the gateway, as it last reported",
            metrics.connections.clone(),
        );
        registry.register(
            "herald_cluster_gateway_rooms",
            "Rooms with members on the gateway, as it last reported",
            metrics.rooms.clone(),
        );
        registry.register(
            "herald_cluster_gateway_queue_depth",
            "Pushes queued or in flight to the gateway, not yet answered",
            metrics.queue_depth.clone(),
        );
        registry.register(
            "herald_cluster_gateway_disconnects",
            "Times the link to the gateway went down or a connect attempt failed with a new error",
            metrics.disconnects.clone(),
        );
        registry.register(
            "herald_cluster_forwards",
            "Pushes forwarded, by gateway and result: accepted, unconfirmed, unreachable, queue_full (logic's queue), \
             gateway_queue_full, gateway_shutting_down, gateway_too_many_items, gateway_unavailable, gateway_refused",
            metrics.forwards.clone(),
        );
        metrics
    }
}

/// One gateway's handles into [`ClusterMetrics`], taken once.
pub(super) struct LinkMetrics {
    /// One counter per result, taken from the family once: counting a push allocates nothing.
    pub(super) forwards: Vec<(&'static str, Counter)>,
    pub(super) up: Gauge,
    pub(super) connections: Gauge,
    pub(super) rooms: Gauge,
    pub(super) queue_depth: Gauge,
    pub(super) disconnects: Counter,
}

/// Every result a forwarded push can have (the `result` label of `herald_cluster_forwards_total`).
pub(super) const FORWARD_RESULTS: [&str; 9] = [
    "accepted",
    "unreachable",
    "queue_full",
    "unconfirmed",
    "gateway_queue_full",
    "gateway_shutting_down",
    "gateway_too_many_items",
    "gateway_unavailable",
    "gateway_refused",
];

impl LinkMetrics {
    /// Counts one push's result for this gateway.
    pub(super) fn count(&self, result: &'static str) {
        if let Some((_, counter)) = self.forwards.iter().find(|(name, _)| *name == result) {
            counter.inc();
        }
    }

    pub(super) fn new(metrics: &ClusterMetrics, addr: &str) -> Self {
        let label = GatewayLabel {
            gateway: addr.to_owned(),
        };
        let forward = |result: &'static str| {
            let labels = ForwardLabels {
                gateway: addr.to_owned(),
                result,
            };
            (result, metrics.forwards.get_or_create(&labels).clone())
        };
        Self {
            forwards: FORWARD_RESULTS.into_iter().map(forward).collect(),
            up: metrics.up.get_or_create(&label).clone(),
            connections: metrics.connections.get_or_create(&label).clone(),
            rooms: metrics.rooms.get_or_create(&label).clone(),
            queue_depth: metrics.queue_depth.get_or_create(&label).clone(),
            disconnects: metrics.disconnects.get_or_create(&label).clone(),
        }
    }
}
