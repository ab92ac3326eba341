//! What every handler of the push API shares ([`Api`]): the bus, the metrics it renders and its own counters.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use herald_protocol::bus::Bus;
use herald_protocol::counts::CountsSource;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    status: u16,
}

/// Requests answered by the push API, by endpoint and status; what its pushes carried.
#[derive(Clone, Debug, Default)]
pub(crate) struct ApiMetrics {
    requests: Family<RequestLabels, Counter>,
    /// Items in pushes answered 200.
    pub(crate) items_taken: Counter,
    /// Pushes answered 200 (for the dashboard; `/metrics` has them by endpoint in `requests`).
    pub(crate) pushes_taken: Counter,
    /// Pushes answered 503 or 413 (likewise).
    pub(crate) pushes_refused: Counter,
}

impl ApiMetrics {
    /// Creates the metrics and registers them (prefix `herald_`).
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "herald_api_requests",
            "Push-API requests, by endpoint and status",
            metrics.requests.clone(),
        );
        registry.register(
            "herald_api_push_items",
            "Items in pushes the push API answered 200",
            metrics.items_taken.clone(),
        );
        metrics
    }

    /// Counts one request to `endpoint` answered `status`.
    pub(crate) fn count(&self, endpoint: &'static str, status: StatusCode) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint,
                status: status.as_u16(),
            })
            .inc();
    }
}

/// What every handler of the push API shares.
pub(crate) struct Api {
    /// Where pushes and queries go.
    pub(crate) bus: Arc<dyn Bus>,
    /// Time a request has to send its whole body.
    pub(crate) body_read_timeout: Duration,
    /// What `/metrics` renders: the process's metrics, the API's own among them.
    pub(crate) registry: Arc<Registry>,
    /// The API's own counters.
    pub(crate) metrics: ApiMetrics,
    /// The closes, drops and history of the connections this process holds (`herald serve`); `None` where it
    /// holds none (logic), whose dashboard adds up what the gateways report instead.
    pub(crate) own_counts: Option<Arc<dyn CountsSource>>,
    /// Cancelled when the process starts shutting down; `/healthz` then answers 503.
    pub(crate) stopping: CancellationToken,
    /// When the API was made: the dashboard's clock for rates.
    pub(crate) started: Instant,
}

impl Api {
    /// The API's state; its own metrics are registered into `registry` before it is shared.
    pub(crate) fn new(
        bus: Arc<dyn Bus>,
        mut registry: Registry,
        own_counts: Option<Arc<dyn CountsSource>>,
        body_read_timeout: Duration,
        stopping: CancellationToken,
    ) -> Arc<Self> {
        let metrics = ApiMetrics::register(&mut registry);
        Arc::new(Self {
            bus,
            body_read_timeout,
            registry: Arc::new(registry),
            metrics,
            own_counts,
            stopping,
            started: Instant::now(),
        })
    }
}
