//! The `herald` command.

use clap::{Parser, Subcommand};
use herald::cluster::Threads;
use herald::config::{Config, ServeArgs};
use tokio::signal::unix::{Signal, SignalKind, signal};
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
    /// Run a cluster gateway: WebSocket side and hub, fed by logic nodes over gRPC (--rpc-addr).
    Gateway(ServeArgs),
    /// Run a cluster logic node: the push API, forwarding every push to the gateways in --gateways.
    Logic(ServeArgs),
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
        Command::Serve(args) => run_server(args, per_core, |config, shutdown| async move {
            let (ws, api) = herald::serve::bind(&config).await?;
            herald::serve::run(config, ws, api, shutdown).await
        }),
        Command::Gateway(args) => run_server(args, per_core, |config, shutdown| async move {
            let (ws, rpc) = herald::cluster::bind_gateway(&config).await?;
            herald::cluster::run_gateway(config, ws, rpc, shutdown).await
        }),
        Command::Logic(args) => run_server(args, herald::cluster::logic_threads, |config, shutdown| async move {
            let api = herald::serve::bind_one(config.api_addr, "api_addr").await?;
            herald::cluster::run_logic(config, api, shutdown).await
        }),
        Command::Bench(scenario) => herald_bench::run(scenario),
        Command::BenchWorker => herald_bench::worker::main(),
    }
}

/// Serve and gateway run on a worker per core: their fan-out is split over the cores.
fn per_core(_: &Config) -> Threads {
    Threads::PerCore
}

/// Resolves the configuration, sets up logging and the runtime (`threads` tells which), and runs `server` until
/// SIGINT or SIGTERM.
fn run_server<F, Fut>(args: ServeArgs, threads: fn(&Config) -> Threads, server: F) -> anyhow::Result<()>
where
    F: FnOnce(Config, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let config = args.resolve()?;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&config.log))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut runtime = match threads(&config) {
        Threads::One => tokio::runtime::Builder::new_current_thread(),
        Threads::PerCore => tokio::runtime::Builder::new_multi_thread(),
    };
    runtime.enable_all().build()?.block_on(async {
        let shutdown = CancellationToken::new();
        // The handlers are installed here, before the server starts, not in the task that waits for them: a
        // SIGTERM sent as soon as herald says it is serving must drain it, not kill it (the default action)
        // because that task had not run yet.
        let interrupt = signal(SignalKind::interrupt())?;
        let terminate = signal(SignalKind::terminate())?;
        tokio::spawn(cancel_on_signal(interrupt, terminate, shutdown.clone()));
        server(config, shutdown).await
    })
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn cancel_on_signal(mut interrupt: Signal, mut terminate: Signal, shutdown: CancellationToken) {
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    shutdown.cancel();
}
