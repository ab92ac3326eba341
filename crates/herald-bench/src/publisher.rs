//! The publisher: pushes bench items through the push API at a fixed rate, over one keep-alive HTTP/1.1
//! connection, one request at a time (so items reach herald in sequence order).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::ProgressBar;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::scan::item;
use crate::worker::now_us;

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
    /// Bytes per item.
    pub item_bytes: usize,
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
    crate::workers::run_as_batch().await;
    let mut conn = Connection::open(plan.api).await?;
    let path = if plan.room.is_some() { "/push/room" } else { "/push/all" };
    let interval = Duration::from_secs_f64(1.0 / plan.rate);
    let start = Instant::now();
    let end = start + plan.duration;
    let (mut sent, mut refused, mut expected, mut seq) = (0u64, 0u64, 0u64, 0u64);
    let mut body = String::new();
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
            body.push_str(&item(now, seq + i as u64, plan.item_bytes));
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

/// One `GET` on a fresh connection: (status, body).
pub async fn get(api: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut conn = Connection::open(api).await?;
    conn.request("GET", path, None).await
}

/// A keep-alive HTTP/1.1 client connection (herald's answers always carry Content-Length).
struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
    host: SocketAddr,
}

impl Connection {
    async fn open(api: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(api)
            .await
            .with_context(|| format!("connecting to {api}"))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(4096),
            host: api,
        })
    }

    async fn post(&mut self, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
        self.request("POST", path, Some(body)).await
    }

    async fn request(&mut self, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<(u16, String)> {
        let body = body.unwrap_or("");
        // Head and body in one write, as HTTP clients send a small request: two writes on a no-delay socket
        // are two segments, and the server wakes for each.
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.stream.write_all(request.as_bytes()).await?;
        self.buf.clear();
        loop {
            if let Some(head_end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..head_end])?;
                let status: u16 = head.split(' ').nth(1).context("status line")?.parse()?;
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.split_once(':')
                            .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    })
                    .map_or(Ok(0), |(_, v)| v.trim().parse())?;
                let total = head_end + 4 + length;
                while self.buf.len() < total {
                    self.read_more().await?;
                }
                return Ok((
                    status,
                    String::from_utf8_lossy(&self.buf[head_end + 4..total]).into_owned(),
                ));
            }
            self.read_more().await?;
        }
    }

    async fn read_more(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("push API closed the connection");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}
