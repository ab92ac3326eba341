//! Serving an axum router on a TCP listener (the push API, a gateway's internal listener) with the timeouts a
//! public-facing HTTP server needs, optional TLS, and a graceful stop.
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

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

use crate::gateway::ServerTls;

/// How long the accept loop pauses after `accept` fails (out of file descriptors, most often).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Bytes that tell an HTTP/2 connection (its preface is 24 bytes) from an HTTP/1 request.
const VERSION_BYTES: usize = 24;

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
    let tls = serving.tls.as_ref().map(acceptor).transpose()?;
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

/// A rustls acceptor for `tls`, offering HTTP/2 and HTTP/1.1 by ALPN.
fn acceptor(tls: &ServerTls) -> io::Result<TlsAcceptor> {
    let invalid = |what: &str, error: &dyn std::fmt::Display| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {error}"))
    };
    let certs = CertificateDer::pem_slice_iter(&tls.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("tls certificate", &e))?;
    let key = PrivateKeyDer::from_pem_slice(&tls.key_pem).map_err(|e| invalid("tls key", &e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("tls", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid("tls certificate and key", &e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A stream whose reads fail with `TimedOut` once `timeout` has passed before its first [`VERSION_BYTES`] bytes
/// arrived; after them it is the stream itself.
struct FirstBytesDeadline<I> {
    inner: I,
    /// Bytes still to come before the deadline goes; with them, the deadline.
    awaiting: Option<(usize, Pin<Box<Sleep>>)>,
}

impl<I> FirstBytesDeadline<I> {
    fn new(inner: I, timeout: Duration) -> Self {
        Self {
            inner,
            awaiting: Some((VERSION_BYTES, Box::pin(tokio::time::sleep(timeout)))),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FirstBytesDeadline<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if let Some((left, _)) = &mut this.awaiting {
                    let read = buf.filled().len() - before;
                    // A read of nothing is the end of the stream: hyper sees it and ends the connection.
                    if read == 0 || read >= *left {
                        this.awaiting = None;
                    } else {
                        *left -= read;
                    }
                }
                Poll::Ready(result)
            }
            Poll::Pending => match &mut this.awaiting {
                Some((_, deadline)) => {
                    ready!(deadline.as_mut().poll(cx));
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request within header_read_timeout",
                    )))
                }
                None => Poll::Pending,
            },
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FirstBytesDeadline<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
