//! The [`Gateway`]: the WebSocket listener's accept loop, and each connection's handshake until its session
//! starts.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use herald_hub::Hub;
use herald_protocol::deflate_offer::DeflateAgreement;
use herald_protocol::forms::WireForm;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::access::{Access, AccessConfig, Admitted, Refusal};
use crate::config::GatewayConfig;
use crate::handshake::{self, Request};
use crate::metrics::{GatewayMetrics, Handshake};
use crate::session::Context;
use crate::session::Session;

/// The WebSocket side of one herald process.
pub struct Gateway {
    context: Arc<Context>,
    /// One per WebSocket connection (`max_connections`), taken when the handshake is answered.
    permits: Arc<Semaphore>,
    /// One per TCP connection whose handshake is under way (`max_handshakes`).
    handshakes: Arc<Semaphore>,
    next_id: AtomicU64,
}

/// The longest a connection that gets no upgrade is kept once its answer is written (see [`linger`]).
const LINGER: Duration = Duration::from_secs(1);

/// How long the accept loop pauses after `accept` fails for lack of resources (file descriptors, memory).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

impl Gateway {
    /// Creates the gateway around a hub.
    pub fn new(
        hub: Arc<Hub<Session>>,
        config: GatewayConfig,
        access: AccessConfig,
        metrics: GatewayMetrics,
    ) -> Arc<Self> {
        if access.verifier.is_none() {
            tracing::warn!(
                "no auth key configured: any client may connect and join any room (go-push compatible; set \
                 auth_hmac_secrets or auth_public_keys to require tokens)"
            );
        }
        Self::build(Context {
            hub,
            limits: config,
            access: Access::new(access),
            metrics,
            #[cfg(feature = "conformance")]
            echo: false,
        })
    }

    /// A gateway that speaks no herald protocol: it upgrades at `/` and echoes every text and binary message, so
    /// the Autobahn conformance suite can exercise herald's own WebSocket layer (handshake, framing,
    /// fragmentation, UTF-8, close handshake, pings) through `examples/ws_echo.rs`. Built only with the
    /// `conformance` feature, which only that example turns on: herald's binary does not contain it.
    #[cfg(feature = "conformance")]
    pub fn new_echo(hub: Arc<Hub<Session>>, config: GatewayConfig, metrics: GatewayMetrics) -> Arc<Self> {
        Self::build(Context {
            hub,
            limits: config,
            access: Access::new(AccessConfig::default()),
            metrics,
            echo: true,
        })
    }

    fn build(context: Context) -> Arc<Self> {
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(context.limits.max_connections)),
            handshakes: Arc::new(Semaphore::new(context.limits.max_handshakes)),
            context: Arc::new(context),
            next_id: AtomicU64::new(1),
        })
    }

    /// Whether `/` upgrades too (the conformance echo server) instead of serving the demo page.
    fn upgrades_at_root(&self) -> bool {
        #[cfg(feature = "conformance")]
        return self.context.echo;
        #[cfg(not(feature = "conformance"))]
        false
    }

    /// Accepts connections until `stop_accepting` is cancelled. Each connection runs on `tracker`; when
    /// `close_sessions` is cancelled it sends what is queued for it, then a "going away" close frame.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        stop_accepting: CancellationToken,
        close_sessions: CancellationToken,
        tracker: TaskTracker,
    ) {
        loop {
            let accepted = tokio::select! {
                () = stop_accepting.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let handshake = Arc::clone(&self.handshakes).try_acquire_owned().ok();
                    let span = tracing::debug_span!("conn", %peer);
                    let connection = Arc::clone(&self).handle(stream, peer, handshake, close_sessions.clone());
                    tracker.spawn(connection.instrument(span));
                }
                Err(e) if is_resource_exhaustion(&e) => {
                    self.context.metrics.accept_error();
                    tracing::warn!(error = %e, "accept failed, backing off");
                    tokio::select! {
                        () = stop_accepting.cancelled() => return,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
                // Errors of one connection (reset before accept, ...) say nothing about the listener.
                Err(e) => tracing::debug!(error = %e, "accept failed"),
            }
        }
    }

    /// Serves one TCP connection: its handshake, then, when it is upgraded, its WebSocket session until it ends.
    async fn handle(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        handshake: Option<OwnedSemaphorePermit>,
        shutdown: CancellationToken,
    ) {
        // The handshake's state (the request being read, a refusal lingering) lives in a box of its own, freed when
        // the handshake is over: this task then holds the session alone for the connection's whole life. Inline, the
        // handshake's states made the task of every idle connection 760 bytes larger than its session needs.
        let Some(upgraded) = Box::pin(self.handshake(stream, peer, handshake)).await else {
            return;
        };
        let Upgraded {
            stream,
            early,
            admitted,
            permit,
            deflate,
        } = upgraded;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let Admitted { identity, _slot } = admitted;
        tracing::debug!(id, %peer, authenticated = identity.is_some(), "connected");
        // Every connection of this listener takes go-push's PUSH frames, in WebSocket frames: compressed when it
        // negotiated permessage-deflate with a window herald's shared frames fit.
        let form = match deflate {
            Some(agreement) if agreement.compresses() => WireForm::Deflate,
            _ => WireForm::WebSocket,
        };
        let (session, auth) = Session::new(id, stream, form, Arc::clone(&self.context), identity);
        crate::session::run(session, auth, early, deflate.is_some(), shutdown).await;
        drop(_slot);
        drop(permit);
    }

    /// Reads the HTTP request and answers it; what the session needs when the connection was upgraded.
    async fn handshake(
        &self,
        mut stream: TcpStream,
        peer: SocketAddr,
        handshake: Option<OwnedSemaphorePermit>,
    ) -> Option<Upgraded> {
        let Some(handshake) = handshake else {
            self.refuse_at_once(stream).await;
            return None;
        };
        let request = tokio::time::timeout(
            self.context.limits.handshake_timeout,
            handshake::read_request(&mut stream, self.upgrades_at_root()),
        )
        .await;
        let (response, outcome, upgrade) = match request {
            Err(_elapsed) => {
                self.context.metrics.handshake(Handshake::Timeout);
                return None;
            }
            Ok(None) => return None,
            Ok(Some(Request::Page(asset))) => (handshake::page_response(asset), Handshake::Page, None),
            Ok(Some(Request::Refuse(response))) => (response.to_owned(), Handshake::Rejected, None),
            Ok(Some(Request::Upgrade {
                accept,
                early,
                token,
                origin,
                deflate,
            })) => match Arc::clone(&self.permits).try_acquire_owned() {
                Err(_) => (handshake::OVER_LIMIT.to_owned(), Handshake::OverLimit, None),
                Ok(permit) => match self
                    .context
                    .access
                    .admit(peer.ip(), origin.as_deref(), token.as_deref())
                {
                    Ok(admitted) => {
                        let deflate = deflate.filter(|_| self.context.limits.compression);
                        let response = handshake::switching_protocols(
                            &accept,
                            Some(self.context.limits.heartbeat_timeout),
                            deflate.as_ref(),
                        );
                        (response, Handshake::Upgraded, Some((early, admitted, permit, deflate)))
                    }
                    Err(refusal) => {
                        let (response, outcome) = self.refusal(refusal);
                        (response, outcome, None)
                    }
                },
            },
        };
        self.context.metrics.handshake(outcome);
        let written = tokio::time::timeout(
            self.context.limits.handshake_timeout,
            stream.write_all(response.as_bytes()),
        )
        .await;
        drop(handshake);
        let Some((early, admitted, permit, deflate)) = upgrade else {
            if matches!(written, Ok(Ok(()))) {
                linger(stream).await;
            }
            return None;
        };
        if !matches!(written, Ok(Ok(()))) {
            return None;
        }
        let _ = stream.set_nodelay(true);
        Some(Upgraded {
            stream,
            early,
            admitted,
            permit,
            deflate,
        })
    }

    /// The response to a refused handshake, and how it is counted. The token's reason is named in the body (the
    /// token itself never is, nor logged).
    fn refusal(&self, refusal: Refusal) -> (String, Handshake) {
        use serde_json::json;
        match refusal {
            Refusal::RateLimited { retry_after_secs } => (
                handshake::refusal(
                    "429 Too Many Requests",
                    &format!("Retry-After: {retry_after_secs}\r\n"),
                    &json!({"error": "rate_limited", "reason": "too many handshakes from this address"}),
                ),
                Handshake::RateLimited,
            ),
            Refusal::Origin => (
                handshake::refusal(
                    "403 Forbidden",
                    "",
                    &json!({"error": "forbidden_origin", "reason": "this Origin is not allowed"}),
                ),
                Handshake::ForbiddenOrigin,
            ),
            Refusal::Unauthorized(error) => {
                self.context.metrics.auth_failure(error);
                (
                    handshake::refusal(
                        "401 Unauthorized",
                        "WWW-Authenticate: Bearer\r\n",
                        &json!({"error": "unauthorized", "reason": error.label(), "message": error.to_string()}),
                    ),
                    Handshake::Unauthorized,
                )
            }
            Refusal::UserLimit => (
                handshake::refusal(
                    "429 Too Many Requests",
                    "",
                    &json!({"error": "user_limit", "reason": "this user holds max_connections_per_user already"}),
                ),
                Handshake::UserLimit,
            ),
        }
    }

    /// At `max_handshakes`: answer 503 at once, without waiting for the request, so a flood of connections holds
    /// descriptors for a moment instead of a whole handshake timeout.
    async fn refuse_at_once(&self, mut stream: TcpStream) {
        self.context.metrics.handshake(Handshake::Busy);
        if tokio::time::timeout(LINGER, stream.write_all(handshake::BUSY.as_bytes()))
            .await
            .is_ok_and(|written| written.is_ok())
        {
            linger(stream).await;
        }
    }
}

/// Ends a connection whose answer was written and that gets no upgrade: our side is shut down and what the client
/// still sends is read and dropped until it closes (for at most [`LINGER`]), so that closing with unread bytes does
/// not reset the answer away before the client reads it.
async fn linger(mut stream: TcpStream) {
    let _ = tokio::time::timeout(LINGER, async {
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), io::Error>(())
    })
    .await;
}

/// A connection whose handshake was answered 101: what its session starts from.
struct Upgraded {
    stream: TcpStream,
    /// Bytes that came with the request, after it.
    early: Vec<u8>,
    admitted: Admitted,
    /// Its place in `max_connections`.
    permit: OwnedSemaphorePermit,
    /// The permessage-deflate offer accepted, if any.
    deflate: Option<DeflateAgreement>,
}

/// `accept` errors that mean the process is out of something, not that one connection failed.
fn is_resource_exhaustion(error: &io::Error) -> bool {
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    const ENOBUFS: i32 = 105;
    const ENOMEM: i32 = 12;
    matches!(error.raw_os_error(), Some(EMFILE | ENFILE | ENOBUFS | ENOMEM))
}
