//! A request's place in a trace, as its headers carry it: W3C
//! `traceparent` (with `tracestate`), B3 in one header (`b3`) or in
//! several (`x-b3-traceid`, `x-b3-spanid`, `x-b3-parentspanid`,
//! `x-b3-sampled`, `x-b3-flags`). The proxy's own span becomes the parent
//! of what goes upstream, written in W3C and B3 alike, so either kind of
//! app or collector downstream of it follows the trace.

use http::{HeaderMap, HeaderName, HeaderValue};

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
static B3: HeaderName = HeaderName::from_static("b3");
static B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
static B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
static B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
static B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
static B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// What the caller said: its trace, its span (our parent), and whether it
/// sampled the trace (`None`: it left the decision to us).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Incoming {
    /// `None` for a request that starts a trace.
    pub parent: Option<(u128, u64)>,
    pub sampled: Option<bool>,
    pub tracestate: Option<HeaderValue>,
    /// The headers it came in: the upstream gets the same kind.
    pub formats: Formats,
}

/// Which kinds of trace headers a request carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Formats {
    pub w3c: bool,
    pub b3: bool,
}

/// Read the caller's context: W3C first, then B3 single, then B3 multi
/// (a malformed header counts as absent, as Envoy treats it).
pub fn extract(headers: &HeaderMap) -> Incoming {
    if let Some(incoming) = headers.get(&TRACEPARENT).and_then(|v| traceparent(v.as_bytes())) {
        let formats = Formats { w3c: true, b3: false };
        return Incoming { tracestate: headers.get(&TRACESTATE).cloned(), formats, ..incoming };
    }
    if let Some(incoming) = headers.get(&B3).and_then(|v| b3_single(v.to_str().ok()?)) {
        return Incoming { formats: Formats { w3c: false, b3: true }, ..incoming };
    }
    let text = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let sampled = match (text(&B3_FLAGS), text(&B3_SAMPLED)) {
        (Some("1"), _) => Some(true),
        (_, Some("1" | "true")) => Some(true),
        (_, Some("0" | "false")) => Some(false),
        _ => None,
    };
    let parent = text(&B3_TRACE_ID).and_then(trace_id).zip(text(&B3_SPAN_ID).and_then(span_id));
    let formats = Formats { w3c: false, b3: parent.is_some() || sampled.is_some() };
    Incoming { parent, sampled, tracestate: None, formats }
}

/// `00-<trace id>-<parent id>-<flags>`, version 00 (a later version's
/// first four fields read the same).
fn traceparent(value: &[u8]) -> Option<Incoming> {
    let text = std::str::from_utf8(value).ok()?;
    let mut parts = text.split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let (trace, span) = (trace_id(trace)?, span_id(span)?);
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(Incoming { parent: Some((trace, span)), sampled: Some(flags & 1 == 1), ..Incoming::default() })
}

/// `b3: {trace}-{span}[-{sampling}[-{parent}]]`, or a bare decision
/// (`0`, `1`, `d`).
fn b3_single(text: &str) -> Option<Incoming> {
    let decision = |s: &str| match s {
        "1" | "d" => Some(Some(true)),
        "0" => Some(Some(false)),
        _ => None,
    };
    if let Some(sampled) = decision(text) {
        return Some(Incoming { parent: None, sampled, ..Incoming::default() });
    }
    let mut parts = text.split('-');
    let (trace, span) = (trace_id(parts.next()?)?, span_id(parts.next()?)?);
    let sampled = match parts.next() {
        Some(s) => decision(s)?,
        None => None,
    };
    Some(Incoming { parent: Some((trace, span)), sampled, ..Incoming::default() })
}

/// 32 or 16 hex digits (a 64-bit B3 trace ID), never all zeros.
fn trace_id(text: &str) -> Option<u128> {
    (matches!(text.len(), 16 | 32) && text.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u128::from_str_radix(text, 16).ok())
        .flatten()
        .filter(|id| *id != 0)
}

/// 16 hex digits, never all zeros.
fn span_id(text: &str) -> Option<u64> {
    (text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u64::from_str_radix(text, 16).ok())
        .flatten()
        .filter(|id| *id != 0)
}

/// Our span as the upstream's parent, in the `formats` asked for; the
/// caller's B3 headers are replaced. The values share one buffer: one
/// allocation a request.
pub fn inject(
    headers: &mut HeaderMap,
    (trace, span, parent): (u128, u64, Option<u64>),
    sampled: bool,
    formats: Formats,
) {
    for name in [&B3, &B3_PARENT_SPAN_ID, &B3_FLAGS] {
        headers.remove(name);
    }
    let mut buf = Vec::with_capacity(55 + 32 + 16 + 16);
    let hex = |buf: &mut Vec<u8>, bytes: &[u8]| {
        for b in bytes {
            buf.extend_from_slice(&crate::ascii::HEX_PAIRS[usize::from(*b)]);
        }
    };
    // Only what is written: `traceparent`, then B3's trace, span and parent.
    if formats.w3c {
        buf.extend_from_slice(b"00-");
        hex(&mut buf, &trace.to_be_bytes());
        buf.push(b'-');
        hex(&mut buf, &span.to_be_bytes());
        buf.extend_from_slice(if sampled { b"-01" } else { b"-00" });
    }
    let b3_at = buf.len();
    if formats.b3 {
        hex(&mut buf, &trace.to_be_bytes());
        hex(&mut buf, &span.to_be_bytes());
        if let Some(parent) = parent {
            hex(&mut buf, &parent.to_be_bytes());
        }
    }
    let all = bytes::Bytes::from(buf);
    // Hex digits and dashes: always a valid header value.
    let value = |from: usize, to: usize| HeaderValue::from_maybe_shared(all.slice(from..to)).ok();
    let mut put = |name: &HeaderName, value: Option<HeaderValue>| {
        if let Some(v) = value {
            headers.insert(name.clone(), v);
        }
    };
    if formats.w3c {
        put(&TRACEPARENT, value(0, 55));
    }
    if formats.b3 {
        put(&B3_TRACE_ID, value(b3_at, b3_at + 32));
        put(&B3_SPAN_ID, value(b3_at + 32, b3_at + 48));
        if parent.is_some() {
            put(&B3_PARENT_SPAN_ID, value(b3_at + 48, b3_at + 64));
        }
        put(&B3_SAMPLED, Some(HeaderValue::from_static(if sampled { "1" } else { "0" })));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap()))
            .collect()
    }

    const TRACE: u128 = 0x4bf92f3577b34da6a3ce929d0e0e4736;

    #[test]
    fn w3c_and_b3_in_both_forms_are_read() {
        let w3c = extract(&headers(&[
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ]));
        assert_eq!(w3c.parent, Some((TRACE, 0x00f067aa0ba902b7)), "W3C first");
        assert_eq!(w3c.sampled, Some(true));
        assert_eq!(w3c.tracestate.unwrap(), "congo=t61rcWkgMzE");
        let unsampled =
            extract(&headers(&[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")]));
        assert_eq!(unsampled.sampled, Some(false));
        let single =
            extract(&headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90")]));
        assert_eq!(single.parent, Some((0x80f198ee56343ba864fe8b2a57d3eff7, 0xe457b5a2e4d86bd1)));
        assert_eq!(single.sampled, Some(true));
        let decision = extract(&headers(&[("b3", "0")]));
        assert_eq!((decision.parent, decision.sampled, decision.formats.b3), (None, Some(false), true));
        let multi = extract(&headers(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-sampled", "0"),
        ]));
        assert_eq!((multi.parent, multi.sampled), (Some((0xa3ce929d0e0e4736, 0x00f067aa0ba902b7)), Some(false)));
        let debug = extract(&headers(&[("x-b3-flags", "1")]));
        assert_eq!((debug.parent, debug.sampled), (None, Some(true)));
    }

    #[test]
    fn malformed_headers_count_as_absent() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-xyz",
        ] {
            assert_eq!(extract(&headers(&[("traceparent", bad)])), Incoming::default(), "{bad}");
        }
        assert_eq!(extract(&headers(&[("b3", "nope-nope")])), Incoming::default());
    }

    #[test]
    fn our_span_is_the_upstreams_parent_in_both_formats() {
        let mut h = headers(&[
            ("b3", "1"),
            ("x-b3-flags", "1"),
            ("traceparent", "00-11111111111111111111111111111111-2222222222222222-01"),
        ]);
        inject(&mut h, (TRACE, 0xabc, Some(0x00f067aa0ba902b7)), true, Formats { w3c: true, b3: true });
        assert_eq!(h["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000abc-01");
        assert_eq!(h["x-b3-traceid"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(h["x-b3-spanid"], "0000000000000abc");
        assert_eq!(h["x-b3-parentspanid"], "00f067aa0ba902b7");
        assert_eq!(h["x-b3-sampled"], "1");
        assert!(h.get("b3").is_none() && h.get("x-b3-flags").is_none());
        let back = extract(&h);
        assert_eq!((back.parent, back.sampled), (Some((TRACE, 0xabc)), Some(true)));
        let mut only_w3c = HeaderMap::new();
        inject(&mut only_w3c, (TRACE, 0xabc, None), false, Formats { w3c: true, b3: false });
        assert_eq!(only_w3c.len(), 1, "{only_w3c:?}");
        assert!(only_w3c["traceparent"].to_str().unwrap().ends_with("-00"));
    }
}
