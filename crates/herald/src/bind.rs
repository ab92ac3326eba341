//! Opening the listeners; an error names the setting whose address failed.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::WebSocket;

/// Pending connections the kernel queues for the WebSocket listener (capped by net.core.somaxconn).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the WebSocket listener, with SO_REUSEPORT when `reuse_port` is set (the kernel then spreads new
/// connections over every process listening on the port).
pub fn websocket(settings: &WebSocket) -> anyhow::Result<TcpListener> {
    let addr = settings.addr;
    let bind = || -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        if settings.reuse_port {
            socket.set_reuseport(true)?;
        }
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    bind().with_context(|| format!("ws_addr: cannot listen on {addr}"))
}

/// Binds one listener; the error names the setting (`key`).
pub async fn one(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{key}: cannot listen on {addr}"))
}
