//! The bookinfo scenarios of Istio's docs (as the repository's fixtures), translated for the productpage sidecar (or the
//! ingress gateway) and then routed, balanced and fault-injected by the
//! engines, checked against what Istio documents for each sample.

mod common;

use std::time::Duration;

use common::{bookinfo_registry, labels, load, productpage_config};
use mesh_core::fault;
use mesh_core::mesh::MeshSnapshot;
use mesh_core::proxy_config::{AbortStatus, ProxyConfig, Route, RouteAction};
use mesh_core::resilience::retry::{Outcome, RetryDecision, RetryState};
use mesh_core::routing::{pick_weighted, RequestView, RouteTable};
use mesh_core::store::MemoryConfigStore;
use mesh_core::translate::{translate, ProxyIdentity};
use mesh_core::{ConfigStore, ServiceRegistry};

const REVIEWS: &str = "reviews.default.svc.cluster.local";

fn route<'a>(table: &'a RouteTable, url: &str, headers: &[(&str, &str)]) -> Option<&'a Route> {
    let mut b = http::Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let (head, _) = b.body(()).unwrap().into_parts();
    table.find(&RequestView::from_parts(&head, 9080)).map(|hit| hit.route)
}

fn clusters(route: &Route) -> Vec<(&str, u32)> {
    match &route.action {
        RouteAction::Forward { clusters } => clusters.iter().map(|c| (c.cluster.as_str(), c.weight)).collect(),
        other => panic!("expected a forward, got {other:?}"),
    }
}

fn table(cfg: &ProxyConfig, name: &str) -> RouteTable {
    RouteTable::new(cfg.route_config(name).unwrap_or_else(|| panic!("no route config {name}")).clone()).unwrap()
}

#[test]
fn jason_goes_to_reviews_v2_and_everyone_else_to_v3() {
    let cfg = productpage_config(&["bookinfo/subsets.yaml", "bookinfo/routes/reviews-jason-v2-else-v3.yaml"]);
    let t = table(&cfg, "9080");
    let v2 = format!("outbound|9080|v2|{REVIEWS}");
    let v3 = format!("outbound|9080|v3|{REVIEWS}");
    for host in ["reviews:9080", "reviews", "reviews.default", "reviews.default.svc.cluster.local:9080"] {
        let jason = route(&t, &format!("http://{host}/reviews/0"), &[("end-user", "jason")]).unwrap();
        assert_eq!(clusters(jason), [(v2.as_str(), 100)], "host {host}");
        let other = route(&t, &format!("http://{host}/reviews/0"), &[("end-user", "alice")]).unwrap();
        assert_eq!(clusters(other), [(v3.as_str(), 100)], "host {host}");
        let anonymous = route(&t, &format!("http://{host}/"), &[]).unwrap();
        assert_eq!(clusters(anonymous), [(v3.as_str(), 100)]);
    }
    // The subset clusters hold only their version's endpoint.
    let v2_endpoints = cfg.load_assignment(&v2).unwrap();
    assert_eq!(v2_endpoints.endpoints.iter().map(|e| e.address.as_str()).collect::<Vec<_>>(), ["10.3.0.2"]);
    assert_eq!(cfg.load_assignment(&format!("outbound|9080||{REVIEWS}")).unwrap().endpoints.len(), 3);
}

#[test]
fn ninety_ten_split_holds_within_one_point_over_100k_picks() {
    let cfg = productpage_config(&["bookinfo/subsets.yaml", "bookinfo/routes/reviews-90-10-v1-v2.yaml"]);
    let t = table(&cfg, "9080");
    let r = route(&t, "http://reviews:9080/", &[]).unwrap();
    let RouteAction::Forward { clusters } = &r.action else { panic!() };
    let mut rng = fastrand_rng();
    let n = 100_000;
    let v1 = (0..n).filter(|_| pick_weighted(clusters, rng.u64(..)).unwrap().cluster.contains("|v1|")).count();
    let share = v1 as f64 * 100.0 / n as f64;
    assert!((share - 90.0).abs() < 1.0, "v1 got {share}%");
}

fn fastrand_rng() -> fastrand::Rng {
    fastrand::Rng::with_seed(2024)
}

#[test]
fn fifty_fifty_and_all_v1() {
    let cfg = productpage_config(&["bookinfo/subsets.yaml", "bookinfo/routes/reviews-50-50-v1-v3.yaml"]);
    let t = table(&cfg, "9080");
    let r = route(&t, "http://reviews:9080/", &[]).unwrap();
    assert_eq!(
        clusters(r),
        [(format!("outbound|9080|v1|{REVIEWS}").as_str(), 50), (format!("outbound|9080|v3|{REVIEWS}").as_str(), 50)]
    );

    let cfg = productpage_config(&["bookinfo/subsets.yaml", "bookinfo/routes/all-v1.yaml"]);
    let t = table(&cfg, "9080");
    for svc in ["reviews", "ratings", "details", "productpage"] {
        let r = route(&t, &format!("http://{svc}:9080/"), &[]).unwrap();
        assert_eq!(clusters(r), [(format!("outbound|9080|v1|{svc}.default.svc.cluster.local").as_str(), 100)]);
    }
}

#[test]
fn delay_fault_sample_delays_jason_by_7s_and_no_one_else() {
    let cfg = productpage_config(&["bookinfo/subsets.yaml", "bookinfo/routes/ratings-delay-jason.yaml"]);
    let t = table(&cfg, "9080");
    let mut rng = fastrand_rng();
    let jason = route(&t, "http://ratings:9080/ratings/0", &[("end-user", "jason")]).unwrap();
    let policy = jason.fault.as_ref().expect("jason's route has a fault");
    for _ in 0..1000 {
        let d = fault::decide(policy, &mut rng);
        assert_eq!(d.delay, Some(Duration::from_secs(7)));
        assert_eq!(d.abort, None);
    }
    let other = route(&t, "http://ratings:9080/ratings/0", &[]).unwrap();
    assert!(other.fault.is_none());
}

#[test]
fn abort_fault_sample_answers_jason_with_500() {
    let cfg = productpage_config(&["bookinfo/subsets.yaml", "bookinfo/routes/ratings-abort-jason.yaml"]);
    let t = table(&cfg, "9080");
    let mut rng = fastrand_rng();
    let jason = route(&t, "http://ratings:9080/ratings/0", &[("end-user", "jason")]).unwrap();
    let d = fault::decide(jason.fault.as_ref().unwrap(), &mut rng);
    assert_eq!(d.abort, Some(AbortStatus::Http(500)));
    assert_eq!(d.delay, None);
    assert!(route(&t, "http://ratings:9080/", &[("end-user", "bob")]).unwrap().fault.is_none());
}

#[test]
fn retry_policy_from_a_virtual_service_and_istio_default() {
    let store = MemoryConfigStore::new();
    store.upsert(
        mesh_core::config::Resource::from_yaml(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: ratings}\nspec:\n  hosts: [ratings]\n  http:\n  - route:\n    - destination: {host: ratings, subset: v1}\n    retries:\n      attempts: 3\n      perTryTimeout: 2s\n      retryOn: gateway-error,connect-failure,refused-stream\n",
        )
        .unwrap(),
    );
    let registry = bookinfo_registry();
    let cfg = translate(
        &MeshSnapshot { config: store.snapshot(), services: registry.snapshot() },
        &ProxyIdentity::sidecar("productpage", "default", labels(&[("app", "productpage")])),
    );
    let t = table(&cfg, "9080");
    let ratings = route(&t, "http://ratings:9080/", &[]).unwrap();
    let policy = ratings.retry.as_ref().unwrap();
    assert_eq!(policy.attempts, 3);
    assert_eq!(policy.per_try_timeout, Some(Duration::from_secs(2)));
    let mut rng = fastrand_rng();
    let mut state = RetryState::new(policy);
    let gateway_error = Outcome::Response { status: 503, grpc_status: None, rate_limited: false };
    let mut retries = 0;
    while let RetryDecision::RetryAfter(pause) = state.decide(&gateway_error, &mut rng) {
        assert!(pause < Duration::from_millis(250));
        retries += 1;
    }
    assert_eq!(retries, 3, "3 retries after the first try");
    let mut state = RetryState::new(policy);
    assert_eq!(
        state.decide(&Outcome::Response { status: 500, grpc_status: None, rate_limited: false }, &mut rng),
        RetryDecision::Done,
        "500 is not a gateway error"
    );
    assert!(matches!(state.decide(&Outcome::PerTryTimeout, &mut rng), RetryDecision::RetryAfter(_)));

    // Services without a VirtualService get Istio's default: 2 retries on
    // 503 and connection failures.
    let details = route(&t, "http://details:9080/", &[]).unwrap();
    let default = details.retry.as_ref().unwrap();
    assert_eq!(default.attempts, 2);
    assert_eq!(default.retriable_status_codes, [503]);
    assert_eq!(
        default.retry_on.to_string(),
        "connect-failure,refused-stream,retriable-status-codes,cancelled,unavailable"
    );
}

#[test]
fn bookinfo_gateway_routes_the_documented_paths() {
    let store = MemoryConfigStore::new();
    for r in load("bookinfo/ingress.yaml") {
        store.upsert(r);
    }
    let registry = bookinfo_registry();
    let cfg = translate(
        &MeshSnapshot { config: store.snapshot(), services: registry.snapshot() },
        &ProxyIdentity::gateway("istio-ingressgateway", "istio-system", labels(&[("istio", "ingressgateway")])),
    );
    let listener = cfg.listeners.iter().find(|l| l.name == "0.0.0.0_8080").expect("gateway listener on 8080");
    assert_eq!(listener.port, 8080);
    let t = table(&cfg, "http.8080");
    let productpage = "outbound|9080||productpage.default.svc.cluster.local".to_string();
    for path in ["/productpage", "/static/css/x.css", "/login", "/logout", "/api/v1/products/1"] {
        let r = route(&t, &format!("http://bookinfo.example.com{path}"), &[])
            .unwrap_or_else(|| panic!("{path} has no route"));
        assert_eq!(clusters(r), [(productpage.as_str(), 100)], "{path}");
    }
    for path in ["/", "/productpage/x", "/admin"] {
        assert!(route(&t, &format!("http://bookinfo.example.com{path}"), &[]).is_none(), "{path} should not route");
    }
    // A gateway with other labels gets none of it.
    let other = translate(
        &MeshSnapshot { config: store.snapshot(), services: registry.snapshot() },
        &ProxyIdentity::gateway("egress", "istio-system", labels(&[("istio", "egressgateway")])),
    );
    assert!(other.listeners.is_empty());
}

#[test]
fn translation_is_deterministic_and_versioned() {
    let files = ["bookinfo/subsets.yaml", "bookinfo/routes/reviews-90-10-v1-v2.yaml"];
    let a = productpage_config(&files);
    let b = productpage_config(&files);
    assert_eq!(serde_json::to_vec(&a).unwrap(), serde_json::to_vec(&b).unwrap());
    assert_eq!(a.version, b.version);
    let c = productpage_config(&["bookinfo/subsets.yaml", "bookinfo/routes/reviews-80-20-v1-v2.yaml"]);
    assert_ne!(a.version, c.version);
    // Istio's names for clusters and listeners.
    let names: Vec<&str> = a.clusters.iter().map(|c| c.name.as_str()).collect();
    for expected in [
        "outbound|9080||reviews.default.svc.cluster.local",
        "outbound|9080|v1|reviews.default.svc.cluster.local",
        "outbound|9080|v3|reviews.default.svc.cluster.local",
        "outbound|9080|v2-mysql|ratings.default.svc.cluster.local",
        "inbound|9080||",
    ] {
        assert!(names.contains(&expected), "missing {expected} in {names:?}");
    }
    let listeners: Vec<&str> = a.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(listeners, ["virtualOutbound", "0.0.0.0_9080", "virtualInbound"]);
    // Only the capture listeners hold ports; 9080 is reached through 15001.
    let bound: Vec<(&str, u16)> =
        a.listeners.iter().filter(|l| l.bind_to_port).map(|l| (l.name.as_str(), l.port)).collect();
    assert_eq!(bound, [("virtualOutbound", 15001), ("virtualInbound", 15006)]);
}
