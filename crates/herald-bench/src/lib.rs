//! herald-bench: herald's own load generator, speaking the client protocol over real TCP. A binary of its own
//! (`src/main.rs`), so that herald does not link it: it starts `herald` by path (the one beside it, or `--herald`),
//! and its workers are the same executable (`herald-bench worker`).
//!
//! # Layout
//! A coordinator (this process) starts herald or targets a running one, spreads the connections over worker
//! processes, publishes, and reports:
//! - [`cli`]: the scenarios' arguments; `scenarios/`: one file per scenario (`connections`, `fanout`, `churn`,
//!   `hostile`); [`attack`]: the hostile clients.
//! - `server`: the herald under test (started or given), its readiness, the heartbeat it says, `/stats`, CPU and
//!   memory.
//! - `workers`: the coordinator's side of the worker processes; `report`: the figures and how they print.
//! - [`worker`]: a worker process holding its share of connections on one thread.
//! - `socket_reads`: a worker's reads of a connection's socket, into one buffer per thread, with the kernel's
//!   receive timestamp.
//! - `client`: the client side of herald's protocol (handshake, masked frames, tokens) for workers, attackers and
//!   server.
//! - [`scan`]: finds items and their send timestamps in the byte stream without parsing frames or JSON.
//! - `frames`: with `--compress`, splits a connection's stream at frame boundaries into plain runs (scanned as
//!   above) and compressed messages; `inflated`: inflates each distinct compressed payload once per worker and
//!   keeps the items it holds, for every copy.
//! - `publisher`: pushes through the push API at a fixed rate over one keep-alive HTTP/1.1 connection; `items`:
//!   what it pushes (padding, or chat messages and market ticks from a seeded generator).
//! - `http`: that HTTP/1.1 client, also for `/healthz` and `/stats`; `sched`: SCHED_BATCH for the load generator's
//!   processes.
//! - [`proc`]: CPU, RSS and kernel slab memory from /proc.
//!
//! Imports point one way, from the scenarios down to these parts: no two modules import each other.
//!
//! It links only what it needs to speak to herald from outside: of herald's crates, only the protocol crate, for the
//! `/stats` documents it reads and the header that says the heartbeat.

pub mod attack;
pub mod cli;
mod client;
mod frames;
mod http;
mod inflated;
pub mod items;
pub mod proc;
mod publisher;
mod report;
pub mod scan;
mod scenarios;
mod sched;
mod server;
mod socket_reads;
pub mod worker;
mod workers;

pub use crate::cli::{ChurnArgs, ConnectionsArgs, FanoutArgs, HostileArgs, Scenario, Target};
use crate::report::print_table;

/// Runs a scenario and prints its result.
pub fn run(scenario: Scenario) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let json = scenario.target().json;
    let result = runtime.block_on(async {
        match scenario {
            Scenario::Connections(args) => scenarios::connections::run(args).await,
            Scenario::Fanout(args) => scenarios::fanout::run(args).await,
            Scenario::Churn(args) => scenarios::churn::run(args).await,
            Scenario::Hostile(args) => scenarios::hostile::run(args).await,
        }
    })?;
    if json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        print_table(&result);
    }
    Ok(())
}
