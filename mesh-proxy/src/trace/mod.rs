//! Distributed tracing, as Istio's proxies do it: a span per request on
//! each side (a client span at a gateway or a sidecar's outbound, a server
//! span at a sidecar's inbound), the caller's sampling decision kept,
//! new traces sampled at the Telemetry API's percentage, the context
//! passed upstream in W3C and B3 headers, spans sent to Zipkin or an
//! OpenTelemetry collector off the request path.
//!
//! | module | what it holds |
//! |---|---|
//! | `context` | trace headers read and written (W3C, B3 single and multi) |
//! | `span` | a finished span, and its Zipkin JSON |
//! | `otlp` | spans as OTLP, over gRPC or HTTP |
//! | `export` | the bounded queue and the batches to the collector |

mod context;
mod export;
mod otlp;
mod span;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderMap;
use mesh_core::telemetry::{TelemetryConfig, TraceProvider, TracingConfig};
use mesh_core::workload::WorkloadMeta;

pub use export::{Exporters, TraceStats};
pub use span::{Span, SpanKind, Tag};

/// What a proxy traces with: its exporters (kept across configs) and who
/// it is (its spans' service and Istio tags).
#[derive(Default)]
pub struct Setup {
    pub exporters: Exporters,
    pub own: WorkloadMeta,
}

/// One side's tracing for the config in force.
pub struct SideTracer {
    config: TracingConfig,
    exporter: Arc<export::Exporter>,
    kind: SpanKind,
    /// `<canonical service>.<namespace>`.
    service: String,
    /// Istio's tags of this proxy and the Telemetry API's literal and
    /// environment tags.
    fixed_tags: Arc<[Tag]>,
}

/// Both sides' tracers; `None` where no provider traces.
#[derive(Default)]
pub struct Tracers {
    pub client: Option<Arc<SideTracer>>,
    pub server: Option<Arc<SideTracer>>,
}

impl Tracers {
    pub fn compile(telemetry: &TelemetryConfig, setup: &Setup) -> Tracers {
        let side = |config: &Option<TracingConfig>, kind| {
            let config = config.clone()?;
            Some(Arc::new(SideTracer::new(config, kind, setup)))
        };
        Tracers {
            client: side(&telemetry.client.tracing, SpanKind::Client),
            server: side(&telemetry.server.tracing, SpanKind::Server),
        }
    }

    pub fn side(&self, inbound: bool) -> Option<&SideTracer> {
        if inbound {
            self.server.as_deref()
        } else {
            self.client.as_deref()
        }
    }
}

impl SideTracer {
    fn new(config: TracingConfig, kind: SpanKind, setup: &Setup) -> SideTracer {
        let own = &setup.own;
        let text = |s: &str| if s.is_empty() { "unknown".to_string() } else { s.to_string() };
        let mut fixed_tags: Vec<Tag> = vec![
            ("component".into(), "proxy".into()),
            ("istio.canonical_service".into(), text(&own.canonical_service).into()),
            ("istio.canonical_revision".into(), text(&own.canonical_revision).into()),
            ("istio.namespace".into(), text(&own.namespace).into()),
            ("istio.mesh_id".into(), "cluster.local".into()),
            ("istio.cluster_id".into(), text(&own.cluster).into()),
        ];
        for (name, tag) in &config.custom_tags {
            let value = match (&tag.literal, &tag.environment) {
                (Some(literal), _) => Some(literal.value.clone()),
                (None, Some(env)) => std::env::var(&env.name).ok().or_else(|| env.default_value.clone()),
                _ => None,
            };
            if let Some(value) = value {
                fixed_tags.push((name.clone().into(), value.into()));
            }
        }
        SideTracer {
            exporter: setup.exporters.get(&config.provider),
            config,
            kind,
            service: format!("{}.{}", text(&own.canonical_service), text(&own.namespace)),
            fixed_tags: fixed_tags.into(),
        }
    }

    /// The span of a request with `headers`: the caller's trace continued
    /// (or a new one), sampled as the caller said or at the percentage.
    pub fn begin(&self, head: &http::request::Parts) -> ActiveSpan<'_> {
        let incoming = context::extract(&head.headers);
        let sampled = incoming.sampled.unwrap_or_else(|| fastrand::f64() * 100.0 < self.config.sampling);
        let (trace, parent) = match incoming.parent {
            Some((trace, span)) => (trace, Some(span)),
            None => (fastrand::u128(1..), None),
        };
        let mut tags = Vec::new();
        if sampled {
            tags.extend(request_tags(head));
            for (name, tag) in &self.config.custom_tags {
                if let Some(h) = &tag.header {
                    let value = head.headers.get(h.name.as_str()).and_then(|v| v.to_str().ok()).map(str::to_string);
                    if let Some(value) = value.or_else(|| h.default_value.clone()) {
                        tags.push((name.clone().into(), value.into()));
                    }
                }
            }
        }
        // A new trace goes on in the provider's own headers; a caller's in
        // the ones it came in.
        let native = match self.config.provider {
            TraceProvider::Zipkin { .. } => context::Formats { w3c: false, b3: true },
            TraceProvider::OpenTelemetry { .. } => context::Formats { w3c: true, b3: false },
        };
        let formats = if incoming.formats == context::Formats::default() { native } else { incoming.formats };
        let start = if sampled { SystemTime::now() } else { SystemTime::UNIX_EPOCH };
        ActiveSpan { tracer: self, trace, id: fastrand::u64(1..), parent, sampled, formats, start, tags }
    }
}

/// The request's own tags, read as it came.
fn request_tags(head: &http::request::Parts) -> Vec<Tag> {
    let field = |name: http::header::HeaderName| head.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("-");
    let authority = head.uri.authority().map(|a| a.as_str()).unwrap_or_else(|| field(http::header::HOST));
    let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
    let protocol = mesh_core::expression::protocol(head.version);
    vec![
        ("http.url".into(), format!("http://{authority}{path}").into()),
        ("http.method".into(), head.method.as_str().to_string().into()),
        ("http.protocol".into(), protocol.into()),
        ("user_agent".into(), field(http::header::USER_AGENT).to_string().into()),
        ("downstream_cluster".into(), "-".into()),
    ]
}

/// A request's span while it is in flight.
pub struct ActiveSpan<'a> {
    tracer: &'a SideTracer,
    trace: u128,
    id: u64,
    parent: Option<u64>,
    pub sampled: bool,
    formats: context::Formats,
    start: SystemTime,
    tags: Vec<Tag>,
}

/// How the exchange ended, for its span.
pub struct SpanEnd<'r> {
    pub status: u16,
    pub flags: &'static str,
    pub cluster: &'r str,
    /// The cluster's service (`reviews.default.svc.cluster.local`).
    pub service: &'r str,
    pub request_id: &'r str,
    pub upstream: Option<SocketAddr>,
    pub peer: SocketAddr,
    pub request_size: u64,
}

impl ActiveSpan<'_> {
    /// Our span becomes the parent of the upstream request.
    pub fn inject(&self, headers: &mut HeaderMap) {
        context::inject(headers, (self.trace, self.id, self.parent), self.sampled, self.formats);
    }

    /// Report the span, when sampled and reporting is on.
    pub fn finish(mut self, end: &SpanEnd<'_>) {
        if !self.sampled || self.tracer.config.disable_reporting {
            return;
        }
        let port = end.cluster.split('|').nth(1).filter(|p| !p.is_empty());
        let name = match (end.service.is_empty(), port) {
            (false, Some(port)) => format!("{}:{port}/*", end.service),
            _ => {
                self.tags.iter().find(|(k, _)| k == "http.url").map_or_else(|| "-".to_string(), |(_, u)| u.to_string())
            }
        };
        let mut tags = std::mem::take(&mut self.tags);
        tags.extend([
            ("http.status_code".into(), end.status.to_string().into()),
            ("response_flags".into(), end.flags.into()),
            ("upstream_cluster".into(), end.cluster.to_string().into()),
            ("upstream_cluster.name".into(), end.cluster.to_string().into()),
            ("guid:x-request-id".into(), end.request_id.to_string().into()),
            ("request_size".into(), end.request_size.to_string().into()),
            ("peer.address".into(), end.peer.ip().to_string().into()),
        ]);
        if end.status == 0 || end.status >= 500 {
            tags.push(("error".into(), "true".into()));
        }
        let tracer = self.tracer;
        tracer.exporter.report(Span {
            trace: self.trace,
            id: self.id,
            parent: self.parent,
            name,
            kind: tracer.kind,
            start: self.start,
            duration: self.start.elapsed().unwrap_or_default(),
            service: tracer.service.clone(),
            remote: end.upstream,
            tags,
            fixed: Arc::clone(&tracer.fixed_tags),
        });
    }
}
