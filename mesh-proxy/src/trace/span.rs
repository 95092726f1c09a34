//! One finished span, as the proxy reports it, and its Zipkin v2 JSON.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// A gateway's or a sidecar's outbound request.
    Client,
    /// A sidecar's inbound request.
    Server,
}

#[derive(Clone, Debug)]
pub struct Span {
    pub trace: u128,
    pub id: u64,
    pub parent: Option<u64>,
    /// Istio's operation name: `reviews.default.svc.cluster.local:9080/*`.
    pub name: String,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub duration: Duration,
    /// The local service: `<canonical service>.<namespace>`.
    pub service: String,
    pub remote: Option<SocketAddr>,
    /// This request's tags.
    pub tags: Vec<Tag>,
    /// The tags every span of this proxy side carries, shared.
    pub fixed: Arc<[Tag]>,
}

/// A tag: fixed names and values borrowed, the rest owned.
pub type Tag = (Cow<'static, str>, Cow<'static, str>);

impl Span {
    /// Every tag: the request's, then the fixed ones.
    pub fn all_tags(&self) -> impl Iterator<Item = &Tag> {
        self.tags.iter().chain(self.fixed.iter())
    }

    fn micros(d: Duration) -> u64 {
        u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
    }

    pub fn start_micros(&self) -> u64 {
        Span::micros(self.start.duration_since(UNIX_EPOCH).unwrap_or_default())
    }

    pub fn duration_micros(&self) -> u64 {
        Span::micros(self.duration).max(1)
    }

    /// The span in Zipkin's v2 JSON (`POST /api/v2/spans` takes a list),
    /// tag values cut to `max_tag_length` bytes.
    pub fn zipkin(&self, max_tag_length: usize) -> Value {
        let tags: Map<String, Value> = self
            .all_tags()
            .map(|(k, v)| (k.to_string(), Value::String(truncate(v, max_tag_length).to_string())))
            .collect();
        let mut span = json!({
            "traceId": format!("{:032x}", self.trace),
            "id": format!("{:016x}", self.id),
            "name": self.name,
            "kind": match self.kind { SpanKind::Client => "CLIENT", SpanKind::Server => "SERVER" },
            "timestamp": self.start_micros(),
            "duration": self.duration_micros(),
            "localEndpoint": {"serviceName": self.service},
            "tags": tags,
        });
        if let Some(parent) = self.parent {
            span["parentId"] = Value::String(format!("{parent:016x}"));
        }
        if let Some(remote) = self.remote {
            let ip = if remote.is_ipv4() { "ipv4" } else { "ipv6" };
            span["remoteEndpoint"] = json!({ip: remote.ip().to_string(), "port": remote.port()});
        }
        span
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
pub fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
