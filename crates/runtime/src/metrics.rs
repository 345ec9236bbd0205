//! One Prometheus registry per process: `/metrics` on any server of the process shows all of
//! it (as a normal exporter does), and components register their own metrics here.

use std::sync::{OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use prometheus_client;

/// The content type of [`encode`]'s output (OpenMetrics text, which Prometheus scrapes).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn registry() -> &'static RwLock<Registry> {
    static REGISTRY: OnceLock<RwLock<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut registry = Registry::default();
        register_process_metrics(&mut registry);
        RwLock::new(registry)
    })
}

/// Lets a component register its metrics (names should start with `uc_<component>_`).
pub fn register(f: impl FnOnce(&mut Registry)) {
    let mut registry = registry().write().unwrap_or_else(|e| e.into_inner());
    f(&mut registry);
}

/// The whole registry in OpenMetrics text format.
pub fn encode() -> String {
    let mut out = String::new();
    let registry = registry().read().unwrap_or_else(|e| e.into_inner());
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

fn register_process_metrics(registry: &mut Registry) {
    let build = Family::<BuildLabels, Gauge>::default();
    build
        .get_or_create(&BuildLabels {
            version: crate::VERSION.to_owned(),
        })
        .set(1);
    registry.register("uc_build_info", "UltraCloud build information", build);
    let start = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    start.set(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64(),
    );
    registry.register(
        "uc_process_start_time_seconds",
        "Start time of the process since the Unix epoch",
        start,
    );
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    component: String,
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    component: String,
    method: String,
    route: String,
}

pub(crate) struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

pub(crate) fn http() -> &'static HttpMetrics {
    static HTTP: OnceLock<HttpMetrics> = OnceLock::new();
    HTTP.get_or_init(|| {
        let metrics = HttpMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
        };
        register(|r| {
            r.register(
                "uc_http_requests",
                "HTTP requests by component, method, route template and status",
                metrics.requests.clone(),
            );
            r.register(
                "uc_http_request_duration_seconds",
                "HTTP request latency by component, method and route template",
                metrics.duration.clone(),
            );
        });
        metrics
    })
}

impl HttpMetrics {
    pub(crate) fn observe(
        &self,
        component: &str,
        method: &str,
        route: &str,
        status: u16,
        elapsed: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                component: component.to_owned(),
                method: method.to_owned(),
                route: route.to_owned(),
                status,
            })
            .inc();
        self.duration
            .get_or_create(&RouteLabels {
                component: component.to_owned(),
                method: method.to_owned(),
                route: route.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }
}
