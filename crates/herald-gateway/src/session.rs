//! One WebSocket connection after the handshake, in three parts:
//! - `writer`: the fan-out path's direct writes and the bounded outbox behind them ([`Session`] is what the hub
//!   holds and delivers to);
//! - `connection`: the connection's own task: reads, heartbeat, flushing, and the close, as one state;
//! - `commands`: what the client's messages ask for, and the answers.
//!
//! A session reaches only its [`Context`]: the hub, the limits and the metrics, shared by every connection of
//! the gateway.

mod commands;
mod connection;
mod writer;

use std::sync::Arc;

use herald_hub::Hub;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::Notify;

pub(crate) use self::connection::run;
use self::writer::Outbox;
use crate::GatewayConfig;
use crate::metrics::GatewayMetrics;

/// What every session of one gateway shares.
pub(crate) struct Context {
    /// The fan-out engine the connections join rooms in.
    pub(crate) hub: Arc<Hub<Session>>,
    /// Limits of a connection.
    pub(crate) limits: GatewayConfig,
    pub(crate) metrics: GatewayMetrics,
    /// Conformance mode (see `Gateway::new_echo`): every data message is echoed.
    #[cfg(feature = "conformance")]
    pub(crate) echo: bool,
}

/// A connection as the hub and the connection's task share it.
pub struct Session {
    id: u64,
    stream: TcpStream,
    outbox: Mutex<Outbox>,
    /// Wakes the session's task: something was queued, or the connection must close.
    wake: Notify,
    context: Arc<Context>,
}

impl Session {
    pub(crate) fn new(id: u64, stream: TcpStream, context: Arc<Context>) -> Arc<Self> {
        Arc::new(Self {
            id,
            stream,
            outbox: Mutex::default(),
            wake: Notify::new(),
            context,
        })
    }
}
