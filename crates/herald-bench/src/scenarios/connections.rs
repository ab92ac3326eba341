//! `herald-bench connections`.

use std::time::Duration;

use crate::cli::ConnectionsArgs;
use crate::proc;
use crate::proc::NetworkTrouble;
use crate::report::{Outcome, network_since, progress, put_closed_early, put_compression, put_heartbeats, put_network};
use crate::server::Server;
use crate::workers::{Connected, Workers};

pub(crate) async fn run(args: ConnectionsArgs) -> anyhow::Result<Outcome> {
    let server = Server::start_or_attach(&args.target).await?;
    let (rss_before, slab_before) = (server.rss_bytes(), proc::slab_bytes());
    let mut workers = Workers::start(&server, args.conns, Some("bench"), &args.target, args.compress).await?;
    let bar = progress(args.conns as u64, "connecting");
    let Connected {
        conns,
        errors,
        secs,
        rss_bytes: loadgen_rss,
    } = workers.connected(&bar).await?;
    bar.finish_and_clear();
    // Let the server settle (connection tasks parked, allocator quiet) before reading memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_after, slab_after) = (server.rss_bytes(), proc::slab_bytes());
    let pss_after = server.pss_bytes();
    let (cpu_before_hold, network_before) = (server.cpu_secs(), NetworkTrouble::now());
    tokio::time::sleep(Duration::from_secs_f64(args.secs)).await;
    // The hold alone: what the open connections cost the server (their heartbeats), without the connects.
    let (held_cpu, network) = (server.cpu_since(cpu_before_hold), network_since(network_before));
    let reports = workers.finish().await?;
    let loadgen_cpu: f64 = reports.iter().map(|r| r.cpu_secs).sum();
    let server_cpu = server.cpu_secs();
    server.stop().await;

    let per_conn = |before: Option<u64>, after: Option<u64>| match (before, after) {
        (Some(b), Some(a)) if conns > 0 => serde_json::json!((a.saturating_sub(b)) / conns as u64),
        _ => serde_json::Value::Null,
    };
    let mut out = Outcome {
        scenario: "connections",
        ..Outcome::default()
    };
    out.put("connections", conns);
    out.put("connect_errors", errors);
    put_closed_early(&mut out, &reports);
    put_heartbeats(&mut out, &reports);
    if args.compress {
        put_compression(&mut out, &reports);
    }
    out.put("connect_secs", secs);
    out.put("connects_per_sec", conns as f64 / secs.max(1e-9));
    out.put(
        "server_rss_bytes",
        rss_after.map_or(serde_json::Value::Null, Into::into),
    );
    out.put("server_rss_per_conn_bytes", per_conn(rss_before, rss_after));
    // Everything the server's processes hold, their own baselines included, each page once: what a host must have
    // for them (RSS summed over several processes counts their shared binary once each).
    out.put(
        "server_pss_bytes",
        pss_after.map_or(serde_json::Value::Null, Into::into),
    );
    out.put("server_pss_per_conn_bytes", per_conn(Some(0), pss_after));
    out.put("kernel_slab_per_conn_bytes", per_conn(slab_before, slab_after));
    out.put(
        "server_cpu_secs",
        server_cpu.map_or(serde_json::Value::Null, Into::into),
    );
    out.put("server_cpu_held_secs", held_cpu.clone());
    // The hold's CPU over the PINGs its connections sent in it (one each `ping_secs`): what a heartbeat costs.
    let pings_held = conns as f64 * args.secs / args.target.ping_secs;
    out.put(
        "server_cpu_per_ping_us",
        held_cpu
            .as_f64()
            .filter(|_| pings_held > 0.0)
            .map_or(serde_json::Value::Null, |cpu| (cpu / pings_held * 1e6).into()),
    );
    out.put("loadgen_cpu_secs", loadgen_cpu);
    out.put("loadgen_rss_per_conn_bytes", loadgen_rss / conns.max(1) as u64);
    // What the server sent the connections once upgraded (their PONGs, mostly), over the whole run.
    let wire: u64 = reports.iter().map(|r| r.wire_bytes).sum();
    out.put("wire_bytes", wire);
    out.put("wire_bytes_per_conn", wire / conns.max(1) as u64);
    put_network(&mut out, network);
    Ok(out)
}
