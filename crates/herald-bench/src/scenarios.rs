//! The three scenarios, one file each: `connections` (idle connections: connect rate, memory, heartbeats), `fanout`
//! (pushes at a fixed rate: throughput, latency, loss, CPU) and `churn` (connect/disconnect storms while pushes
//! flow).

pub(crate) mod churn;
pub(crate) mod connections;
pub(crate) mod fanout;
