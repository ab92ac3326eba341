//! What a scenario reports: one flat record of figures, printed as a table or one JSON line, and the figures
//! every scenario shares (delivery, latency, closes, heartbeats).

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::proc::NetworkTrouble;
use crate::worker::Report;
use crate::{publisher, worker};

pub(crate) fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} {elapsed}").expect("template"));
    bar.set_message(what.to_owned());
    bar
}

/// The result of a scenario: one flat record, printed as a table or one JSON line.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Scenario name.
    pub scenario: &'static str,
    /// Figures, in order.
    pub figures: Vec<(&'static str, serde_json::Value)>,
}

impl Serialize for Outcome {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.figures.len() + 1))?;
        map.serialize_entry("scenario", self.scenario)?;
        for (name, value) in &self.figures {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

impl Outcome {
    pub(crate) fn put(&mut self, name: &'static str, value: impl Into<serde_json::Value>) {
        self.figures.push((name, value.into()));
    }
}

pub(crate) fn print_table(outcome: &Outcome) {
    println!("herald-bench {}", outcome.scenario);
    for (name, value) in &outcome.figures {
        let value = match value {
            serde_json::Value::Number(n) if n.is_f64() => format!("{:.3}", n.as_f64().unwrap_or_default()),
            other => other.to_string(),
        };
        println!("  {name:<28} {value}");
    }
}

/// What the machine's network stack dropped and sent again since `before`; `None` where /proc does not say.
pub(crate) fn network_since(before: Option<NetworkTrouble>) -> Option<NetworkTrouble> {
    before.zip(NetworkTrouble::now()).map(|(before, now)| now.since(before))
}

/// Puts what the machine's network stack dropped and sent again `during` a run (the whole machine's counts, so
/// anything else on it is included), and warns when the loopback dropped packets: each waited for TCP to send it
/// again, hundreds of milliseconds at the least, which no server caused.
pub(crate) fn put_network(out: &mut Outcome, during: Option<NetworkTrouble>) {
    out.put("backlog_drops", during.map(|d| d.backlog_drops));
    out.put("tcp_retransmits", during.map(|d| d.retransmitted));
    if let Some(during) = during.filter(|d| d.backlog_drops > 0) {
        let limit = std::fs::read_to_string("/proc/sys/net/core/netdev_max_backlog").unwrap_or_default();
        eprintln!(
            "herald-bench: the kernel dropped {} packets at a full input backlog (net.core.netdev_max_backlog = {}): \
             latency includes TCP's retransmission timeouts; raise it with `sysctl -w \
             net.core.netdev_max_backlog=100000` for runs this large",
            during.backlog_drops,
            limit.trim()
        );
    }
}

/// Puts the connections the server closed before the end, and how they ended (a close code: 4000 slow consumer,
/// 4001 heartbeat timeout, ...; or no close frame, reset): `{}` when none was.
pub(crate) fn put_closed_early(out: &mut Outcome, reports: &[Report]) {
    let mut by = std::collections::BTreeMap::<&str, u64>::new();
    for (how, count) in reports.iter().flat_map(|r| &r.closed_early_by) {
        *by.entry(how).or_default() += count;
    }
    out.put("closed_early", reports.iter().map(|r| r.closed_early).sum::<u64>());
    out.put("closed_early_by", serde_json::json!(by));
}

/// Puts the clients' heartbeats: PINGs sent and PONGs received. Answering them is part of the server's CPU (the
/// raw floor leaves them unanswered); a PONG missing beyond the PINGs still in flight at the end is a server bug.
pub(crate) fn put_heartbeats(out: &mut Outcome, reports: &[Report]) {
    out.put("pings_sent", reports.iter().map(|r| r.pings_sent).sum::<u64>());
    out.put("pongs_received", reports.iter().map(|r| r.pongs_received).sum::<u64>());
}

/// Puts what the receivers saw of `published`: pushes, items expected, received, lost, gaps, duplicates,
/// throughput and latency percentiles.
pub(crate) fn put_delivery(out: &mut Outcome, reports: &[Report], published: &publisher::Published) {
    let (mut latency, mut read_latency) = (worker::latency_histogram(), worker::latency_histogram());
    for report in reports {
        for (histogram, recorded) in [
            (&mut latency, &report.latency_us),
            (&mut read_latency, &report.read_latency_us),
        ] {
            for &(value, count) in recorded {
                histogram.record_n(value, count).expect("recorded values fit");
            }
        }
    }
    let sum = |f: fn(&Report) -> u64| reports.iter().map(f).sum::<u64>();
    let (items, frames) = (sum(|r| r.items), sum(|r| r.frames));
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    let secs = published.elapsed.as_secs_f64();
    out.put("pushes_sent", published.sent);
    out.put("pushes_refused", published.refused);
    out.put("publish_secs", secs);
    out.put("items_expected", published.expected_items);
    out.put("items_received", items);
    out.put("items_lost", published.expected_items.saturating_sub(items));
    out.put("sequence_gaps", sum(|r| r.gaps));
    out.put("duplicates", sum(|r| r.duplicates));
    put_closed_early(out, reports);
    put_heartbeats(out, reports);
    out.put("items_per_sec", items as f64 / secs);
    out.put("frames_per_sec", frames as f64 / secs);
    out.put("items_per_frame", items as f64 / (frames.max(1)) as f64);
    out.put("latency_p50_ms", ms(0.5));
    out.put("latency_p99_ms", ms(0.99));
    out.put("latency_p999_ms", ms(0.999));
    out.put("latency_max_ms", latency.max() as f64 / 1000.0);
    // The same items timed when the load generator read them: its own queue included (see worker.rs).
    out.put(
        "read_latency_p50_ms",
        read_latency.value_at_quantile(0.5) as f64 / 1000.0,
    );
    out.put(
        "read_latency_p99_ms",
        read_latency.value_at_quantile(0.99) as f64 / 1000.0,
    );
    // Reads the kernel gave no receive timestamp for: their latency is the read's (0 on Linux).
    out.put("latency_untimed_reads", sum(|r| r.untimed_reads));
    // What the items cost on the wire: frame headers, envelopes, PONGs and closes included, as read from the sockets.
    let wire = sum(|r| r.wire_bytes);
    out.put("wire_bytes", wire);
    out.put("wire_bytes_per_item", wire as f64 / items.max(1) as f64);
    out.put("wire_bytes_per_sec", wire as f64 / secs);
}

/// Puts what permessage-deflate did, for a run with `--compress`: connections that negotiated it (and that were
/// refused it, warned about), compressed frames received (every copy) and distinct payloads the workers inflated
/// (once each per worker: far fewer than the frames, when the server compressed once for many connections).
pub(crate) fn put_compression(out: &mut Outcome, reports: &[Report]) {
    let sum = |f: fn(&Report) -> u64| reports.iter().map(f).sum::<u64>();
    let refused = sum(|r| r.compression_refused);
    out.put("compression_negotiated", sum(|r| r.compression_negotiated));
    out.put("compression_refused", refused);
    out.put("compressed_frames", sum(|r| r.compressed_frames));
    out.put("compressed_payloads_inflated", sum(|r| r.compressed_payloads_inflated));
    out.put("inflate_errors", sum(|r| r.inflate_errors));
    if refused > 0 {
        eprintln!(
            "herald-bench: {refused} connections offered permessage-deflate and were answered without it: they ran \
             plain (is compression off on the server?)"
        );
    }
}
