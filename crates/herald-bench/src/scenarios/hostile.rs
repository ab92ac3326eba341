//! `herald-bench hostile`: normal clients receiving a room's pushes while attackers of every kind (see `attack`)
//! work on the same herald. With `--attackers 0` it is the baseline to compare with: the normal clients' loss and
//! latency, and herald's memory, with and without the attack.

use std::time::Duration;

use anyhow::Context;

use crate::attack::{self, Attack};
use crate::cli::HostileArgs;
use crate::items::ItemsKind;
use crate::publisher;
use crate::report::{Outcome, progress, put_delivery};
use crate::server::Server;
use crate::workers::{Connected, Workers};

pub(crate) async fn run(args: HostileArgs) -> anyhow::Result<Outcome> {
    let server = Server::start_or_attach(&args.target).await?;
    let api = server.api.context("hostile needs the push API: pass --api with --ws")?;
    let room = Some(args.room.as_str());
    let (mut workers, Connected { conns, errors, .. }) =
        Workers::members(&server, args.conns, room, &args.target, false).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = server.rss_bytes();
    let cpu_before = server.cpu_secs();
    let peak = server.sample_peak_rss();

    let duration = Duration::from_secs_f64(args.secs);
    let attackers = (args.attackers > 0).then(|| {
        attack::start(Attack {
            target: server.ws[0],
            kinds: args.kinds.clone(),
            count: args.attackers,
            rate: args.attack_rate,
            room: args.room.clone(),
            duration,
        })
    });
    let plan = publisher::Plan {
        api,
        room: Some(args.room.clone()),
        rate: args.rate,
        items: 1,
        item_bytes: 100,
        items_kind: ItemsKind::Padding,
        duration,
        members: conns as u64,
        // Slow readers join the room too: the normal clients are the ones counted.
        fixed_members: true,
    };
    let bar = progress((args.rate * args.secs).round() as u64, "publishing");
    let published = publisher::run(&plan, &bar).await?;
    bar.finish_and_clear();
    workers.drain(published.expected_items).await?;
    let tally = match attackers {
        Some(handle) => tokio::task::spawn_blocking(move || handle.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the attackers' thread panicked"))?,
        None => Default::default(),
    };
    let rss_peak = peak.stop().await?;
    let server_cpu = server.cpu_since(cpu_before);
    let reports = workers.finish().await?;
    server.stop().await;

    let mut out = Outcome {
        scenario: "hostile",
        ..Outcome::default()
    };
    out.put("connections", conns);
    out.put("connect_errors", errors);
    out.put("attackers_per_kind", args.attackers);
    out.put("attack_rate", args.attack_rate);
    out.put("attack_kinds", serde_json::to_value(&args.kinds)?);
    put_delivery(&mut out, &reports, &published);
    out.put(
        "server_rss_before_bytes",
        rss_before.map_or(serde_json::Value::Null, Into::into),
    );
    out.put("server_rss_peak_bytes", rss_peak);
    // What the attack made herald hold, per attacking connection at most (every kind, all at once).
    let attacking = (args.attackers * args.kinds.len()) as f64;
    out.put(
        "server_rss_growth_per_attacker_bytes",
        match rss_before {
            Some(before) if attacking > 0.0 => serde_json::json!((rss_peak.saturating_sub(before)) as f64 / attacking),
            _ => serde_json::Value::Null,
        },
    );
    out.put("attack", serde_json::to_value(&tally)?);
    out.put("server_cpu_secs", server_cpu);
    Ok(out)
}
