//! The hub's metrics: what was pushed, merged, delivered and dropped.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabel {
    target: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
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
    pub(crate) items_unrouted: Counter,
    pub(crate) frames: Counter,
    pub(crate) frame_items: Counter,
    pub(crate) deliveries: Counter,
    pub(crate) delivered_bytes: Counter,
    pub(crate) connections: Gauge,
    pub(crate) rooms: Gauge,
    pub(crate) users: Gauge,
    pub(crate) memberships: Gauge,
    pub(crate) pending_items: Gauge,
}

impl HubMetrics {
    /// Creates the metrics and registers them (prefix `herald_`).
    pub fn register(registry: &mut Registry) -> Self {
        let pushes = Family::<TargetLabel, Counter>::default();
        let refused = Family::<ReasonLabel, Counter>::default();
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
            items_unrouted: Counter::default(),
            frames: Counter::default(),
            frame_items: Counter::default(),
            deliveries: Counter::default(),
            delivered_bytes: Counter::default(),
            connections: Gauge::default(),
            rooms: Gauge::default(),
            users: Gauge::default(),
            memberships: Gauge::default(),
            pending_items: Gauge::default(),
        };
        registry.register("herald_pushes", "Pushes accepted, by target", pushes);
        registry.register("herald_push_items", "Items accepted in pushes", metrics.items.clone());
        registry.register(
            "herald_pushes_refused",
            "Pushes refused (answered 503), by reason",
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
        metrics
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
