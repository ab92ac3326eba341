//! How the load generator's processes are scheduled: as SCHED_BATCH where the system has `chrt` (util-linux), so
//! that they stand in for clients on other machines and do not take the server's core from it. Best effort: without
//! `chrt`, the bench runs as it is.

use std::ffi::OsStr;
use std::path::Path;

use tokio::process::Command;

/// Where `chrt` (util-linux) is, if anywhere.
const CHRT: &str = "/usr/bin/chrt";

/// Moves this process, every thread of it, to SCHED_BATCH, as the workers are from their start. Called once the
/// servers are running (they must not inherit it) and before publishing: the publisher stands in for a business
/// service on another machine, but here each answer it gets wakes it on the server's core, and a normal task
/// preempts the server there, about once per push.
pub(crate) async fn run_as_batch() {
    if Path::new(CHRT).is_file() {
        let pid = std::process::id().to_string();
        let _ = Command::new(CHRT)
            .args(["--all-tasks", "--batch", "--pid", "0", &pid])
            .status()
            .await;
    }
}

/// A command that runs `program` as SCHED_BATCH from its start (the workers): a batch task does not preempt the
/// running task when a frame wakes it. The workers stand in for clients on other machines, which never take the
/// server's CPU; without this, every frame the server writes can hand its core to the woken worker mid fan-out, and
/// the figures measure the two processes' scheduling as much as the server. Workers still get their fair share of
/// CPU.
pub(crate) fn batch_command(program: impl AsRef<OsStr>) -> Command {
    if Path::new(CHRT).is_file() {
        let mut command = Command::new(CHRT);
        command.args(["--batch", "0"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}
