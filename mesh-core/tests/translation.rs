//! Translation details: DestinationRule policies into clusters, precedence,
//! Sidecar scoping, per-proxy route filtering, policy selection, gateway TLS
//! and TCP.

mod common;

use std::time::Duration;

use common::{bookinfo_registry, labels, load};
use mesh_core::config::Resource;
use mesh_core::mesh::MeshSnapshot;
use mesh_core::model::{Endpoint, Protocol, Resolution, Service, ServicePort};
use mesh_core::proxy_config::{ChainAction, HashPolicy, LbPolicy, ProxyConfig, RouteAction};
use mesh_core::registry::MemoryRegistry;
use mesh_core::routing::{RequestView, RouteTable};
use mesh_core::store::MemoryConfigStore;
use mesh_core::translate::{translate, ProxyIdentity};
use mesh_core::{ConfigStore, ServiceRegistry};

fn build(yaml: &[&str], registry: &MemoryRegistry, proxy: &ProxyIdentity) -> ProxyConfig {
    let store = MemoryConfigStore::new();
    for y in yaml {
        for doc in y.split("\n---\n") {
            store.upsert(Resource::from_yaml(doc).unwrap_or_else(|e| panic!("{e}\n{doc}")));
        }
    }
    translate(&MeshSnapshot { config: store.snapshot(), services: registry.snapshot() }, proxy)
}

fn productpage() -> ProxyIdentity {
    ProxyIdentity::sidecar("productpage-v1", "default", labels(&[("app", "productpage"), ("version", "v1")]))
}

const REVIEWS_DR: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpHeaderName: X-User
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 2s}
      http: {http1MaxPendingRequests: 10, http2MaxRequests: 50, maxRequestsPerConnection: 5, maxRetries: 4, idleTimeout: 30s}
    outlierDetection:
      consecutive5xxErrors: 3
      interval: 5s
      baseEjectionTime: 1m
      maxEjectionPercent: 50
    portLevelSettings:
    - port: {number: 9080}
      loadBalancer: {simple: ROUND_ROBIN}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer:
        consistentHash:
          useSourceIp: true
          maglev: {tableSize: 1009}
";

#[test]
fn destination_rule_policies_become_cluster_settings() {
    let cfg = build(&[REVIEWS_DR], &bookinfo_registry(), &productpage());
    let base = cfg.cluster("outbound|9080||reviews.default.svc.cluster.local").unwrap();
    // Port-level settings override the top-level load balancer for 9080.
    assert_eq!(base.lb, LbPolicy::RoundRobin);
    assert_eq!(base.connect_timeout, Duration::from_secs(2));
    assert_eq!(base.circuit_breakers.max_connections, 100);
    assert_eq!(base.circuit_breakers.max_pending_requests, 10);
    assert_eq!(base.circuit_breakers.max_requests, 50);
    assert_eq!(base.circuit_breakers.max_retries, 4);
    assert_eq!(base.max_requests_per_connection, Some(5));
    assert_eq!(base.idle_timeout, Some(Duration::from_secs(30)));
    let od = base.outlier_detection.as_ref().unwrap();
    assert_eq!(
        (od.consecutive_5xx, od.interval, od.base_ejection_time, od.max_ejection_percent),
        (Some(3), Duration::from_secs(5), Duration::from_secs(60), 50)
    );
    // v1 inherits everything; v2's own load balancer replaces it.
    assert_eq!(cfg.cluster("outbound|9080|v1|reviews.default.svc.cluster.local").unwrap().lb, LbPolicy::RoundRobin);
    let v2 = cfg.cluster("outbound|9080|v2|reviews.default.svc.cluster.local").unwrap();
    assert_eq!(v2.lb, LbPolicy::Maglev { table_size: 1009, hash: HashPolicy::SourceIp });
    assert_eq!(v2.circuit_breakers.max_connections, 100, "sections the subset does not set are inherited");
    // Without a DestinationRule: Istio's defaults.
    let ratings = cfg.cluster("outbound|9080||ratings.default.svc.cluster.local").unwrap();
    assert_eq!(ratings.lb, LbPolicy::LeastRequest { choice_count: 2 });
    assert_eq!(ratings.circuit_breakers.max_requests, u32::MAX);
    assert!(ratings.outlier_detection.is_none());
}

#[test]
fn ring_hash_policy_and_header_name_is_lowercased() {
    let dr = REVIEWS_DR
        .replace("    portLevelSettings:\n    - port: {number: 9080}\n      loadBalancer: {simple: ROUND_ROBIN}\n", "");
    let cfg = build(&[&dr], &bookinfo_registry(), &productpage());
    let base = cfg.cluster("outbound|9080||reviews.default.svc.cluster.local").unwrap();
    assert_eq!(base.lb, LbPolicy::RingHash { minimum_ring_size: 1024, hash: HashPolicy::Header("x-user".into()) });
}

#[test]
fn destination_rule_in_the_proxy_namespace_wins() {
    let in_service_ns = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r, namespace: default}\nspec:\n  host: reviews.default.svc.cluster.local\n  trafficPolicy: {loadBalancer: {simple: RANDOM}}\n";
    let in_client_ns = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r, namespace: client}\nspec:\n  host: reviews.default.svc.cluster.local\n  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}\n";
    let registry = bookinfo_registry();
    let client = ProxyIdentity::sidecar("c", "client", labels(&[("app", "c")]));
    let cfg = build(&[in_service_ns, in_client_ns], &registry, &client);
    assert_eq!(cfg.cluster("outbound|9080||reviews.default.svc.cluster.local").unwrap().lb, LbPolicy::RoundRobin);
    let cfg = build(&[in_service_ns, in_client_ns], &registry, &productpage());
    assert_eq!(cfg.cluster("outbound|9080||reviews.default.svc.cluster.local").unwrap().lb, LbPolicy::Random);
}

#[test]
fn sidecar_egress_limits_what_a_proxy_sees() {
    let registry = bookinfo_registry();
    let mut other = Service {
        hostname: "db.data.svc.cluster.local".into(),
        namespace: "data".into(),
        ports: vec![ServicePort { name: "tcp".into(), port: 5432, protocol: Protocol::Tcp, target_port: None }],
        labels: Default::default(),
        addresses: vec!["10.96.0.9".into()],
        resolution: Resolution::Static,
        mesh_external: false,
        subject_alt_names: Vec::new(),
    };
    registry.upsert(other.clone(), vec![Endpoint::new("10.9.0.1")]);
    let all = build(&[], &registry, &productpage());
    assert!(all.cluster("outbound|5432||db.data.svc.cluster.local").is_some());
    assert!(all.listeners.iter().any(|l| l.name == "10.96.0.9_5432"), "a TCP listener on the service VIP");

    let sidecar = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: default}\nspec:\n  egress:\n  - hosts: [\"./*\", \"istio-system/*\"]\n";
    let scoped = build(&[sidecar], &registry, &productpage());
    assert!(scoped.cluster("outbound|5432||db.data.svc.cluster.local").is_none());
    assert!(scoped.cluster("outbound|9080||reviews.default.svc.cluster.local").is_some());
    other.hostname = "cache.default.svc.cluster.local".into();
    other.namespace = "default".into();
    registry.upsert(other, vec![]);
    let scoped = build(&[sidecar], &registry, &productpage());
    assert!(scoped.cluster("outbound|5432||cache.default.svc.cluster.local").is_some());
}

#[test]
fn source_labels_select_routes_per_proxy() {
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: default}\nspec:\n  hosts: [reviews]\n  http:\n  - match:\n    - sourceLabels: {app: productpage}\n    route:\n    - destination: {host: reviews, subset: v2}\n  - route:\n    - destination: {host: reviews, subset: v1}\n";
    let registry = bookinfo_registry();
    let first_cluster = |cfg: &ProxyConfig| {
        let table = RouteTable::new(cfg.route_config("9080").unwrap().clone()).unwrap();
        let (head, _) = http::Request::get("http://reviews:9080/").body(()).unwrap().into_parts();
        let hit = table.find(&RequestView::from_parts(&head, 9080)).unwrap();
        let RouteAction::Forward { clusters } = &hit.route.action else { panic!() };
        clusters[0].cluster.clone()
    };
    assert!(first_cluster(&build(&[vs], &registry, &productpage())).contains("|v2|"));
    let other = ProxyIdentity::sidecar("ratings-v1", "default", labels(&[("app", "ratings")]));
    assert!(first_cluster(&build(&[vs], &registry, &other)).contains("|v1|"));
}

#[test]
fn authorization_policies_apply_by_namespace_root_and_selector() {
    let policies = [
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: mesh-wide, namespace: istio-system}\nspec:\n  action: DENY\n  rules:\n  - to:\n    - operation: {paths: [\"/admin*\"]}\n",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ns-wide, namespace: default}\nspec:\n  rules: [{}]\n",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ratings-only, namespace: default}\nspec:\n  selector: {matchLabels: {app: ratings}}\n  rules: [{}]\n",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: elsewhere, namespace: other}\nspec:\n  rules: [{}]\n",
    ];
    let cfg = build(&policies, &bookinfo_registry(), &productpage());
    let names: Vec<String> = cfg.authorization.iter().map(|p| format!("{}/{}", p.namespace, p.name)).collect();
    assert_eq!(names, ["default/ns-wide", "istio-system/mesh-wide"]);
}

#[test]
fn gateway_https_server_gets_a_tls_chain_per_server() {
    let registry = bookinfo_registry();
    let gw = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: default}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [bookinfo.example.com]\n    tls: {mode: SIMPLE, serverCertificate: /certs/tls.crt, privateKey: /certs/tls.key}\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [bookinfo.example.com]\n    tls: {httpsRedirect: true}\n";
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: bookinfo, namespace: default}\nspec:\n  hosts: [bookinfo.example.com]\n  gateways: [gw]\n  http:\n  - route:\n    - destination: {host: productpage, port: {number: 9080}}\n";
    let cfg = build(
        &[gw, vs],
        &registry,
        &ProxyIdentity::gateway("ingress", "istio-system", labels(&[("istio", "ingressgateway")])),
    );
    let https = cfg.listeners.iter().find(|l| l.port == 443).unwrap();
    let chain = &https.filter_chains[0];
    assert_eq!(chain.server_names, ["bookinfo.example.com"]);
    let tls = chain.tls.as_ref().unwrap();
    assert_eq!((tls.mode.as_str(), tls.certificate_chain.as_deref()), ("SIMPLE", Some("/certs/tls.crt")));
    let ChainAction::Http { route_config, .. } = &chain.action else { panic!() };
    let table = RouteTable::new(cfg.route_config(route_config).unwrap().clone()).unwrap();
    let (head, _) = http::Request::get("https://bookinfo.example.com/productpage").body(()).unwrap().into_parts();
    assert!(table.find(&RequestView::from_parts(&head, 443)).is_some());
    // Port 80 redirects to https.
    let table = RouteTable::new(cfg.route_config("http.80").unwrap().clone()).unwrap();
    let (head, _) = http::Request::get("http://bookinfo.example.com/productpage").body(()).unwrap().into_parts();
    let hit = table.find(&RequestView::from_parts(&head, 80)).unwrap();
    let RouteAction::Redirect(r) = &hit.route.action else { panic!("expected a redirect") };
    assert_eq!((r.scheme.as_deref(), r.code), (Some("https"), 301));
}

#[test]
fn tcp_echo_gateway_splits_80_20() {
    let registry = MemoryRegistry::new("t");
    let mut v1 = Endpoint::new("10.0.0.1");
    v1.labels = labels(&[("version", "v1")]);
    let mut v2 = Endpoint::new("10.0.0.2");
    v2.labels = labels(&[("version", "v2")]);
    registry.upsert(
        Service {
            hostname: "tcp-echo.default.svc.cluster.local".into(),
            namespace: "default".into(),
            ports: vec![ServicePort { name: "tcp".into(), port: 9000, protocol: Protocol::Tcp, target_port: None }],
            labels: Default::default(),
            addresses: vec![],
            resolution: Resolution::Static,
            mesh_external: false,
            subject_alt_names: Vec::new(),
        },
        vec![v1, v2],
    );
    let store = MemoryConfigStore::new();
    for r in load("tcp-echo/gateway-all-v1.yaml").into_iter().chain(load("tcp-echo/split-80-20.yaml")) {
        store.upsert(r);
    }
    let cfg = translate(
        &MeshSnapshot { config: store.snapshot(), services: registry.snapshot() },
        &ProxyIdentity::gateway("ingress", "istio-system", labels(&[("istio", "ingressgateway")])),
    );
    let listener = cfg.listeners.iter().find(|l| l.port == 31400).expect("TCP listener on 31400");
    let ChainAction::Tcp { clusters } = &listener.filter_chains[0].action else { panic!("expected a TCP chain") };
    let got: Vec<(&str, u32)> = clusters.iter().map(|c| (c.cluster.as_str(), c.weight)).collect();
    assert_eq!(
        got,
        [
            ("outbound|9000|v1|tcp-echo.default.svc.cluster.local", 80),
            ("outbound|9000|v2|tcp-echo.default.svc.cluster.local", 20)
        ]
    );
}

/// Istio's outbound traffic policy: ALLOW_ANY passes what the mesh does
/// not know on (PassthroughCluster); REGISTRY_ONLY closes it
/// (BlackHoleCluster) and answers an unknown host 502 (`block_all`). A
/// Sidecar's policy beats MeshConfig's, for the workloads it selects.
#[test]
fn registry_only_sends_unknown_destinations_to_the_black_hole() {
    use mesh_core::mesh_config::{MeshConfig, OutboundMode, OutboundTrafficPolicy};
    use mesh_core::translate::{translate_with, BLACKHOLE, OUTBOUND_PASSTHROUGH};
    let registry = bookinfo_registry();
    let with = |yaml: &[&str], mode: OutboundMode| {
        let store = MemoryConfigStore::new();
        for doc in yaml {
            store.upsert(Resource::from_yaml(doc).unwrap());
        }
        let mesh = MeshSnapshot { config: store.snapshot(), services: registry.snapshot() };
        let mesh_config =
            MeshConfig { outbound_traffic_policy: OutboundTrafficPolicy { mode }, ..MeshConfig::default() };
        translate_with(&mesh, &productpage(), &mesh_config)
    };
    let unknown = |cfg: &ProxyConfig| {
        let outbound = cfg.listeners.iter().find(|l| l.name == "virtualOutbound").expect("virtualOutbound");
        let ChainAction::Tcp { clusters } = &outbound.filter_chains[0].action else { panic!("a TCP chain") };
        let table = RouteTable::new(cfg.route_config("9080").unwrap().clone()).unwrap();
        let (head, _) = http::Request::get("http://api.example.com:9080/").body(()).unwrap().into_parts();
        let http = table.find(&RequestView::from_parts(&head, 9080)).map(|hit| hit.route.action.clone());
        (clusters[0].cluster.clone(), http)
    };
    let block = Some(RouteAction::DirectResponse { status: 502, body: None });
    assert_eq!(unknown(&with(&[], OutboundMode::AllowAny)), (OUTBOUND_PASSTHROUGH.to_string(), None));
    assert_eq!(unknown(&with(&[], OutboundMode::RegistryOnly)), (BLACKHOLE.to_string(), block.clone()));

    let sidecar = |mode: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: default, namespace: default}}\nspec:\n  outboundTrafficPolicy: {{mode: {mode}}}\n")
    };
    let locked = sidecar("REGISTRY_ONLY");
    assert_eq!(unknown(&with(&[&locked], OutboundMode::AllowAny)), (BLACKHOLE.to_string(), block));
    let open = sidecar("ALLOW_ANY");
    assert_eq!(unknown(&with(&[&open], OutboundMode::RegistryOnly)), (OUTBOUND_PASSTHROUGH.to_string(), None));
    // A Sidecar in MeshConfig's root namespace is every namespace's default.
    let in_root = |ns: &str| locked.replace("namespace: default", &format!("namespace: {ns}"));
    let custom_root = |yaml: &str| {
        let store = MemoryConfigStore::new();
        store.upsert(Resource::from_yaml(yaml).unwrap());
        let mesh = MeshSnapshot { config: store.snapshot(), services: registry.snapshot() };
        let mesh_config = MeshConfig { root_namespace: "mesh-root".into(), ..MeshConfig::default() };
        translate_with(&mesh, &productpage(), &mesh_config)
    };
    assert_eq!(unknown(&custom_root(&in_root("mesh-root"))).0, BLACKHOLE);
    assert_eq!(unknown(&custom_root(&in_root("istio-system"))).0, OUTBOUND_PASSTHROUGH, "not the root here");
    let deny_all = |ns: &str| {
        format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny, namespace: {ns}}}\nspec:\n  action: DENY\n  rules: [{{}}]\n")
    };
    assert_eq!(custom_root(&deny_all("mesh-root")).authorization.len(), 1, "a root policy applies mesh-wide");
    assert!(custom_root(&deny_all("istio-system")).authorization.is_empty());
    // Known hosts route as before.
    let cfg = with(&[&locked], OutboundMode::AllowAny);
    let table = RouteTable::new(cfg.route_config("9080").unwrap().clone()).unwrap();
    let (head, _) = http::Request::get("http://reviews:9080/").body(()).unwrap().into_parts();
    let hit = table.find(&RequestView::from_parts(&head, 9080)).expect("reviews routes");
    assert!(matches!(&hit.route.action, RouteAction::Forward { .. }));
}
