//! A WebSocket echo server on herald's own connection layer, for the Autobahn|Testsuite only:
//!
//! ```sh
//! cargo run --release -p herald-gateway --features conformance --example ws_echo -- 127.0.0.1:9002
//! ```
//!
//! It upgrades at `/` and sends every text and binary message back. Everything else (handshake checks, frame
//! decoding, fragment assembly, UTF-8 validation, ping/pong, close handshake, outbox) is what `herald serve` runs.
//! herald itself never starts it: no subcommand, flag or setting reaches the echo mode.

use std::net::SocketAddr;
use std::time::Duration;

use herald_gateway::metrics::GatewayMetrics;
use herald_gateway::{Gateway, GatewayConfig};
use herald_hub::batch::MergePolicy;
use herald_hub::{Hub, HubConfig, HubMetrics};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9002".to_owned())
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("address: {e}")))?;
    let hub = Hub::new(
        HubConfig {
            shards: 1,
            merge: MergePolicy {
                window: Duration::ZERO,
                max_items: 1,
            },
            queue_items: 1,
            queue_bytes: 1,
            max_rooms: 0,
            history: herald_hub::history::HistoryConfig::OFF,
            compression: herald_protocol::deflate::Compression::default(),
        },
        HubMetrics::unregistered(),
    );
    let config = GatewayConfig {
        max_connections: 1024,
        max_handshakes: 1024,
        max_rooms_per_connection: 1,
        // The suite sends messages of up to 16 MiB (section 9).
        max_message_bytes: 64 << 20,
        handshake_timeout: Duration::from_secs(10),
        heartbeat_timeout: Duration::from_secs(300),
        write_timeout: Duration::from_secs(60),
        outbox_frames: 1 << 16,
        outbox_bytes: 256 << 20,
        // The suite sends thousands of messages as fast as it can: no rate limit here.
        client_message_rate: 0.0,
        // Sections 12 and 13 of the suite: permessage-deflate.
        compression: true,
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let gateway = Gateway::new_echo(hub, config, GatewayMetrics::register(&mut registry));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("ws_echo listening on ws://{}/", listener.local_addr()?);
    let stop = CancellationToken::new();
    let serving = tokio::spawn(gateway.serve(listener, stop.clone(), CancellationToken::new(), TaskTracker::new()));
    tokio::signal::ctrl_c().await?;
    stop.cancel();
    let _ = serving.await;
    Ok(())
}
