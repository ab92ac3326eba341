//! One WebSocket connection after the handshake, in four parts:
//! - `writer`: the fan-out path's direct writes and the bounded outbox behind them ([`Session`] is what the hub
//!   holds and delivers to);
//! - `connection`: the connection's own task: reads, heartbeat, flushing, and the close, as one state;
//! - `commands`: what the client's messages ask for, and the answers;
//! - `auth`: what the connection's task keeps of its token (its expiry, the rooms it allows).
//!
//! Imports point one way: `connection` uses `commands` and `writer`, `commands` uses `writer`, and all three use
//! `auth`.
//!
//! A session reaches only its `Context`: the hub, the limits and the metrics, shared by every connection of
//! the gateway.

mod auth;
mod commands;
mod connection;
mod writer;

pub(crate) use self::connection::run;
pub(crate) use self::writer::Context;
pub use self::writer::Session;
