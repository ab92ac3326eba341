//! The gateway's metrics: handshakes, closes by reason, bad input by kind, dropped frames, token failures; and
//! [`NodeCounters`], the closes, drops and history a process that holds connections reports.

use herald_hub::HubMetrics;
use herald_hub::metrics::{by_label, labelled};
use herald_protocol::counts::{CountsSource, GatewayCounts};
use herald_protocol::token::TokenError;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Label {
    reason: &'static str,
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent a close frame.
    Client,
    /// The client went away without one (EOF, reset).
    PeerGone,
    /// Nothing received within the heartbeat timeout.
    Heartbeat,
    /// Outbox full or a write stalled past the write timeout.
    SlowConsumer,
    /// The client broke the protocol or sent something herald does not take.
    BadInput,
    /// The server is shutting down.
    Shutdown,
    /// Writing to the socket failed.
    WriteError,
    /// The token expired without a REFRESH (4003).
    TokenExpired,
    /// The push API closed the user's connections (4004).
    Disconnected,
    /// Messages faster than `client_message_rate` (4005).
    MessageRate,
}

impl CloseReason {
    const ALL: [Self; 10] = [
        Self::Client,
        Self::PeerGone,
        Self::Heartbeat,
        Self::SlowConsumer,
        Self::BadInput,
        Self::Shutdown,
        Self::WriteError,
        Self::TokenExpired,
        Self::Disconnected,
        Self::MessageRate,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::PeerGone => "peer_gone",
            Self::Heartbeat => "heartbeat",
            Self::SlowConsumer => "slow_consumer",
            Self::BadInput => "bad_input",
            Self::Shutdown => "shutdown",
            Self::WriteError => "write_error",
            Self::TokenExpired => "token_expired",
            Self::Disconnected => "disconnected",
            Self::MessageRate => "message_rate",
        }
    }
}

/// What was wrong with a client's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadInput {
    /// RFC 6455 violation (close 1002).
    Protocol,
    /// Text that is not UTF-8 (close 1007).
    InvalidUtf8,
    /// A message over the read limit, or a compressed one that inflates past it (close 1009).
    TooBig,
    /// A compressed message whose bytes do not inflate (close 1007).
    BadCompression,
    /// Text that is not JSON (close 1007).
    NotJson,
    /// JSON of unknown type or structure (close 1008).
    UnknownMessage,
    /// A binary message (close 1003).
    Binary,
    /// A JOIN over the room limit (answered with ERROR, or ignored without an id).
    TooManyRooms,
    /// A JOIN or LEAVE with an empty or over-long room name (ERROR, or ignored).
    InvalidRoom,
    /// A JOIN to a room the connection's token does not allow (ERROR `forbidden`, or ignored).
    Forbidden,
    /// A REFRESH or room token that did not verify (ERROR `invalid_token`, or ignored).
    InvalidToken,
    /// A message whose `id` is longer than 128 bytes (close 1008).
    IdTooLong,
    /// A JOIN of a new room when the hub holds `max_rooms` (ERROR `too_many_rooms_total`, or ignored).
    TooManyRoomsTotal,
}

impl BadInput {
    const ALL: [Self; 13] = [
        Self::Protocol,
        Self::InvalidUtf8,
        Self::TooBig,
        Self::BadCompression,
        Self::NotJson,
        Self::UnknownMessage,
        Self::Binary,
        Self::TooManyRooms,
        Self::InvalidRoom,
        Self::Forbidden,
        Self::InvalidToken,
        Self::IdTooLong,
        Self::TooManyRoomsTotal,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Protocol => "protocol",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::TooBig => "too_big",
            Self::BadCompression => "bad_compression",
            Self::NotJson => "not_json",
            Self::UnknownMessage => "unknown_message",
            Self::Binary => "binary",
            Self::TooManyRooms => "too_many_rooms",
            Self::InvalidRoom => "invalid_room",
            Self::Forbidden => "forbidden",
            Self::InvalidToken => "invalid_token",
            Self::IdTooLong => "id_too_long",
            Self::TooManyRoomsTotal => "too_many_rooms_total",
        }
    }
}

/// How an incoming TCP connection's HTTP request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Upgraded to a WebSocket.
    Upgraded,
    /// Served the demo page or its client library.
    Page,
    /// Answered 4xx (not a valid upgrade, unknown path).
    Rejected,
    /// The request did not arrive within the handshake timeout.
    Timeout,
    /// Refused with 503: at the connection limit (`max_connections`).
    OverLimit,
    /// Refused with 503 at once, the request unread: at `max_handshakes`.
    Busy,
    /// Refused with 401: no valid token (the reason is counted in `herald_auth_failures_total`).
    Unauthorized,
    /// Refused with 403: the `Origin` is not in `allowed_origins`.
    ForbiddenOrigin,
    /// Refused with 429: the user holds `max_connections_per_user` already.
    UserLimit,
    /// Refused with 429: the source address is over `handshake_rate_per_ip`.
    RateLimited,
}

impl Handshake {
    const ALL: [Self; 10] = [
        Self::Upgraded,
        Self::Page,
        Self::Rejected,
        Self::Timeout,
        Self::OverLimit,
        Self::Busy,
        Self::Unauthorized,
        Self::ForbiddenOrigin,
        Self::UserLimit,
        Self::RateLimited,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Upgraded => "upgraded",
            Self::Page => "page",
            Self::Rejected => "rejected",
            Self::Timeout => "timeout",
            Self::OverLimit => "over_limit",
            Self::Busy => "busy",
            Self::Unauthorized => "unauthorized",
            Self::ForbiddenOrigin => "forbidden_origin",
            Self::UserLimit => "user_limit",
            Self::RateLimited => "rate_limited",
        }
    }
}

/// Why frames meant for a connection were not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Discarded when the connection was closed as a slow consumer.
    SlowConsumer,
    /// Arrived after the connection had started closing.
    Closing,
}

impl DropReason {
    const ALL: [Self; 2] = [Self::SlowConsumer, Self::Closing];

    fn label(self) -> &'static str {
        match self {
            Self::SlowConsumer => "slow_consumer",
            Self::Closing => "closing",
        }
    }
}

/// Counters of the gateway. Every labelled handle is resolved once at start.
#[derive(Clone, Debug)]
pub struct GatewayMetrics {
    closes: [Counter; CloseReason::ALL.len()],
    bad_input: [Counter; BadInput::ALL.len()],
    handshakes: [Counter; Handshake::ALL.len()],
    dropped: [Counter; DropReason::ALL.len()],
    accept_errors: Counter,
    read_pauses: Counter,
    sent: Counter,
    auth_failures: [Counter; TokenError::ALL.len()],
}

impl GatewayMetrics {
    /// Creates the metrics and registers them (prefix `herald_`).
    pub fn register(registry: &mut Registry) -> Self {
        let closes = Family::<Label, Counter>::default();
        let bad = Family::<Label, Counter>::default();
        let handshakes = Family::<Label, Counter>::default();
        let dropped = Family::<Label, Counter>::default();
        let auth = Family::<Label, Counter>::default();
        let by = |family: &Family<Label, Counter>, reason| labelled(family, Label { reason });
        let metrics = Self {
            closes: CloseReason::ALL.map(|r| by(&closes, r.label())),
            bad_input: BadInput::ALL.map(|b| by(&bad, b.label())),
            handshakes: Handshake::ALL.map(|h| by(&handshakes, h.label())),
            dropped: DropReason::ALL.map(|d| by(&dropped, d.label())),
            accept_errors: Counter::default(),
            read_pauses: Counter::default(),
            sent: Counter::default(),
            auth_failures: TokenError::ALL.map(|e| by(&auth, e.label())),
        };
        registry.register("herald_closes", "Connections closed, by reason", closes);
        registry.register("herald_bad_input", "Bad client input, by kind", bad);
        registry.register(
            "herald_handshakes",
            "HTTP requests on the WebSocket listener, by outcome",
            handshakes,
        );
        registry.register(
            "herald_dropped_frames",
            "Frames not sent to a connection, by reason",
            dropped,
        );
        registry.register(
            "herald_auth_failures",
            "Tokens refused (at the handshake, on REFRESH, in a JOIN), by reason",
            auth,
        );
        registry.register(
            "herald_accept_errors",
            "accept() failures (e.g. out of file descriptors); the listener backs off",
            metrics.accept_errors.clone(),
        );
        registry.register(
            "herald_sent_frames",
            "Frames written whole to connections that have ended (pushes and replies, close frames not counted): \
             with herald_dropped_frames_total, every frame handed to a connection",
            metrics.sent.clone(),
        );
        registry.register(
            "herald_read_pauses",
            "Times a connection was not read because 64 KiB or more waited to be written to it",
            metrics.read_pauses.clone(),
        );
        metrics
    }

    pub(crate) fn sent(&self, frames: u64) {
        self.sent.inc_by(frames);
    }

    pub(crate) fn read_paused(&self) {
        self.read_pauses.inc();
    }

    pub(crate) fn closed(&self, reason: CloseReason) {
        self.closes[reason as usize].inc();
    }

    pub(crate) fn bad_input(&self, kind: BadInput) {
        self.bad_input[kind as usize].inc();
    }

    pub(crate) fn handshake(&self, outcome: Handshake) {
        self.handshakes[outcome as usize].inc();
    }

    pub(crate) fn dropped(&self, why: DropReason, frames: u64) {
        self.dropped[why as usize].inc_by(frames);
    }

    pub(crate) fn auth_failure(&self, error: TokenError) {
        self.auth_failures[error as usize].inc();
    }

    pub(crate) fn accept_error(&self) {
        self.accept_errors.inc();
    }

    /// What this gateway has counted so far of closes and dropped frames, with the room history `hub` counted.
    pub fn counts(&self, hub: &HubMetrics) -> GatewayCounts {
        GatewayCounts {
            closes: Some(by_label(CloseReason::ALL.map(CloseReason::label), &self.closes)),
            dropped_frames: Some(by_label(DropReason::ALL.map(DropReason::label), &self.dropped)),
            history: Some(hub.history()),
        }
    }
}

/// The counters of one process's WebSocket side, the gateway's and its hub's, read as [`GatewayCounts`] whenever
/// they are reported.
#[derive(Clone, Debug)]
pub struct NodeCounters {
    /// The gateway's.
    pub gateway: GatewayMetrics,
    /// Its hub's.
    pub hub: HubMetrics,
}

impl CountsSource for NodeCounters {
    fn counts(&self) -> GatewayCounts {
        self.gateway.counts(&self.hub)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn the_counts_reported_are_the_figures_metrics_shows() {
        let mut registry = Registry::default();
        let hub = HubMetrics::register(&mut registry);
        let gateway = GatewayMetrics::register(&mut registry);
        gateway.closed(CloseReason::PeerGone);
        gateway.closed(CloseReason::PeerGone);
        gateway.dropped(DropReason::Closing, 3);
        let counts = gateway.counts(&hub);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("a registry encodes");
        let shown = |family: &str, label: &str, by: &BTreeMap<String, u64>| {
            for (value, count) in by {
                let sample = format!("{family}{{{label}=\"{value}\"}} {count}\n");
                assert!(text.contains(&sample), "{sample} in\n{text}");
            }
        };
        let closes = counts.closes.as_ref().expect("closes are counted");
        assert_eq!((closes.len(), closes["peer_gone"]), (CloseReason::ALL.len(), 2));
        shown("herald_closes_total", "reason", closes);
        let dropped = counts.dropped_frames.as_ref().expect("drops are counted");
        assert_eq!(dropped["closing"], 3);
        shown("herald_dropped_frames_total", "reason", dropped);
        let history = counts.history.as_ref().expect("history is counted");
        assert_eq!((history.evicted.len(), history.recoveries.len()), (3, 5));
        shown("herald_history_evicted_total", "reason", &history.evicted);
        shown("herald_recoveries_total", "outcome", &history.recoveries);
    }
}
