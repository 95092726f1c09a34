//! Envoy 1.40 driven by the control-plane binary over ADS: both are child
//! processes on 127.0.0.1, with real backends behind Envoy.

mod common;

use std::time::{Duration, Instant};

use common::{
    backend, control_plane, debug_get, free_port, gateway_envoy, get, reviews_backends, routes, versions_at,
    wait_until, write_mesh, Response, Service,
};
use mesh_testkit::envoy::Envoy;

#[test]
fn envoy_routes_by_the_bookinfo_rules_follows_edits_and_keeps_config_after_a_nack() {
    let (_backends, [p1, p2, p3]) = reviews_backends();
    let config = tempfile::tempdir().unwrap();
    let port = free_port();
    write_mesh(
        config.path(),
        port,
        &[Service { name: "reviews", backends: &[("v1", p1), ("v2", p2), ("v3", p3)] }],
        "",
    );
    let jason = "  - match:\n    - headers: {end-user: {exact: jason}}\n    route:\n    - destination: {host: reviews, subset: v2}\n  - route:\n    - destination: {host: reviews, subset: v3}\n";
    std::fs::write(config.path().join("routes.yaml"), routes("reviews", jason)).unwrap();
    let (_cp, xds, debug) = control_plane(config.path());
    let work = tempfile::tempdir().unwrap();
    let envoy = gateway_envoy(work.path(), xds, "GRPC");

    // virtual-service-reviews-jason-v2-v3.yaml
    assert!(
        wait_until(Duration::from_secs(30), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && get(port, "/", &[("end-user", "jason")]).status == 200),
        "Envoy never served the gateway listener; its log:\n{}",
        envoy.log()
    );
    assert_eq!(versions_at(port, 20, "/reviews/0", &[("end-user", "jason")]), [("v2".to_string(), 20)].into());
    assert_eq!(versions_at(port, 20, "/reviews/0", &[("end-user", "alice")]), [("v3".to_string(), 20)].into());

    // virtual-service-reviews-90-10.yaml, timed from the write to the first
    // request that shows it.
    let edited = Instant::now();
    std::fs::write(
        config.path().join("routes.yaml"),
        routes("reviews", "  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 90\n    - destination: {host: reviews, subset: v2}\n      weight: 10\n"),
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || get(port, "/", &[]).header("x-backend-version") == Some("v1")),
        "the edit did not reach Envoy in 10 s"
    );
    eprintln!("edit to effect through the control plane and Envoy: {:?}", edited.elapsed());
    let counts = versions_at(port, 1000, "/", &[]);
    let v1 = counts.get("v1").copied().unwrap_or(0);
    assert_eq!(v1 + counts.get("v2").copied().unwrap_or(0), 1000, "{counts:?}");
    assert!((870..=930).contains(&v1), "90/10 split gave {counts:?}");

    // A route Istio accepts and Envoy rejects: RE2's program size limit
    // (100 by default) is Envoy's, not the regex syntax's.
    let big = "[a-z]{400}[0-9]{400}";
    let rejected = routes(
        "reviews",
        &format!("  - match:\n    - uri: {{regex: \"/{big}\"}}\n    route:\n    - destination: {{host: reviews, subset: v3}}\n  - route:\n    - destination: {{host: reviews, subset: v3}}\n"),
    );
    std::fs::write(config.path().join("routes.yaml"), rejected).unwrap();
    let mut syncz = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(10), || {
            syncz =
                debug_get(debug, "/debug/syncz").and_then(|r| serde_json::from_str(&r.body).ok()).unwrap_or_default();
            syncz["totals"]["nacks"].as_u64().unwrap_or(0) > 0
        }),
        "no NACK recorded: {syncz}"
    );
    let nack = &syncz["nodes"][0]["types"]["RDS"]["last_nack"];
    assert!(nack["message"].as_str().unwrap_or("").contains("program size"), "NACK detail: {nack}");
    // Envoy kept the last good routes: still 90/10 between v1 and v2, no v3.
    let counts = versions_at(port, 200, "/", &[]);
    assert_eq!(counts.get("v1").copied().unwrap_or(0) + counts.get("v2").copied().unwrap_or(0), 200, "{counts:?}");
    let metrics = debug_get(debug, "/metrics").map(|r| r.body).unwrap_or_default();
    assert!(metrics.contains("pilot_total_xds_rejects_total 1"), "{metrics}");

    // The config a node is sent, by its id.
    let dump = debug_get(
        debug,
        "/debug/config_dump?proxyID=router~127.0.0.1~istio-ingressgateway-1.default~default.svc.cluster.local",
    )
    .unwrap();
    assert_eq!(dump.status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump.body).unwrap();
    assert!(
        dump["resources"]["CDS"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["name"] == "outbound|9080|v1|reviews.default.svc.cluster.local")),
        "{dump}"
    );
    // A gateway that is not connected: its id does not carry its labels,
    // so without `labels` no Gateway selects it.
    let unconnected = "/debug/config_dump?proxyID=router~10.0.0.1~gw-1.default~default.svc.cluster.local";
    let listeners = |path: &str| -> usize {
        let dump: serde_json::Value = serde_json::from_str(&debug_get(debug, path).unwrap().body).unwrap();
        dump["resources"]["LDS"].as_array().map_or(0, Vec::len)
    };
    assert_eq!(listeners(unconnected), 0);
    assert_eq!(listeners(&format!("{unconnected}&labels=istio=ingressgateway")), 1);
}

/// Wait until Envoy serves `path` on `port` with a 200.
fn wait_served(port: u16, path: &str, envoy: &Envoy) {
    assert!(
        wait_until(Duration::from_secs(30), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && get(port, path, &[]).status == 200),
        "Envoy never served {path}; its log:\n{}",
        envoy.log()
    );
}

#[test]
fn delta_xds_drives_envoy_too() {
    let (_b1, p1) = backend("v1", 0);
    let (_b2, p2) = backend("v2", 0);
    let config = tempfile::tempdir().unwrap();
    let port = free_port();
    write_mesh(config.path(), port, &[Service { name: "reviews", backends: &[("v1", p1), ("v2", p2)] }], "");
    std::fs::write(
        config.path().join("routes.yaml"),
        routes("reviews", "  - route:\n    - destination: {host: reviews, subset: v1}\n"),
    )
    .unwrap();
    let (_cp, xds, debug) = control_plane(config.path());
    let work = tempfile::tempdir().unwrap();
    let envoy = gateway_envoy(work.path(), xds, "DELTA_GRPC");
    wait_served(port, "/", &envoy);
    assert_eq!(versions_at(port, 10, "/", &[]), [("v1".to_string(), 10)].into());

    std::fs::write(
        config.path().join("routes.yaml"),
        routes("reviews", "  - route:\n    - destination: {host: reviews, subset: v2}\n"),
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || get(port, "/", &[]).header("x-backend-version") == Some("v2")),
        "the edit did not reach Envoy"
    );
    assert_eq!(versions_at(port, 10, "/", &[]), [("v2".to_string(), 10)].into());
    let syncz: serde_json::Value = serde_json::from_str(&debug_get(debug, "/debug/syncz").unwrap().body).unwrap();
    let node = &syncz["nodes"][0];
    assert_eq!(node["protocol"], "delta", "{syncz}");
    // Only the route changed: one RDS push after the first, no CDS or EDS.
    assert_eq!(node["types"]["RDS"]["pushes"], 2, "{syncz}");
    assert_eq!(node["types"]["CDS"]["pushes"], 1, "{syncz}");
    assert_eq!(node["types"]["RDS"]["nacks"], 0, "{syncz}");
}

/// Istio's resilience features as Envoy executes them: retries, timeouts,
/// fault injection, consistent hashing, the circuit breaker and outlier
/// ejection.
#[test]
fn envoy_executes_retries_timeouts_faults_hashing_and_circuit_breakers() {
    let (_flaky, flaky) = backend("v1", 2); // every second request fails
    let (_backends, [p1, p2, p3]) = reviews_backends();
    let (_broken, broken) = backend("v2", 1); // every request fails
    let config = tempfile::tempdir().unwrap();
    let port = free_port();
    let hashing = "  trafficPolicy:\n    loadBalancer:\n      consistentHash: {httpHeaderName: x-user}\n";
    write_mesh(
        config.path(),
        port,
        &[
            Service { name: "flaky", backends: &[("v1", flaky)] },
            Service { name: "reviews", backends: &[("v1", p1), ("v2", p2), ("v3", p3)] },
        ],
        hashing,
    );
    // A service whose DestinationRule allows one connection and one waiting request.
    std::fs::write(
        config.path().join("limited.yaml"),
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: limited, namespace: default}}\nspec:\n  ports: [{{name: http, port: 9080}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: limited, namespace: default, labels: {{kubernetes.io/service-name: limited}}}}\naddressType: IPv4\nports: [{{name: http, port: {p1}}}]\nendpoints: [{{addresses: [127.0.0.1]}}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: limited, namespace: default}}\nspec:\n  host: limited\n  trafficPolicy:\n    connectionPool:\n      tcp: {{maxConnections: 1}}\n      http: {{http1MaxPendingRequests: 1, http2MaxRequests: 1}}\n"
        ),
    )
    .unwrap();
    // A service with a healthy and a broken endpoint, and outlier detection.
    let mut ejecting = String::from("apiVersion: v1\nkind: Service\nmetadata: {name: ejecting, namespace: default}\nspec:\n  ports: [{name: http, port: 9080}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: ejecting, namespace: default}\nspec:\n  host: ejecting\n  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}\n");
    for (i, p) in [p1, broken].iter().enumerate() {
        ejecting.push_str(&format!("---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: ejecting-{i}, namespace: default, labels: {{kubernetes.io/service-name: ejecting}}}}\naddressType: IPv4\nports: [{{name: http, port: {p}}}]\nendpoints: [{{addresses: [127.0.0.1]}}]\n"));
    }
    std::fs::write(config.path().join("ejecting.yaml"), ejecting).unwrap();
    std::fs::write(
        config.path().join("routes.yaml"),
        routes(
            "all",
            "  - match: [{uri: {prefix: /flaky}}]\n    route: [{destination: {host: flaky}}]\n    retries: {attempts: 3, retryOn: 5xx}\n  - match: [{uri: {prefix: /slow}}]\n    route: [{destination: {host: reviews}}]\n    timeout: 300ms\n  - match: [{uri: {prefix: /fault}}]\n    route: [{destination: {host: reviews}}]\n    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}\n  - match: [{uri: {prefix: /limited}}]\n    route: [{destination: {host: limited}}]\n  - match: [{uri: {prefix: /ejecting}}]\n    route: [{destination: {host: ejecting}}]\n    retries: {attempts: 0}\n  - route: [{destination: {host: reviews}}]\n",
        ),
    )
    .unwrap();
    let (_cp, xds, _debug) = control_plane(config.path());
    let work = tempfile::tempdir().unwrap();
    let envoy = gateway_envoy(work.path(), xds, "GRPC");
    wait_served(port, "/", &envoy);

    // Retries hide every second failure.
    assert_eq!(versions_at(port, 40, "/flaky", &[]), [("v1".to_string(), 40)].into());
    // The route timeout cuts a 2 s answer at 300 ms.
    let started = Instant::now();
    assert_eq!(get(port, "/slow?delay_ms=2000", &[]).status, 504);
    assert!(started.elapsed() < Duration::from_millis(1500), "timeout took {:?}", started.elapsed());
    // Fault injection answers for the upstream.
    assert_eq!(get(port, "/fault", &[]).status, 418);
    // Ring hash on x-user: one user sticks to one backend, users spread.
    let mut seen = std::collections::BTreeSet::new();
    for user in 0..12 {
        let user = format!("user-{user}");
        let counts = versions_at(port, 5, "/", &[("x-user", &user)]);
        assert_eq!(counts.len(), 1, "{user} moved between backends: {counts:?}");
        seen.extend(counts.into_keys());
    }
    assert!(seen.len() >= 2, "12 users all hashed to {seen:?}");
    // The circuit breaker: 8 concurrent slow requests against 1 connection
    // and 1 pending slot; the overflow is answered 503 by Envoy itself.
    let answers: Vec<Response> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8).map(|_| s.spawn(|| get(port, "/limited?delay_ms=500", &[]))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let overflowed =
        answers.iter().filter(|r| r.status == 503 && r.header("x-envoy-overloaded") == Some("true")).count();
    let served = answers.iter().filter(|r| r.status == 200).count();
    assert!(overflowed >= 1 && served >= 1, "{:?}", answers.iter().map(|r| r.status).collect::<Vec<_>>());
    // Outlier detection: the broken endpoint is ejected after two 503s in
    // a row, and then every request goes to the healthy one. Envoy's worker
    // hands the ejection to its main thread, so on a busy machine a few
    // more requests may reach the broken endpoint first (5 seen once).
    let warmup = versions_at(port, 20, "/ejecting", &[]);
    assert!(warmup.get("status 503").copied().unwrap_or(0) <= 8, "ejection took too long: {warmup:?}");
    assert_eq!(versions_at(port, 30, "/ejecting", &[]), [("v1".to_string(), 30)].into());
}

/// Istio's local rate limit task (an EnvoyFilter on the gateway), as
/// Envoy's local_ratelimit filter from the control plane: a bucket of 3
/// for a minute, then 429 with the filter's header.
#[test]
fn envoy_enforces_the_local_rate_limit_of_an_envoy_filter() {
    let (_b1, p1) = backend("v1", 0);
    let config = tempfile::tempdir().unwrap();
    let port = free_port();
    write_mesh(config.path(), port, &[Service { name: "reviews", backends: &[("v1", p1)] }], "");
    std::fs::write(
        config.path().join("routes.yaml"),
        routes("reviews", "  - route:\n    - destination: {host: reviews, subset: v1}\n"),
    )
    .unwrap();
    let (_cp, xds, _debug) = control_plane(config.path());
    let work = tempfile::tempdir().unwrap();
    let envoy = gateway_envoy(work.path(), xds, "GRPC");
    wait_served(port, "/", &envoy);
    let filter = common::LOCAL_RATE_LIMIT_FILTER;
    std::fs::write(config.path().join("ratelimit.yaml"), filter).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || get(port, "/", &[]).status == 429),
        "Envoy never rate limited; its log:\n{}",
        envoy.log()
    );
    let limited = get(port, "/", &[]);
    assert_eq!((limited.status, limited.header("x-local-rate-limit")), (429, Some("true")));
}

/// Locality failover over EDS: Envoy in `us-east/a/1` sends everything to
/// the endpoint of its own zone while it is healthy (priority 0), and to
/// the other region's once outlier detection ejects it (with two hosts,
/// Envoy's default 10% ejection cap would keep it: the rule lifts it).
#[test]
fn envoy_fails_over_by_locality_priority() {
    let (near, near_port) = backend("near", 0);
    let (_far, far_port) = backend("far", 0);
    let config = tempfile::tempdir().unwrap();
    let port = free_port();
    let mesh = format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers: [{{port: {{number: {port}, name: http, protocol: HTTP}}, hosts: ["*"]}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {far_port}}}, locality: eu-west/a/1}}
  - {{address: 127.0.0.1, ports: {{http: {near_port}}}, locality: us-east/a/1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy:
    outlierDetection: {{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [gw]
  http: [{{route: [{{destination: {{host: reviews.default.svc.cluster.local}}}}]}}]
"#
    );
    std::fs::write(config.path().join("mesh.yaml"), mesh).unwrap();
    let (_cp, xds, _debug) = control_plane(config.path());
    let work = tempfile::tempdir().unwrap();
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/config/envoy/ingress-gateway.yaml");
    let bootstrap = std::fs::read_to_string(sample)
        .unwrap()
        .replace(
            "cluster: istio-ingressgateway\n",
            "cluster: istio-ingressgateway\n  locality: {region: us-east, zone: a, sub_zone: '1'}\n",
        )
        .replace("port_value: 15000", "port_value: 0")
        .replace("port_value: 15010", &format!("port_value: {xds}"));
    let envoy = Envoy::start(&bootstrap, work.path());
    wait_served(port, "/", &envoy);
    let near_only = versions_at(port, 30, "/", &[]);
    assert_eq!(near_only, [("near".to_string(), 30)].into(), "priority 0 (the proxy's own zone) takes everything");
    drop(near);
    assert!(
        wait_until(Duration::from_secs(10), || get(port, "/", &[]).header("x-backend-version") == Some("far")),
        "Envoy never failed over to the other region; its clusters:\n{}",
        envoy.admin_get("/clusters").unwrap_or_default()
    );
    assert_eq!(versions_at(port, 10, "/", &[]), [("far".to_string(), 10)].into());
}
