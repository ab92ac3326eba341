//! herald's metrics on NATS (prefix `herald_nats_`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// herald's metrics on NATS (prefix `herald_nats_`).
#[derive(Clone, Default)]
pub struct NatsMetrics {
    connected: Gauge,
    events: Family<EventLabel, Counter>,
    publishes: Family<ResultLabel, Counter>,
    received: Family<KindLabel, Counter>,
    refused: Family<ReasonLabel, Counter>,
    pub(super) subscriptions: Gauge,
    pub(super) gateways_live: Gauge,
    pub(super) history_items: Counter,
}

impl NatsMetrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "herald_nats_connected",
            "1 while connected to NATS",
            metrics.connected.clone(),
        );
        registry.register(
            "herald_nats_events",
            "NATS client events: connected, disconnected, slow_consumer (messages dropped in this client), \
             server_error, client_error, lame_duck, closed, subscribe_failed",
            metrics.events.clone(),
        );
        registry.register(
            "herald_nats_publishes",
            "logic: pushes published, by result: published, unavailable (NATS down, answered 503), timeout, error; \
             with room history: stored (JetStream acknowledged every item), store_failed (answered 503)",
            metrics.publishes.clone(),
        );
        registry.register(
            "herald_nats_messages_received",
            "gateway: pushes received from NATS, by kind: room, all",
            metrics.received.clone(),
        );
        registry.register(
            "herald_nats_pushes_refused",
            "gateway: pushes from NATS the hub did not take (lost), by reason: queue_full, shutting_down, \
             too_many_items, unavailable, invalid, undecodable; with history: not_stored (published around the stream), \
             history_gap (messages the subscription lost could not be read back)",
            metrics.refused.clone(),
        );
        registry.register(
            "herald_nats_subscriptions",
            "gateway: rooms subscribed (rooms with a member here)",
            metrics.subscriptions.clone(),
        );
        registry.register(
            "herald_nats_history_items",
            "logic: room items stored in JetStream for history (acknowledged by the stream)",
            metrics.history_items.clone(),
        );
        registry.register(
            "herald_nats_gateways_live",
            "logic: gateways that announced themselves within gateway_ttl",
            metrics.gateways_live.clone(),
        );
        metrics
    }

    pub(super) fn event(&self, event: &async_nats::Event) {
        let name = match event {
            async_nats::Event::Connected => {
                self.connected.set(1);
                tracing::info!("connected to NATS");
                "connected"
            }
            async_nats::Event::Disconnected => {
                self.connected.set(0);
                tracing::warn!("disconnected from NATS; reconnecting");
                "disconnected"
            }
            async_nats::Event::SlowConsumer(sid) => {
                tracing::warn!(sid, "NATS messages dropped: a subscription fell behind");
                "slow_consumer"
            }
            async_nats::Event::ServerError(e) => {
                tracing::warn!(error = %e, "NATS server error");
                "server_error"
            }
            async_nats::Event::ClientError(e) => {
                // While disconnected every failed reconnect attempt reports one; the disconnect was logged already.
                if self.connected.get() == 1 {
                    tracing::warn!(error = %e, "NATS client error");
                } else {
                    tracing::debug!(error = %e, "NATS reconnect attempt failed");
                }
                "client_error"
            }
            async_nats::Event::LameDuckMode => "lame_duck",
            async_nats::Event::Draining => "draining",
            async_nats::Event::Closed => {
                self.connected.set(0);
                "closed"
            }
        };
        self.event_named(name);
    }

    pub(super) fn event_named(&self, name: &'static str) {
        self.events.get_or_create(&EventLabel { event: name }).inc();
    }

    pub(super) fn publish(&self, result: &'static str) {
        self.publishes.get_or_create(&ResultLabel { result }).inc();
    }

    pub(super) fn received(&self, kind: &'static str) {
        self.received.get_or_create(&KindLabel { kind }).inc();
    }

    pub(super) fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabel { reason }).inc();
    }
}
