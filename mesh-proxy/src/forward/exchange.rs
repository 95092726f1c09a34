//! The typed per-request context every phase reads and writes, with the
//! first phase (begin) and the last (log), which runs once per exchange
//! whatever ended it: an answer, or a client that went away mid-exchange
//! (the exchange is dropped, as its task drops the handler).

use http::header::{Entry, HeaderName, HeaderValue};
use http::StatusCode;
use mesh_core::filter::FilterContext;
use mesh_core::path::{self, InvalidPath};
use mesh_core::proxy_config::{Route, WeightedCluster};

use super::{headers, local_reply, Forwarder, Ingress};
use crate::answer::Answer;
use crate::ascii;
use crate::live::LiveConfig;
use crate::metrics::{peer, RequestRecord};
use crate::response_flags::Flag;

pub(super) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(super) static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// One request and what the phases learned of it.
pub struct Exchange<'a> {
    pub(super) forwarder: &'a Forwarder,
    pub(super) live: &'a LiveConfig,
    pub(super) ingress: &'a Ingress,
    /// The request head as it will go upstream.
    pub(super) head: http::request::Parts,
    pub(super) record: RequestRecord<'a>,
    /// The protocol the client asked to upgrade to (WebSocket...).
    pub(super) upgrade: Option<HeaderValue>,
    /// Why the path would not normalize, for the downstream checks.
    pub(super) path_error: Option<InvalidPath>,
    pub(super) route: Option<&'a Route>,
    pub(super) cluster: Option<&'a WeightedCluster>,
    /// The request reached its route's action: the route's and cluster's
    /// response header operations apply to what comes back.
    pub(super) acted: bool,
    /// The request's Origin, when the route's CORS policy allows it.
    pub(super) cors_origin: Option<HeaderValue>,
    /// The request's verified JWT (RequestAuthentication).
    pub(super) request_auth: Option<mesh_core::jwt::VerifiedJwt>,
    /// For user filters; `None` when there are none.
    pub(super) filter_context: Option<FilterContext>,
    /// This request's span, when its side traces.
    pub(super) span: Option<crate::trace::ActiveSpan<'a>>,
    logged: bool,
}

impl<'a> Exchange<'a> {
    /// Begin: fields that belong to the client's connection go first (so a
    /// client cannot name a field the config or a filter adds), then the
    /// request id, the normalized path, and the record.
    pub(super) fn begin(
        forwarder: &'a Forwarder,
        live: &'a LiveConfig,
        ingress: &'a Ingress,
        mut head: http::request::Parts,
    ) -> Exchange<'a> {
        let upgrade = headers::upgrade_protocol(&head);
        headers::strip_hop_by_hop(&mut head.headers);
        headers::forward_client_cert(&mut head.headers, ingress);
        let request_id = request_id(&mut head.headers);
        let path_error = normalize_path(&mut head, forwarder.path_normalization).err();
        let mut record = forwarder.metrics.start(&head, request_id, &live.telemetry);
        record.peer = ingress.peer_identity.as_deref();
        record.downstream = Some((ingress.peer, ingress.local));
        // A client's proxy says who it is; only a server side believes it.
        record.peer_metadata = peer::take(&mut head.headers).filter(|_| !ingress.outbound);
        let span = live.tracers.side(ingress.inbound).map(|tracer| tracer.begin(&head));
        let filter_context = (!forwarder.filters.is_empty())
            .then(|| FilterContext::new(record.request_id.to_str().unwrap_or_default(), Some(ingress.peer)));
        Exchange {
            forwarder,
            live,
            ingress,
            head,
            record,
            upgrade,
            path_error,
            route: None,
            cluster: None,
            acted: false,
            cors_origin: None,
            request_auth: None,
            filter_context,
            span,
            logged: false,
        }
    }

    /// A local reply that ends the exchange, with the flag that says why.
    pub(super) fn reply(&mut self, flag: Flag, status: StatusCode, text: &str) -> Answer {
        self.record.flag = flag;
        local_reply::text(status, text)
    }

    /// Log: metrics, the access log line and the filters' `on_log`. A
    /// body without a length is measured as it goes: the answer comes back
    /// wrapped.
    pub(super) fn log_phase(&mut self, response: Answer) -> Answer {
        self.record.status = response.status().as_u16();
        if self.record.grpc {
            self.record.grpc_status = response.header(&GRPC_STATUS).and_then(|v| v.to_str().ok()).map(str::to_string);
        }
        self.logged = true;
        self.finish_span();
        let response = self.forwarder.metrics.record(&self.record, response);
        self.filters_on_log();
        response
    }

    fn finish_span(&mut self) {
        let Some(span) = self.span.take() else { return };
        let r = &self.record;
        span.finish(&crate::trace::SpanEnd {
            status: r.status,
            flags: r.flag.code(),
            cluster: r.cluster,
            service: r.service,
            request_id: r.request_id.to_str().unwrap_or_default(),
            upstream: r.upstream_host,
            peer: self.ingress.peer,
            request_size: r.request_bytes(),
        });
    }

    fn filters_on_log(&mut self) {
        if let Some(ctx) = &mut self.filter_context {
            ctx.response_flags = flag_code(self.record.flag);
            self.forwarder.filters.on_log(ctx);
        }
    }

    /// The filters' view of the exchange's flag.
    pub(super) fn note_flag_for_filters(&mut self) {
        if let Some(ctx) = &mut self.filter_context {
            ctx.response_flags = flag_code(self.record.flag);
        }
    }
}

/// An exchange dropped before its log phase: the client went away (its
/// connection's task dropped the handler, and with it the upstream
/// request). Logged as Envoy logs it: response code 0, flag `DC`.
impl Drop for Exchange<'_> {
    fn drop(&mut self) {
        if !self.logged {
            self.record.status = 0;
            self.record.flag = Flag::DownstreamTermination;
            self.finish_span();
            self.forwarder.metrics.record_abandoned(&self.record);
            self.filters_on_log();
        }
    }
}

fn flag_code(flag: Flag) -> Option<&'static str> {
    (flag != Flag::None).then(|| flag.code())
}

/// The client's `x-request-id` when usable, else a new one; either way the
/// request carries it upstream. One lookup (a hash of the name) for both
/// the look and the insert.
fn request_id(headers: &mut http::HeaderMap) -> HeaderValue {
    match headers.entry(X_REQUEST_ID.clone()) {
        Entry::Occupied(id) if !id.get().is_empty() && id.get().to_str().is_ok() => id.get().clone(),
        Entry::Occupied(mut id) => {
            let fresh = new_request_id();
            id.insert(fresh.clone());
            fresh
        }
        Entry::Vacant(slot) => slot.insert(new_request_id()).clone(),
    }
}

/// The path as Istio's `pathNormalization` says, for routing, authorization
/// and the upstream alike. `*` (`OPTIONS *`) is no path to normalize.
fn normalize_path(head: &mut http::request::Parts, mode: path::PathNormalization) -> Result<(), InvalidPath> {
    let Some(target) = head.uri.path_and_query().filter(|p| p.as_str() != "*") else { return Ok(()) };
    let std::borrow::Cow::Owned(normal) = path::normalize(target.as_str(), mode)? else { return Ok(()) };
    let mut parts = std::mem::take(&mut head.uri).into_parts();
    parts.path_and_query = Some(normal.parse().map_err(|_| InvalidPath("not a path once normalized"))?);
    head.uri = http::Uri::from_parts(parts).map_err(|_| InvalidPath("not a path once normalized"))?;
    Ok(())
}

/// A random UUID (version 4), as Envoy generates for `x-request-id`.
pub(super) fn new_request_id() -> HeaderValue {
    let r = fastrand::u128(..);
    let bits = (r & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let mut id = [0u8; 36];
    let mut at = 0;
    for (i, byte) in bits.to_be_bytes().into_iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            id[at] = b'-';
            at += 1;
        }
        id[at..at + 2].copy_from_slice(&ascii::HEX_PAIRS[usize::from(byte)]);
        at += 2;
    }
    // Hex digits and dashes are always a valid header value.
    HeaderValue::from_bytes(&id).expect("a UUID is a valid header value")
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_version_4_uuids() {
        for _ in 0..100 {
            let id = super::new_request_id();
            let id = id.to_str().unwrap();
            let groups: Vec<&str> = id.split('-').collect();
            assert_eq!(groups.iter().map(|g| g.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12], "{id}");
            assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()), "{id}");
            assert!(groups[2].starts_with('4'), "version 4: {id}");
            assert!(matches!(&groups[3][..1], "8" | "9" | "a" | "b"), "RFC 4122 variant: {id}");
        }
    }

    #[test]
    fn paths_are_normalized_in_place_keeping_authority_and_query() {
        use mesh_core::path::PathNormalization::{Base, DecodeAndMergeSlashes};
        let head = |uri: &str| http::Request::get(uri).body(()).unwrap().into_parts().0;
        let mut h = head("http://public.example/a/../admin?x=1");
        super::normalize_path(&mut h, Base).unwrap();
        assert_eq!(h.uri.to_string(), "http://public.example/admin?x=1");
        let mut h = head("/x%2F..%2Fadmin");
        super::normalize_path(&mut h, DecodeAndMergeSlashes).unwrap();
        assert_eq!(h.uri, "/admin");
        let mut h = head("*");
        super::normalize_path(&mut h, Base).unwrap();
        assert_eq!(h.uri, "*");
        assert!(super::normalize_path(&mut head("/a%zz"), Base).is_err());
    }
}
