//! The scenarios, one file each: `connections` (idle connections: connect rate, memory, heartbeats), `fanout`
//! (pushes at a fixed rate: throughput, latency, loss, CPU), `churn` (connect/disconnect storms while pushes
//! flow) and `hostile` (attackers of every kind beside normal clients).

pub(crate) mod churn;
pub(crate) mod connections;
pub(crate) mod fanout;
pub(crate) mod hostile;
