//! The request path: from a downstream request to the response, doing what
//! the compiled config says (Envoy's HTTP connection manager, its filter
//! chain and its router).
//!
//! One exchange runs as named phases over a typed per-request context,
//! [`Exchange`], in the order Envoy's filter chain runs them. Each request
//! phase either lets the exchange go on or ends it with a local reply; the
//! response and log phases run for every exchange, local replies included.
//!
//! | phase | module | does |
//! |---|---|---|
//! | begin | [`exchange`] | hop-by-hop fields stripped, `x-request-id`, path normalized, the record started |
//! | downstream checks | [`checks`] | a path that did not normalize: 400 |
//! | rate limit | [`route`] | the listener's local rate limits: 429 |
//! | authenticate | [`authenticate`] | RequestAuthentication: a token that fails, 401 |
//! | route | [`route`] | the route table and the first matching route: 404 |
//! | authorize | [`authorize`] | AuthorizationPolicy: 403 |
//! | CORS preflight | [`cors`] | an allowed preflight answered here |
//! | route action | [`route`] | direct response, redirect, or a weighted cluster |
//! | fault | [`route`] | delay, abort |
//! | request filters | [`filters`] | user filters' `on_request` |
//! | upstream request | [`headers`] | route and cluster header operations, rewrite, `x-forwarded-*` |
//! | upstream attempts | [`upstream_call`] | breaker, host pick, send, retries, outlier detection |
//! | response | [`response`] | hop-by-hop stripped, header operations, CORS, user filters' `on_response` |
//! | log | [`exchange`] | metrics, access log, user filters' `on_log`; also for a client that left |

mod authenticate;
mod authorize;
mod checks;
mod cors;
mod exchange;
mod filters;
mod headers;
mod local_reply;
mod response;
mod route;
mod upstream_call;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use mesh_core::filter::FilterChain;
use mesh_core::path::PathNormalization;

use crate::answer::Answer;
use crate::ascii;
use crate::body::Body;
use crate::live::SharedConfig;
use crate::metrics::{DownstreamStats, Metrics};
use crate::upstream::Upstreams;

pub use exchange::Exchange;

/// Shared by every connection of every listener.
pub struct Forwarder {
    pub live: SharedConfig,
    pub upstreams: Upstreams,
    pub filters: FilterChain,
    pub metrics: Arc<Metrics>,
    pub stats: Arc<DownstreamStats>,
    /// Istio's `meshConfig.pathNormalization`.
    pub path_normalization: PathNormalization,
    /// The workload's certificate (and the peers it has seen).
    pub identity: Option<crate::mtls::WorkloadIdentity>,
    /// JWKS documents fetched for RequestAuthentication, kept across
    /// configs.
    pub jwks: Arc<crate::jwt::remote::JwksCache>,
    /// Span exporters, kept across configs, and who the spans are from.
    pub tracing: Arc<crate::trace::Setup>,
}

/// Which listener a request came in on.
#[derive(Clone, Debug)]
pub struct Ingress {
    pub listener: String,
    pub port: u16,
    pub peer: SocketAddr,
    /// The address the connection came to (the access log's
    /// `downstream_local_address`).
    pub local: Option<SocketAddr>,
    /// The route table chosen at the connection (by SNI, for TLS); `None`:
    /// the listener's HTTP chain.
    pub route_config: Option<String>,
    pub scheme: &'static str,
    /// An explicit HTTP proxy port: the route table is the one of the port
    /// in the request's authority (`http://reviews:9080/` -> `9080`).
    pub route_by_authority_port: bool,
    /// The verified peer of an inbound mTLS connection.
    pub peer_identity: Option<Arc<crate::mtls::peer::PeerIdentity>>,
    /// A sidecar's outbound traffic: the workload's AuthorizationPolicies
    /// guard what comes in to it, not what it sends.
    pub outbound: bool,
    /// A sidecar's inbound traffic: the server side of telemetry.
    pub inbound: bool,
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
        Ingress {
            listener,
            port,
            peer,
            local: None,
            route_config: None,
            scheme: "http",
            route_by_authority_port: false,
            peer_identity: None,
            outbound: false,
            inbound: false,
            peer_entry,
        }
    }
}

impl Forwarder {
    pub async fn handle(&self, req: Request<Body>, ingress: &Ingress) -> Response<Body> {
        self.answer(req, ingress).await.into_response()
    }

    /// [`Forwarder::handle`], for a writer that takes the upstream's fields
    /// as they came ([`Answer`]).
    pub async fn answer(&self, req: Request<Body>, ingress: &Ingress) -> Answer {
        let live = self.live.load_full();
        let (head, body) = req.into_parts();
        let mut exchange = Exchange::begin(self, &live, ingress, head);
        let body = self.metrics.request_body(&mut exchange.record, body);
        let response = match exchange.request_phases(body).await {
            Ok(answer) | Err(answer) => answer,
        };
        let response = exchange.response_phase(response).await;
        exchange.log_phase(response)
    }
}

impl Exchange<'_> {
    /// The request phases in order; `Err` is a local reply that ended the
    /// exchange early.
    async fn request_phases(&mut self, body: Body) -> Result<Answer, Answer> {
        self.check_downstream()?;
        self.rate_limit()?;
        self.authenticate().await?;
        self.route()?;
        self.authorize()?;
        self.cors_preflight()?;
        self.route_action()?;
        self.inject_fault().await?;
        self.request_filters().await?;
        self.upstream_request();
        Ok(self.upstream_attempts(body).await)
    }
}
