//! herald's HTTP server: an axum router served on a TCP listener (the push API of `serve` and `logic`, a gateway's
//! internal listener) with the timeouts a public-facing HTTP server needs, optional TLS, and a graceful stop.
//!
//! Written here, not `axum::serve` or tonic's server, because neither bounds how long a connection may take to
//! send its request: axum sets no timer, so hyper's header read timeout never runs, and tonic sets one for
//! HTTP/2 only. Without it, connections that send nothing (or one byte a minute) are held for ever. Here:
//! - the TLS handshake must finish within `header_read_timeout`;
//! - the first bytes of the request, enough to tell HTTP/1 from HTTP/2, must arrive within it too (hyper waits for
//!   them without a timer of its own);
//! - an HTTP/1 request head must arrive within it, and so must the next one on a kept-alive connection (hyper's
//!   header read timeout, which also closes idle kept-alive connections);
//! - an HTTP/2 connection is pinged every `header_read_timeout` and closed when a ping goes unanswered as long.
//!
//! # Layout
//! - this file: [`serve`], the accept loop and each connection's serving, with [`HttpServing`], its settings.
//! - `tls`: [`ServerTls`], the certificate and key a listener serves, and the acceptor made of them.
//! - `first_bytes`: the deadline for a connection's first bytes.

mod first_bytes;
mod tls;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::first_bytes::FirstBytesDeadline;
pub use crate::tls::ServerTls;

/// How long the accept loop pauses after `accept` fails (out of file descriptors, most often).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How a listener serves.
#[derive(Clone)]
pub struct HttpServing {
    /// Time a connection has for its TLS handshake, for its request's head, and between requests.
    pub header_read_timeout: Duration,
    /// Serve TLS with this certificate, or cleartext.
    pub tls: Option<ServerTls>,
}

/// Serves `router` on `listener` until `stop` is cancelled, then lets the requests in progress finish (idle
/// connections are closed at once, HTTP/2 ones are sent GOAWAY) and returns.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    serving: HttpServing,
    stop: CancellationToken,
) -> io::Result<()> {
    let tls = serving.tls.as_ref().map(tls::acceptor).transpose()?;
    let timeout = serving.header_read_timeout;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(timeout)
        .keep_alive_timeout(timeout);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                // Per-connection errors (a reset before accept) cost a short pause too; running out of
                // descriptors must not spin.
                tracing::debug!(%error, "accept failed, backing off");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            builder: Arc::clone(&builder),
            router: router.clone(),
            watcher: graceful.watcher(),
            timeout,
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => connection.serve(stream).await,
                Some(tls) => match tokio::time::timeout(timeout, tls.accept(stream)).await {
                    Ok(Ok(stream)) => connection.serve(stream).await,
                    Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                },
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// What each accepted connection needs to be served.
struct Connection {
    builder: Arc<auto::Builder<TokioExecutor>>,
    router: axum::Router,
    watcher: Watcher,
    timeout: Duration,
}

impl Connection {
    async fn serve<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(self, io: I) {
        let io = TokioIo::new(FirstBytesDeadline::new(io, self.timeout));
        let connection = self
            .builder
            .serve_connection(io, TowerToHyperService::new(self.router))
            .into_owned();
        if let Err(error) = self.watcher.watch(connection).await {
            tracing::debug!(%error, "HTTP connection ended with an error");
        }
    }
}
