//! What one request did, gathered by the request path's phases for the
//! metrics and the access log.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::HeaderValue;
use mesh_core::workload::WorkloadMeta;

use super::TelemetryRules;
use crate::mtls::peer::PeerIdentity;
use crate::response_flags::Flag;

/// What one request did. Route and cluster names borrow from the live
/// config the request was served with, so recording costs no copies.
pub struct RequestRecord<'a> {
    /// When the request came in: its duration and its route timeout count
    /// from here (one clock read for both).
    pub started: Instant,
    pub request_id: HeaderValue,
    pub route: &'a str,
    pub cluster: &'a str,
    /// The service the cluster is for (inbound clusters' names lack it).
    pub service: &'a str,
    pub upstream_host: Option<SocketAddr>,
    /// Who runs the endpoint picked (from the registry), and its series
    /// key.
    pub upstream_workload: Option<(&'a WorkloadMeta, u64)>,
    pub status: u16,
    pub grpc_status: Option<String>,
    pub flag: Flag,
    pub grpc: bool,
    /// The verified peer of an inbound mTLS connection.
    pub peer: Option<&'a PeerIdentity>,
    /// What the client's proxy said of itself (Istio's metadata exchange
    /// header), inbound only.
    pub peer_metadata: Option<HeaderValue>,
    /// Outbound over mTLS: the server's identity (`unknown` when secure
    /// naming allows several).
    pub upstream_peer: Option<&'a str>,
    /// The request's head and, when it has a length, its body.
    pub(super) request_bytes: u64,
    /// Of which the head.
    pub(super) request_head_bytes: u64,
    /// Where the connection came from and to.
    pub downstream: Option<(SocketAddr, Option<SocketAddr>)>,
    /// The last attempt's time to the upstream's response head.
    pub upstream_service_time: Option<std::time::Duration>,
    /// A body without a length: what of it has passed so far.
    pub(super) request_body_count: Option<Arc<AtomicU64>>,
    /// Only kept when the access log is on or an expression reads the
    /// request.
    pub(super) request_line: Option<RequestLine>,
    /// What the Telemetry API asks for, for the config in force.
    pub(super) rules: &'a TelemetryRules,
}

impl<'a> RequestRecord<'a> {
    pub(super) fn new(
        head: &http::request::Parts,
        request_id: HeaderValue,
        rules: &'a TelemetryRules,
        keep_line: bool,
    ) -> Self {
        let head_bytes = request_head_bytes(head);
        RequestRecord {
            started: Instant::now(),
            request_id,
            route: "",
            cluster: "",
            service: "",
            upstream_host: None,
            upstream_workload: None,
            status: 0,
            grpc_status: None,
            flag: Flag::None,
            grpc: head
                .headers
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|c| c.as_bytes().starts_with(b"application/grpc")),
            peer: None,
            peer_metadata: None,
            upstream_peer: None,
            request_bytes: head_bytes,
            request_head_bytes: head_bytes,
            downstream: None,
            upstream_service_time: None,
            request_body_count: None,
            request_line: (keep_line || rules.reads_request).then(|| RequestLine::of(head, rules.reads_request)),
            rules,
        }
    }
}

impl RequestRecord<'_> {
    /// The request's size so far: head and body.
    pub fn request_bytes(&self) -> u64 {
        self.request_bytes + self.request_body_count.as_ref().map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// The parts of the request the access log prints, as it arrived (shared
/// with the request's own head, not copied).
pub(super) struct RequestLine {
    pub method: http::Method,
    pub uri: http::Uri,
    pub version: http::Version,
    pub host: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
    pub forwarded_for: Option<HeaderValue>,
    pub started_at: SystemTime,
    /// All of them, when an expression reads the request.
    pub headers: Option<http::HeaderMap>,
}

impl RequestLine {
    fn of(head: &http::request::Parts, keep_headers: bool) -> RequestLine {
        let field = |name| head.headers.get(name).cloned();
        RequestLine {
            method: head.method.clone(),
            uri: head.uri.clone(),
            version: head.version,
            host: field(http::header::HOST),
            user_agent: field(http::header::USER_AGENT),
            forwarded_for: field(http::header::HeaderName::from_static("x-forwarded-for")),
            started_at: SystemTime::now(),
            headers: keep_headers.then(|| head.headers.clone()),
        }
    }

    pub fn protocol(&self) -> &'static str {
        mesh_core::expression::protocol(self.version)
    }

    pub fn path(&self) -> &str {
        self.uri.path_and_query().map_or("/", |p| p.as_str())
    }

    pub fn authority(&self) -> &str {
        match self.uri.authority() {
            Some(a) => a.as_str(),
            None => self.host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or_default(),
        }
    }
}

/// A request head's size in HTTP/1.1: its request line and its fields.
/// (HTTP/2 compresses heads; Envoy's meter counts the compressed bytes,
/// this the plain ones.)
fn request_head_bytes(head: &http::request::Parts) -> u64 {
    let target = head.uri.path_and_query().map_or(1, |p| p.as_str().len());
    let line = head.method.as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    (line + fields_bytes(&head.headers) + 2) as u64
}

/// `name: value\r\n` for every field.
pub(super) fn fields_bytes<'a>(fields: impl IntoIterator<Item = (&'a http::HeaderName, &'a HeaderValue)>) -> usize {
    fields.into_iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum()
}
