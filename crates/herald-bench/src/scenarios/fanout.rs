//! `herald-bench fanout`.

use std::time::Duration;

use anyhow::Context;

use crate::cli::FanoutArgs;
use crate::proc::NetworkTrouble;
use crate::publisher;
use crate::report::{Outcome, network_since, progress, put_compression, put_delivery, put_network};
use crate::server::Server;
use crate::workers::{Connected, Workers};

pub(crate) async fn run(args: FanoutArgs) -> anyhow::Result<Outcome> {
    let server = Server::start_or_attach(&args.target).await?;
    let api = server.api.context("fanout needs the push API: pass --api with --ws")?;
    let room = (!args.all).then_some(args.room.as_str());
    let (mut workers, Connected { conns, errors, .. }) =
        Workers::members(&server, args.conns, room, &args.target, args.compress).await?;

    let (cpu_before, network_before) = (server.cpu_secs(), NetworkTrouble::now());
    let plan = publisher::Plan {
        api,
        room: room.map(str::to_owned),
        rate: args.rate,
        items: args.items,
        item_bytes: args.item_bytes,
        items_kind: args.items_kind,
        duration: Duration::from_secs_f64(args.secs),
        members: conns as u64,
        fixed_members: false,
    };
    let bar = progress((args.rate * args.secs).round() as u64, "publishing");
    let published = publisher::run(&plan, &bar).await?;
    bar.finish_and_clear();

    workers.drain(published.expected_items).await?;
    let (server_cpu, network) = (server.cpu_since(cpu_before), network_since(network_before));
    let reports = workers.finish().await?;
    server.stop().await;

    let mut out = Outcome {
        scenario: "fanout",
        ..Outcome::default()
    };
    out.put("connections", conns);
    out.put("connect_errors", errors);
    out.put("items_kind", format!("{:?}", args.items_kind).to_lowercase());
    put_delivery(&mut out, &reports, &published);
    if args.compress {
        put_compression(&mut out, &reports);
    }
    out.put("server_cpu_secs", server_cpu);
    out.put("loadgen_cpu_secs", reports.iter().map(|r| r.cpu_secs).sum::<f64>());
    put_network(&mut out, network);
    Ok(out)
}
