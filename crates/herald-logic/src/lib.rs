//! herald's push API: business services push here, and every answer tells the truth.
//!
//! # Endpoints
//! - `POST /push/room`, `POST /push/all`, `POST /push/user`: go-push's form fields or a JSON body
//!   ([`herald_protocol::api`]). `200 {"items":N,"recipients":M}` when taken; `400 {"error":..,"field":..}`
//!   naming the field at fault; `413` over the body limit; `408` when the body does not arrive within
//!   `body_read_timeout`; `503` with `Retry-After` when the bus cannot take it.
//! - `POST /disconnect/user`: closes every connection of a user (4004), `200 {"user":..,"closed":N,"partial":..}`.
//! - `GET /rooms/{room}`, `GET /users/{user}`: presence, summed over every gateway ([`herald_protocol::presence`]).
//! - `GET /stats` (JSON), `GET /metrics` (Prometheus / OpenMetrics text), `GET /healthz`.
//! - `GET /dashboard`: live charts for operators; `GET /dashboard/data`, the sample the page reads every second
//!   ([`herald_protocol::dashboard`]); the page's script, style and the vendored uPlot under `/dashboard/`.
//!
//! With `api_keys` set, every request but `/healthz` needs `Authorization: Bearer <key>` (else `401`); keys are
//! compared in constant time and never logged. Under `/dashboard` only, `Authorization: Basic` with a key as the
//! password is taken too, and a 401 there challenges `Basic`, so a browser asks its operator for the key.
//!
//! The API never delivers anything itself: it validates, then hands the push (or the query) to a [`Bus`].
//!
//! # Layout
//! - this file: the routes, the key check, and the handlers with the answers they give.
//! - `state`: what every handler shares (the bus, the metrics, the counts to show).
//! - `dashboard`: the dashboard's page, files and data.

mod dashboard;
mod state;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use herald_protocol::api::{Endpoint, FieldError, parse_push, parse_user};
use herald_protocol::bus::{Bus, Census, Query, Refused};
use herald_protocol::client::valid_room;
use herald_protocol::counts::CountsSource;
use herald_protocol::presence::{Disconnected, RoomPresence, UserPresence};
use herald_protocol::valid_user;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::state::Api;

/// Settings of the push API.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// Largest request body taken, in bytes; larger ones are answered 413.
    pub max_body_bytes: usize,
    /// Time a request has to send its whole body once its head is in; past it the request is answered 408 and
    /// its connection closed (hyper's `header_read_timeout` covers the head only).
    pub body_read_timeout: Duration,
    /// Keys a caller must present (`Authorization: Bearer <key>`) on every request but `/healthz`; empty means
    /// none is needed.
    pub api_keys: Vec<String>,
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys themselves.
        f.debug_struct("ApiConfig")
            .field("max_body_bytes", &self.max_body_bytes)
            .field("body_read_timeout", &self.body_read_timeout)
            .field("api_keys", &self.api_keys.len())
            .finish()
    }
}

/// The push API's router: the push endpoints plus [`ops_router`]'s. `registry` (with the API's own metrics added)
/// is rendered at `/metrics`; `stopping` turns `/healthz` to 503. `own_counts` are the closes, drops and history of
/// the connections this process holds, for the dashboard (`herald serve`); without them (logic) it adds up what the
/// gateways report.
pub fn router(
    bus: Arc<dyn Bus>,
    registry: Registry,
    own_counts: Option<Arc<dyn CountsSource>>,
    config: ApiConfig,
    stopping: CancellationToken,
) -> Router {
    let api = Api::new(bus, registry, own_counts, config.body_read_timeout, stopping);
    let keys = Arc::new(config.api_keys);
    let guarded = Router::new()
        .route("/push/room", post(push_room))
        .route("/push/all", post(push_all))
        .route("/push/user", post(push_user))
        .route("/disconnect/user", post(disconnect_user))
        .route("/rooms/{*room}", get(room_presence))
        .route("/users/{*user}", get(user_presence))
        .route("/stats", get(stats))
        .route("/metrics", get(render_metrics))
        .merge(dashboard::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            (keys, Arc::clone(&api)),
            require_key,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(guarded)
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .with_state(api)
}

/// With `api_keys` set: a request without one of them is answered 401 (and counted), before its body is read.
///
/// Under `/dashboard` a browser's Basic credentials are taken too (any user name, a key as the password), and
/// the 401 challenges `Basic` so that the browser asks for them. Nowhere else: a browser sends remembered Basic
/// credentials with any request to the origin, a form another site posts to `/push/all` included, so taking
/// them there would let any page the operator visits push (a `GET` of the dashboard changes nothing, and
/// another origin cannot read its answer).
async fn require_key(
    State((keys, api)): State<(Arc<Vec<String>>, Arc<Api>)>,
    request: Request,
    next: Next,
) -> Response {
    if keys.is_empty() {
        return next.run(request).await;
    }
    let for_browser = dashboard::is_dashboard(request.uri().path());
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| presented_key(value, for_browser));
    // Every key is compared, in constant time, whatever matched: the time taken says nothing about the keys.
    let matched = presented.is_some_and(|presented| {
        keys.iter()
            .fold(false, |found, key| found | constant_time_eq(&presented, key.as_bytes()))
    });
    if matched {
        return next.run(request).await;
    }
    api.metrics.count("unauthorized", StatusCode::UNAUTHORIZED);
    let (message, challenge) = if for_browser {
        (
            "the dashboard needs an api key: as the password of the browser's login (any user name), \
             or `Authorization: Bearer <api key>`",
            r#"Basic realm="herald", charset="UTF-8""#,
        )
    } else {
        ("this API needs `Authorization: Bearer <api key>`", "Bearer")
    };
    let mut response = error(StatusCode::UNAUTHORIZED, "authorization", message);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    response
}

/// The key an `Authorization` header presents: a Bearer token, or (when `basic` is allowed) the password of
/// Basic credentials, whatever the user name.
fn presented_key(authorization: &str, basic: bool) -> Option<Vec<u8>> {
    if let Some(token) = authorization.strip_prefix("Bearer ") {
        return Some(token.as_bytes().to_vec());
    }
    let (scheme, credentials) = authorization.split_once(' ')?;
    if !basic || !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(credentials.trim())
        .ok()?;
    let colon = decoded.iter().position(|byte| *byte == b':')?;
    Some(decoded[colon + 1..].to_vec())
}

/// Compares `presented` with `key` in time that depends only on the presented length (the caller's own): every
/// presented byte is compared with a byte of the key, wrapping around it, and a length mismatch is folded in last.
fn constant_time_eq(presented: &[u8], key: &[u8]) -> bool {
    if key.is_empty() {
        return false;
    }
    let diff = presented
        .iter()
        .enumerate()
        .fold(0u8, |diff, (i, byte)| diff | (byte ^ key[i % key.len()]));
    diff == 0 && presented.len() == key.len()
}

/// Only `/stats` (the bus's), `/metrics` (`registry`, the API's metrics added) and `/healthz`, for a listener that
/// must not take pushes (a gateway's internal listener). It has no fallback, so it can be merged into a router that
/// has one.
pub fn ops_router(bus: Arc<dyn Bus>, registry: Registry, stopping: CancellationToken) -> Router {
    // Nothing it serves reads a body, and it has no dashboard to show counts on.
    let body_read_timeout = Duration::ZERO;
    ops_routes().with_state(Api::new(bus, registry, None, body_read_timeout, stopping))
}

fn ops_routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/stats", get(stats))
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
}

/// A request's body, read within `body_read_timeout` and at most `max_body_bytes` long, or the answer that says
/// why not (408, 413, 400).
struct Body(Result<Bytes, Response>);

impl FromRequest<Arc<Api>> for Body {
    type Rejection = Infallible;

    async fn from_request(request: Request, api: &Arc<Api>) -> Result<Self, Infallible> {
        let read = tokio::time::timeout(api.body_read_timeout, Bytes::from_request(request, api));
        Ok(Self(match read.await {
            Ok(Ok(body)) => Ok(body),
            Ok(Err(rejection)) => Err(error(rejection.status(), "body", &rejection.body_text())),
            Err(_) => {
                let mut response = error(
                    StatusCode::REQUEST_TIMEOUT,
                    "body",
                    "not received within body_read_timeout",
                );
                // The rest of the body may still come: the connection cannot carry another request.
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                Err(response)
            }
        }))
    }
}

async fn push_room(State(api): State<Arc<Api>>, headers: HeaderMap, Body(body): Body) -> Response {
    push(&api, Endpoint::Room, &headers, body).await
}

async fn push_all(State(api): State<Arc<Api>>, headers: HeaderMap, Body(body): Body) -> Response {
    push(&api, Endpoint::All, &headers, body).await
}

async fn push_user(State(api): State<Arc<Api>>, headers: HeaderMap, Body(body): Body) -> Response {
    push(&api, Endpoint::User, &headers, body).await
}

async fn disconnect_user(State(api): State<Arc<Api>>, headers: HeaderMap, Body(body): Body) -> Response {
    let user = match body {
        Err(response) => Err(response),
        Ok(body) => {
            let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
            parse_user(content_type, body)
                .map_err(|FieldError { field, message }| error(StatusCode::BAD_REQUEST, &field, &message))
        }
    };
    let query = user.map(Query::Disconnect);
    answer_query(&api, "/disconnect/user", query, |user, census| Disconnected {
        user,
        closed: census.connections,
        partial: census.partial,
    })
    .await
}

async fn room_presence(State(api): State<Arc<Api>>, Path(room): Path<String>) -> Response {
    let query = if valid_room(&room) {
        Ok(Query::Room(Arc::from(room)))
    } else {
        Err(error(StatusCode::BAD_REQUEST, "room", "must be 1 to 256 bytes"))
    };
    answer_query(&api, "/rooms", query, |room, census| RoomPresence {
        room,
        connections: census.connections,
        users: census.users.len() as u64,
        partial: census.partial,
    })
    .await
}

async fn user_presence(State(api): State<Arc<Api>>, Path(user): Path<String>) -> Response {
    let query = if valid_user(&user) {
        Ok(Query::User(Arc::from(user)))
    } else {
        Err(error(StatusCode::BAD_REQUEST, "user", "must be 1 to 256 bytes"))
    };
    answer_query(&api, "/users", query, |user, census| UserPresence {
        user,
        connections: census.connections,
        info: census.info,
        partial: census.partial,
    })
    .await
}

/// Asks every gateway `query` (or answers the request's error) and answers with the document `answer` makes of
/// the name asked about and the gateways' census; counted as `endpoint`.
async fn answer_query<D: serde::Serialize>(
    api: &Api,
    endpoint: &'static str,
    query: Result<Query, Response>,
    answer: impl FnOnce(String, Census) -> D,
) -> Response {
    let response = match query {
        Err(response) => response,
        Ok(query) => {
            let name = match &query {
                Query::Room(name) | Query::User(name) | Query::Disconnect(name) => name.to_string(),
            };
            match api.bus.query(query).await {
                Ok(census) => ok(answer(name, census)),
                Err(refused) => answer_refusal(&refused),
            }
        }
    };
    api.metrics.count(endpoint, response.status());
    response
}

fn ok(document: impl serde::Serialize) -> Response {
    (StatusCode::OK, axum_json(document)).into_response()
}

async fn push(api: &Api, endpoint: Endpoint, headers: &HeaderMap, body: Result<Bytes, Response>) -> Response {
    let name = match endpoint {
        Endpoint::Room => "/push/room",
        Endpoint::All => "/push/all",
        Endpoint::User => "/push/user",
    };
    let response = match body {
        Err(response) => response,
        Ok(body) => {
            let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
            match parse_push(endpoint, content_type, body) {
                Err(FieldError { field, message }) => error(StatusCode::BAD_REQUEST, &field, &message),
                Ok(request) => match api.bus.push(request.target, request.items).await {
                    Ok(accepted) => {
                        api.metrics.pushes_taken.inc();
                        api.metrics.items_taken.inc_by(accepted.items as u64);
                        (StatusCode::OK, axum_json(accepted)).into_response()
                    }
                    Err(refused) => {
                        api.metrics.pushes_refused.inc();
                        answer_refusal(&refused)
                    }
                },
            }
        }
    };
    api.metrics.count(name, response.status());
    response
}

/// The answer to a push or query the bus refused: 413 for a push of more items than a queue can ever hold (retrying
/// cannot help), 503 with `Retry-After` for the rest.
fn answer_refusal(refused: &Refused) -> Response {
    match refused {
        Refused::TooManyItems { .. } => error(StatusCode::PAYLOAD_TOO_LARGE, "items", &refused.to_string()),
        Refused::QueueFull { retry_after_secs } | Refused::Unavailable { retry_after_secs, .. } => {
            unavailable(refused, *retry_after_secs)
        }
        Refused::ShuttingDown => unavailable(refused, 5),
    }
}

/// 503: the bus cannot take it now; try again after `retry_after` seconds.
fn unavailable(refused: &Refused, retry_after: u32) -> Response {
    let mut response = (
        StatusCode::SERVICE_UNAVAILABLE,
        axum_json(json!({ "error": refused.to_string() })),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    response
}

fn error(status: StatusCode, field: &str, message: &str) -> Response {
    (
        status,
        axum_json(json!({ "error": format!("{field}: {message}"), "field": field })),
    )
        .into_response()
}

/// A JSON body (axum's `json` feature would pull serde_urlencoded and more for this one line).
fn axum_json(value: impl serde::Serialize) -> impl IntoResponse {
    let body = serde_json::to_string(&value).expect("herald's documents serialize");
    ([(header::CONTENT_TYPE, "application/json")], body)
}

async fn stats(State(api): State<Arc<Api>>) -> Response {
    api.metrics.count("/stats", StatusCode::OK);
    axum_json(api.bus.stats()).into_response()
}

async fn render_metrics(State(api): State<Arc<Api>>) -> Response {
    api.metrics.count("/metrics", StatusCode::OK);
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &api.registry) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "metrics", &e.to_string());
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn healthz(State(api): State<Arc<Api>>) -> Response {
    let status = if api.stopping.is_cancelled() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    api.metrics.count("/healthz", status);
    let body = if status == StatusCode::OK {
        "ok\n"
    } else {
        "shutting down\n"
    };
    (status, body).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "path", "no such endpoint")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_presented_as_bearer_anywhere_and_as_basic_where_allowed() {
        // "operator:k1" and ":k1" in base64.
        let basic = "Basic b3BlcmF0b3I6azE=";
        assert_eq!(presented_key("Bearer k1", false), Some(b"k1".to_vec()));
        assert_eq!(presented_key(basic, true), Some(b"k1".to_vec()));
        assert_eq!(presented_key("basic Omsx", true), Some(b"k1".to_vec()));
        assert_eq!(
            presented_key(basic, false),
            None,
            "Basic only where the caller allows it"
        );
        assert_eq!(presented_key("Basic azE=", true), None, "no colon: not user:password");
        assert_eq!(presented_key("Basic !!", true), None);
        assert_eq!(presented_key("Digest k1", true), None);
    }
}
