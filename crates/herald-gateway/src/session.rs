//! One WebSocket connection after the handshake, in three parts:
//! - `writer`: the fan-out path's direct writes and the bounded outbox behind them ([`Session`] is what the hub
//!   holds and delivers to);
//! - `connection`: the connection's own task: reads, heartbeat, flushing, and the close, as one state;
//! - `commands`: what the client's messages ask for, and the answers.
//!
//! A session reaches only its `Context`: the hub, the limits and the metrics, shared by every connection of
//! the gateway.

mod commands;
mod connection;
mod writer;

pub(crate) use self::connection::run;
pub(crate) use self::writer::Context;
pub use self::writer::Session;
