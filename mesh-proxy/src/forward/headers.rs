//! Header work on the way up and back: hop-by-hop fields, `x-forwarded-*`,
//! route and cluster header operations, and rewrites. The upstream request
//! phase runs after the filters, so what it sets is what goes upstream.

use bytes::Bytes;
use http::header::{Entry, HeaderName, HeaderValue};
use http::{HeaderMap, Uri, Version};
use mesh_core::proxy_config::{HeaderOps, Route, RouteMatch, StringMatcher};
use mesh_core::routing::CompiledMatcher;
use rustc_hash::FxHashMap;

use super::{Exchange, Ingress};
use crate::answer::Answer;
use crate::wire::{connection_has, connection_tokens};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Headers that belong to one connection, not to the request.
static HOP_BY_HOP: [HeaderName; 7] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TE,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
    http::header::PROXY_AUTHENTICATE,
];

impl Exchange<'_> {
    /// The request as it goes upstream: the route's and the cluster's
    /// header operations, the rewrite, the upgrade it asked for, and the
    /// `x-forwarded-*` fields.
    pub(super) fn upstream_request(&mut self) {
        let head = &mut self.head;
        if let Some(route) = self.route {
            apply_request_ops(&mut head.headers, &route.headers);
            if let Some(chosen) = self.cluster {
                apply_request_ops(&mut head.headers, &chosen.headers);
            }
            rewrite(head, route, &self.live.regexes);
        }
        if let Some(protocol) = &self.upgrade {
            head.headers.insert(http::header::CONNECTION, HeaderValue::from_static("upgrade"));
            head.headers.insert(http::header::UPGRADE, protocol.clone());
        }
        append_forwarded(&mut head.headers, self.ingress);
        if let Some(span) = &self.span {
            span.inject(&mut head.headers);
        }
        // An HTTP/2 client names the host in `:authority`; HTTP/1.1
        // upstreams need it as `host`.
        if !head.headers.contains_key(http::header::HOST) {
            if let Some(a) = head.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
                head.headers.insert(http::header::HOST, a);
            }
        }
    }

    /// The route's and the cluster's response header operations, once the
    /// request reached the route's action.
    pub(super) fn response_header_ops(&self, answer: &mut Answer) {
        if !self.acted {
            return;
        }
        if let Some(route) = self.route {
            apply_response_ops(answer, &route.headers);
        }
        if let Some(chosen) = self.cluster {
            apply_response_ops(answer, &chosen.headers);
        }
    }
}

/// The protocol an HTTP/1.1 request asks to upgrade to (WebSocket...).
pub(super) fn upgrade_protocol(head: &http::request::Parts) -> Option<HeaderValue> {
    if head.version == Version::HTTP_11 && connection_has(&head.headers, "upgrade") {
        head.headers.get(http::header::UPGRADE).cloned()
    } else {
        None
    }
}

pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one look at the names is cheaper
    // than a hashed removal of each.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<HeaderName> =
        connection_tokens(headers).filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok()).collect();
    for n in named {
        headers.remove(n);
    }
    // `te: trailers` is end to end (HTTP/2 allows it, and gRPC requires it
    // to tell a proxy that would drop trailers).
    let trailers = headers.get(http::header::TE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for n in &HOP_BY_HOP {
        headers.remove(n);
    }
    if trailers {
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
}

pub(super) fn is_hop_by_hop(name: &HeaderName) -> bool {
    // By first letter and length: most names (all `x-` ones) are ruled out
    // without comparing them with each of the seven.
    let raw = name.as_str().as_bytes();
    let maybe = match raw.first() {
        Some(b'c' | b'k') => raw.len() == 10,
        Some(b'p') => raw.len() == 16 || raw.len() == 18,
        Some(b't') => raw.len() == 2 || raw.len() == 17,
        Some(b'u') => raw.len() == 7,
        _ => false,
    };
    maybe && HOP_BY_HOP.contains(name)
}

/// `x-forwarded-client-cert` as Istio has Envoy write it: from a
/// connection without a verified client certificate it is removed (a
/// client cannot claim an identity); a sidecar's inbound mTLS peer is
/// appended (`APPEND_FORWARD`); a gateway's TLS client replaces what came
/// (`SANITIZE_SET`).
pub(super) fn forward_client_cert(headers: &mut HeaderMap, ingress: &Ingress) {
    let Some(peer) = &ingress.peer_identity else {
        headers.remove(&X_FORWARDED_CLIENT_CERT);
        return;
    };
    let Ok(element) = HeaderValue::from_str(&peer.xfcc) else {
        headers.remove(&X_FORWARDED_CLIENT_CERT);
        return;
    };
    let gateway = ingress.scheme == "https";
    match headers.entry(X_FORWARDED_CLIENT_CERT.clone()) {
        Entry::Occupied(mut present) if !gateway => {
            let mut value = present.get().as_bytes().to_vec();
            value.extend_from_slice(b",");
            value.extend_from_slice(element.as_bytes());
            if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
                present.insert(v);
            }
        }
        Entry::Occupied(mut present) => {
            present.insert(element);
        }
        Entry::Vacant(slot) => {
            slot.insert(element);
        }
    }
}

fn append_forwarded(headers: &mut HeaderMap, ingress: &Ingress) {
    match headers.entry(X_FORWARDED_FOR.clone()) {
        Entry::Occupied(mut forwarded) => {
            let existing = forwarded.get();
            let mut value = Vec::with_capacity(existing.len() + 2 + ingress.peer_entry.len());
            value.extend_from_slice(existing.as_bytes());
            value.extend_from_slice(b", ");
            value.extend_from_slice(ingress.peer_entry.as_bytes());
            if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
                forwarded.insert(v);
            }
        }
        Entry::Vacant(slot) => {
            slot.insert(ingress.peer_entry.clone());
        }
    }
    headers.entry(X_FORWARDED_PROTO.clone()).or_insert(HeaderValue::from_static(ingress.scheme));
}
fn set_ops(headers: &mut HeaderMap, remove: &[String], set: &[(String, String)], add: &[(String, String)]) {
    for name in remove {
        headers.remove(name.as_str());
    }
    for (name, value) in set {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            headers.insert(n, v);
        }
    }
    for (name, value) in add {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            headers.append(n, v);
        }
    }
}

fn apply_request_ops(headers: &mut HeaderMap, ops: &HeaderOps) {
    if ops.changes_requests() {
        set_ops(headers, &ops.request_remove, &ops.request_set, &ops.request_add);
    }
}

fn apply_response_ops(answer: &mut Answer, ops: &HeaderOps) {
    // Asked for as a map only when there is something to change.
    if ops.changes_responses() {
        set_ops(answer.headers_mut(), &ops.response_remove, &ops.response_set, &ops.response_add);
    }
}

/// Istio's `rewrite`: `uri` replaces the part of the path the route's
/// prefix (or exact) match matched; `authority` replaces the host.
fn rewrite(head: &mut http::request::Parts, route: &Route, regexes: &FxHashMap<String, CompiledMatcher>) {
    let Some(rw) = &route.rewrite else { return };
    if let Some(authority) = rw.authority.as_deref().and_then(|a| HeaderValue::from_str(a).ok()) {
        head.headers.insert(http::header::HOST, authority);
    }
    let path = head.uri.path().to_string();
    let new_path = if let Some(new_prefix) = &rw.uri_prefix {
        let matched = route.matches.iter().find_map(|m: &RouteMatch| match &m.uri {
            Some(StringMatcher::Prefix(p)) if path.starts_with(p.as_str()) => Some(p.len()),
            Some(StringMatcher::Exact(e)) if path == *e => Some(e.len()),
            _ => None,
        });
        match matched {
            Some(len) => format!("{new_prefix}{}", &path[len..]),
            None => new_prefix.clone(),
        }
    } else if let Some((pattern, replacement)) = &rw.uri_regex {
        match regexes.get(pattern) {
            Some(CompiledMatcher::Regex(re)) => {
                re.replace_all(&path, re2_substitution(replacement).as_str()).into_owned()
            }
            _ => path,
        }
    } else {
        return;
    };
    let query = head.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    if let Ok(uri) = Uri::try_from(format!("{new_path}{query}")) {
        head.uri = uri;
    }
}

/// RE2 (Istio, Envoy) writes substitutions as `\1`; the regex crate as
/// `${1}`.
fn re2_substitution(rewrite: &str) -> String {
    let mut out = String::with_capacity(rewrite.len() + 4);
    let mut chars = rewrite.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(d)) if d.is_ascii_digit() => {
                out.push_str(&format!("${{{d}}}"));
                chars.next();
            }
            ('$', _) => out.push_str("$$"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn hop_by_hop_fields_are_stripped_and_end_to_end_ones_kept() {
        assert!(super::HOP_BY_HOP.iter().all(super::is_hop_by_hop), "the quick look passes every hop-by-hop name");
        let mut headers = http::HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-hop"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authenticate", "Basic"),
            ("x-hop", "named in connection"),
            ("te", "trailers"),
            // As long as hop-by-hop names, and kept.
            ("x-backend-version", "v1"),
            ("x-backend-instance", "i1"),
            ("x-custom", "kept"),
        ] {
            headers.append(http::HeaderName::from_static(name), http::HeaderValue::from_static(value));
        }
        super::strip_hop_by_hop(&mut headers);
        let mut left: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.to_str().unwrap())).collect();
        left.sort();
        assert_eq!(
            left,
            [("te", "trailers"), ("x-backend-instance", "i1"), ("x-backend-version", "v1"), ("x-custom", "kept")]
        );

        // Each on its own too: the quick look for any must see every one.
        for name in super::HOP_BY_HOP.iter() {
            let mut alone = http::HeaderMap::new();
            alone.insert(name.clone(), http::HeaderValue::from_static("gzip"));
            super::strip_hop_by_hop(&mut alone);
            assert!(alone.is_empty(), "{name} is hop-by-hop");
        }
    }

    #[test]
    fn the_peer_is_appended_to_x_forwarded_for() {
        let v4 = super::Ingress::new("l".into(), 80, "127.0.0.1:5000".parse().unwrap());
        let mut headers = http::HeaderMap::new();
        super::append_forwarded(&mut headers, &v4);
        assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(headers["x-forwarded-proto"], "http");

        let mut headers = http::HeaderMap::new();
        headers.insert("x-forwarded-for", http::HeaderValue::from_static("203.0.113.7"));
        headers.insert("x-forwarded-proto", http::HeaderValue::from_static("https"));
        super::append_forwarded(&mut headers, &v4);
        assert_eq!(headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
        assert_eq!(headers["x-forwarded-proto"], "https", "the first proxy's scheme is kept");

        let v6 = super::Ingress::new("l".into(), 80, "[2001:db8::1]:5000".parse().unwrap());
        let mut headers = http::HeaderMap::new();
        super::append_forwarded(&mut headers, &v6);
        assert_eq!(headers["x-forwarded-for"], "2001:db8::1");
    }

    #[test]
    fn re2_substitutions_become_regex_crate_ones() {
        assert_eq!(super::re2_substitution("\\2/instance/\\1"), "${2}/instance/${1}");
        assert_eq!(super::re2_substitution("/cost$"), "/cost$$");
    }
}
