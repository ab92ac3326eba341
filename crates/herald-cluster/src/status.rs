//! A gateway's status as it crosses the gRPC hop: the protobuf form of [`herald_protocol::stats::GatewayStatus`],
//! field for field.

use herald_protocol::counts::{GatewayCounts, HistoryFigures};
use herald_protocol::stats::{GatewayStatus, HubStats};

use crate::pb;
use crate::pb::HubStats as WireHubStats;

/// A `$to` built from the hub figures of `$from`: the two have the same fields.
macro_rules! hub_figures {
    ($from:expr => $to:ident) => {{
        let from = $from;
        $to {
            connections: from.connections,
            rooms: from.rooms,
            users: from.users,
            memberships: from.memberships,
            pending_items: from.pending_items,
            pushes: from.pushes,
            items: from.items,
            frames: from.frames,
            frame_items: from.frame_items,
            deliveries: from.deliveries,
            delivered_bytes: from.delivered_bytes,
            compressed_frames: from.compressed_frames,
            compression_in_bytes: from.compression_in_bytes,
            compression_out_bytes: from.compression_out_bytes,
            items_unrouted: from.items_unrouted,
            pushes_refused: from.pushes_refused,
            shards: from.shards,
            merge_window_ms: from.merge_window_ms,
            merge_max_items: from.merge_max_items,
        }
    }};
}

/// The gateway's side: its status as the protobuf message.
pub(crate) fn to_wire(status: &GatewayStatus) -> pb::GatewayStatus {
    pb::GatewayStatus {
        serving: status.serving,
        hub: Some(hub_figures!(&status.hub => WireHubStats)),
        counts: status.counts.as_ref().map(|counts| pb::Counts {
            closes: counts.closes.clone().map(|by| pb::Tally {
                by: by.into_iter().collect(),
            }),
            dropped_frames: counts.dropped_frames.clone().map(|by| pb::Tally {
                by: by.into_iter().collect(),
            }),
            history: counts.history.as_ref().map(|history| pb::History {
                stored_items: history.stored_items,
                bytes: history.bytes,
                evicted: history.evicted.clone().into_iter().collect(),
                recoveries: history.recoveries.clone().into_iter().collect(),
                replayed_items: history.replayed_items,
            }),
        }),
    }
}

/// Logic's side: the protobuf message as the status (a gateway that sent no hub figures reports zeros).
pub(crate) fn from_wire(status: pb::GatewayStatus) -> GatewayStatus {
    GatewayStatus {
        serving: status.serving,
        hub: hub_figures!(status.hub.unwrap_or_default() => HubStats),
        counts: status.counts.map(|counts| GatewayCounts {
            closes: counts.closes.map(|tally| tally.by.into_iter().collect()),
            dropped_frames: counts.dropped_frames.map(|tally| tally.by.into_iter().collect()),
            history: counts.history.map(|history| HistoryFigures {
                stored_items: history.stored_items,
                bytes: history.bytes,
                evicted: history.evicted.into_iter().collect(),
                recoveries: history.recoveries.into_iter().collect(),
                replayed_items: history.replayed_items,
            }),
        }),
    }
}
