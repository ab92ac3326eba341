//! The hub's metrics: what was pushed, merged, delivered and dropped.

use std::collections::BTreeMap;

use herald_protocol::counts::HistoryFigures;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::outcomes::{Evicted, Recovery};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabel {
    target: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// Counters and gauges of the fan-out engine. Cheap to clone; every handle is resolved once, so the hot path
/// only does atomic adds.
#[derive(Clone, Debug)]
pub struct HubMetrics {
    pub(crate) pushes_room: Counter,
    pub(crate) pushes_all: Counter,
    pub(crate) pushes_user: Counter,
    pub(crate) items: Counter,
    pub(crate) refused_queue_full: Counter,
    pub(crate) refused_shutting_down: Counter,
    pub(crate) refused_too_many_items: Counter,
    pub(crate) refused_unavailable: Counter,
    pub(crate) items_unrouted: Counter,
    pub(crate) frames: Counter,
    pub(crate) frame_items: Counter,
    pub(crate) deliveries: Counter,
    pub(crate) delivered_bytes: Counter,
    pub(crate) compressed_frames: Counter,
    pub(crate) compression_in_bytes: Counter,
    pub(crate) compression_out_bytes: Counter,
    pub(crate) connections: Gauge,
    pub(crate) rooms: Gauge,
    pub(crate) users: Gauge,
    pub(crate) memberships: Gauge,
    pub(crate) pending_items: Gauge,
    pub(crate) history_items: Counter,
    pub(crate) history_bytes: Gauge,
    history_evicted: [Counter; 3],
    recoveries: [Counter; OUTCOMES.len()],
    replayed_items: Counter,
}

/// Every outcome of a resuming JOIN, each counted under its label.
const OUTCOMES: [Recovery; 5] = [
    Recovery::Recovered,
    Recovery::OtherEpoch,
    Recovery::Gone,
    Recovery::Ahead,
    Recovery::Unavailable,
];

impl HubMetrics {
    /// Creates the metrics and registers them (prefix `herald_`).
    pub fn register(registry: &mut Registry) -> Self {
        let pushes = Family::<TargetLabel, Counter>::default();
        let refused = Family::<ReasonLabel, Counter>::default();
        let evicted = Family::<ReasonLabel, Counter>::default();
        let recoveries = Family::<OutcomeLabel, Counter>::default();
        let metrics = Self {
            pushes_room: labelled(&pushes, TargetLabel { target: "room" }),
            pushes_all: labelled(&pushes, TargetLabel { target: "all" }),
            pushes_user: labelled(&pushes, TargetLabel { target: "user" }),
            items: Counter::default(),
            refused_queue_full: labelled(&refused, ReasonLabel { reason: "queue_full" }),
            refused_shutting_down: labelled(
                &refused,
                ReasonLabel {
                    reason: "shutting_down",
                },
            ),
            refused_too_many_items: labelled(
                &refused,
                ReasonLabel {
                    reason: "too_many_items",
                },
            ),
            refused_unavailable: labelled(&refused, ReasonLabel { reason: "unavailable" }),
            items_unrouted: Counter::default(),
            frames: Counter::default(),
            frame_items: Counter::default(),
            deliveries: Counter::default(),
            delivered_bytes: Counter::default(),
            compressed_frames: Counter::default(),
            compression_in_bytes: Counter::default(),
            compression_out_bytes: Counter::default(),
            connections: Gauge::default(),
            rooms: Gauge::default(),
            users: Gauge::default(),
            memberships: Gauge::default(),
            pending_items: Gauge::default(),
            history_items: Counter::default(),
            history_bytes: Gauge::default(),
            history_evicted: Evicted::ALL.map(|why| labelled(&evicted, ReasonLabel { reason: why.label() })),
            recoveries: OUTCOMES.map(|outcome| {
                labelled(
                    &recoveries,
                    OutcomeLabel {
                        outcome: outcome.label(),
                    },
                )
            }),
            replayed_items: Counter::default(),
        };
        registry.register("herald_pushes", "Pushes accepted, by target", pushes);
        registry.register("herald_push_items", "Items accepted in pushes", metrics.items.clone());
        registry.register(
            "herald_pushes_refused",
            "Pushes refused, by reason: queue_full, shutting_down and unavailable (answered 503), too_many_items (more items than a queue holds: 413)",
            refused,
        );
        registry.register(
            "herald_items_unrouted",
            "Items dropped because their room (or user) had no connection here (when pushed, or when their frame was sent)",
            metrics.items_unrouted.clone(),
        );
        registry.register("herald_frames", "Merged PUSH frames encoded", metrics.frames.clone());
        registry.register(
            "herald_frame_items",
            "Items carried in merged frames",
            metrics.frame_items.clone(),
        );
        registry.register(
            "herald_deliveries",
            "Frames handed to connections (frames x recipients)",
            metrics.deliveries.clone(),
        );
        registry.register(
            "herald_delivered_bytes",
            "Bytes handed to connections",
            metrics.delivered_bytes.clone(),
        );
        registry.register(
            "herald_compressed_frames",
            "Frames compressed (permessage-deflate), each once for every connection that negotiated it",
            metrics.compressed_frames.clone(),
        );
        registry.register(
            "herald_compression_in_bytes",
            "Payload bytes of the compressed frames, before compression",
            metrics.compression_in_bytes.clone(),
        );
        registry.register(
            "herald_compression_out_bytes",
            "Payload bytes of the compressed frames, after compression",
            metrics.compression_out_bytes.clone(),
        );
        registry.register(
            "herald_connections",
            "Connections registered in the hub",
            metrics.connections.clone(),
        );
        registry.register("herald_rooms", "Rooms with at least one member", metrics.rooms.clone());
        registry.register(
            "herald_users",
            "Users with at least one authenticated connection",
            metrics.users.clone(),
        );
        registry.register(
            "herald_memberships",
            "Room memberships over all connections",
            metrics.memberships.clone(),
        );
        registry.register(
            "herald_pending_items",
            "Items waiting for their merged frame",
            metrics.pending_items.clone(),
        );
        registry.register(
            "herald_history_items",
            "Items retained in room histories (stored)",
            metrics.history_items.clone(),
        );
        registry.register(
            "herald_history_evicted",
            "Items that left room histories, by reason: size (history_size), age (history_ttl), memory (history_max_bytes)",
            evicted,
        );
        registry.register(
            "herald_history_bytes",
            "What the items retained in room histories cost, in bytes (bounded by history_max_bytes)",
            metrics.history_bytes.clone(),
        );
        registry.register(
            "herald_recoveries",
            "JOINs with since, by outcome: recovered, other_epoch, gone (items left the history), ahead (an offset the room never reached)",
            recoveries,
        );
        registry.register(
            "herald_replayed_items",
            "Items replayed to connections that resumed",
            metrics.replayed_items.clone(),
        );
        metrics
    }

    pub(crate) fn evicted(&self, why: Evicted, items: u64) {
        let index = Evicted::ALL
            .iter()
            .position(|e| *e == why)
            .expect("every reason is listed");
        self.history_evicted[index].inc_by(items);
    }

    pub(crate) fn recovery(&self, outcome: Recovery, replayed: usize) {
        let index = OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .expect("every outcome is listed");
        self.recoveries[index].inc();
        self.replayed_items.inc_by(replayed as u64);
    }

    /// Items evicted from histories for `reason` (`size`, `age`, `memory`).
    #[cfg(test)]
    pub(crate) fn evicted_of(&self, reason: &str) -> u64 {
        let index = Evicted::ALL
            .iter()
            .position(|why| why.label() == reason)
            .expect("a reason");
        self.history_evicted[index].get()
    }

    /// Resuming JOINs with `outcome`.
    #[cfg(test)]
    pub(crate) fn recoveries_of(&self, outcome: &str) -> u64 {
        let index = OUTCOMES.iter().position(|r| r.label() == outcome).expect("an outcome");
        self.recoveries[index].get()
    }

    /// Room history and resuming JOINs as counted so far, for a gateway to report ([`HistoryFigures`]).
    pub fn history(&self) -> HistoryFigures {
        HistoryFigures {
            stored_items: self.history_items.get(),
            bytes: self.history_bytes.get().max(0) as u64,
            evicted: by_label(Evicted::ALL.map(Evicted::label), &self.history_evicted),
            recoveries: by_label(OUTCOMES.map(Recovery::label), &self.recoveries),
            replayed_items: self.replayed_items.get(),
        }
    }

    /// Metrics not registered anywhere (for tests and tools).
    pub fn unregistered() -> Self {
        Self::register(&mut Registry::default())
    }
}

/// The counter of one label set, resolved once. (The guard `get_or_create` returns must be dropped before the
/// next call on the same family, or the family's lock deadlocks: hence a function, not an inline expression.)
pub fn labelled<L>(family: &Family<L, Counter>, labels: L) -> Counter
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    family.get_or_create(&labels).clone()
}

/// Each counter of a labelled family (resolved with [`labelled`], in the order of `labels`) by its label: the form
/// in which counts are reported to other processes.
pub fn by_label<const N: usize>(labels: [&str; N], counters: &[Counter; N]) -> BTreeMap<String, u64> {
    labels
        .into_iter()
        .zip(counters)
        .map(|(label, counter)| (label.to_owned(), counter.get()))
        .collect()
}
