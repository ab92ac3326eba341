//! The publisher: pushes bench items through the push API at a fixed rate, over one keep-alive HTTP/1.1
//! connection, one request at a time (so items reach herald in sequence order).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::bail;
use indicatif::ProgressBar;
use tokio::time::Instant;

use crate::http::Connection;
use crate::items::{Items, ItemsKind};
use crate::scan::now_us;
use crate::sched;

/// What to publish.
pub struct Plan {
    /// Push-API address.
    pub api: SocketAddr,
    /// Room, or everyone.
    pub room: Option<String>,
    /// Pushes per second.
    pub rate: f64,
    /// Items per push.
    pub items: usize,
    /// Bytes per item (padding).
    pub item_bytes: usize,
    /// What the items are.
    pub items_kind: ItemsKind,
    /// How long to publish.
    pub duration: Duration,
    /// Connections that should get each push, for a server that answers `recipients: null` (herald on NATS
    /// cannot know them); herald's own count is used otherwise.
    pub members: u64,
    /// Expect `members` whatever herald counts (churn: connections that come and go are not checked).
    pub fixed_members: bool,
}

/// What was published.
pub struct Published {
    /// Pushes sent.
    pub sent: u64,
    /// Pushes answered 503.
    pub refused: u64,
    /// Items the receivers should get in total: items × recipients of every accepted push.
    pub expected_items: u64,
    /// Time from the first push to the last answer.
    pub elapsed: Duration,
}

/// Publishes `plan`; items carry their send time and a sequence number (counting accepted items only, so
/// receivers see no gap for a refused push).
pub async fn run(plan: &Plan, progress: &ProgressBar) -> anyhow::Result<Published> {
    sched::run_as_batch().await;
    let mut conn = Connection::open(plan.api).await?;
    let path = if plan.room.is_some() { "/push/room" } else { "/push/all" };
    let interval = Duration::from_secs_f64(1.0 / plan.rate);
    let start = Instant::now();
    let end = start + plan.duration;
    let (mut sent, mut refused, mut expected, mut seq) = (0u64, 0u64, 0u64, 0u64);
    let mut body = String::new();
    let mut items = Items::new(plan.items_kind, plan.item_bytes);
    loop {
        let due = start + interval.mul_f64(sent as f64);
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due).await;
        body.clear();
        body.push('{');
        if let Some(room) = &plan.room {
            body.push_str(&format!("\"room\":{},", serde_json::to_string(room)?));
        }
        body.push_str("\"items\":[");
        let now = now_us();
        for i in 0..plan.items {
            if i > 0 {
                body.push(',');
            }
            items.push(&mut body, now, seq + i as u64);
        }
        body.push_str("]}");
        let (status, answer) = conn.post(path, &body).await?;
        sent += 1;
        progress.inc(1);
        match status {
            200 => {
                let answer: serde_json::Value = serde_json::from_str(&answer)?;
                let recipients = match &answer["recipients"] {
                    _ if plan.fixed_members => plan.members,
                    serde_json::Value::Null => plan.members,
                    counted => counted.as_u64().unwrap_or(0),
                };
                expected += plan.items as u64 * recipients;
                seq += plan.items as u64;
            }
            503 => refused += 1,
            other => bail!("push answered {other}: {answer}"),
        }
    }
    Ok(Published {
        sent,
        refused,
        expected_items: expected,
        elapsed: start.elapsed(),
    })
}
