//! `herald-bench churn`.

use std::time::Duration;

use anyhow::Context;

use crate::cli::ChurnArgs;
use crate::items::ItemsKind;
use crate::publisher;
use crate::report::{Outcome, progress, put_delivery};
use crate::server::Server;
use crate::worker::Plan;
use crate::workers::{Connected, Workers};

pub(crate) async fn run(mut args: ChurnArgs) -> anyhow::Result<Outcome> {
    if args.resume
        && !args
            .target
            .server_args
            .iter()
            .any(|arg| arg.starts_with("--history-size"))
    {
        args.target
            .server_args
            .extend(["--history-size".to_owned(), "100".to_owned()]);
    }
    let server = Server::start_or_attach(&args.target).await?;
    let api = server.api.context("churn needs the push API: pass --api with --ws")?;
    let room = Some(args.room.as_str());
    let (mut workers, Connected { conns, errors, .. }) =
        Workers::members(&server, args.conns, room, &args.target, false).await?;
    workers
        .add_churner(&Plan {
            target: server.ws[0],
            conns: 0,
            room: Some(args.room.clone()),
            index: 0,
            ping_every_ms: args.target.ping_every_ms(),
            churn_per_sec: args.churn,
            churn_hold_ms: args.hold_ms,
            churn_secs: args.secs,
            churn_resume: args.resume,
            token_secret: args.target.token_secret.clone(),
            compress: false,
        })
        .await?;
    // Settled, before the storm.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = server.rss_bytes();
    let cpu_before = server.cpu_secs();

    // Memory during the storm: sampled every 250 ms, the peak kept.
    let peak = server.sample_peak_rss();
    workers.command_last("churn").await?;
    let plan = publisher::Plan {
        api,
        room: Some(args.room.clone()),
        rate: args.rate,
        items: 1,
        item_bytes: 100,
        items_kind: ItemsKind::Padding,
        duration: Duration::from_secs_f64(args.secs),
        members: conns as u64,
        fixed_members: true,
    };
    let bar = progress((args.rate * args.secs).round() as u64, "publishing");
    let published = publisher::run(&plan, &bar).await?;
    bar.finish_and_clear();
    workers.drain(published.expected_items).await?;
    let rss_peak = peak.stop().await?;
    // After the storm: churning connections closed and their memory given back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = server.rss_bytes();
    let server_cpu = server.cpu_since(cpu_before);
    let reports = workers.finish().await?;
    server.stop().await;

    let cycles: u64 = reports.iter().map(|r| r.churn_cycles).sum();
    let mut out = Outcome {
        scenario: "churn",
        ..Outcome::default()
    };
    out.put("connections", conns);
    out.put("connect_errors", errors);
    out.put("churn_asked_per_sec", args.churn);
    out.put("churn_cycles", cycles);
    out.put("churn_per_sec", cycles as f64 / published.elapsed.as_secs_f64());
    out.put("churn_errors", reports.iter().map(|r| r.churn_errors).sum::<u64>());
    if args.resume {
        out.put("recovered", reports.iter().map(|r| r.recovered).sum::<u64>());
        out.put("not_recovered", reports.iter().map(|r| r.not_recovered).sum::<u64>());
    }
    put_delivery(&mut out, &reports, &published);
    let bytes = |value: Option<u64>| value.map_or(serde_json::Value::Null, Into::into);
    out.put("server_rss_before_bytes", bytes(rss_before));
    out.put("server_rss_peak_bytes", rss_peak);
    out.put("server_rss_after_bytes", bytes(rss_after));
    out.put(
        "server_rss_after_vs_before_pct",
        match (rss_before, rss_after) {
            (Some(b), Some(a)) if b > 0 => serde_json::json!((a as f64 - b as f64) * 100.0 / b as f64),
            _ => serde_json::Value::Null,
        },
    );
    out.put("server_cpu_secs", server_cpu);
    out.put("loadgen_cpu_secs", reports.iter().map(|r| r.cpu_secs).sum::<f64>());
    Ok(out)
}
