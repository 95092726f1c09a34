//! The request path: from a downstream request to the response, doing what
//! the compiled config says (Envoy's HTTP connection manager and router).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{Entry, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use mesh_core::authz::{AuthzRequest, Decision};
use mesh_core::filter::{FilterChain, FilterContext, RequestAction};
use mesh_core::lb::hash::request_hash;
use mesh_core::proxy_config::{
    AbortStatus, CorsPolicy, HeaderOps, LbPolicy, Redirect, Route, RouteAction, RouteMatch, StringMatcher,
    WeightedCluster,
};
use mesh_core::resilience::circuit_breaker::Resource as Breaker;
use mesh_core::resilience::outlier::Observation;
use mesh_core::resilience::retry::{try_timeout, Outcome, RetryDecision, RetryState};
use mesh_core::routing::{pick_weighted, CompiledMatcher, RequestView};
use rustc_hash::FxHashMap;

use crate::answer::Answer;
use crate::ascii;
use crate::body::{self, Body, REPLAY_LIMIT};
use crate::cluster::ClusterState;
use crate::downstream::OnUpgrade;
use crate::http1::RequestBody;
use crate::live::{LiveConfig, SharedConfig};
use crate::metrics::{Metrics, RequestRecord};
use crate::upstream::{ClientFailure, Upstreams};
use crate::wire::{connection_has, connection_tokens};

/// Shared by every connection of every listener.
pub struct Forwarder {
    pub live: SharedConfig,
    pub upstreams: Upstreams,
    pub filters: FilterChain,
    pub metrics: Arc<Metrics>,
    pub stats: Arc<DownstreamStats>,
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
}

impl DownstreamStats {
    /// Count a connection's error by kind.
    pub fn count(&self, error: &(dyn std::error::Error + 'static)) {
        use crate::downstream::ServeError;
        let counter = match (error.downcast_ref::<ServeError>(), error.downcast_ref::<hyper::Error>()) {
            (Some(ServeError::Malformed(_) | ServeError::TooLarge(_) | ServeError::NotImplemented), _) => {
                &self.malformed
            }
            (Some(ServeError::HeaderTimeout(_)), _) => &self.header_timeouts,
            (_, Some(e)) if e.is_parse() || e.is_parse_status() => &self.malformed,
            (_, Some(e)) if e.is_timeout() => &self.header_timeouts,
            _ => &self.connection_errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Which listener a request came in on.
#[derive(Clone, Debug)]
pub struct Ingress {
    pub listener: String,
    pub port: u16,
    pub peer: SocketAddr,
    /// The route table chosen at the connection (by SNI, for TLS); `None`:
    /// the listener's HTTP chain.
    pub route_config: Option<String>,
    pub scheme: &'static str,
    /// An explicit HTTP proxy port: the route table is the one of the port
    /// in the request's authority (`http://reviews:9080/` -> `9080`).
    pub route_by_authority_port: bool,
    /// `peer`'s address as an `x-forwarded-for` entry: written once per
    /// connection, not once per request.
    peer_entry: HeaderValue,
}

impl Ingress {
    /// A connection from `peer` to a plain HTTP listener.
    pub fn new(listener: String, port: u16, peer: SocketAddr) -> Ingress {
        let mut entry = Vec::with_capacity(16);
        ascii::push_ip(&mut entry, peer.ip());
        // An address's digits, dots and colons are always a valid value.
        let peer_entry =
            HeaderValue::from_maybe_shared(Bytes::from(entry)).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Ingress { listener, port, peer, route_config: None, scheme: "http", route_by_authority_port: false, peer_entry }
    }
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_ENVOY_OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

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
static X_ENVOY_RATELIMITED: HeaderName = HeaderName::from_static("x-envoy-ratelimited");

/// How the exchange ended, for logs and metrics (Envoy's response flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flag {
    None,
    NoRoute,
    NoCluster,
    NoHealthyUpstream,
    Overflow,
    ConnectFailure,
    UpstreamReset,
    UpstreamProtocolError,
    /// The client's request was malformed past its head (Envoy's `DPE`).
    DownstreamProtocolError,
    /// The client went away before its request was whole (`DC`).
    DownstreamTermination,
    Timeout,
    FaultAbort,
    Denied,
    RateLimited,
}

impl Flag {
    pub fn code(self) -> &'static str {
        match self {
            Flag::None => "-",
            Flag::NoRoute => "NR",
            Flag::NoCluster => "NC",
            Flag::NoHealthyUpstream => "UH",
            Flag::Overflow => "UO",
            Flag::ConnectFailure => "UF",
            Flag::UpstreamReset => "UC",
            Flag::UpstreamProtocolError => "UPE",
            Flag::DownstreamProtocolError => "DPE",
            Flag::DownstreamTermination => "DC",
            Flag::Timeout => "UT",
            Flag::FaultAbort => "FI",
            Flag::Denied => "RBAC",
            Flag::RateLimited => "RL",
        }
    }
}

fn local_reply(status: StatusCode, text: &str) -> Answer {
    let mut r = Response::new(body::full(Bytes::copy_from_slice(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r.into()
}

impl Forwarder {
    pub async fn handle(&self, req: Request<Body>, ingress: &Ingress) -> Response<Body> {
        self.answer(req, ingress).await.into_response()
    }

    /// [`Forwarder::handle`], for a writer that takes the upstream's fields
    /// as they came ([`Answer`]).
    pub async fn answer(&self, req: Request<Body>, ingress: &Ingress) -> Answer {
        let live = self.live.load_full();
        let (mut head, incoming) = req.into_parts();
        // One lookup (a hash of the name) for both the look and the insert.
        let request_id = match head.headers.entry(X_REQUEST_ID.clone()) {
            Entry::Occupied(id) if !id.get().is_empty() && id.get().to_str().is_ok() => id.get().clone(),
            Entry::Occupied(mut id) => {
                let fresh = new_request_id();
                id.insert(fresh.clone());
                fresh
            }
            Entry::Vacant(slot) => slot.insert(new_request_id()).clone(),
        };
        let mut record = self.metrics.start(&head, request_id);
        let mut response = self.route_and_forward(&live, &mut head, incoming, ingress, &mut record).await;
        response.add_if_absent(&X_REQUEST_ID, || record.request_id.clone());
        record.status = response.status().as_u16();
        if record.grpc {
            record.grpc_status = response.header(&GRPC_STATUS).and_then(|v| v.to_str().ok()).map(str::to_string);
        }
        self.metrics.record(&record, record.started.elapsed());
        response
    }

    async fn route_and_forward<'a>(
        &self,
        live: &'a Arc<LiveConfig>,
        head: &mut http::request::Parts,
        incoming: Body,
        ingress: &Ingress,
        record: &mut RequestRecord<'a>,
    ) -> Answer {
        // An explicit proxy port routes by the port the request names.
        let by_authority = ingress.route_by_authority_port.then(|| {
            let authority = RequestView::from_parts(head, ingress.port).authority;
            authority.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).unwrap_or(80).to_string()
        });
        let route_config = by_authority
            .as_deref()
            .or(ingress.route_config.as_deref())
            .or_else(|| live.listener_routes.get(&ingress.listener).map(String::as_str));
        for limiter in live.rate_limits.get(&ingress.listener).into_iter().flatten() {
            if !limiter.try_acquire() {
                record.flag = Flag::RateLimited;
                let mut r = local_reply(StatusCode::TOO_MANY_REQUESTS, "local_rate_limited");
                for (name, value) in &limiter.limit.response_headers {
                    if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
                        r.headers_mut().insert(n, v);
                    }
                }
                return r;
            }
        }
        let Some(table) = route_config.and_then(|n| live.routes.get(n)) else {
            record.flag = Flag::NoRoute;
            return local_reply(StatusCode::NOT_FOUND, "no route config for this listener\n");
        };
        let Some(hit) = table.find(&RequestView::from_parts(head, ingress.port)) else {
            record.flag = Flag::NoRoute;
            return local_reply(StatusCode::NOT_FOUND, "");
        };
        let route = hit.route;
        record.route = &route.name;

        if !live.authorizer.is_empty() {
            let decision = live.authorizer.evaluate(&AuthzRequest {
                source_ip: Some(ingress.peer.ip()),
                remote_ip: None,
                source_principal: None,
                request_principal: None,
                host: RequestView::from_parts(head, ingress.port).authority,
                method: head.method.as_str(),
                path: head.uri.path(),
                port: ingress.port,
                headers: &head.headers,
                destination_ip: None,
                sni: None,
            });
            if let Decision::Deny { .. } = decision {
                record.flag = Flag::Denied;
                return local_reply(StatusCode::FORBIDDEN, "RBAC: access denied");
            }
        }

        let origin = route.cors.as_ref().and_then(|cors| allowed_origin(cors, head, &live.regexes));
        if let (Some(cors), Some(origin)) = (&route.cors, &origin) {
            if head.method == http::Method::OPTIONS
                && head.headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
            {
                return preflight_response(cors, origin).into();
            }
        }
        let mut response = self.dispatch(live, head, incoming, route, ingress, record).await;
        if let (Some(cors), Some(origin)) = (&route.cors, origin) {
            add_cors_headers(response.headers_mut(), cors, origin);
        }
        response
    }

    #[allow(clippy::too_many_arguments)]
    async fn dispatch<'a>(
        &self,
        live: &'a Arc<LiveConfig>,
        head: &mut http::request::Parts,
        incoming: Body,
        route: &'a Route,
        ingress: &Ingress,
        record: &mut RequestRecord<'a>,
    ) -> Answer {
        let clusters = match &route.action {
            RouteAction::DirectResponse { status, body } => {
                let mut r = Response::new(body.clone().map_or_else(body::empty, body::full));
                *r.status_mut() = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return r.into();
            }
            RouteAction::Redirect(redirect) => return redirect_response(redirect, head, ingress.port).into(),
            RouteAction::Forward { clusters } => clusters,
        };
        let Some(chosen) = pick_weighted(clusters, fastrand::u64(..)) else {
            record.flag = Flag::NoCluster;
            return local_reply(StatusCode::SERVICE_UNAVAILABLE, "no cluster\n");
        };
        record.cluster = &chosen.cluster;

        if let Some(fault) = &route.fault {
            let decision = mesh_core::fault::decide(fault, &mut fastrand::Rng::new());
            if let Some(delay) = decision.delay {
                tokio::time::sleep(delay).await;
            }
            if let Some(abort) = decision.abort {
                record.flag = Flag::FaultAbort;
                return abort_response(abort);
            }
        }

        // User filters see the routed request; with none, nothing is built
        // for them.
        let mut filtered = None;
        if !self.filters.is_empty() {
            let mut ctx = FilterContext::new(record.request_id.to_str().unwrap_or_default(), Some(ingress.peer));
            ctx.route = Some(route.name.clone());
            ctx.cluster = Some(chosen.cluster.clone());
            match self.filters.on_request(head, &mut ctx).await {
                Ok((ran, action)) => filtered = Some((ran, action, ctx)),
                Err(e) => {
                    tracing::warn!("{e}");
                    return local_reply(StatusCode::INTERNAL_SERVER_ERROR, "filter error\n");
                }
            }
        }
        let mut response =
            match filtered.as_mut().map(|(_, action, _)| std::mem::replace(action, RequestAction::Continue)) {
                Some(RequestAction::Respond(r)) => r.map(body::full).into(),
                _ => {
                    apply_request_ops(&mut head.headers, &route.headers);
                    apply_request_ops(&mut head.headers, &chosen.headers);
                    rewrite(head, route, &live.regexes);
                    self.forward(live, head, incoming, route, chosen, ingress, record).await
                }
            };
        apply_response_ops(&mut response, &route.headers);
        apply_response_ops(&mut response, &chosen.headers);
        let Some((ran, _, mut ctx)) = filtered else { return response };
        let (mut parts, body) = response.into_response().into_parts();
        if let Err(e) = self.filters.on_response(ran, &mut parts, &mut ctx).await {
            tracing::warn!("{e}");
        }
        self.filters.on_log(&ctx);
        Response::from_parts(parts, body).into()
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        live: &Arc<LiveConfig>,
        head: &mut http::request::Parts,
        incoming: Body,
        route: &Route,
        chosen: &WeightedCluster,
        ingress: &Ingress,
        record: &mut RequestRecord<'_>,
    ) -> Answer {
        let Some(cluster) = live.clusters.get(&chosen.cluster) else {
            record.flag = Flag::NoCluster;
            return local_reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream");
        };
        let upgrade = upgrade_protocol(head);
        strip_hop_by_hop(&mut head.headers);
        if let Some(protocol) = &upgrade {
            head.headers.insert(http::header::CONNECTION, HeaderValue::from_static("upgrade"));
            head.headers.insert(http::header::UPGRADE, protocol.clone());
        }
        append_forwarded(&mut head.headers, ingress);
        // An HTTP/2 client names the host in `:authority`; HTTP/1.1
        // upstreams need it as `host`.
        if !head.headers.contains_key(http::header::HOST) {
            if let Some(a) = head.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
                head.headers.insert(http::header::HOST, a);
            }
        }

        // Buffer the body only when it may be sent twice, and only when it
        // is small.
        let replayable = route.retry.is_some() || !route.mirrors.is_empty();
        let size = hyper::body::Body::size_hint(&incoming).exact();
        let mut stream = None;
        let mut buffered = None;
        if hyper::body::Body::is_end_stream(&incoming) {
            buffered = Some(Bytes::new());
        } else if replayable && size.is_some_and(|s| s <= REPLAY_LIMIT) {
            match incoming.collect().await {
                Ok(b) => buffered = Some(b.to_bytes()),
                Err(_) => {
                    record.flag = Flag::DownstreamProtocolError;
                    return local_reply(StatusCode::BAD_REQUEST, "request body could not be read\n");
                }
            }
        } else {
            stream = Some(incoming);
        }
        for mirror in &route.mirrors {
            if let (Some(body), Some(target)) = (&buffered, live.clusters.get(&mirror.cluster)) {
                if fastrand::f64() * 100.0 < mirror.percent {
                    self.mirror(Arc::clone(target), head, body.clone());
                }
            }
        }
        let hash = match &cluster.config.lb {
            LbPolicy::RingHash { hash, .. } | LbPolicy::Maglev { hash, .. } => {
                request_hash(hash, head, Some(ingress.peer.ip()))
            }
            _ => None,
        };
        let mut retry = route.retry.as_deref().filter(|_| buffered.is_some()).map(RetryState::new);
        let mut rng = fastrand::Rng::new();
        let mut tried: Vec<usize> = Vec::new();
        let mut retry_permit = None;
        loop {
            let Some(_request_permit) = cluster.breaker.try_acquire(Breaker::Requests) else {
                record.flag = Flag::Overflow;
                let mut r = local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error or disconnect/reset before headers. reset reason: overflow",
                );
                r.headers_mut().insert(X_ENVOY_OVERLOADED.clone(), HeaderValue::from_static("true"));
                return r;
            };
            let Some(host) = cluster.pick(hash, &tried) else {
                record.flag = Flag::NoHealthyUpstream;
                return local_reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream");
            };
            let timeout = match try_timeout(route.timeout, route.retry.as_ref().and_then(|r| r.per_try_timeout), || {
                record.started.elapsed()
            }) {
                Ok(t) => t,
                Err(_) => {
                    record.flag = Flag::Timeout;
                    return local_reply(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout");
                }
            };
            let body = match (&buffered, stream.take()) {
                (Some(b), _) => RequestBody::Full(b.clone()),
                (None, Some(s)) => RequestBody::Stream(s),
                (None, None) => RequestBody::Full(Bytes::new()),
            };
            let addr = cluster.addresses[host];
            record.upstream_host = Some(addr);
            cluster.hosts[host].active_requests.fetch_add(1, Ordering::Relaxed);
            let call = cluster.connections.send(host, addr, head, body, upgrade.is_some());
            let result = match timeout {
                Some(t) => tokio::time::timeout(t, call).await.map_err(|_| ()),
                None => Ok(call.await),
            };
            cluster.hosts[host].active_requests.fetch_sub(1, Ordering::Relaxed);
            if let Ok(Err(e)) = &result {
                tracing::debug!(cluster = %cluster.config.name, endpoint = %addr, "upstream error: {e:?}");
            }
            if let Some(failure) = result.as_ref().ok().and_then(|r| r.as_ref().err()?.client_failure()) {
                // The client's failure: never counted against the upstream
                // (outlier detection, retries), answered 400 as Envoy does.
                record.flag = match failure {
                    ClientFailure::HungUp => Flag::DownstreamTermination,
                    ClientFailure::Malformed => Flag::DownstreamProtocolError,
                };
                return local_reply(StatusCode::BAD_REQUEST, "request body could not be read\n");
            }
            let protocol_error = matches!(&result, Ok(Err(e)) if e.is_protocol_error());
            let (outcome, response) = match result {
                Err(()) => (Outcome::PerTryTimeout, None),
                Ok(Err(e)) if e.is_connect() => (Outcome::ConnectFailure, None),
                Ok(Err(_)) => (Outcome::Reset { request_sent: true }, None),
                Ok(Ok(r)) => {
                    // Only gRPC answers carry a grpc-status; only a retry
                    // policy asks about rate limiting.
                    let grpc_status = record
                        .grpc
                        .then(|| r.header(&GRPC_STATUS))
                        .flatten()
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok());
                    let outcome = Outcome::Response {
                        status: r.status().as_u16(),
                        grpc_status,
                        rate_limited: retry.is_some() && r.header(&X_ENVOY_RATELIMITED).is_some(),
                    };
                    (outcome, Some(r))
                }
            };
            if let Some(outlier) = &cluster.outlier {
                let observation = match outcome {
                    Outcome::Response { status, .. } => Observation::Status(status),
                    _ => Observation::LocalOriginFailure,
                };
                if let Some(reason) = outlier.record(host, observation, cluster.now()) {
                    tracing::info!(cluster = %cluster.config.name, endpoint = %addr, ?reason, "outlier detection: host ejected");
                }
            }
            let decision = retry.as_mut().map_or(RetryDecision::Done, |r| r.decide(&outcome, &mut rng));
            let again = match decision {
                RetryDecision::RetryAfter(pause) => {
                    retry_permit = cluster.breaker.try_acquire(Breaker::Retries);
                    retry_permit.is_some().then_some(pause)
                }
                RetryDecision::Done => None,
            };
            match (again, response) {
                (Some(pause), _) => {
                    tried.push(host);
                    tokio::time::sleep(pause).await;
                    continue;
                }
                (None, Some(mut r)) => {
                    drop(retry_permit);
                    if r.status() == StatusCode::SWITCHING_PROTOCOLS && upgrade.is_some() {
                        tunnel(head, &mut r);
                        return r;
                    }
                    // Most answers carry no hop-by-hop field: a look at the
                    // names, and the fields stay a list.
                    if r.fields().any(|(name, _)| is_hop_by_hop(name)) {
                        strip_hop_by_hop(r.headers_mut());
                    }
                    // Answer in the client's HTTP version, whatever the
                    // upstream spoke (an HTTP/1.0 server, an h2 one).
                    r.set_version(head.version);
                    return r;
                }
                (None, None) => {
                    drop(retry_permit);
                    return match outcome {
                        Outcome::PerTryTimeout => {
                            record.flag = Flag::Timeout;
                            local_reply(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
                        }
                        Outcome::ConnectFailure => {
                            record.flag = Flag::ConnectFailure;
                            local_reply(StatusCode::SERVICE_UNAVAILABLE, "upstream connect error or disconnect/reset before headers. reset reason: connection failure")
                        }
                        _ if protocol_error => {
                            record.flag = Flag::UpstreamProtocolError;
                            local_reply(StatusCode::BAD_GATEWAY, "upstream connect error or disconnect/reset before headers. reset reason: protocol error")
                        }
                        _ => {
                            record.flag = Flag::UpstreamReset;
                            local_reply(StatusCode::SERVICE_UNAVAILABLE, "upstream connect error or disconnect/reset before headers. reset reason: connection termination")
                        }
                    };
                }
            }
        }
    }

    /// Send a copy to the mirror cluster and forget it (Envoy's shadowing:
    /// the host gets `-shadow` appended, the answer is dropped).
    fn mirror(&self, cluster: Arc<ClusterState>, head: &http::request::Parts, body: Bytes) {
        let Some(host) = cluster.pick(None, &[]) else { return };
        let mut shadow = head.clone();
        if let Some(h) = shadow.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()) {
            if let Ok(v) = HeaderValue::from_str(&format!("{h}-shadow")) {
                shadow.headers.insert(http::header::HOST, v);
            }
        }
        let addr = cluster.addresses[host];
        tokio::spawn(async move {
            let call = cluster.connections.send(host, addr, &shadow, RequestBody::Full(body), false);
            if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(30), call).await {
                let _ = r.into_body().collect().await;
            }
        });
    }
}

/// The protocol an HTTP/1.1 request asks to upgrade to (WebSocket...).
fn upgrade_protocol(head: &http::request::Parts) -> Option<HeaderValue> {
    if connection_has(&head.headers, "upgrade") && head.version == Version::HTTP_11 {
        head.headers.get(http::header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Once both sides have switched protocols, copy bytes between them.
fn tunnel(head: &mut http::request::Parts, upstream: &mut Answer) {
    let Some(downstream) = head.extensions.remove::<OnUpgrade>() else { return };
    let Some(upstream) = upstream.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else { return };
    tokio::spawn(async move {
        let (Some(mut down), Ok(up)) = (downstream.connection().await, upstream.await) else { return };
        let mut up = hyper_util::rt::TokioIo::new(up);
        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
    });
}

/// The request's Origin, when the route's CORS policy allows it.
fn allowed_origin(
    cors: &CorsPolicy,
    head: &http::request::Parts,
    regexes: &FxHashMap<String, CompiledMatcher>,
) -> Option<HeaderValue> {
    let origin = head.headers.get(http::header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    cors.allow_origins
        .iter()
        .any(|m| match m {
            StringMatcher::Exact(e) => e == text,
            StringMatcher::Prefix(p) => text.starts_with(p.as_str()),
            StringMatcher::Regex(r) => regexes.get(r).is_some_and(|c| c.matches(text)),
            StringMatcher::Present => true,
        })
        .then(|| origin.clone())
}

fn add_cors_headers(headers: &mut HeaderMap, cors: &CorsPolicy, origin: HeaderValue) {
    headers.insert(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    if cors.allow_credentials {
        headers.insert(http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    }
    if let Ok(v) = HeaderValue::from_str(&cors.expose_headers.join(",")) {
        if !cors.expose_headers.is_empty() {
            headers.insert(http::header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
        }
    }
}

/// Envoy answers an allowed CORS preflight itself.
fn preflight_response(cors: &CorsPolicy, origin: &HeaderValue) -> Response<Body> {
    let mut r = Response::new(body::empty());
    let h = r.headers_mut();
    add_cors_headers(h, cors, origin.clone());
    for (name, values) in [
        (http::header::ACCESS_CONTROL_ALLOW_METHODS, &cors.allow_methods),
        (http::header::ACCESS_CONTROL_ALLOW_HEADERS, &cors.allow_headers),
    ] {
        if let Ok(v) = HeaderValue::from_str(&values.join(",")) {
            if !values.is_empty() {
                h.insert(name, v);
            }
        }
    }
    if let Some(age) = cors.max_age.and_then(|a| HeaderValue::from_str(&a.as_secs().to_string()).ok()) {
        h.insert(http::header::ACCESS_CONTROL_MAX_AGE, age);
    }
    r
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
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

fn is_hop_by_hop(name: &HeaderName) -> bool {
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

fn redirect_response(r: &Redirect, head: &http::request::Parts, port: u16) -> Response<Body> {
    let host = head
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| head.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    let bare_host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let scheme = r.scheme.as_deref().unwrap_or("http");
    let authority = r.authority.clone().unwrap_or_else(|| bare_host.to_string());
    let port = r
        .port
        .or(r.port_from_request.then_some(port))
        .filter(|p| !((scheme == "http" && *p == 80) || (scheme == "https" && *p == 443)));
    let path = match (&r.path, &r.prefix_rewrite) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) => p.clone(),
        (None, None) => head.uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
    };
    let location = match port {
        Some(p) => format!("{scheme}://{authority}:{p}{path}"),
        None => format!("{scheme}://{authority}{path}"),
    };
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::from_u16(r.code).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(http::header::LOCATION, v);
    }
    resp
}

fn abort_response(abort: AbortStatus) -> Answer {
    match abort {
        AbortStatus::Http(code) => {
            local_reply(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), "fault filter abort")
        }
        AbortStatus::Grpc(code) => {
            let mut r = Response::new(body::empty());
            r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            if let Ok(v) = HeaderValue::from_str(&code.to_string()) {
                r.headers_mut().insert(GRPC_STATUS.clone(), v);
            }
            r.into()
        }
    }
}

/// A random UUID (version 4), as Envoy generates for `x-request-id`.
fn new_request_id() -> HeaderValue {
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
