//! The coordinator's side of the worker processes that hold the connections (`worker.rs` is the worker's own
//! side): starting them with their plans, and collecting what they report.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::ProgressBar;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::cli::Target;
use crate::report::progress;
use crate::sched;
use crate::server::{Server, wait_for_members};
use crate::worker::{Event, Plan, Report};

/// Connections one worker process holds at most (the per-process descriptor limit here is 20,000).
pub(crate) const CONNS_PER_WORKER: usize = 15_000;

/// What the workers report once their connections are open.
#[derive(Debug, Default)]
pub(crate) struct Connected {
    pub(crate) conns: usize,
    pub(crate) errors: usize,
    pub(crate) secs: f64,
    /// Resident memory of all workers together.
    pub(crate) rss_bytes: u64,
}

/// The worker processes of one run.
pub(crate) struct Workers {
    pub(crate) procs: Vec<(Child, ChildStdin, Lines<BufReader<ChildStdout>>)>,
}

impl Workers {
    pub(crate) async fn start(
        server: &Server,
        conns: usize,
        room: Option<&str>,
        target: &Target,
        compress: bool,
    ) -> anyhow::Result<Self> {
        // At least one worker per WebSocket listener, so a cluster's gateways all get connections.
        let count = target
            .workers
            .unwrap_or(conns.div_ceil(CONNS_PER_WORKER))
            .max(server.ws.len())
            .clamp(1, 250);
        let mut procs = Vec::new();
        for index in 0..count {
            let share = conns / count + usize::from(index < conns % count);
            let plan = Plan {
                target: server.ws[index % server.ws.len()],
                conns: share,
                room: room.map(str::to_owned),
                index: index as u8,
                ping_every_ms: target.ping_every_ms(),
                churn_per_sec: 0.0,
                churn_hold_ms: 0,
                churn_secs: 0.0,
                churn_resume: false,
                token_secret: target.token_secret.clone(),
                compress,
            };
            procs.push(spawn_worker(&plan).await?);
        }
        Ok(Self { procs })
    }

    /// Adds a worker that holds no connection and churns on its `churn` command; waits until it is ready.
    pub(crate) async fn add_churner(&mut self, plan: &Plan) -> anyhow::Result<()> {
        let mut worker = spawn_worker(plan).await?;
        worker.2.next_line().await?.context("the churn worker exited")?;
        self.procs.push(worker);
        Ok(())
    }

    /// Sends `command` to the last worker added and waits for its answer.
    pub(crate) async fn command_last(&mut self, command: &str) -> anyhow::Result<()> {
        let (_, stdin, lines) = self.procs.last_mut().context("no worker")?;
        stdin.write_all(format!("{command}\n").as_bytes()).await?;
        lines.next_line().await?.context("a bench worker exited")?;
        Ok(())
    }

    pub(crate) async fn next_events(&mut self) -> anyhow::Result<Vec<Event>> {
        let mut events = Vec::new();
        for (_, _, lines) in &mut self.procs {
            let line = lines.next_line().await?.context("a bench worker exited")?;
            events.push(serde_json::from_str(&line).with_context(|| format!("bench worker said {line:?}"))?);
        }
        Ok(events)
    }

    pub(crate) async fn command(&mut self, command: &str) -> anyhow::Result<Vec<Event>> {
        for (_, stdin, _) in &mut self.procs {
            stdin.write_all(format!("{command}\n").as_bytes()).await?;
        }
        self.next_events().await
    }

    /// Waits until every worker has opened its connections: (connections, errors, seconds).
    /// Starts the workers and waits until their `conns` connections are open and members of `room` (or, with
    /// none, connected), as the server's `/stats` says: where the delivery scenarios begin.
    pub(crate) async fn members(
        server: &Server,
        conns: usize,
        room: Option<&str>,
        target: &Target,
        compress: bool,
    ) -> anyhow::Result<(Self, Connected)> {
        let api = server.api.context("this scenario pushes: pass --api with --ws")?;
        let mut workers = Self::start(server, conns, room, target, compress).await?;
        let bar = progress(conns as u64, "connecting");
        let connected = workers.connected(&bar).await?;
        bar.finish_and_clear();
        // Joins are not acknowledged (go-push style): make sure the server has them all before publishing.
        wait_for_members(api, room, connected.conns).await?;
        Ok((workers, connected))
    }

    pub(crate) async fn connected(&mut self, progress: &ProgressBar) -> anyhow::Result<Connected> {
        let mut total = Connected::default();
        for event in self.next_events().await? {
            if let Event::Connected {
                conns,
                errors,
                secs,
                rss_bytes,
            } = event
            {
                total.conns += conns;
                total.errors += errors;
                total.secs = total.secs.max(secs);
                total.rss_bytes += rss_bytes;
                progress.inc(conns as u64);
            }
        }
        Ok(total)
    }

    /// Waits until `expected` items have arrived, or nothing more arrives for 5 s.
    pub(crate) async fn drain(&mut self, expected: u64) -> anyhow::Result<()> {
        let mut received = self.items().await?;
        let mut last_change = Instant::now();
        while received < expected && last_change.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.items().await?;
            if now != received {
                received = now;
                last_change = Instant::now();
            }
        }
        Ok(())
    }

    pub(crate) async fn items(&mut self) -> anyhow::Result<u64> {
        Ok(self
            .command("status")
            .await?
            .iter()
            .map(|e| if let Event::Status { items } = e { *items } else { 0 })
            .sum())
    }

    pub(crate) async fn finish(mut self) -> anyhow::Result<Vec<Report>> {
        let events = self.command("stop").await?;
        for (child, _, _) in &mut self.procs {
            let _ = child.wait().await;
        }
        let reports: Vec<Report> = events
            .into_iter()
            .filter_map(|e| {
                if let Event::Done(report) = e {
                    Some(report)
                } else {
                    None
                }
            })
            .collect();
        let unreported: u64 = reports.iter().map(|r| r.unreported).sum();
        if unreported > 0 {
            eprintln!(
                "herald-bench: {unreported} connections had not added their tally when the workers stopped: frames, \
                 PONGs, PINGs sent, gaps and duplicates are short by theirs"
            );
        }
        Ok(reports)
    }
}

pub(crate) async fn spawn_worker(plan: &Plan) -> anyhow::Result<(Child, ChildStdin, Lines<BufReader<ChildStdout>>)> {
    // Workers run as SCHED_BATCH when the system can (see `sched`).
    let mut child = sched::batch_command(std::env::current_exe()?)
        .arg("worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting a bench worker")?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(format!("{}\n", serde_json::to_string(plan)?).as_bytes())
        .await?;
    let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    Ok((child, stdin, lines))
}
