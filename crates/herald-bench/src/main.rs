//! The `herald-bench` command: the scenarios, and the worker processes it starts of itself.

use clap::{Parser, Subcommand};
use herald_bench::Scenario;

/// herald-bench: load-tests a herald over real TCP. Starts the `herald` beside this executable (or --herald PATH)
/// unless given a running one with --ws.
#[derive(Debug, Parser)]
#[command(name = "herald-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Scenario(Box<Scenario>),
    /// A load-generator worker process (started by herald-bench itself; reads its plan on stdin).
    #[command(hide = true)]
    Worker,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Scenario(scenario) => herald_bench::run(*scenario),
        Command::Worker => herald_bench::worker::main(),
    }
}
