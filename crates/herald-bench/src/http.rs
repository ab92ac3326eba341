//! A keep-alive HTTP/1.1 client, just enough for herald's push API and its `/healthz` and `/stats` (herald's
//! answers always carry Content-Length).

use std::net::SocketAddr;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One `GET` on a fresh connection: (status, body).
pub(crate) async fn get(api: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut conn = Connection::open(api).await?;
    conn.request("GET", path, None).await
}

/// A keep-alive HTTP/1.1 client connection.
pub(crate) struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
    host: SocketAddr,
}

impl Connection {
    pub(crate) async fn open(api: SocketAddr) -> anyhow::Result<Self> {
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

    pub(crate) async fn post(&mut self, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
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
            bail!("{} closed the connection", self.host);
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}
