//! The `herald` command.

use clap::{Parser, Subcommand};
use herald::config::ServeArgs;
use tokio_util::sync::CancellationToken;

/// herald: a WebSocket message-push server, wire-compatible with go-push.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run gateway, hub and push API in one process (the embedded default; no external services).
    Serve(ServeArgs),
    /// Load-test a herald over real TCP (starts `herald serve` itself unless given --ws).
    #[command(subcommand)]
    Bench(herald_bench::Scenario),
    /// A load-generator worker process (started by `herald bench`; reads its plan on stdin).
    #[command(hide = true)]
    BenchWorker,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = args.resolve()?;
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(&config.log))
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(async {
                    let (ws, api) = herald::serve::bind(&config).await?;
                    let shutdown = CancellationToken::new();
                    tokio::spawn(cancel_on_signal(shutdown.clone()));
                    herald::serve::run(config, ws, api, shutdown).await
                })
        }
        Command::Bench(scenario) => herald_bench::run(scenario),
        Command::BenchWorker => herald_bench::worker::main(),
    }
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    shutdown.cancel();
}
