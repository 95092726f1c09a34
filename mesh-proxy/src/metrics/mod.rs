//! Istio's standard metrics, for both reporters, with Istio's names,
//! buckets and labels: `istio_requests_total`, the request duration and
//! request and response size histograms, the `istio_tcp_*` counters; the
//! proxy's health gauges; each request's access log line
//! ([`crate::access_log`]) is written from here.
//!
//! | module | what it holds |
//! |---|---|
//! | `record` | what one request did, as the request path learns it |
//! | `labels` | Istio's labels: who is at each end, from either side |
//! | [`peer`] | Istio's metadata exchange header: a client's proxy says who it is |
//! | `histogram` | a lock-free histogram on Envoy's buckets |
//! | `streamed` | bodies without a length, measured as they pass |
//! | [`tcp`] | connections and bytes of TCP proxying |
//! | `rules` | what the Telemetry API asks, per side: metrics on or off, tag overrides, a log filter |
//! | `tags` | tag overrides: Istio's labels removed, set or added by expressions |
//! | `server` | the `envoy_server_*` gauges |
//! | `exposition` | OpenMetrics or Prometheus text, by `Accept` |
//! | `downstream` | downstream failures counted before any request |
//! | `envoy_stats` | Envoy's cluster and listener stats, read from the config in force at scrape |

mod downstream;
mod envoy_stats;
mod exposition;
mod histogram;
mod labels;
pub mod peer;
mod record;
mod rules;
mod server;
mod streamed;
mod tags;
pub mod tcp;

use std::borrow::Cow;
use std::hash::{Hash, Hasher};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use http_body_util::BodyExt;
use mesh_core::expression::{Attributes, ConnectionAttributes, RequestAttributes, ResponseAttributes};
use mesh_core::workload::WorkloadMeta;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
// Looked up on every request: a fast hash, not SipHash.
use rustc_hash::{FxHashMap, FxHasher};

use crate::access_log::{AccessLog, Encoding, Entry};
use crate::answer::Answer;
use crate::mtls::peer::PeerIdentity;
use crate::mtls::WorkloadIdentity;
use crate::response_flags::Flag;
pub use downstream::DownstreamStats;
pub use exposition::Format;
use histogram::AtomicHistogram;
use labels::{Ends, Labels, Service, Side};
use record::RequestLine;
pub use record::RequestRecord;
pub use rules::TelemetryRules;
use rules::{SideRules, SideSwitches};
use streamed::{CountedBody, MeteredBody, ResponseMeter};
use tags::Metric;

type HistogramFamily = Family<Labels, AtomicHistogram>;

/// What distinguishes one series from another within a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Outcome {
    status: u16,
    flag: Flag,
    grpc_status: Option<u16>,
    grpc: bool,
    /// The mTLS peer's principal, hashed (0: no mTLS peer).
    peer: u64,
    /// The metadata exchange header, hashed (0: none).
    source: u64,
    /// The endpoint's workload, hashed (0: unknown).
    destination: u64,
    /// Outbound over mTLS.
    upstream_mtls: bool,
    /// Which metrics are on: a Telemetry change makes new series.
    switches: SideSwitches,
    /// The tag overrides' values, hashed (0: no overrides).
    tags: u64,
}

/// A proxied TCP connection, as its metrics and log line name it.
pub struct TcpExchange<'a> {
    pub cluster: &'a str,
    /// The service the cluster is for (none for Istio's passthrough
    /// clusters, which have no config).
    pub service: &'a str,
    /// The client's mTLS identity (inbound).
    pub peer: Option<&'a PeerIdentity>,
    /// The endpoint picked, and who runs it (from the registry).
    pub upstream: Option<(std::net::SocketAddr, Option<&'a WorkloadMeta>)>,
    /// Where the connection came from, and the address it came to.
    pub downstream: (std::net::SocketAddr, Option<std::net::SocketAddr>),
    pub flag: Flag,
}

/// One series of each request metric the Telemetry API left on (a metric
/// turned off has no series at all, not one stuck at zero).
#[derive(Clone)]
struct Series {
    requests: Option<Counter>,
    duration: Option<AtomicHistogram>,
    request_size: Option<AtomicHistogram>,
    response_size: Option<AtomicHistogram>,
}

type Handles = FxHashMap<Outcome, Series>;

pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    durations: HistogramFamily,
    request_sizes: HistogramFamily,
    response_sizes: HistogramFamily,
    pub tcp: tcp::TcpMetrics,
    /// Series already resolved, by cluster then outcome: the request path
    /// reads these without locks or allocation.
    resolved: ArcSwap<FxHashMap<String, Arc<ArcSwap<Handles>>>>,
    /// This proxy's workload.
    own: WorkloadMeta,
    /// What it tells the servers it calls.
    pub own_metadata: peer::OwnMetadata,
    access_log: Arc<AccessLog>,
    /// Log requests where neither MeshConfig nor the Telemetry API says
    /// (`--access-log`).
    log_by_default: bool,
    /// The workload's certificate (its principal, on both sides).
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

fn observe(histogram: &Option<AtomicHistogram>, value: f64) {
    if let Some(h) = histogram {
        h.observe(value);
    }
}

/// A key for a series, from what names its labels.
pub fn series_key(value: &impl Hash) -> u64 {
    let mut h = FxHasher::default();
    value.hash(&mut h);
    h.finish().max(1)
}

impl Metrics {
    pub fn new(own: WorkloadMeta, encoding: Encoding, log_by_default: bool) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<Labels, Counter>::default();
        registry.register("istio_requests", "Requests handled, by Istio's standard labels", requests.clone());
        let histograms = [
            ("istio_request_duration_milliseconds", "Request durations, in milliseconds"),
            ("istio_request_bytes", "Request sizes (head and body), in bytes"),
            ("istio_response_bytes", "Response sizes (head and body), in bytes"),
        ]
        .map(|(name, help)| {
            let family = HistogramFamily::default();
            registry.register(name, help, family.clone());
            family
        });
        let [durations, request_sizes, response_sizes] = histograms;
        let tcp = tcp::TcpMetrics::default();
        tcp.register(&mut registry);
        let jwt_denied = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "mesh_jwt_authn_denied",
            "Requests refused by RequestAuthentication (401), by reason",
            jwt_denied.clone(),
        );
        Metrics {
            registry,
            requests,
            durations,
            request_sizes,
            response_sizes,
            tcp,
            resolved: ArcSwap::from_pointee(FxHashMap::default()),
            own_metadata: peer::OwnMetadata::new(&own),
            own,
            access_log: Arc::new(AccessLog::new(encoding)),
            log_by_default,
            identity: None,
            jwt_denied,
        }
    }

    /// The workload's identity, for the principals of both sides.
    pub fn set_identity(&mut self, identity: Option<WorkloadIdentity>) {
        self.identity = identity;
    }

    /// Serve the proxy's status metrics with the others.
    pub fn register_status(&mut self, status: &crate::status::ProxyStatus) {
        status.register(&mut self.registry);
    }

    /// Serve the `envoy_server_*` gauges; they read `draining` at scrape.
    pub fn register_server(&mut self, draining: tokio::sync::watch::Receiver<bool>) {
        self.registry.register_collector(Box::new(server::ServerStats::new(draining)));
    }

    /// Serve Envoy's cluster and listener stats, read from `live` and
    /// `downstream` at scrape.
    pub fn register_envoy_stats(&mut self, live: crate::live::SharedConfig, downstream: Arc<DownstreamStats>) {
        self.registry.register_collector(Box::new(envoy_stats::EnvoyStats { live, downstream }));
    }

    /// The registry the others' metrics are served from.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
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
    pub fn start<'a>(
        &self,
        head: &http::request::Parts,
        request_id: HeaderValue,
        rules: &'a TelemetryRules,
    ) -> RequestRecord<'a> {
        let keep_line = self.side_logs(&rules.client) || self.side_logs(&rules.server);
        RequestRecord::new(head, request_id, rules, keep_line)
    }

    /// Whether exchanges on `side` are logged (its filter aside).
    fn side_logs(&self, side: &SideRules) -> bool {
        side.on.access_log.unwrap_or(self.log_by_default)
    }

    /// What the expressions of `r`'s side say of it, answered with
    /// `response` (none when the client left): its tag overrides' values,
    /// and whether it is logged.
    fn judge(&self, r: &RequestRecord<'_>, response: Option<(&Answer, u64, Option<u64>)>) -> (Vec<String>, bool) {
        let side = r.rules.side(r.cluster);
        let logs = r.request_line.is_some() && self.side_logs(side);
        let filter = side.log_filter.as_ref().filter(|_| logs);
        if side.tags.is_empty() && filter.is_none() {
            return (Vec::new(), logs);
        }
        let fields: Vec<_> = match response {
            Some((answer, ..)) if side.reads_response => answer.fields().collect(),
            _ => Vec::new(),
        };
        let details = r.flag.details(r.upstream_service_time.is_some());
        let (head, body) = response.map_or((0, Some(0)), |(_, head, body)| (head, body));
        let response = ResponseAttributes {
            code: r.status,
            code_details: details,
            grpc_status: r.grpc_status.as_deref().and_then(|g| g.parse().ok()),
            headers: &fields,
            size: body,
            total_size: body.map(|b| head + b),
        };
        let no_headers = http::HeaderMap::new();
        let attributes = attributes(r, response, &no_headers);
        let values = side.tags.evaluate(&attributes);
        (values, logs && filter.is_none_or(|f| f.matches(&attributes)))
    }

    /// A request body on its way: its size from its length, or counted as
    /// it passes when it has none.
    pub fn request_body(&self, r: &mut RequestRecord<'_>, body: crate::body::Body) -> crate::body::Body {
        use hyper::body::Body as _;
        if let Some(exact) = body.size_hint().exact() {
            r.request_bytes += exact;
            return body;
        }
        let count = Arc::new(AtomicU64::new(0));
        r.request_body_count = Some(Arc::clone(&count));
        CountedBody::new(body, count).boxed_unsync()
    }

    /// Record an exchange whose answer is `answer`: now, when its body's
    /// length is known, else when the body ends (its duration, response
    /// size and access log line then).
    pub fn record(&self, r: &RequestRecord<'_>, answer: Answer) -> Answer {
        use hyper::body::Body as _;
        let took = r.started.elapsed();
        let head_bytes = (record::fields_bytes(answer.fields()) + "HTTP/1.1 200 OK\r\n\r\n".len()) as u64;
        let body_bytes = answer.body().size_hint().exact();
        let (tags, logs) = self.judge(r, Some((&answer, head_bytes, body_bytes)));
        let series = self.series(r, &tags);
        if let Some(requests) = &series.requests {
            requests.inc();
        }
        observe(&series.request_size, r.request_bytes() as f64);
        let entry = r.request_line.as_ref().filter(|_| logs).map(|line| self.entry(r, line, took));
        match body_bytes {
            Some(body) => {
                observe(&series.duration, took.as_secs_f64() * 1000.0);
                observe(&series.response_size, (head_bytes + body) as f64);
                if let Some(mut entry) = entry {
                    entry.bytes_sent = body;
                    self.access_log.write(&entry);
                }
                answer
            }
            None => {
                let meter = ResponseMeter {
                    started: r.started,
                    duration: series.duration,
                    size: series.response_size,
                    head_bytes,
                    body_bytes: 0,
                    log: entry.map(|e| (Arc::clone(&self.access_log), e.into_owned())),
                };
                answer.map_body(|body| MeteredBody::new(body, meter).boxed_unsync())
            }
        }
    }

    /// An exchange that ended without an answer (the client left).
    pub fn record_abandoned(&self, r: &RequestRecord<'_>) {
        let took = r.started.elapsed();
        let (tags, logs) = self.judge(r, None);
        let series = self.series(r, &tags);
        if let Some(requests) = &series.requests {
            requests.inc();
        }
        observe(&series.request_size, r.request_bytes() as f64);
        observe(&series.duration, took.as_secs_f64() * 1000.0);
        observe(&series.response_size, 0.0);
        if let Some(line) = r.request_line.as_ref().filter(|_| logs) {
            self.access_log.write(&self.entry(r, line, took));
        }
    }

    /// `r`'s access log line; the bytes sent are the caller's to fill.
    fn entry<'r>(&self, r: &'r RequestRecord<'_>, line: &'r RequestLine, took: Duration) -> Entry<'r> {
        let text = |v: &'r Option<HeaderValue>| v.as_ref().and_then(|v| v.to_str().ok()).map(Cow::Borrowed);
        Entry {
            start_time: line.started_at,
            method: Cow::Borrowed(line.method.as_str()),
            path: Cow::Borrowed(line.path()),
            protocol: Some(line.protocol()),
            response_code: r.status,
            response_flags: r.flag.code(),
            response_code_details: r.flag.details(r.upstream_service_time.is_some()),
            bytes_received: r.request_bytes() - r.request_head_bytes,
            bytes_sent: 0,
            duration: took,
            upstream_service_time: r.upstream_service_time.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            x_forwarded_for: text(&line.forwarded_for),
            user_agent: text(&line.user_agent),
            request_id: Cow::Borrowed(r.request_id.to_str().unwrap_or_default()),
            authority: Cow::Borrowed(line.authority()),
            upstream_host: r.upstream_host,
            upstream_cluster: Cow::Borrowed(r.cluster),
            downstream_local_address: r.downstream.and_then(|(_, local)| local),
            downstream_remote_address: r.downstream.map(|(remote, _)| remote),
            requested_server_name: None,
            route_name: Cow::Borrowed(r.route),
        }
    }

    /// The series of `r`'s outcome (with its tag overrides' values),
    /// resolved once per (cluster, outcome).
    fn series(&self, r: &RequestRecord<'_>, tags: &[String]) -> Series {
        let outcome = Outcome {
            status: r.status,
            flag: r.flag,
            grpc_status: r.grpc_status.as_deref().and_then(|g| g.parse().ok()),
            grpc: r.grpc,
            peer: r.peer.map_or(0, |p| p.key),
            source: r.peer_metadata.as_ref().map_or(0, |m| series_key(&m.as_bytes())),
            destination: r.upstream_workload.map_or(0, |(_, key)| key),
            upstream_mtls: r.upstream_peer.is_some(),
            switches: r.rules.side(r.cluster).on,
            tags: if tags.is_empty() { 0 } else { series_key(&tags) },
        };
        let cached = self.resolved.load().get(r.cluster).and_then(|cluster| cluster.load().get(&outcome).cloned());
        cached.unwrap_or_else(|| self.resolve(r, outcome, tags))
    }

    /// Who is at each end of an exchange with `cluster`, seen from this
    /// side: inbound, the client is `peer` (mTLS) and what its
    /// `peer_metadata` says; outbound, the server is `upstream`'s workload
    /// and `upstream_peer` (mTLS).
    fn ends(
        &self,
        (cluster, host): (&str, &str),
        (peer, peer_metadata): (Option<&PeerIdentity>, Option<&HeaderValue>),
        (upstream, upstream_peer): (Option<&WorkloadMeta>, Option<&str>),
    ) -> Ends {
        let service = Service::of_cluster(cluster, host);
        let own_principal = self.identity.as_ref().and_then(|i| i.spiffe_id()).map(|id| id.to_string());
        if cluster.starts_with("inbound|") {
            let source = peer_metadata.and_then(peer::decode);
            let me = Side { workload: Some(&self.own), principal: own_principal.as_deref() };
            let client = Side { workload: source.as_ref(), principal: peer.map(|p| p.uri.as_str()) };
            Ends::server(&me, &client, &service)
        } else {
            // The client's principal is its own only over mTLS.
            let principal = own_principal.as_deref().filter(|_| upstream_peer.is_some());
            let me = Side { workload: Some(&self.own), principal };
            Ends::client(&me, &Side { workload: upstream, principal: upstream_peer }, &service)
        }
    }

    /// The first request of a (cluster, outcome): make its series and
    /// remember the handles.
    fn resolve(&self, r: &RequestRecord<'_>, outcome: Outcome, tags: &[String]) -> Series {
        let ends = self.ends(
            (r.cluster, r.service),
            (r.peer, r.peer_metadata.as_ref()),
            (r.upstream_workload.map(|(w, _)| w), r.upstream_peer),
        );
        let protocol = if r.grpc { "grpc" } else { "http" };
        let grpc_status = r.grpc_status.as_deref().unwrap_or_default();
        let labels = Labels::request(ends, protocol, r.status, grpc_status, r.flag.code());
        let overrides = &r.rules.side(r.cluster).tags;
        let labels_of = |metric| overrides.apply(metric, &labels, tags);
        let on = outcome.switches;
        let histogram =
            |on: bool, family: &HistogramFamily, metric| on.then(|| family.get_or_create_owned(&labels_of(metric)));
        let series = Series {
            requests: on.requests.then(|| self.requests.get_or_create_owned(&labels_of(Metric::Requests))),
            duration: histogram(on.duration, &self.durations, Metric::Duration),
            request_size: histogram(on.request_size, &self.request_sizes, Metric::RequestSize),
            response_size: histogram(on.response_size, &self.response_sizes, Metric::ResponseSize),
        };
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
            known.insert(outcome, series.clone());
            known
        });
        series
    }

    /// Count a proxied TCP connection, and log it as it closes where the
    /// access log is on for its side (and its filter passes).
    pub fn tcp_open(&self, x: &TcpExchange<'_>, rules: &TelemetryRules) -> tcp::TcpConnection {
        let (upstream_host, upstream) = x.upstream.map_or((None, None), |(addr, w)| (Some(addr), w));
        let ends = self.ends((x.cluster, x.service), (x.peer, None), (upstream, None));
        let side = rules.side(x.cluster);
        let attributes = Attributes {
            source: Some(x.downstream.0),
            destination: x.downstream.1,
            upstream: upstream_host,
            connection: connection(x.peer),
            cluster_name: x.cluster,
            ..Attributes::default()
        };
        let values = if side.tags.is_empty() { Vec::new() } else { side.tags.evaluate(&attributes) };
        let logs = self.side_logs(side) && side.log_filter.as_ref().is_none_or(|f| f.matches(&attributes));
        let log = logs.then(|| tcp::TcpLog {
            to: Arc::clone(&self.access_log),
            entry: Entry::tcp(x.cluster.to_string(), x.flag.code(), upstream_host, x.downstream),
            started: std::time::Instant::now(),
        });
        let labels = Labels::tcp(ends, x.flag.code());
        self.tcp.open(|metric| side.tags.apply(metric, &labels, &values), &side.on, log)
    }

    /// Hand the buffered access log lines to its writer.
    pub fn flush_access_log(&self) {
        self.access_log.flush();
    }

    /// Write out the access log and wait until it is written (draining).
    pub fn drain_access_log(&self) {
        self.access_log.flush_and_wait();
    }

    /// The metrics in `format`.
    pub fn render(&self, format: Format) -> String {
        exposition::render(&self.registry, format)
    }
}

/// The downstream connection: over mTLS when its peer proved an identity.
fn connection(peer: Option<&PeerIdentity>) -> ConnectionAttributes<'_> {
    ConnectionAttributes {
        mtls: peer.is_some(),
        requested_server_name: None,
        peer_principal: peer.map(|p| p.uri.as_str()),
    }
}

/// What `r` knows, as Envoy's attributes name it.
fn attributes<'r>(
    r: &'r RequestRecord<'_>,
    response: ResponseAttributes<'r>,
    no_headers: &'r http::HeaderMap,
) -> Attributes<'r> {
    let request = r.request_line.as_ref().map(|line| RequestAttributes {
        method: line.method.as_str(),
        uri: &line.uri,
        version: line.version,
        headers: line.headers.as_ref().unwrap_or(no_headers),
        id: r.request_id.to_str().unwrap_or_default(),
        size: r.request_bytes() - r.request_head_bytes,
        total_size: r.request_bytes(),
    });
    Attributes {
        request,
        response: Some(response),
        source: r.downstream.map(|(remote, _)| remote),
        destination: r.downstream.and_then(|(_, local)| local),
        upstream: r.upstream_host,
        connection: connection(r.peer),
        cluster_name: r.cluster,
        route_name: r.route,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        let labels = [("app".to_string(), "gateway".to_string())].into();
        Metrics::new(WorkloadMeta::from_labels("gw", "istio-system", &labels, ""), Encoding::Text, false)
    }

    fn record<'a>(m: &Metrics, cluster: &'a str, status: u16) -> RequestRecord<'a> {
        let (head, _) = http::Request::get("http://web/x").body(()).unwrap().into_parts();
        static ALL_ON: TelemetryRules = TelemetryRules::ALL_ON;
        let mut r = m.start(&head, HeaderValue::from_static("id"), &ALL_ON);
        r.cluster = cluster;
        r.status = status;
        r
    }

    fn answer(body: &'static str) -> Answer {
        let fields = vec![(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()))];
        Answer::with_fields(http::StatusCode::OK, http::Version::HTTP_11, fields, crate::body::full(body))
    }

    fn line(text: &str, prefix: &str, needle: &str) -> String {
        text.lines()
            .find(|l| l.starts_with(prefix) && l.contains(needle))
            .unwrap_or_else(|| panic!("no {prefix} {needle} in\n{text}"))
            .to_string()
    }

    #[test]
    fn series_and_histograms_render_as_prometheus_text() {
        let m = metrics();
        let reviews = "outbound|9080|v2|reviews.default.svc.cluster.local";
        for _ in 0..3 {
            let _ = m.record(&record(&m, reviews, 200), answer("hello"));
        }
        let _ = m.record(&record(&m, reviews, 503), answer(""));
        let _ = m.record(&record(&m, "", 404), answer(""));
        let text = m.render(Format::Prometheus);
        let ok = line(&text, "istio_requests_total{", "response_code=\"200\"");
        for label in [
            "reporter=\"source\"",
            "source_workload=\"gw\"",
            "source_app=\"gateway\"",
            "source_canonical_service=\"gateway\"",
            "destination_service=\"reviews.default.svc.cluster.local\"",
            "destination_service_name=\"reviews\"",
            "destination_service_namespace=\"default\"",
            "destination_workload=\"unknown\"",
            "request_protocol=\"http\"",
            "connection_security_policy=\"unknown\"",
        ] {
            assert!(ok.contains(label), "{label} in {ok}");
        }
        assert!(ok.ends_with(" 3"), "{ok}");
        assert_eq!(ok.matches('=').count(), 25, "Istio's 25 labels: {ok}");
        assert!(line(&text, "istio_requests_total{", "response_code=\"503\"").ends_with(" 1"));
        assert!(line(&text, "istio_requests_total{", "response_code=\"404\"").contains("response_flags=\"-\""));
        assert!(line(&text, "istio_request_duration_milliseconds_count{", "response_code=\"200\"").ends_with(" 3"));
        // GET /x: "GET /x HTTP/1.1\r\n" + "\r\n" = 19 bytes, in le=25.
        assert!(line(&text, "istio_request_bytes_bucket{", "response_code=\"200\"").contains("le=\"0.5\""));
        assert!(
            text.lines().any(|l| l.starts_with("istio_request_bytes_bucket{")
                && l.contains("le=\"25.0\"")
                && l.contains("response_code=\"200\"")
                && l.ends_with(" 3")),
            "{text}"
        );
        let sum: f64 = line(&text, "istio_response_bytes_sum{", "response_code=\"200\"")
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        // "HTTP/1.1 200 OK\r\n\r\n", "content-length: 5\r\n" and "hello".
        assert_eq!(sum, 3.0 * (19.0 + 19.0 + 5.0), "{text}");
        assert!(text.contains("# TYPE istio_requests_total counter"), "{text}");
        // Repeat outcomes reuse the resolved handles: one entry per outcome.
        assert_eq!(m.resolved.load()[reviews].load().len(), 2);
    }

    #[test]
    fn a_body_without_a_length_is_measured_when_it_ends() {
        let m = metrics();
        let cluster = "outbound|80||web.default.svc.cluster.local";
        let stream = futures_util::stream::iter([Ok::<_, crate::body::BoxError>(hyper::body::Frame::data(
            bytes::Bytes::from_static(b"abcdef"),
        ))]);
        let body = http_body_util::StreamBody::new(stream).boxed_unsync();
        let streamed = Answer::with_fields(http::StatusCode::OK, http::Version::HTTP_11, Vec::new(), body);
        let answer = m.record(&record(&m, cluster, 200), streamed);
        let count =
            |text: &str| line(text, "istio_response_bytes_count{", "web").rsplit(' ').next().unwrap().to_string();
        assert_eq!(count(&m.render(Format::Prometheus)), "0", "not before the body ends");
        let collected = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(answer.into_body().collect())
            .unwrap()
            .to_bytes();
        assert_eq!(collected, "abcdef");
        let text = m.render(Format::Prometheus);
        assert_eq!(count(&text), "1");
        assert!(line(&text, "istio_response_bytes_sum{", "web").ends_with(" 25.0"), "{text}");
    }
}
