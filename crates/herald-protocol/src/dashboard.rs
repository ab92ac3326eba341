//! `GET /dashboard/data`: the one document the dashboard page reads every second. Counters are totals since the
//! push API started; the page turns two samples into rates with [`DashboardData::uptime_ms`]. A figure a mode
//! cannot see is `None` (JSON `null`), never a zero that looks measured. docs/operations.md shows the document.

use serde::{Deserialize, Serialize};

use crate::counts::GatewayCounts;
use crate::stats::HubStats;

/// The dashboard's sample: the whole, and on logic each gateway beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DashboardData {
    /// Which bus is behind the push API, as `/stats` tells them apart.
    pub mode: DashboardMode,
    /// Milliseconds since the push API started (a monotonic clock): rates are counter deltas over its deltas.
    pub uptime_ms: u64,
    /// The whole: this node's hub (`herald serve` in memory), or what the push API took and the gateways sum to.
    pub total: Totals,
    /// Closes, dropped frames and history (`closes`, `dropped_frames`, `history` at the document's top level):
    /// this process's, or on logic the sum of what the gateways report; each `None` when nobody reports it.
    #[serde(flatten)]
    pub counts: GatewayCounts,
    /// On logic: each gateway, in the order configured (gRPC) or by id (NATS). Empty on `herald serve`.
    pub gateways: Vec<GatewayRow>,
}

/// The bus behind the push API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DashboardMode {
    /// `herald serve` in memory: one hub, every figure measured here.
    Hub,
    /// `herald logic` on gRPC: the gateways' last reported figures.
    Cluster,
    /// On NATS: the gateways' announcements (gauges only).
    Nats,
}

/// Figures of the whole. Gauges now, counters since start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Connections (on logic: summed over the gateways that report).
    pub connections: u64,
    /// Rooms with a member (on logic: summed over gateways, so a room held on two counts twice).
    pub rooms: u64,
    /// Users with an authenticated connection (summed likewise); `None` on NATS, whose announcements lack it.
    pub users: Option<u64>,
    /// Pushes taken (`herald serve` in memory: by the hub, as `/stats`; logic: answered 200 by this push API).
    pub pushes: u64,
    /// Items in those pushes.
    pub items: u64,
    /// Pushes refused (answered 503 or 413).
    pub pushes_refused: u64,
    /// Merged frames encoded (on gRPC logic: summed over the gateways up); `None` on NATS logic.
    pub frames: Option<u64>,
    /// Frames handed to connections (frames × recipients); as `frames`.
    pub deliveries: Option<u64>,
    /// Bytes handed to connections; as `frames`.
    pub delivered_bytes: Option<u64>,
    /// Payload bytes compressed (permessage-deflate, once per batch), before compression; as `frames`.
    #[serde(default)]
    pub compression_in_bytes: Option<u64>,
    /// The same bytes after compression; as `frames`.
    #[serde(default)]
    pub compression_out_bytes: Option<u64>,
    /// Items dropped because their room or user had no connection; as `frames`.
    pub items_unrouted: Option<u64>,
}

/// One gateway as logic sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayRow {
    /// Its internal listener as configured (gRPC), or its announced id (NATS).
    pub name: String,
    /// Whether pushes reach it.
    pub state: GatewayState,
    /// Seconds in this state (gRPC).
    pub since_secs: Option<u64>,
    /// Why the link is down, while it is (gRPC).
    pub last_error: Option<String>,
    /// Connections it holds, as it last said (0 while down).
    pub connections: u64,
    /// Rooms with members there, as it last said.
    pub rooms: u64,
    /// Pushes queued or in flight to it, not yet answered (gRPC).
    pub queue_depth: Option<u64>,
    /// Milliseconds since it last announced itself (NATS).
    pub last_seen_ms: Option<u64>,
    /// Its hub's figures, as it last reported them (gRPC, while the link is up).
    pub hub: Option<HubStats>,
    /// Its closes, drops and history, as it last reported them.
    pub counts: Option<GatewayCounts>,
}

/// A gateway's state on the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GatewayState {
    /// Reachable and serving.
    Up,
    /// Reachable, but shutting down: it takes no new connections.
    Draining,
    /// Not reachable: pushes are not delivered there (gRPC link down).
    Down,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::counts::HistoryFigures;

    #[test]
    fn the_document_reads_back_as_itself() {
        let data = DashboardData {
            mode: DashboardMode::Cluster,
            uptime_ms: 1500,
            total: Totals {
                connections: 3,
                pushes: 2,
                items: 4,
                frames: Some(2),
                ..Totals::default()
            },
            counts: GatewayCounts {
                closes: None,
                dropped_frames: Some(BTreeMap::from([("closing".to_owned(), 1)])),
                history: Some(HistoryFigures::default()),
            },
            gateways: vec![GatewayRow {
                name: "127.0.0.1:7788".into(),
                state: GatewayState::Down,
                since_secs: Some(4),
                last_error: Some("connection refused".into()),
                connections: 0,
                rooms: 0,
                queue_depth: Some(0),
                last_seen_ms: None,
                hub: None,
                counts: None,
            }],
        };
        let text = serde_json::to_string(&data).unwrap();
        assert!(text.contains(r#""closes":null"#), "unknown is null, not zero: {text}");
        assert!(text.contains(r#""state":"down""#), "{text}");
        assert_eq!(serde_json::from_str::<DashboardData>(&text).unwrap(), data);
    }
}
