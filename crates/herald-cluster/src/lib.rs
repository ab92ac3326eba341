//! herald's two-tier cluster: logic nodes take pushes over HTTP/1 and forward them to every gateway over gRPC
//! (HTTP/2), one long-lived connection and one stream per gateway.
//!
//! - [`logic`]: the [`logic::ClusterBus`], logic's [`herald_protocol::bus::Bus`]: one [`logic`] link per gateway,
//!   each with a bounded queue, its own reconnect loop, and the gateway's last reported status.
//! - [`gateway`]: the gRPC service on the gateway, which hands each push to the local hub, and the internal
//!   listener it runs on (with `/healthz`, `/stats`, `/metrics`).
//! - [`nats`]: the same two tiers on NATS instead of gRPC: logic publishes per room, gateways subscribe to the
//!   rooms they hold and announce themselves.
//! - `auth`: the optional shared secret on the hop.
//!
//! The schema is `proto/herald_cluster.proto`. Items cross the hop as the bytes logic validated; the gateway never
//! parses them. Merging happens on the gateway, as in `herald serve`.

mod auth;
pub mod gateway;
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
