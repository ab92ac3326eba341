//! The gateway's end of the hop: the gRPC service that hands each received push to the local hub, and the internal
//! listener that serves it beside `/healthz`, `/stats` and `/metrics`.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use herald_http::HttpServing;
use herald_hub::{Hub, Recipient};
use herald_protocol::counts::CountsSource;
use herald_protocol::stats::GatewayStatus;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::SecretCheck;
use crate::hop;
use crate::pb;
use crate::pb::gateway_server::{Gateway, GatewayServer};
use crate::{MAX_MESSAGE_BYTES, Secret};

/// The gRPC service: pushes in, one [`pb::Ack`] per push out, in arrival order.
pub struct RpcService<R> {
    hub: Arc<Hub<R>>,
    /// The gateway's counters, whose closes, drops and history its status reports.
    counts: Arc<dyn CountsSource>,
    /// Cancelled when the gateway has drained: every open `Deliver` stream then ends, so the server can stop.
    closing: CancellationToken,
}

impl<R: Recipient> RpcService<R> {
    /// A service in front of `hub`, reporting the closes, drops and history of `counts`; its streams end when
    /// `closing` is cancelled.
    pub fn new(hub: Arc<Hub<R>>, counts: Arc<dyn CountsSource>, closing: CancellationToken) -> Self {
        Self { hub, counts, closing }
    }
}

type AckStream = Pin<Box<dyn Stream<Item = Result<pb::Ack, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl<R: Recipient> Gateway for RpcService<R> {
    type DeliverStream = AckStream;

    async fn deliver(&self, request: Request<Streaming<pb::Push>>) -> Result<Response<AckStream>, Status> {
        tracing::info!("logic node connected");
        let hub = Arc::clone(&self.hub);
        // Each push is taken when the ack stream is polled for its answer: no task, no queue, and a logic node that
        // stops reading acks stops the gateway reading its pushes (HTTP/2 flow control does the rest).
        let acks = request
            .into_inner()
            .map(move |push| push.map(|push| hop::ack(hop::take(&hub, push))))
            .take_until(self.closing.clone().cancelled_owned());
        Ok(Response::new(Box::pin(acks)))
    }

    async fn query(&self, request: Request<pb::QueryRequest>) -> Result<Response<pb::QueryReply>, Status> {
        hop::answer(&self.hub, request.into_inner())
            .map(Response::new)
            .ok_or_else(|| Status::invalid_argument("the query names no valid room or user"))
    }

    async fn status(&self, _request: Request<pb::StatusRequest>) -> Result<Response<pb::GatewayStatus>, Status> {
        let status = GatewayStatus {
            serving: self.hub.is_open(),
            hub: self.hub.stats(),
            counts: Some(self.counts.counts()),
        };
        Ok(Response::new(crate::status::to_wire(&status)))
    }
}

/// Anything else on the internal listener: a plain 404 (tonic's own fallback would answer HTTP 200 with a gRPC
/// status, which reads as success to an HTTP client that posted a push here by mistake).
async fn not_found() -> (
    axum::http::StatusCode,
    [(axum::http::HeaderName, &'static str); 1],
    &'static str,
) {
    (
        axum::http::StatusCode::NOT_FOUND,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        r#"{"error":"path: no such endpoint on a gateway's internal listener (pushes go to herald logic)","field":"path"}"#,
    )
}

/// Serves the gateway's internal listener until `shutdown` is cancelled: the gRPC service (behind the shared
/// secret, when one is set) and the plain-HTTP routes in `http` (`/healthz`, `/stats`, `/metrics`), HTTP/1 or
/// HTTP/2, with TLS when `serving` has it. A push message larger than `max_push_bytes` is refused by the decoder.
pub async fn serve_internal<R: Recipient>(
    listener: TcpListener,
    service: RpcService<R>,
    http: axum::Router,
    secret: Option<Secret>,
    serving: HttpServing,
    max_push_bytes: usize,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let grpc = GatewayServer::new(service)
        .max_decoding_message_size(max_push_bytes)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let grpc = tonic::service::interceptor::InterceptedService::new(grpc, SecretCheck::new(secret));
    let router = tonic::service::Routes::new(grpc)
        .into_axum_router()
        .merge(http)
        .fallback(not_found);
    herald_http::serve(listener, router, serving, shutdown).await
}

/// The largest push message a gateway decodes for push-API bodies of at most `max_body_bytes`: the body's items,
/// each re-framed (a tag and a length: 2 bytes for an item that took 2 in the body, `1,`; 4 for one of up to
/// 2 MiB), and the room or user named beside them.
pub fn max_push_bytes(max_body_bytes: usize) -> usize {
    (max_body_bytes * 2).min(MAX_MESSAGE_BYTES) + 4096
}
