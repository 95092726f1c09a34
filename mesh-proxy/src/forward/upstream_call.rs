//! Upstream attempts (Envoy's router): the circuit breaker, a host from the
//! balancer, the send under the route's timeouts, outlier detection, and
//! retries as the route's policy allows; mirrors get a copy.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::StatusCode;
use http_body_util::BodyExt;
use mesh_core::lb::hash::request_hash;
use mesh_core::proxy_config::{LbPolicy, Route};
use mesh_core::resilience::circuit_breaker::Resource as Breaker;
use mesh_core::resilience::outlier::Observation;
use mesh_core::resilience::retry::{try_timeout, Outcome, RetryDecision, RetryState};

use super::exchange::GRPC_STATUS;
use super::headers::{is_hop_by_hop, strip_hop_by_hop};
use super::Exchange;
use crate::answer::Answer;
use crate::body::{Body, REPLAY_LIMIT};
use crate::cluster::ClusterState;
use crate::downstream::OnUpgrade;
use crate::http1::RequestBody;
use crate::response_flags::Flag;
use crate::upstream::{ClientFailure, UpstreamError};

static X_ENVOY_OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");
static X_ENVOY_RATELIMITED: HeaderName = HeaderName::from_static("x-envoy-ratelimited");

const RESET_BEFORE_HEADERS: &str = "upstream connect error or disconnect/reset before headers. reset reason: ";

/// The request body as attempts send it: buffered when it may be sent
/// more than once (a retry policy or a mirror) and small, else streamed
/// once.
enum Sending {
    Buffered(Bytes),
    Streamed(Option<Body>),
}

impl Sending {
    fn next(&mut self) -> RequestBody {
        match self {
            Sending::Buffered(b) => RequestBody::Full(b.clone()),
            Sending::Streamed(s) => s.take().map_or(RequestBody::Full(Bytes::new()), RequestBody::Stream),
        }
    }
}

/// One attempt's result: `Err(())` is its per-try (or route) timeout.
type Attempt = Result<Result<Answer, UpstreamError>, ()>;

impl<'a> Exchange<'a> {
    pub(super) async fn upstream_attempts(&mut self, incoming: Body) -> Answer {
        let (Some(route), Some(chosen)) = (self.route, self.cluster) else {
            return self.reply(Flag::NoCluster, StatusCode::SERVICE_UNAVAILABLE, "no cluster\n");
        };
        let Some(cluster) = self.live.clusters.get(&chosen.cluster) else {
            return self.reply(Flag::NoCluster, StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream");
        };
        self.record.service = &cluster.config.service;
        if cluster.in_mesh && !chosen.cluster.starts_with("inbound|") {
            self.forwarder.metrics.own_metadata.insert(&mut self.head.headers);
        }
        let mut sending = match self.request_body(incoming, route).await {
            Ok(sending) => sending,
            Err(reply) => return reply,
        };
        if let Sending::Buffered(body) = &sending {
            self.mirror(route, body);
        }
        let hash = match &cluster.config.lb {
            LbPolicy::RingHash { hash, .. } | LbPolicy::Maglev { hash, .. } => {
                request_hash(hash, &self.head, Some(self.ingress.peer.ip()))
            }
            _ => None,
        };
        let buffered = matches!(sending, Sending::Buffered(_));
        let mut retry = route.retry.as_deref().filter(|_| buffered).map(RetryState::new);
        let mut rng = fastrand::Rng::new();
        let mut tried: Vec<usize> = Vec::new();
        // A retry holds a permit of the breaker's retry budget until it is
        // over.
        let mut retry_permit = None;
        loop {
            let Some(_request_permit) = cluster.breaker.try_acquire(Breaker::Requests) else {
                let mut r = self.reply(Flag::Overflow, StatusCode::SERVICE_UNAVAILABLE, &reset_reason("overflow"));
                r.headers_mut().insert(X_ENVOY_OVERLOADED.clone(), HeaderValue::from_static("true"));
                return r;
            };
            let Some(host) = cluster.pick(hash, &tried) else {
                return self.reply(Flag::NoHealthyUpstream, StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream");
            };
            let per_try = route.retry.as_ref().and_then(|r| r.per_try_timeout);
            let Ok(timeout) = try_timeout(route.timeout, per_try, || self.record.started.elapsed()) else {
                return self.reply(Flag::Timeout, StatusCode::GATEWAY_TIMEOUT, "upstream request timeout");
            };
            // Istio's source reporter: the server's identity when the
            // connection is mTLS and secure naming allows only one.
            self.record.upstream_peer = match cluster.config.tls.as_ref().map(|t| t.subject_alt_names.as_slice()) {
                Some([only]) if cluster.connections.is_mtls(host) => Some(only.as_str()),
                Some(_) if cluster.connections.is_mtls(host) => Some("unknown"),
                _ => None,
            };
            let sent = std::time::Instant::now();
            let result = self.attempt(cluster, host, timeout, sending.next()).await;
            self.record.upstream_service_time = matches!(result, Ok(Ok(_))).then(|| sent.elapsed());
            if let Some(failure) = result.as_ref().ok().and_then(|r| r.as_ref().err()?.client_failure()) {
                return self.client_failed(failure);
            }
            let protocol_error = matches!(&result, Ok(Err(e)) if e.is_protocol_error());
            let (outcome, response) = classify(result, self.record.grpc, retry.is_some());
            observe(cluster, host, &outcome);
            let decision = retry.as_mut().map_or(RetryDecision::Done, |r| r.decide(&outcome, &mut rng));
            if let RetryDecision::RetryAfter(pause) = decision {
                retry_permit = cluster.breaker.try_acquire(Breaker::Retries);
                if retry_permit.is_some() {
                    tried.push(host);
                    tokio::time::sleep(pause).await;
                    continue;
                }
            }
            drop(retry_permit);
            return match response {
                Some(r) => self.received(r),
                None => self.failed(&outcome, protocol_error),
            };
        }
    }

    /// Buffer the body only when it may be sent twice, and only when it is
    /// small.
    async fn request_body(&mut self, incoming: Body, route: &Route) -> Result<Sending, Answer> {
        let replayable = route.retry.is_some() || !route.mirrors.is_empty();
        if hyper::body::Body::is_end_stream(&incoming) {
            return Ok(Sending::Buffered(Bytes::new()));
        }
        let size = hyper::body::Body::size_hint(&incoming).exact();
        if !(replayable && size.is_some_and(|s| s <= REPLAY_LIMIT)) {
            return Ok(Sending::Streamed(Some(incoming)));
        }
        match incoming.collect().await {
            Ok(b) => Ok(Sending::Buffered(b.to_bytes())),
            Err(e) => Err(self.client_failed(ClientFailure::of(e.as_ref()))),
        }
    }

    /// One send to one host, under the attempt's timeout.
    async fn attempt(
        &mut self,
        cluster: &'a ClusterState,
        host: usize,
        timeout: Option<Duration>,
        body: RequestBody,
    ) -> Attempt {
        let addr = cluster.addresses[host];
        self.record.upstream_host = Some(addr);
        self.record.upstream_workload = cluster.workloads[host].as_ref().map(|(w, key)| (&**w, *key));
        cluster.hosts[host].active_requests.fetch_add(1, Ordering::Relaxed);
        let call = cluster.connections.send(host, addr, &self.head, body, self.upgrade.is_some());
        let result = match timeout {
            Some(t) => tokio::time::timeout(t, call).await.map_err(|_| ()),
            None => Ok(call.await),
        };
        cluster.hosts[host].active_requests.fetch_sub(1, Ordering::Relaxed);
        if let Ok(Err(e)) = &result {
            tracing::debug!(cluster = %cluster.config.name, endpoint = %addr, "upstream error: {e:?}");
        }
        result
    }

    /// The client's failure (its body malformed, cut off or too slow):
    /// never counted against the upstream (outlier detection, retries),
    /// answered 400 or 408 as Envoy does.
    fn client_failed(&mut self, failure: ClientFailure) -> Answer {
        match failure {
            ClientFailure::HungUp => {
                self.reply(Flag::DownstreamTermination, StatusCode::BAD_REQUEST, "request body could not be read\n")
            }
            ClientFailure::Malformed => {
                self.reply(Flag::DownstreamProtocolError, StatusCode::BAD_REQUEST, "request body could not be read\n")
            }
            ClientFailure::TimedOut => {
                self.reply(Flag::StreamIdleTimeout, StatusCode::REQUEST_TIMEOUT, "request timeout\n")
            }
        }
    }

    /// The upstream's answer, made the client's: a switch of protocols
    /// becomes a tunnel, hop-by-hop fields go, and it speaks the client's
    /// HTTP version whatever the upstream spoke (HTTP/1.0, h2).
    fn received(&mut self, mut r: Answer) -> Answer {
        if r.status() == StatusCode::SWITCHING_PROTOCOLS && self.upgrade.is_some() {
            tunnel(&mut self.head, &mut r);
            return r;
        }
        // Most answers carry no hop-by-hop field: a look at the names, and
        // the fields stay a list.
        if r.fields().any(|(name, _)| is_hop_by_hop(name)) {
            strip_hop_by_hop(r.headers_mut());
        }
        r.set_version(self.head.version);
        r
    }

    /// No answer came: Envoy's local reply for why.
    fn failed(&mut self, outcome: &Outcome, protocol_error: bool) -> Answer {
        let (flag, status, text) = match outcome {
            Outcome::PerTryTimeout => {
                (Flag::Timeout, StatusCode::GATEWAY_TIMEOUT, "upstream request timeout".to_string())
            }
            Outcome::ConnectFailure => {
                (Flag::ConnectFailure, StatusCode::SERVICE_UNAVAILABLE, reset_reason("connection failure"))
            }
            _ if protocol_error => {
                (Flag::UpstreamProtocolError, StatusCode::BAD_GATEWAY, reset_reason("protocol error"))
            }
            _ => (Flag::UpstreamReset, StatusCode::SERVICE_UNAVAILABLE, reset_reason("connection termination")),
        };
        self.reply(flag, status, &text)
    }

    /// Send a copy to each mirror cluster its percentage picks, and forget
    /// it (Envoy's shadowing: the host gets `-shadow` appended, the answer
    /// is dropped).
    fn mirror(&self, route: &Route, body: &Bytes) {
        for mirror in &route.mirrors {
            let Some(target) = self.live.clusters.get(&mirror.cluster) else { continue };
            if fastrand::f64() * 100.0 < mirror.percent {
                shadow(Arc::clone(target), &self.head, body.clone());
            }
        }
    }
}

fn reset_reason(reason: &str) -> String {
    format!("{RESET_BEFORE_HEADERS}{reason}")
}

/// What an attempt's result means to retries and outlier detection.
fn classify(result: Attempt, grpc: bool, retrying: bool) -> (Outcome, Option<Answer>) {
    match result {
        Err(()) => (Outcome::PerTryTimeout, None),
        Ok(Err(e)) if e.is_connect() => (Outcome::ConnectFailure, None),
        Ok(Err(_)) => (Outcome::Reset { request_sent: true }, None),
        Ok(Ok(r)) => {
            // Only gRPC answers carry a grpc-status; only a retry policy
            // asks about rate limiting.
            let grpc_status = grpc
                .then(|| r.header(&GRPC_STATUS))
                .flatten()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let outcome = Outcome::Response {
                status: r.status().as_u16(),
                grpc_status,
                rate_limited: retrying && r.header(&X_ENVOY_RATELIMITED).is_some(),
            };
            (outcome, Some(r))
        }
    }
}

/// Tell the cluster's outlier detector how the host did.
fn observe(cluster: &ClusterState, host: usize, outcome: &Outcome) {
    let Some(outlier) = &cluster.outlier else { return };
    let observation = match outcome {
        Outcome::Response { status, .. } => Observation::Status(*status),
        _ => Observation::LocalOriginFailure,
    };
    if let Some(reason) = outlier.record(host, observation, cluster.now()) {
        let endpoint = cluster.addresses[host];
        tracing::info!(cluster = %cluster.config.name, %endpoint, ?reason, "outlier detection: host ejected");
    }
}

fn shadow(cluster: Arc<ClusterState>, head: &http::request::Parts, body: Bytes) {
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
