//! What `herald bench` must know of the herald it starts, resolved as that herald will resolve it: the same flags
//! (`--server-arg`), the same `HERALD_*` environment and the same defaults.

use std::time::Duration;

use anyhow::bail;
use clap::Parser;
use herald_bench::Target;

use crate::config::{GatewayArgs, ServeArgs};

/// Refuses a PING interval that is not below the heartbeat timeout of the herald the bench starts: that herald
/// would close every connection that waits so long between PINGs (4001), and the run would report thousands of
/// closes instead of what it measures. A herald given with `--ws` is the caller's own: not checked.
pub fn refuse_pings_past_the_heartbeat(target: &Target) -> anyhow::Result<()> {
    if target.ws.is_some() {
        return Ok(());
    }
    let timeout = heartbeat_timeout(target)?;
    let ping = Duration::from_secs_f64(target.ping_secs);
    if ping >= timeout {
        bail!(
            "--ping-secs {}: the herald this bench starts closes a connection silent for its heartbeat_timeout ({} s), so clients must PING more often than that; lower --ping-secs or raise the timeout (--server-arg=--heartbeat-timeout --server-arg={}s)",
            target.ping_secs,
            timeout.as_secs_f64(),
            (target.ping_secs * 2.0).ceil()
        );
    }
    Ok(())
}

/// The heartbeat timeout of the processes holding the connections: `serve`, or the gateways of a cluster.
fn heartbeat_timeout(target: &Target) -> anyhow::Result<Duration> {
    let args = &target.server_args;
    let limits = if target.cluster.is_some() || target.nats.is_some() {
        GatewayArgs::try_parse_from(std::iter::once("gateway").chain(args.iter().map(String::as_str)))?
            .resolve()?
            .websocket
            .limits
    } else {
        ServeArgs::try_parse_from(std::iter::once("serve").chain(args.iter().map(String::as_str)))?
            .resolve()?
            .websocket
            .limits
    };
    Ok(limits.heartbeat_timeout)
}
