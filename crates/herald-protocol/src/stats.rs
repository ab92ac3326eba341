//! The documents herald shows its operators and tools: `GET /stats` of every mode, and what a gateway announces
//! on NATS. One struct each, serialized by herald and read back by `herald-bench` and the tests, so a field is
//! renamed in one place or not at all. docs/operations.md shows each document.

use serde::{Deserialize, Serialize};

use crate::counts::GatewayCounts;

/// `GET /stats` of any mode: which document depends on the bus behind the push API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stats {
    /// On NATS (`herald logic --bus`, `herald serve --bus`): the gateways heard from.
    Nats(NatsStats),
    /// `herald logic` on gRPC: each gateway's link and last reported status.
    Cluster(ClusterStats),
    /// `herald serve` in memory, and a gateway's internal listener: the hub's own figures.
    Hub(HubStats),
}

/// The fan-out engine's figures: gauges now, counters since start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubStats {
    /// Connections registered.
    pub connections: u64,
    /// Rooms with at least one member.
    pub rooms: u64,
    /// Users with at least one authenticated connection.
    pub users: u64,
    /// Room memberships over all connections.
    pub memberships: u64,
    /// Items waiting for their merged frame.
    pub pending_items: u64,
    /// Pushes accepted.
    pub pushes: u64,
    /// Items accepted.
    pub items: u64,
    /// Merged frames encoded.
    pub frames: u64,
    /// Items carried in those frames.
    pub frame_items: u64,
    /// Frames handed to connections (frames × recipients).
    pub deliveries: u64,
    /// Bytes handed to connections.
    pub delivered_bytes: u64,
    /// Frames compressed (permessage-deflate): once per batch, for every connection that negotiated it.
    #[serde(default)]
    pub compressed_frames: u64,
    /// Payload bytes of those frames before compression.
    #[serde(default)]
    pub compression_in_bytes: u64,
    /// Payload bytes of those frames after compression.
    #[serde(default)]
    pub compression_out_bytes: u64,
    /// Items dropped because their room had no member.
    pub items_unrouted: u64,
    /// Pushes the hub refused, for any reason (queue full, shutting down, more items than a queue holds, the store
    /// unavailable).
    pub pushes_refused: u64,
    /// Shards (buckets) of the hub.
    pub shards: u64,
    /// The merge window, in milliseconds.
    pub merge_window_ms: u64,
    /// The most items in one frame.
    pub merge_max_items: u64,
}

/// `GET /stats` of `herald logic` on gRPC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStats {
    /// Gateways configured (`gateways`).
    pub gateways_total: u64,
    /// Gateways whose link is up.
    pub gateways_up: u64,
    /// Connections over the gateways that are up, as they last reported.
    pub connections: u64,
    /// Each gateway, in the order configured.
    pub gateways: Vec<GatewayLink>,
}

/// One gateway as logic sees it over gRPC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayLink {
    /// The gateway's internal listener, as configured.
    pub addr: String,
    /// Whether the link's stream is open.
    pub state: LinkState,
    /// Seconds since the link last went up or down.
    pub since_secs: Option<u64>,
    /// Why the link is down (the last error), while it is.
    pub last_error: Option<String>,
    /// Pushes queued or in flight to the gateway, not yet answered.
    pub queue_depth: u64,
    /// What the gateway last reported about itself (absent while the link is down).
    pub status: Option<GatewayStatus>,
}

/// A link's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// The stream to the gateway is open.
    Up,
    /// It is not: pushes are refused for this gateway.
    Down,
}

/// What a gateway reports about itself to logic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayStatus {
    /// False once the gateway has begun shutting down.
    pub serving: bool,
    /// Its hub's figures.
    pub hub: HubStats,
    /// What its connections and histories counted (closes, drops, history); absent from a gateway that does not
    /// report them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<GatewayCounts>,
}

/// `GET /stats` on NATS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NatsStats {
    /// Always `"nats"`: tells this document from the others.
    pub bus: NatsBusName,
    /// The push API's connection to NATS.
    pub nats: NatsConnection,
    /// Gateways that announced themselves within the gateway time-to-live.
    pub gateways_live: u64,
    /// Connections over those gateways, as they announced.
    pub connections: u64,
    /// Each of those gateways.
    pub gateways: Vec<HeardGateway>,
}

/// The `bus` field of [`NatsStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NatsBusName {
    /// NATS.
    Nats,
}

/// The state of a connection to NATS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatsConnection {
    /// Connected, or not.
    pub state: NatsState,
}

/// A NATS client's connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NatsState {
    /// Connected.
    Connected,
    /// Lost, reconnecting.
    Disconnected,
    /// Not connected yet.
    Connecting,
}

impl NatsState {
    /// The state as `/stats` writes it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::Disconnected => "disconnected",
            Self::Connecting => "connecting",
        }
    }
}

/// A gateway's announcement on NATS (`herald.gateways`), sent every announce interval and once more, with
/// `leaving`, when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// Unique while the process lives: host, process id, WebSocket address and the process's other listener.
    pub id: String,
    /// The gateway is stopping: forget it (the other fields are then empty).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
    /// The WebSocket listener, as clients reach it.
    #[serde(default)]
    pub ws_addr: String,
    /// False once the gateway has begun shutting down.
    #[serde(default)]
    pub serving: bool,
    /// Connections held.
    #[serde(default)]
    pub connections: u64,
    /// Rooms with members here.
    #[serde(default)]
    pub rooms: u64,
    /// Room subscriptions NATS has confirmed: pushes to those rooms reach this gateway.
    #[serde(default)]
    pub subscriptions: u64,
    /// Items waiting in the hub's merge batches.
    #[serde(default)]
    pub pending_items: u64,
    /// What its connections and histories counted (a gateway's; `herald serve --bus` announces none, its own
    /// dashboard has them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<GatewayCounts>,
}

/// A gateway as logic heard it on NATS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeardGateway {
    /// What it last announced.
    #[serde(flatten)]
    pub announced: Announcement,
    /// Milliseconds since then.
    pub last_seen_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_document_reads_back_as_itself() {
        let hub = Stats::Hub(HubStats {
            connections: 2,
            shards: 16,
            ..HubStats::default()
        });
        let cluster = Stats::Cluster(ClusterStats {
            gateways_total: 1,
            gateways_up: 1,
            connections: 2,
            gateways: vec![GatewayLink {
                addr: "127.0.0.1:7788".into(),
                state: LinkState::Up,
                since_secs: Some(3),
                last_error: None,
                queue_depth: 0,
                status: Some(GatewayStatus {
                    serving: true,
                    hub: HubStats::default(),
                    counts: Some(GatewayCounts::default()),
                }),
            }],
        });
        let nats = Stats::Nats(NatsStats {
            bus: NatsBusName::Nats,
            nats: NatsConnection {
                state: NatsState::Connected,
            },
            gateways_live: 1,
            connections: 0,
            gateways: vec![HeardGateway {
                announced: Announcement {
                    id: "g".into(),
                    ..Announcement::default()
                },
                last_seen_ms: 5,
            }],
        });
        for stats in [hub, cluster, nats] {
            let text = serde_json::to_string(&stats).unwrap();
            assert_eq!(serde_json::from_str::<Stats>(&text).unwrap(), stats, "{text}");
        }
    }

    #[test]
    fn a_leaving_announcement_is_small() {
        let leaving = Announcement {
            id: "g".into(),
            leaving: true,
            ..Announcement::default()
        };
        let text = serde_json::to_string(&leaving).unwrap();
        assert!(text.contains(r#""leaving":true"#), "{text}");
        assert_eq!(
            serde_json::from_str::<Announcement>(r#"{"id":"g","leaving":true}"#).unwrap(),
            leaving
        );
    }
}
