//! herald's two-tier cluster: logic nodes take pushes over HTTP/1 and hand them to the gateways, either over gRPC
//! (HTTP/2, one long-lived connection and one stream per gateway) or through NATS.
//!
//! # Layout, by tier and concept
//! - `hop`: what both hops share: a push on the wire, how a gateway takes it into its hub and the one set of
//!   reasons it may refuse it for, and the reconnect backoff.
//! - gRPC, logic's side: [`logic`] (the [`logic::ClusterBus`], logic's [`herald_protocol::bus::Bus`], and how the
//!   gateways' answers become one), with `logic/link.rs` (one gateway's queue, stream and reconnects),
//!   `logic/outcome.rs` (one gateway's answer to one push, and the label it is counted under) and `logic/metrics.rs`.
//! - gRPC, the gateway's side: [`gateway`] (the service that hands each push to the local hub, and the internal
//!   listener with `/healthz`, `/stats`, `/metrics`, served by `herald-http` as the push API is), `status` (its
//!   status as protobuf fields), `auth` (the optional shared secret).
//! - NATS: [`nats`] (settings, errors) with `nats/connection.rs` (the connection, retried, its events counted),
//!   `nats/publisher.rs` (logic's bus), `nats/feed.rs` (a gateway's subscriptions and announcements),
//!   `nats/history.rs` (room history in JetStream), `nats/subjects.rs` and `nats/metrics.rs`.
//!
//! The schema is `proto/herald_cluster.proto`. Items cross the hop as the bytes logic validated; the gateway never
//! parses them. Merging happens on the gateway, as in `herald serve`.

mod auth;
pub mod gateway;
mod hop;
pub mod logic;
pub mod nats;
mod status;

/// Generated from `proto/herald_cluster.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("herald.cluster.v1");
}

/// The largest gRPC message either side takes: a push carries at most one push-API body (1 MiB by default,
/// `max_body_bytes`), plus a few bytes per item of framing.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The shared secret of the internal hop. Its `Debug` never prints it.
#[derive(Clone)]
pub struct Secret(std::sync::Arc<str>);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: String) -> Self {
        Self(secret.into())
    }

    /// The secret itself.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for Secret {}
