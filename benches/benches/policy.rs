//! Per-request policy pieces: the token bucket (goal under 20 ns
//! uncontended), authorization evaluation, fault and retry decisions, the
//! circuit breaker, the request hash, and the cost of a user filter called
//! through the boxed `async_trait` future.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use criterion::{criterion_group, criterion_main, Criterion};
use mesh_core::authz::{Authorizer, AuthzRequest};
use mesh_core::config::{Resource, Spec};
use mesh_core::filter::{Filter, FilterChain, FilterContext, FilterError, RequestAction, RequestHead};
use mesh_core::lb::hash::request_hash;
use mesh_core::proxy_config::{AuthorizationPolicyRef, HashPolicy};
use mesh_core::rate_limit::TokenBucket;
use mesh_core::rbac::{
    HeaderMatch, HeaderValue, Permission, Principal, Rbac, RbacAction, RbacFilter, RbacPolicy, TextMatch, TextPattern,
};
use mesh_core::resilience::circuit_breaker::{CircuitBreaker, Resource as Cb};

fn token_bucket(c: &mut Criterion) {
    // The proxy reads the clock once per request for many uses; the bucket
    // is measured on its own, with time moving forward each call.
    let bucket = TokenBucket::new(u32::MAX, u32::MAX, Duration::from_secs(1));
    let mut now = Duration::ZERO;
    c.bench_function("token_bucket/acquire", |b| {
        b.iter(|| {
            now += Duration::from_nanos(7);
            bucket.try_acquire(std::hint::black_box(now))
        })
    });
    let start = Instant::now();
    c.bench_function("token_bucket/acquire_with_clock_read", |b| b.iter(|| bucket.try_acquire(start.elapsed())));
}

fn authorization(c: &mut Criterion) {
    let yaml = [
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-admin, namespace: foo}\nspec:\n  action: DENY\n  rules:\n  - to:\n    - operation: {paths: [\"/admin*\"]}\n  - from:\n    - source: {ipBlocks: [\"192.168.0.0/16\", \"172.16.0.0/12\"]}\n",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-reads, namespace: foo}\nspec:\n  rules:\n  - from:\n    - source: {principals: [\"cluster.local/ns/foo/sa/sleep\", \"cluster.local/ns/bar/*\"]}\n    to:\n    - operation: {methods: [GET, HEAD], paths: [\"/api/*\", \"/health\"]}\n    when:\n    - key: request.headers[x-version]\n      values: [v1, v2]\n",
    ];
    let policies: Vec<AuthorizationPolicyRef> = yaml
        .iter()
        .map(|y| {
            let r = Resource::from_yaml(y).unwrap_or_else(|e| panic!("{e}"));
            let Spec::AuthorizationPolicy(p) = r.spec else { panic!("not a policy") };
            AuthorizationPolicyRef { namespace: r.meta.namespace, name: r.meta.name, policy: p }
        })
        .collect();
    let authz = Authorizer::new(&policies);
    let mut headers = http::HeaderMap::new();
    headers.insert("x-version", http::HeaderValue::from_static("v2"));
    let req = AuthzRequest {
        source_ip: "10.1.2.3".parse().ok(),
        remote_ip: None,
        source_principal: Some("cluster.local/ns/bar/sa/client"),
        peer_uri: Some("spiffe://cluster.local/ns/bar/sa/client"),
        request_auth: None,
        host: "httpbin.foo.svc.cluster.local",
        method: "GET",
        path: "/api/items",
        port: 8000,
        headers: &headers,
        destination_ip: None,
        sni: None,
    };
    c.bench_function("authz/evaluate_allow", |b| b.iter(|| authz.evaluate(std::hint::black_box(&req))));
    let rbac = Rbac::new(&as_envoy_rbac()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rbac.evaluate(&req), authz.evaluate(&req));
    c.bench_function("authz/rbac_evaluate_allow", |b| b.iter(|| rbac.evaluate(std::hint::black_box(&req))));
}

/// The two policies above as istiod writes them for Envoy (what mesh-proxy
/// over xDS evaluates): a DENY filter, then an ALLOW filter.
fn as_envoy_rbac() -> Vec<RbacFilter> {
    let text = |pattern| TextMatch { pattern, ignore_case: false };
    let path = |p: TextPattern| Permission::UrlPath(text(p));
    let header = |name: &str, v: &str| {
        Permission::Header(HeaderMatch {
            name: name.into(),
            value: HeaderValue::Text(text(TextPattern::Exact(v.into()))),
            invert: false,
        })
    };
    let policy = |name: &str, permissions, principals| RbacPolicy { name: name.into(), permissions, principals };
    let deny = RbacFilter {
        action: RbacAction::Deny,
        policies: vec![
            policy(
                "rule-0",
                vec![Permission::And(vec![Permission::Or(vec![path(TextPattern::Prefix("/admin".into()))])])],
                vec![Principal::And(vec![Principal::Any])],
            ),
            policy(
                "rule-1",
                vec![Permission::And(vec![Permission::Any])],
                vec![Principal::And(vec![Principal::Or(vec![
                    Principal::DirectRemoteIp("192.168.0.0/16".parse().unwrap_or_else(|e| panic!("{e}"))),
                    Principal::DirectRemoteIp("172.16.0.0/12".parse().unwrap_or_else(|e| panic!("{e}"))),
                ])])],
            ),
        ],
    };
    let version = |v: &str| {
        Principal::Header(HeaderMatch {
            name: "x-version".into(),
            value: HeaderValue::Text(text(TextPattern::Exact(v.into()))),
            invert: false,
        })
    };
    let allow = RbacFilter {
        action: RbacAction::Allow,
        policies: vec![policy(
            "rule-0",
            vec![Permission::And(vec![
                Permission::Or(vec![header(":method", "GET"), header(":method", "HEAD")]),
                Permission::Or(vec![
                    path(TextPattern::Prefix("/api/".into())),
                    path(TextPattern::Exact("/health".into())),
                ]),
            ])],
            vec![Principal::And(vec![
                Principal::Or(vec![
                    Principal::Authenticated(Some(text(TextPattern::Exact(
                        "spiffe://cluster.local/ns/foo/sa/sleep".into(),
                    )))),
                    Principal::Authenticated(Some(text(TextPattern::Prefix("spiffe://cluster.local/ns/bar/".into())))),
                ]),
                Principal::Or(vec![version("v1"), version("v2")]),
            ])],
        )],
    };
    vec![deny, allow]
}

fn circuit_breaker(c: &mut Criterion) {
    let cb = CircuitBreaker::new(Default::default(), None);
    c.bench_function("circuit_breaker/acquire_release", |b| b.iter(|| cb.try_acquire(Cb::Requests).is_some()));
}

fn hashing(c: &mut Criterion) {
    let (head, _) = http::Request::get("/")
        .header("x-user", "user-12345")
        .body(())
        .map(|r| r.into_parts())
        .unwrap_or_else(|e| panic!("{e}"));
    let policy = HashPolicy::Header("x-user".into());
    c.bench_function("request_hash/header", |b| b.iter(|| request_hash(&policy, std::hint::black_box(&head), None)));
}

struct Noop;

#[async_trait]
impl Filter for Noop {
    fn name(&self) -> &str {
        "noop"
    }
    async fn on_request(&self, _req: &mut RequestHead, _ctx: &mut FilterContext) -> Result<RequestAction, FilterError> {
        Ok(RequestAction::Continue)
    }
}

/// Poll a future that is ready at once, as the proxy's task does when no
/// filter waits: measures the filter call, not an executor.
fn ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("a no-op filter never waits"),
    }
}

fn filters(c: &mut Criterion) {
    let (mut head, _) = http::Request::get("/").body(()).map(|r| r.into_parts()).unwrap_or_else(|e| panic!("{e}"));
    let mut ctx = FilterContext::new("bench", None);
    let empty = FilterChain::default();
    c.bench_function("filter_chain/request_phase/0_filters", |b| {
        b.iter(|| ready(empty.on_request(&mut head, &mut ctx)).map(|a| matches!(a, RequestAction::Continue)))
    });
    for n in [1usize, 4] {
        let chain = FilterChain::new((0..n).map(|_| Arc::new(Noop) as Arc<dyn Filter>).collect());
        c.bench_function(&format!("filter_chain/request_phase/{n}_noop_filters"), |b| {
            b.iter(|| ready(chain.on_request(&mut head, &mut ctx)).map(|a| matches!(a, RequestAction::Continue)))
        });
    }
}

/// A Telemetry access log filter and tag override, evaluated per exchange
/// where configured (nothing is evaluated where none is).
fn expressions(c: &mut Criterion) {
    use mesh_core::expression::{Attributes, ConnectionAttributes, Expression, RequestAttributes, ResponseAttributes};
    let uri: http::Uri = "/api/items?page=2".parse().unwrap_or_else(|e| panic!("{e}"));
    let mut headers = http::HeaderMap::new();
    for (name, value) in [("host", "httpbin.foo"), ("user-agent", "curl/8"), ("x-user", "jason"), ("accept", "*/*")] {
        headers.insert(name, http::HeaderValue::from_static(value));
    }
    let fields = [(&http::header::CONTENT_TYPE, &http::HeaderValue::from_static("application/json"))];
    let attributes = Attributes {
        request: Some(RequestAttributes {
            method: "GET",
            uri: &uri,
            version: http::Version::HTTP_11,
            headers: &headers,
            id: "abc",
            size: 0,
            total_size: 80,
        }),
        response: Some(ResponseAttributes {
            code: 200,
            code_details: "via_upstream",
            grpc_status: None,
            headers: &fields,
            size: Some(120),
            total_size: Some(200),
        }),
        connection: ConnectionAttributes { mtls: true, ..Default::default() },
        ..Default::default()
    };
    let compile = |source: &str| Expression::compile(source).unwrap_or_else(|e| panic!("{e}"));
    let status = compile("response.code >= 400");
    c.bench_function("expression/filter_response_code", |b| b.iter(|| status.matches(&attributes)));
    let header = compile("response.code >= 400 || request.headers['x-user'] == 'jason'");
    c.bench_function("expression/filter_code_or_header", |b| b.iter(|| header.matches(&attributes)));
    let host = compile("request.host");
    c.bench_function("expression/tag_request_host", |b| b.iter(|| host.value(&attributes)));
}

criterion_group!(benches, token_bucket, authorization, circuit_breaker, hashing, filters, expressions);
criterion_main!(benches);
