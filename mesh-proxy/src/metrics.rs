//! Istio's standard metrics (`istio_requests_total`,
//! `istio_request_duration_milliseconds`) with Istio's labels, so existing
//! dashboards work; each request's line of the access log
//! ([`crate::access_log`]) is written from here.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderValue;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
// Looked up on every request: a fast hash, not SipHash.
use rustc_hash::FxHashMap;

use crate::access_log::{AccessLog, Entry};
use crate::mtls::peer::PeerIdentity;
use crate::mtls::WorkloadIdentity;
use crate::response_flags::Flag;

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
    source_principal: String,
    destination_principal: String,
    connection_security_policy: &'static str,
}

type HistogramFamily = Family<RequestLabels, AtomicHistogram, fn() -> AtomicHistogram>;

/// A histogram of durations updated with atomics only (prometheus-client's
/// own takes a mutex per observation).
#[derive(Clone, Debug)]
pub struct AtomicHistogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    /// One per bucket of `DURATION_BUCKETS`, then +Inf; not cumulative.
    counts: Vec<AtomicU64>,
    sum_bits: AtomicU64,
    count: AtomicU64,
}

impl AtomicHistogram {
    fn new() -> AtomicHistogram {
        AtomicHistogram(Arc::new(HistogramInner {
            counts: (0..=DURATION_BUCKETS.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_bits: AtomicU64::new(0f64.to_bits()),
            count: AtomicU64::new(0),
        }))
    }

    pub fn observe(&self, v: f64) {
        let i = DURATION_BUCKETS.iter().position(|b| v <= *b).unwrap_or(DURATION_BUCKETS.len());
        self.0.counts[i].fetch_add(1, Ordering::Relaxed);
        self.0.count.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .0
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| Some((f64::from_bits(bits) + v).to_bits()));
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let bounds = DURATION_BUCKETS.iter().copied().chain(std::iter::once(f64::INFINITY));
        let buckets: Vec<(f64, u64)> = bounds.zip(self.0.counts.iter().map(|c| c.load(Ordering::Relaxed))).collect();
        let sum = f64::from_bits(self.0.sum_bits.load(Ordering::Relaxed));
        encoder.encode_histogram::<NoLabelSet>(sum, self.0.count.load(Ordering::Relaxed), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// What distinguishes one series from another within a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Outcome {
    status: u16,
    flag: Flag,
    grpc_status: Option<u16>,
    grpc: bool,
    /// The mTLS peer's principal, hashed (0: no mTLS peer).
    peer: u64,
    /// Outbound over mTLS.
    upstream_mtls: bool,
}

type Handles = FxHashMap<Outcome, (Counter, AtomicHistogram)>;

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: HistogramFamily,
    /// Series already resolved, by cluster then outcome: the request path
    /// reads these without locks or allocation.
    resolved: ArcSwap<FxHashMap<String, Arc<ArcSwap<Handles>>>>,
    /// `source` for a gateway or an outbound sidecar.
    reporter: &'static str,
    workload: String,
    namespace: String,
    access_log: Option<AccessLog>,
    /// The workload's own identity (`destination_principal` inbound).
    identity: Option<WorkloadIdentity>,
    /// Requests whose JWT was refused (401), by reason.
    jwt_denied: Family<ReasonLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: crate::jwt::JwtError,
}

/// The reason's variant name, written at scrape time: counting a refused
/// token allocates nothing.
impl prometheus_client::encoding::EncodeLabelValue for crate::jwt::JwtError {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        write!(encoder, "{self:?}")
    }
}

/// What one request did, for metrics and the access log. Route and cluster
/// names borrow from the live config the request was served with, so
/// recording costs no copies.
pub struct RequestRecord<'a> {
    /// When the request came in: its duration and its route timeout count
    /// from here (one clock read for both).
    pub started: Instant,
    pub request_id: HeaderValue,
    pub route: &'a str,
    pub cluster: &'a str,
    pub upstream_host: Option<SocketAddr>,
    pub status: u16,
    pub grpc_status: Option<String>,
    pub flag: Flag,
    pub grpc: bool,
    /// The verified peer of an inbound mTLS connection.
    pub peer: Option<&'a PeerIdentity>,
    /// Outbound over mTLS: the server's identity (`unknown` when secure
    /// naming allows several).
    pub upstream_peer: Option<&'a str>,
    /// Only kept when the access log is on.
    request_line: Option<RequestLine>,
}

/// The parts of the request the access log prints, as it arrived (shared
/// with the request's own head, not copied).
struct RequestLine {
    method: http::Method,
    uri: http::Uri,
    host: Option<HeaderValue>,
    started_at: SystemTime,
}

impl RequestLine {
    fn of(head: &http::request::Parts) -> RequestLine {
        RequestLine {
            method: head.method.clone(),
            uri: head.uri.clone(),
            host: head.headers.get(http::header::HOST).cloned(),
            started_at: SystemTime::now(),
        }
    }

    fn path(&self) -> &str {
        self.uri.path_and_query().map_or("/", |p| p.as_str())
    }

    fn authority(&self) -> &str {
        match self.uri.authority() {
            Some(a) => a.as_str(),
            None => self.host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or_default(),
        }
    }
}

/// Downstream failures that never reach the request path: the connection
/// answers them (400, 431, 408) or closes itself.
#[derive(Debug, Default)]
pub struct DownstreamStats {
    /// Requests that did not parse (Envoy: `downstream_rq_rx_reset` and
    /// codec errors), including header blocks over the limit.
    pub malformed: AtomicU64,
    /// Clients too slow with their request headers or TLS handshake.
    pub header_timeouts: AtomicU64,
    /// Connections that ended in any other error.
    pub connection_errors: AtomicU64,
    /// Connections closed as they came, over a listener's limit (Envoy's
    /// `downstream_cx_overflow`).
    pub overflow: AtomicU64,
}

impl DownstreamStats {
    /// Count a connection's error by kind.
    pub fn count(&self, error: &(dyn std::error::Error + 'static)) {
        use crate::downstream::ServeError;
        let counter = match (error.downcast_ref::<ServeError>(), error.downcast_ref::<hyper::Error>()) {
            (
                Some(
                    ServeError::Malformed(_)
                    | ServeError::TooLarge(_)
                    | ServeError::NotImplemented
                    | ServeError::Http10,
                ),
                _,
            ) => &self.malformed,
            (Some(ServeError::HeaderTimeout(_) | ServeError::NothingSent(_)), _) => &self.header_timeouts,
            (_, Some(e)) if e.is_parse() || e.is_parse_status() => &self.malformed,
            (_, Some(e)) if e.is_timeout() => &self.header_timeouts,
            _ => &self.connection_errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

fn new_histogram() -> AtomicHistogram {
    AtomicHistogram::new()
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
        let jwt_denied = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "mesh_jwt_authn_denied",
            "Requests refused by RequestAuthentication (401), by reason",
            jwt_denied.clone(),
        );
        Metrics {
            jwt_denied,
            registry,
            requests,
            durations,
            resolved: ArcSwap::from_pointee(FxHashMap::default()),
            reporter: "source",
            workload: workload.into(),
            namespace: namespace.into(),
            access_log: access_log.then(AccessLog::default),
            identity: None,
        }
    }

    /// The workload's identity, for the principals of inbound requests.
    pub fn set_identity(&mut self, identity: Option<WorkloadIdentity>) {
        self.identity = identity;
    }

    /// Serve the proxy's status metrics with the others.
    pub fn register_status(&mut self, status: &crate::status::ProxyStatus) {
        status.register(&mut self.registry);
    }

    /// Serve the JWKS fetch counts with the others.
    pub fn register_jwks(&mut self, jwks: &crate::jwt::remote::JwksCache) {
        jwks.register(&mut self.registry);
    }

    /// Count a request whose token was refused.
    pub fn jwt_refused(&self, error: crate::jwt::JwtError) {
        self.jwt_denied.get_or_create(&ReasonLabel { reason: error }).inc();
    }

    /// Start the record of one request.
    pub fn start<'a>(&self, head: &http::request::Parts, request_id: HeaderValue) -> RequestRecord<'a> {
        RequestRecord {
            started: Instant::now(),
            request_id,
            route: "",
            cluster: "",
            upstream_host: None,
            status: 0,
            grpc_status: None,
            flag: Flag::None,
            grpc: head
                .headers
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|c| c.as_bytes().starts_with(b"application/grpc")),
            peer: None,
            upstream_peer: None,
            request_line: self.access_log.as_ref().map(|_| RequestLine::of(head)),
        }
    }

    pub fn record(&self, r: &RequestRecord<'_>, took: Duration) {
        let outcome = Outcome {
            status: r.status,
            flag: r.flag,
            grpc_status: r.grpc_status.as_deref().and_then(|g| g.parse().ok()),
            grpc: r.grpc,
            peer: r.peer.map_or(0, |p| p.key),
            upstream_mtls: r.upstream_peer.is_some(),
        };
        let ms = took.as_secs_f64() * 1000.0;
        let hit = self.resolved.load().get(r.cluster).is_some_and(|cluster| match cluster.load().get(&outcome) {
            Some((counter, histogram)) => {
                counter.inc();
                histogram.observe(ms);
                true
            }
            None => false,
        });
        if !hit {
            let (counter, histogram) = self.resolve(r, outcome);
            counter.inc();
            histogram.observe(ms);
        }
        if let Some(line) = &r.request_line {
            self.log(r, line, took);
        }
    }

    /// The first request of a (cluster, outcome): make its series and
    /// remember the handles.
    fn resolve(&self, r: &RequestRecord<'_>, outcome: Outcome) -> (Counter, AtomicHistogram) {
        // `outbound|9080|v2|reviews.default.svc.cluster.local`
        let mut parts = r.cluster.splitn(4, '|').skip(2);
        let subset = parts.next().filter(|s| !s.is_empty()).unwrap_or("unknown");
        let service = parts.next().unwrap_or("unknown");
        let mut labels_of = service.split('.');
        // Inbound clusters report as Istio's destination, with the mTLS
        // peer's identity and this workload's own.
        let inbound = r.cluster.starts_with("inbound|");
        let own = self.identity.as_ref().and_then(|i| i.spiffe_id()).map(|id| id.to_string());
        let (source_principal, destination_principal, policy) = match (inbound, r.peer) {
            (true, Some(peer)) => (peer.id.to_string(), own.unwrap_or_else(|| "unknown".into()), "mutual_tls"),
            (true, None) => ("unknown".into(), "unknown".into(), "none"),
            // Istio's source reporter leaves the policy unknown.
            (false, _) => match r.upstream_peer {
                Some(server) => (own.unwrap_or_else(|| "unknown".into()), server.to_string(), "unknown"),
                None => ("unknown".into(), "unknown".into(), "unknown"),
            },
        };
        let labels = RequestLabels {
            reporter: if inbound { "destination" } else { self.reporter },
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
            source_principal,
            destination_principal,
            connection_security_policy: policy,
        };
        let handles = (self.requests.get_or_create_owned(&labels), self.durations.get_or_create_owned(&labels));
        let existing = self.resolved.load().get(r.cluster).cloned();
        let cluster = existing.unwrap_or_else(|| {
            let fresh: Arc<ArcSwap<Handles>> = Arc::default();
            self.resolved.rcu(|all| {
                let mut all = FxHashMap::clone(all);
                all.entry(r.cluster.to_string()).or_insert_with(|| Arc::clone(&fresh));
                all
            });
            self.resolved.load().get(r.cluster).cloned().unwrap_or(fresh)
        });
        cluster.rcu(|known| {
            let mut known = FxHashMap::clone(known);
            known.insert(outcome, handles.clone());
            known
        });
        handles
    }

    fn log(&self, r: &RequestRecord<'_>, line: &RequestLine, took: Duration) {
        let Some(log) = &self.access_log else { return };
        log.write(&Entry {
            start_time: line.started_at.duration_since(UNIX_EPOCH).unwrap_or_default(),
            method: line.method.as_str(),
            path: line.path(),
            authority: line.authority(),
            response_code: r.status,
            response_flags: r.flag.code(),
            duration: took,
            upstream_host: r.upstream_host,
            upstream_cluster: r.cluster,
            route_name: r.route,
            x_request_id: r.request_id.to_str().unwrap_or_default(),
            downstream_peer_uri_san: r.peer.map(|p| p.uri.as_str()),
        });
    }

    /// Hand the buffered access log lines to its writer.
    pub fn flush_access_log(&self) {
        if let Some(log) = &self.access_log {
            log.flush();
        }
    }

    /// Write out the access log and wait until it is written (draining).
    pub fn drain_access_log(&self) {
        if let Some(log) = &self.access_log {
            log.flush_and_wait();
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(m: &Metrics, cluster: &'a str, status: u16) -> RequestRecord<'a> {
        let (head, _) = http::Request::get("http://web/x").body(()).unwrap().into_parts();
        let mut r = m.start(&head, HeaderValue::from_static("id"));
        r.cluster = cluster;
        r.status = status;
        r
    }

    #[test]
    fn series_and_histograms_render_as_prometheus_text() {
        let m = Metrics::new("gw", "istio-system", false);
        for _ in 0..3 {
            m.record(&record(&m, "outbound|9080|v2|reviews.default.svc.cluster.local", 200), Duration::from_millis(3));
        }
        m.record(&record(&m, "outbound|9080|v2|reviews.default.svc.cluster.local", 503), Duration::from_millis(700));
        m.record(&record(&m, "", 404), Duration::from_micros(100));
        let text = m.render();
        let line = |prefix: &str, needle: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix) && l.contains(needle))
                .unwrap_or_else(|| panic!("no {prefix} {needle} in\n{text}"))
                .to_string()
        };
        assert!(
            line("istio_requests_total{", "response_code=\"200\"").contains("destination_version=\"v2\"")
                && line("istio_requests_total{", "response_code=\"200\"").ends_with(" 3")
        );
        assert!(line("istio_requests_total{", "response_code=\"503\"").ends_with(" 1"));
        assert!(line("istio_requests_total{", "response_code=\"404\"").contains("response_flags=\"-\""));
        // 3 ms falls in le=5; 700 ms in le=1000; cumulative counts.
        assert!(
            text.lines().any(|l| l.contains("response_code=\"200\"") && l.contains("le=\"5.0\"") && l.ends_with(" 3")),
            "{text}"
        );
        assert!(
            text.lines().any(|l| l.contains("response_code=\"200\"") && l.contains("le=\"1.0\"") && l.ends_with(" 0")),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.contains("response_code=\"503\"") && l.contains("le=\"500.0\"") && l.ends_with(" 0")),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.contains("response_code=\"503\"") && l.contains("le=\"1000.0\"") && l.ends_with(" 1")),
            "{text}"
        );
        assert!(line("istio_request_duration_milliseconds_count{", "response_code=\"200\"").ends_with(" 3"));
        let sum: f64 = line("istio_request_duration_milliseconds_sum{", "response_code=\"200\"")
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 9.0).abs() < 0.01, "{sum}");
        // Repeat outcomes reuse the resolved handles: one entry per outcome.
        let resolved = m.resolved.load();
        assert_eq!(resolved["outbound|9080|v2|reviews.default.svc.cluster.local"].load().len(), 2);
    }
}
