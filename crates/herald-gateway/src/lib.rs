//! herald's WebSocket side: the listener, the handshake, and one session per connection feeding the hub.
//!
//! # Layout
//! - [`Gateway::serve`] (`listener.rs`): the accept loop. It never waits on a client: each connection's handshake
//!   runs in its own task under the handshake timeout, and a full `accept` (out of file descriptors) backs off
//!   instead of spinning.
//! - [`handshake`]: reads one HTTP request; `/connect` upgrades, `/` serves the demo page (`/herald-client.js` its library).
//! - [`access`]: who may connect (source rate, `Origin`, token, connections per user) and join which rooms.
//! - [`session`]: a connection's life: the writer (direct writes, a bounded outbox behind them), the connection's
//!   task (reads into a stack buffer, heartbeat, close, as one state) and the client's commands.
//! - [`metrics`]: handshakes, closes by reason, bad input by kind, dropped frames; the counts a node reports.
//! - [`node`]: the hub, the accept loop and the connections started together and drained in order.
//! - [`GatewayConfig`] (`config.rs`): the limits of the WebSocket side.

pub mod access;
mod config;
pub mod handshake;
mod listener;
pub mod metrics;
pub mod node;
pub mod session;

pub use crate::config::GatewayConfig;
pub use crate::listener::Gateway;
pub use crate::node::Node;
pub use crate::session::Session;
