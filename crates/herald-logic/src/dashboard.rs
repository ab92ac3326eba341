//! `GET /dashboard`: a page for operators, with live charts of the last minutes, and `GET /dashboard/data`, the
//! sample it reads every second ([`herald_protocol::dashboard`]).
//!
//! Everything the page needs is inside the binary: the page, its script and style, and uPlot (the chart library,
//! vendored in `dashboard/` with its licence), so the dashboard works on a host with no way out and loads nothing
//! from a third party. uPlot's files carry its version in their path and are cached for a year; the rest is
//! revalidated on every load, and the data is never cached.
//!
//! The sample's gauges and hub counters come from the bus's `/stats` document; the closes, dropped frames and
//! history figures from the counters of the connections this process holds (`herald serve`), or, on logic (which
//! holds none), summed over what the gateways report with their status or announcement. What nobody reports comes
//! out as `null`: the dashboard says what it cannot see.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use herald_protocol::counts::GatewayCounts;
use herald_protocol::dashboard::{DashboardData, DashboardMode, GatewayRow, GatewayState, Totals};
use herald_protocol::stats::{ClusterStats, HubStats, LinkState, NatsStats, Stats};

use crate::state::Api;

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");
const UPLOT_JS: &str = include_str!("dashboard/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("dashboard/uPlot.min.css");

/// What the page may load and reach: its own origin only, no inline script, and no framing (clickjacking).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Whether `path` is the dashboard's: the only paths where a browser's Basic credentials are taken (see
/// `require_key`).
pub(crate) fn is_dashboard(path: &str) -> bool {
    path == "/dashboard" || path.starts_with("/dashboard/")
}

/// The dashboard's routes, on the push API's router (behind its `api_keys`).
pub(crate) fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/dashboard", get(page))
        .route("/dashboard/", get(to_page))
        .route("/dashboard/data", get(data))
        .route("/dashboard/dashboard.js", get(script))
        .route("/dashboard/dashboard.css", get(style))
        .route("/dashboard/uplot-1.6.32.min.js", get(uplot_js))
        .route("/dashboard/uplot-1.6.32.min.css", get(uplot_css))
}

async fn page(State(api): State<Arc<Api>>) -> Response {
    api.metrics.count("/dashboard", StatusCode::OK);
    let mut response = asset("text/html; charset=utf-8", PAGE, Caching::Revalidate);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// `/dashboard/` (as operators often type it) to the page, whose relative links expect no trailing slash.
async fn to_page() -> Response {
    (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, "../dashboard")]).into_response()
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT, Caching::Revalidate)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE, Caching::Revalidate)
}

async fn uplot_js() -> Response {
    asset("text/javascript; charset=utf-8", UPLOT_JS, Caching::Immutable)
}

async fn uplot_css() -> Response {
    asset("text/css; charset=utf-8", UPLOT_CSS, Caching::Immutable)
}

async fn data(State(api): State<Arc<Api>>) -> Response {
    api.metrics.count("/dashboard/data", StatusCode::OK);
    let body = serde_json::to_string(&sample(&api)).expect("the dashboard's document serializes");
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// How long a browser may keep a file.
enum Caching {
    /// Asked again on every load (it changes with herald).
    Revalidate,
    /// Kept: its path names its version.
    Immutable,
}

fn asset(content_type: &'static str, body: &'static str, caching: Caching) -> Response {
    let cache = match caching {
        Caching::Revalidate => "no-cache",
        Caching::Immutable => "public, max-age=31536000, immutable",
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, cache),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// The sample `/dashboard/data` answers now.
fn sample(api: &Api) -> DashboardData {
    let taken = Taken {
        pushes: api.metrics.pushes_taken.get(),
        items: api.metrics.items_taken.get(),
        refused: api.metrics.pushes_refused.get(),
    };
    let (mode, total, gateways) = match api.bus.stats() {
        Stats::Hub(hub) => (DashboardMode::Hub, hub_totals(&hub), Vec::new()),
        Stats::Cluster(cluster) => (
            DashboardMode::Cluster,
            cluster_totals(&cluster, &taken),
            cluster_rows(&cluster),
        ),
        Stats::Nats(nats) => (DashboardMode::Nats, nats_totals(&nats, &taken), nats_rows(&nats)),
    };
    // A process that holds connections (serve) counts its own; logic adds up the gateways' (those still heard from,
    // so a gateway that goes away takes its counts with it and the page shows no rate for that second).
    let counts = match &api.own_counts {
        Some(own) => own.counts(),
        None => GatewayCounts::sum(gateways.iter().filter_map(|row| row.counts.as_ref())).unwrap_or_default(),
    };
    DashboardData {
        mode,
        uptime_ms: u64::try_from(api.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        total,
        counts,
        gateways,
    }
}

/// What this push API took and refused, for the modes whose hubs are elsewhere.
struct Taken {
    pushes: u64,
    items: u64,
    refused: u64,
}

fn hub_totals(hub: &HubStats) -> Totals {
    Totals {
        connections: hub.connections,
        rooms: hub.rooms,
        users: Some(hub.users),
        pushes: hub.pushes,
        items: hub.items,
        pushes_refused: hub.pushes_refused,
        frames: Some(hub.frames),
        deliveries: Some(hub.deliveries),
        delivered_bytes: Some(hub.delivered_bytes),
        compression_in_bytes: Some(hub.compression_in_bytes),
        compression_out_bytes: Some(hub.compression_out_bytes),
        items_unrouted: Some(hub.items_unrouted),
    }
}

/// Logic on gRPC: pushes as this API took them (each reaches every gateway, so the gateways' sum would count it
/// once per gateway), the rest summed over the gateways that report.
fn cluster_totals(cluster: &ClusterStats, taken: &Taken) -> Totals {
    let hubs: Vec<&HubStats> = cluster
        .gateways
        .iter()
        .filter(|link| link.state == LinkState::Up)
        .filter_map(|link| link.status.as_ref().map(|status| &status.hub))
        .collect();
    let sum = |figure: fn(&HubStats) -> u64| hubs.iter().map(|hub| figure(hub)).sum::<u64>();
    Totals {
        connections: cluster.connections,
        rooms: sum(|hub| hub.rooms),
        users: Some(sum(|hub| hub.users)),
        pushes: taken.pushes,
        items: taken.items,
        pushes_refused: taken.refused,
        frames: Some(sum(|hub| hub.frames)),
        deliveries: Some(sum(|hub| hub.deliveries)),
        delivered_bytes: Some(sum(|hub| hub.delivered_bytes)),
        compression_in_bytes: Some(sum(|hub| hub.compression_in_bytes)),
        compression_out_bytes: Some(sum(|hub| hub.compression_out_bytes)),
        items_unrouted: Some(sum(|hub| hub.items_unrouted)),
    }
}

fn cluster_rows(cluster: &ClusterStats) -> Vec<GatewayRow> {
    cluster
        .gateways
        .iter()
        .map(|link| {
            let status = link.status.as_ref().filter(|_| link.state == LinkState::Up);
            let state = match (link.state, status) {
                (LinkState::Down, _) => GatewayState::Down,
                (LinkState::Up, Some(status)) if !status.serving => GatewayState::Draining,
                (LinkState::Up, _) => GatewayState::Up,
            };
            GatewayRow {
                name: link.addr.clone(),
                state,
                since_secs: link.since_secs,
                last_error: link.last_error.clone(),
                connections: status.map_or(0, |status| status.hub.connections),
                rooms: status.map_or(0, |status| status.hub.rooms),
                queue_depth: Some(link.queue_depth),
                last_seen_ms: None,
                hub: status.map(|status| status.hub.clone()),
                counts: status.and_then(|status| status.counts.clone()),
            }
        })
        .collect()
}

/// On NATS the gateways announce gauges only: what they sent is not known here.
fn nats_totals(nats: &NatsStats, taken: &Taken) -> Totals {
    Totals {
        connections: nats.connections,
        rooms: nats.gateways.iter().map(|heard| heard.announced.rooms).sum(),
        users: None,
        pushes: taken.pushes,
        items: taken.items,
        pushes_refused: taken.refused,
        frames: None,
        deliveries: None,
        delivered_bytes: None,
        compression_in_bytes: None,
        compression_out_bytes: None,
        items_unrouted: None,
    }
}

fn nats_rows(nats: &NatsStats) -> Vec<GatewayRow> {
    let mut rows: Vec<GatewayRow> = nats
        .gateways
        .iter()
        .map(|heard| GatewayRow {
            name: heard.announced.id.clone(),
            state: if heard.announced.serving {
                GatewayState::Up
            } else {
                GatewayState::Draining
            },
            since_secs: None,
            last_error: None,
            connections: heard.announced.connections,
            rooms: heard.announced.rooms,
            queue_depth: None,
            last_seen_ms: Some(heard.last_seen_ms),
            hub: None,
            counts: heard.announced.counts.clone(),
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The version of the vendored uPlot, as its files' paths (in [`routes`] and the page) name it.
    const UPLOT_VERSION: &str = "1.6.32";

    #[test]
    fn the_page_names_the_files_served() {
        for path in [
            "dashboard/dashboard.js",
            "dashboard/dashboard.css",
            "dashboard/uplot-1.6.32.min.js",
            "dashboard/uplot-1.6.32.min.css",
        ] {
            assert!(PAGE.contains(&format!("\"{path}\"")), "index.html links {path}");
        }
        assert!(
            UPLOT_JS.starts_with(&format!("/*! https://github.com/leeoniya/uPlot (v{UPLOT_VERSION}) */")),
            "the vendored uPlot is the version its paths name"
        );
        assert!(
            !PAGE.contains("<script>") && !PAGE.contains("style="),
            "nothing inline (the CSP forbids it)"
        );
    }

    #[test]
    fn only_the_dashboards_paths_are_the_dashboards() {
        assert!(is_dashboard("/dashboard"));
        assert!(is_dashboard("/dashboard/data"));
        assert!(!is_dashboard("/dashboards"));
        assert!(!is_dashboard("/push/all"));
    }
}
