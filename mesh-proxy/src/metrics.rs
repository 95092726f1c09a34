//! Istio's standard metrics (`istio_requests_total`,
//! `istio_request_duration_milliseconds`) with Istio's labels, so existing
//! dashboards work, and a JSON access log line per request.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::forward::Flag;

/// Istio's buckets for request durations, in milliseconds.
const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    reporter: &'static str,
    source_workload: String,
    source_workload_namespace: String,
    destination_service: String,
    destination_service_name: String,
    destination_service_namespace: String,
    destination_version: String,
    destination_cluster: String,
    request_protocol: &'static str,
    response_code: String,
    grpc_response_status: String,
    response_flags: &'static str,
    connection_security_policy: &'static str,
}

type HistogramFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: HistogramFamily,
    /// `source` for a gateway or an outbound sidecar.
    reporter: &'static str,
    workload: String,
    namespace: String,
    access_log: bool,
}

/// What one request did, for metrics and the access log.
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub authority: String,
    pub request_id: String,
    pub route: String,
    pub cluster: String,
    pub upstream_host: Option<SocketAddr>,
    pub status: u16,
    pub grpc_status: Option<String>,
    pub flag: Flag,
    pub grpc: bool,
    started_at: SystemTime,
}

impl RequestRecord {
    pub fn new(head: &http::request::Parts, request_id: &str, _started: Instant) -> RequestRecord {
        RequestRecord {
            method: head.method.to_string(),
            path: head.uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
            authority: head
                .uri
                .authority()
                .map(|a| a.to_string())
                .or_else(|| head.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
                .unwrap_or_default(),
            request_id: request_id.to_string(),
            route: String::new(),
            cluster: String::new(),
            upstream_host: None,
            status: 0,
            grpc_status: None,
            flag: Flag::None,
            grpc: head
                .headers
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|c| c.as_bytes().starts_with(b"application/grpc")),
            started_at: SystemTime::now(),
        }
    }
}

fn new_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

impl Metrics {
    pub fn new(workload: &str, namespace: &str, access_log: bool) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let durations: HistogramFamily = Family::new_with_constructor(new_histogram);
        registry.register("istio_requests", "Requests handled, by Istio's standard labels", requests.clone());
        registry.register(
            "istio_request_duration_milliseconds",
            "Request durations, in milliseconds",
            durations.clone(),
        );
        Metrics {
            registry,
            requests,
            durations,
            reporter: "source",
            workload: workload.into(),
            namespace: namespace.into(),
            access_log,
        }
    }

    pub fn record(&self, r: &RequestRecord, took: Duration) {
        // `outbound|9080|v2|reviews.default.svc.cluster.local`
        let mut parts = r.cluster.splitn(4, '|').skip(2);
        let subset = parts.next().filter(|s| !s.is_empty()).unwrap_or("unknown");
        let service = parts.next().unwrap_or("unknown");
        let mut labels_of = service.split('.');
        let labels = RequestLabels {
            reporter: self.reporter,
            source_workload: self.workload.clone(),
            source_workload_namespace: self.namespace.clone(),
            destination_service: service.to_string(),
            destination_service_name: labels_of.next().unwrap_or("unknown").to_string(),
            destination_service_namespace: labels_of.next().unwrap_or("unknown").to_string(),
            destination_version: subset.to_string(),
            destination_cluster: "Kubernetes".into(),
            request_protocol: if r.grpc { "grpc" } else { "http" },
            response_code: r.status.to_string(),
            grpc_response_status: r.grpc_status.clone().unwrap_or_default(),
            response_flags: r.flag.code(),
            connection_security_policy: "unknown",
        };
        self.requests.get_or_create(&labels).inc();
        self.durations.get_or_create(&labels).observe(took.as_secs_f64() * 1000.0);
        if self.access_log {
            self.log(r, took);
        }
    }

    fn log(&self, r: &RequestRecord, took: Duration) {
        let start_ms = r.started_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let line = serde_json::json!({
            "start_time_ms": start_ms,
            "method": r.method,
            "path": r.path,
            "authority": r.authority,
            "response_code": r.status,
            "response_flags": r.flag.code(),
            "duration_ms": took.as_secs_f64() * 1000.0,
            "upstream_host": r.upstream_host.map(|h| h.to_string()),
            "upstream_cluster": r.cluster,
            "route_name": r.route,
            "x_request_id": r.request_id,
        });
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
