//! herald, a WebSocket message-push server: business services push through an HTTP API, browsers and apps keep
//! one WebSocket each and receive what is pushed to the rooms they joined.
//!
//! This crate is the one binary and the wiring between the parts:
//! - [`config`]: flags, `HERALD_*` env and a TOML file, validated into one [`config::Config`].
//! - [`serve`]: `herald serve`, gateway + hub + push API in one process with the in-process bus.
//! - [`cluster`]: `herald gateway` and `herald logic`, the two tiers run apart, joined by gRPC.
//!
//! The parts: `herald-protocol` (wire formats), `herald-hub` (fan-out engine), `herald-gateway` (WebSocket side),
//! `herald-logic` (push API), `herald-cluster` (the gRPC hop between the tiers).

pub mod cluster;
pub mod config;
pub mod serve;
