//! The `herald` command.

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use herald::config::{GatewayArgs, LogicArgs, ServeArgs};
use herald::runtime::Threads;
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
    Gateway(GatewayArgs),
    /// Run a cluster logic node: the push API, forwarding every push to the gateways in --gateways.
    Logic(LogicArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = parse();
    match cli.command {
        Command::Serve(args) => {
            let config = args.resolve()?;
            start(
                config.process.log.clone(),
                Threads::workers(config.websocket.worker_threads),
                move |shutdown| async move {
                    let (ws, api) = herald::serve::bind(&config).await?;
                    herald::serve::run(config, ws, api, shutdown).await
                },
            )
        }
        Command::Gateway(args) => {
            let config = args.resolve()?;
            start(
                config.process.log.clone(),
                Threads::workers(config.websocket.worker_threads),
                move |shutdown| async move {
                    let (ws, rpc) = herald::gateway::bind(&config).await?;
                    herald::gateway::run(config, ws, rpc, shutdown).await
                },
            )
        }
        Command::Logic(args) => {
            let config = args.resolve()?;
            start(
                config.process.log.clone(),
                herald::logic::threads(&config),
                move |shutdown| async move {
                    let api = herald::logic::bind(&config).await?;
                    herald::logic::run(config, api, shutdown).await
                },
            )
        }
    }
}

/// Parses the command line; each setting's help shows its default. A flag that belongs to another mode is refused
/// with a message that says so, not only that the flag is unknown.
fn parse() -> Cli {
    let command = ["serve", "gateway", "logic"]
        .into_iter()
        .fold(Cli::command(), |command, mode| {
            command.mut_subcommand(mode, herald::config::show_defaults)
        });
    let matches = command.clone().try_get_matches().unwrap_or_else(|error| {
        if error.kind() == ErrorKind::UnknownArgument
            && let Some(message) = foreign_flag(&command, &error)
        {
            eprintln!("error: {message}");
            std::process::exit(2);
        }
        error.exit()
    });
    Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
}

/// "--merge-window is not a setting of herald logic (it is one of serve, gateway)", when the unknown flag of
/// `error` is a setting of another mode.
fn foreign_flag(command: &clap::Command, error: &clap::Error) -> Option<String> {
    let Some(ContextValue::String(flag)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = flag.strip_prefix("--")?.split('=').next()?;
    let mode = std::env::args().nth(1)?;
    let owners: Vec<&str> = command
        .get_subcommands()
        .filter(|sub| sub.get_arguments().any(|arg| arg.get_long() == Some(long)))
        .map(|sub| sub.get_name())
        .collect();
    (!owners.is_empty()).then(|| {
        format!(
            "--{long} is not a setting of herald {mode} (it is one of {}); see docs/configuration.md",
            owners.join(", ")
        )
    })
}

/// Sets up logging and the runtime (`threads` tells which), and runs `server` until SIGINT or SIGTERM.
fn start<F, Fut>(log: String, threads: Threads, server: F) -> anyhow::Result<()>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&log))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    threads.runtime()?.block_on(async {
        let shutdown = CancellationToken::new();
        // The handlers are installed here, before the server starts, not in the task that waits for them: a
        // SIGTERM sent as soon as herald says it is serving must drain it, not kill it (the default action)
        // because that task had not run yet.
        let interrupt = signal(SignalKind::interrupt())?;
        let terminate = signal(SignalKind::terminate())?;
        tokio::spawn(cancel_on_signal(interrupt, terminate, shutdown.clone()));
        server(shutdown).await
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
