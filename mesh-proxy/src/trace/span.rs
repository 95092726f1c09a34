//! One finished span, as the proxy reports it, and its Zipkin v2 JSON
//! (written directly: at 100% sampling a span per request is encoded).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::ascii::{push_int, push_ip, push_json_str, HEX_PAIRS};

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

    /// The span as Zipkin's v2 JSON (`POST /api/v2/spans` takes a list of
    /// them), written straight into `out`; tag values cut to
    /// `max_tag_length` bytes.
    pub fn write_zipkin(&self, out: &mut Vec<u8>, max_tag_length: usize) {
        let hex = |out: &mut Vec<u8>, bytes: &[u8]| {
            out.push(b'"');
            for b in bytes {
                out.extend_from_slice(&HEX_PAIRS[usize::from(*b)]);
            }
            out.push(b'"');
        };
        out.extend_from_slice(b"{\"traceId\":");
        hex(out, &self.trace.to_be_bytes());
        out.extend_from_slice(b",\"id\":");
        hex(out, &self.id.to_be_bytes());
        if let Some(parent) = self.parent {
            out.extend_from_slice(b",\"parentId\":");
            hex(out, &parent.to_be_bytes());
        }
        out.extend_from_slice(b",\"name\":");
        push_json_str(out, &self.name);
        out.extend_from_slice(match self.kind {
            SpanKind::Client => b",\"kind\":\"CLIENT\",\"timestamp\":",
            SpanKind::Server => b",\"kind\":\"SERVER\",\"timestamp\":",
        });
        push_int(out, self.start_micros());
        out.extend_from_slice(b",\"duration\":");
        push_int(out, self.duration_micros());
        out.extend_from_slice(b",\"localEndpoint\":{\"serviceName\":");
        push_json_str(out, &self.service);
        out.push(b'}');
        if let Some(remote) = self.remote {
            out.extend_from_slice(if remote.is_ipv4() {
                b",\"remoteEndpoint\":{\"ipv4\":\""
            } else {
                b",\"remoteEndpoint\":{\"ipv6\":\""
            });
            push_ip(out, remote.ip());
            out.extend_from_slice(b"\",\"port\":");
            push_int(out, remote.port());
            out.push(b'}');
        }
        out.extend_from_slice(b",\"tags\":{");
        for (i, (name, value)) in self.all_tags().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_json_str(out, name);
            out.push(b':');
            push_json_str(out, truncate(value, max_tag_length));
        }
        out.extend_from_slice(b"}}");
    }
}

/// `spans` as the list Zipkin's v2 API takes.
pub fn zipkin_list(spans: &[Span], max_tag_length: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(spans.len() * 768 + 2);
    out.push(b'[');
    for (i, span) in spans.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        span.write_zipkin(&mut out, max_tag_length);
    }
    out.push(b']');
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipkin_json_is_valid_and_complete() {
        let fixed: Arc<[Tag]> = vec![("istio.namespace".into(), "default".into())].into();
        let span = Span {
            trace: 0x4bf92f3577b34da6a3ce929d0e0e4736,
            id: 0xab,
            parent: Some(0x00f067aa0ba902b7),
            name: "reviews.default.svc.cluster.local:9080/*".into(),
            kind: SpanKind::Server,
            start: UNIX_EPOCH + Duration::from_micros(1_796_587_023_123_456),
            duration: Duration::from_micros(1_234),
            service: "reviews.default".into(),
            remote: Some("10.0.0.7:9080".parse().unwrap()),
            tags: vec![("http.url".into(), "http://a/\"q\"\u{1}".into()), ("long".into(), "x".repeat(300).into())],
            fixed,
        };
        let list: serde_json::Value = serde_json::from_slice(&zipkin_list(&[span.clone(), span], 256)).unwrap();
        let s = &list[1];
        assert_eq!(s["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!((s["id"].as_str(), s["parentId"].as_str()), (Some("00000000000000ab"), Some("00f067aa0ba902b7")));
        assert_eq!(
            (s["kind"].as_str(), s["timestamp"].as_u64(), s["duration"].as_u64()),
            (Some("SERVER"), Some(1_796_587_023_123_456), Some(1_234))
        );
        assert_eq!(s["localEndpoint"]["serviceName"], "reviews.default");
        assert_eq!(
            (s["remoteEndpoint"]["ipv4"].as_str(), s["remoteEndpoint"]["port"].as_u64()),
            (Some("10.0.0.7"), Some(9080))
        );
        assert_eq!(s["tags"]["http.url"], "http://a/\"q\"\u{1}");
        assert_eq!(s["tags"]["long"].as_str().map(str::len), Some(256));
        assert_eq!(s["tags"]["istio.namespace"], "default");
    }
}
