//! herald, a WebSocket message-push server: business services push through an HTTP API, browsers and apps keep
//! one WebSocket each and receive what is pushed to the rooms they joined.
//!
//! This crate is the one binary and the wiring between the parts. Each mode is a sibling module with one `run()`
//! that composes the building blocks below; no block imports a mode.
//!
//! # Layout
//! - the modes: [`serve`] (WebSocket side, hub and push API in one process, the embedded default), [`gateway`]
//!   (the WebSocket side of a cluster, fed over gRPC or NATS) and [`logic`] (a cluster's push API).
//! - [`config`]: flags, `HERALD_*` env, a TOML file and the defaults, resolved into each mode's settings.
//! - the blocks: `bind` (listeners), [`runtime`] (threads and event loops), `server` (a listener's HTTP server on
//!   threads of its own), `nats_node` (the connection to NATS and its tasks), `running` (what a mode runs, and
//!   its one ordered shutdown). The WebSocket side itself is `herald_gateway::Node`.
//!
//! The parts: `herald-protocol` (wire formats and contracts), `herald-hub` (fan-out engine), `herald-gateway`
//! (WebSocket side), `herald-logic` (push API), `herald-http` (the HTTP server every listener but the WebSocket one
//! runs on), `herald-cluster` (the hop between the tiers: gRPC and NATS). The load generator, `herald-bench`, is a
//! binary of its own that starts this one by path: herald does not link it.

mod bind;
pub mod config;
pub mod gateway;
pub mod logic;
mod nats_node;
mod running;
pub mod runtime;
pub mod serve;
mod server;
