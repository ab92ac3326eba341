//! The limits of the WebSocket side.

use std::time::Duration;

/// Limits of the WebSocket side.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GatewayConfig {
    /// WebSocket connections held at once (a permit taken when the handshake completes); more are answered 503.
    pub max_connections: usize,
    /// TCP connections whose HTTP request is still awaited or being answered; more are answered 503 at once. Kept
    /// apart from `max_connections` so that idle half-open connections cannot take the places of real clients.
    pub max_handshakes: usize,
    /// Rooms one connection may be in.
    pub max_rooms_per_connection: usize,
    /// Largest message (and frame) a client may send, in bytes.
    pub max_message_bytes: usize,
    /// Time a new connection has to send its complete HTTP request.
    pub handshake_timeout: Duration,
    /// A connection that sends nothing (no message, no ping) for this long is closed (code 4001).
    pub heartbeat_timeout: Duration,
    /// A write that makes no progress for this long closes the connection as a slow consumer (code 4000); also
    /// the longest a closing connection is given to finish its close handshake.
    pub write_timeout: Duration,
    /// Frames that may wait in one connection's outbox; one more closes it as a slow consumer (code 4000).
    pub outbox_frames: usize,
    /// Bytes that may wait in one connection's outbox (every frame counted whole); a frame that would go past it
    /// closes the connection as a slow consumer (4000). The first frame is always taken.
    pub outbox_bytes: usize,
    /// Messages a second one connection may send (a token bucket holding two seconds' worth); one more closes it
    /// with 4005. 0 turns the limit off.
    pub client_message_rate: f64,
    /// Accept permessage-deflate offers (RFC 7692): frames to connections that offered it go out compressed, once
    /// per batch for all of them, and their messages may come compressed.
    pub compression: bool,
}

impl GatewayConfig {
    /// The most messages a connection may send at once, after a quiet spell: two seconds' worth, at least one.
    pub fn message_burst(&self) -> f64 {
        (self.client_message_rate * 2.0).max(1.0)
    }
}
