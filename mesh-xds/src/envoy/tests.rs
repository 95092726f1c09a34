//! Translation checked field by field on a bookinfo-like mesh; Envoy
//! itself checks the same resources in `examples/tests/xds_envoy.rs`.

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::config::route::v3::{route, route_action, route_match, RouteConfiguration};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, HttpConnectionManager,
};
use mesh_core::config::{self, Decoded};
use mesh_core::mesh::MeshSnapshot;
use mesh_core::model::{Endpoint, Service};
use mesh_core::registry::MemoryRegistry;
use mesh_core::store::MemoryConfigStore;
use mesh_core::translate::{translate, ProxyIdentity};
use mesh_core::{ConfigStore, ServiceRegistry};
use prost::Message;

use super::{resources, Flavor};
use crate::resources::{ResourceSet, CLUSTER, ENDPOINT, LISTENER, ROUTE};

const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match:
    - headers: {end-user: {exact: jason}}
    - uri: {prefix: /jason}
    fault:
      abort: {httpStatus: 418, percentage: {value: 12.5}}
    route:
    - destination: {host: reviews, subset: v2}
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 90
    - destination: {host: reviews, subset: v3}
      weight: 10
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: "5xx,connect-failure"}
    timeout: 10s
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user, maglev: {tableSize: 65537}}
    outlierDetection: {consecutive5xxErrors: 3, interval: 5s, baseEjectionTime: 30s}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
"#;

pub(crate) fn mesh() -> MeshSnapshot {
    mesh_with_endpoint_labels(&[])
}

/// The same mesh, every endpoint labelled with `labels` (`tlsMode: istio`
/// makes them sidecars).
pub(crate) fn mesh_with_endpoint_labels(labels: &[(&str, &str)]) -> MeshSnapshot {
    let store = MemoryConfigStore::new();
    for doc in config::parse_documents(CONFIG).unwrap() {
        if let Decoded::Istio { resource, .. } = config::decode(doc, "default").unwrap() {
            store.upsert(resource);
        }
    }
    let registry = MemoryRegistry::new("test");
    let endpoints = ["v1", "v2", "v3"]
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let mut e = Endpoint::new(format!("10.0.0.{}", i + 1));
            e.labels.insert("version".into(), v.to_string());
            e.labels.extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            e.workload = Some(format!("reviews-{v}"));
            e
        })
        .collect();
    registry.upsert(Service::http("reviews.default.svc.cluster.local", "default", 9080), endpoints);
    MeshSnapshot { config: store.snapshot(), services: registry.snapshot() }
}

fn sidecar(flavor: Flavor) -> ResourceSet {
    let cfg = translate(&mesh(), &ProxyIdentity::sidecar("productpage-v1", "default", Default::default()));
    resources(&cfg, flavor, true).resources
}

fn decode<M: Message + Default>(set: &ResourceSet, type_url: &str, name: &str) -> M {
    let r = set.get(type_url, name).unwrap_or_else(|| {
        panic!("no {type_url} {name}: {:?}", set.of_type(type_url).map(|m| m.keys().collect::<Vec<_>>()))
    });
    M::decode(r.value()).unwrap()
}

const V1: &str = "outbound|9080|v1|reviews.default.svc.cluster.local";

#[test]
fn clusters_are_eds_with_maglev_and_outlier_detection() {
    let set = sidecar(Flavor::Envoy);
    let c: Cluster = decode(&set, CLUSTER, V1);
    assert_eq!(c.cluster_discovery_type, Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)));
    assert_eq!(c.lb_policy, cluster::LbPolicy::Maglev as i32);
    let Some(cluster::LbConfig::MaglevLbConfig(m)) = &c.lb_config else { panic!("{:?}", c.lb_config) };
    assert_eq!(m.table_size.as_ref().map(|v| v.value), Some(65537));
    let od = c.outlier_detection.unwrap();
    assert_eq!(od.consecutive_5xx.map(|v| v.value), Some(3));
    assert_eq!(od.enforcing_consecutive_5xx.map(|v| v.value), Some(100));
    assert_eq!(od.interval.map(|d| d.seconds), Some(5));
    assert!(c.eds_cluster_config.is_some());
}

#[test]
fn endpoints_of_a_subset_only() {
    let set = sidecar(Flavor::Envoy);
    let la: ClusterLoadAssignment = decode(&set, ENDPOINT, V1);
    let hosts: Vec<_> = la.endpoints.iter().flat_map(|l| &l.lb_endpoints).collect();
    assert_eq!(hosts.len(), 1);
    let text = format!("{:?}", hosts[0]);
    assert!(text.contains("10.0.0.1") && text.contains("9080"), "{text}");
}

#[test]
fn routes_keep_istio_semantics() {
    let set = sidecar(Flavor::Envoy);
    let rc: RouteConfiguration = decode(&set, ROUTE, "9080");
    let vh = rc.virtual_hosts.iter().find(|v| v.domains.iter().any(|d| d == "reviews")).expect("reviews virtual host");
    // Two matches (OR) become two routes with the same action, then the default.
    assert_eq!(vh.routes.len(), 3);
    let header = &vh.routes[0].r#match.as_ref().unwrap().headers[0];
    assert_eq!(header.name, "end-user");
    assert_eq!(
        vh.routes[1].r#match.as_ref().unwrap().path_specifier,
        Some(route_match::PathSpecifier::Prefix("/jason".into()))
    );
    let fault: HttpFault =
        Message::decode(vh.routes[0].typed_per_filter_config["envoy.filters.http.fault"].value.as_slice()).unwrap();
    assert_eq!(fault.abort.unwrap().percentage.unwrap().numerator, 125_000);
    let Some(route::Action::Route(action)) = &vh.routes[2].action else { panic!() };
    let Some(route_action::ClusterSpecifier::WeightedClusters(w)) = &action.cluster_specifier else { panic!() };
    let weights: Vec<(String, u32)> =
        w.clusters.iter().map(|c| (c.name.clone(), c.weight.as_ref().unwrap().value)).collect();
    assert_eq!(weights, [(V1.to_string(), 90), ("outbound|9080|v3|reviews.default.svc.cluster.local".to_string(), 10)]);
    let retry = action.retry_policy.as_ref().unwrap();
    assert_eq!(retry.retry_on, "5xx,connect-failure");
    assert_eq!(retry.num_retries.as_ref().unwrap().value, 3);
    assert_eq!(action.timeout.as_ref().unwrap().seconds, 10);
    // The DestinationRule's consistent hash, on the route as Envoy wants it.
    assert_eq!(action.hash_policy.len(), 1);
    // Routes retrying differently keep their own policies; a host whose
    // routes share one has it once, on the host.
    assert_eq!(vh.retry_policy, None);
    let Some(route::Action::Route(first)) = &vh.routes[0].action else { panic!() };
    assert_eq!(first.retry_policy.as_ref().map(|r| r.retry_on.as_str()), Some(ISTIO_DEFAULT_RETRY_ON));
    let registry = MemoryRegistry::new("test");
    registry
        .upsert(Service::http("ratings.default.svc.cluster.local", "default", 9080), vec![Endpoint::new("10.0.1.1")]);
    let mesh = MeshSnapshot { config: MemoryConfigStore::new().snapshot(), services: registry.snapshot() };
    let cfg = translate(&mesh, &ProxyIdentity::sidecar("productpage-v1", "default", Default::default()));
    let rc: RouteConfiguration = decode(&resources(&cfg, Flavor::Envoy, true).resources, ROUTE, "9080");
    let ratings = &rc.virtual_hosts[0];
    assert_eq!(ratings.retry_policy.as_ref().map(|r| r.retry_on.as_str()), Some(ISTIO_DEFAULT_RETRY_ON));
    let own = |r: &envoy_types::pb::envoy::config::route::v3::Route| match &r.action {
        Some(route::Action::Route(a)) => a.retry_policy.is_some(),
        _ => false,
    };
    assert!(!ratings.routes.iter().any(own), "the routes take the host's");
}

const ISTIO_DEFAULT_RETRY_ON: &str = "connect-failure,refused-stream,retriable-status-codes,cancelled,unavailable";

#[test]
fn sidecar_listeners_use_rds_over_ads() {
    let set = sidecar(Flavor::Envoy);
    let l: Listener = decode(&set, LISTENER, "0.0.0.0_9080");
    assert_eq!(l.bind_to_port.map(|b| b.value), Some(false));
    let Some(filter::ConfigType::TypedConfig(any)) = &l.filter_chains[0].filters[0].config_type else { panic!() };
    let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
    let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = hcm.route_specifier else { panic!() };
    assert_eq!(rds.route_config_name, "9080");
    assert_eq!(hcm.http_filters.last().unwrap().name, "envoy.filters.http.router");
    assert!(set.get(LISTENER, "virtualOutbound").is_some());
}

#[test]
fn proxyless_grpc_gets_api_listeners_by_dial_target() {
    let set = sidecar(Flavor::ProxylessGrpc);
    let l: Listener = decode(&set, LISTENER, "reviews.default.svc.cluster.local:9080");
    let hcm = HttpConnectionManager::decode(l.api_listener.unwrap().api_listener.unwrap().value.as_slice()).unwrap();
    let names: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["envoy.filters.http.fault", "envoy.filters.http.router"]);
    assert!(set.get(LISTENER, "reviews:9080").is_some());
    assert!(set.get(LISTENER, "virtualOutbound").is_none(), "gRPC gets no socket listeners");
    // gRPC balances by round robin or ring hash only: Maglev becomes ring hash.
    let c: Cluster = decode(&set, CLUSTER, V1);
    assert_eq!(c.lb_policy, cluster::LbPolicy::RingHash as i32);
}

/// reviews' three endpoints in three localities, as seen by a proxy in
/// `us-east/a/1`.
fn priorities_seen_from(proxy_locality: &str, outlier_detection: bool) -> Vec<(String, u32)> {
    let mut mesh = mesh();
    let registry = MemoryRegistry::new("test");
    let endpoints = [("10.0.0.1", "us-east/a/1"), ("10.0.0.2", "us-east/b/1"), ("10.0.0.3", "eu-west/a/1")]
        .into_iter()
        .map(|(address, locality)| {
            let mut e = Endpoint::new(address);
            e.locality = mesh_core::model::Locality::parse(locality);
            e
        })
        .collect();
    registry.upsert(Service::http("reviews.default.svc.cluster.local", "default", 9080), endpoints);
    mesh.services = registry.snapshot();
    if !outlier_detection {
        let store = MemoryConfigStore::new();
        mesh.config = store.snapshot();
    }
    let mut proxy = ProxyIdentity::sidecar("productpage-v1", "default", Default::default());
    proxy.locality = mesh_core::model::Locality::parse(proxy_locality);
    let set = resources(&translate(&mesh, &proxy), Flavor::Envoy, true).resources;
    let la: ClusterLoadAssignment = decode(&set, ENDPOINT, "outbound|9080||reviews.default.svc.cluster.local");
    let mut seen: Vec<(String, u32)> = la
        .endpoints
        .iter()
        .flat_map(|group| group.lb_endpoints.iter().map(move |e| (format!("{e:?}"), group.priority)))
        .map(|(text, p)| {
            (["10.0.0.1", "10.0.0.2", "10.0.0.3"].into_iter().find(|a| text.contains(a)).unwrap().to_string(), p)
        })
        .collect();
    seen.sort();
    seen
}

#[test]
fn endpoints_are_ranked_by_locality_when_outlier_detection_can_fail_them_over() {
    let ranked = |v: [u32; 3]| -> Vec<(String, u32)> {
        ["10.0.0.1", "10.0.0.2", "10.0.0.3"].iter().zip(v).map(|(a, p)| (a.to_string(), p)).collect()
    };
    // Same zone first, then the same region, then elsewhere: without gaps.
    assert_eq!(priorities_seen_from("us-east/a/1", true), ranked([0, 1, 2]));
    assert_eq!(priorities_seen_from("eu-west/a/1", true), ranked([1, 1, 0]));
    // No outlier detection (nothing would fail over) or no locality: one level.
    assert_eq!(priorities_seen_from("us-east/a/1", false), ranked([0, 0, 0]));
    assert_eq!(priorities_seen_from("", true), ranked([0, 0, 0]));
}

#[test]
fn proxyless_grpc_istio_mutual_names_its_certificate_providers_and_the_expected_identity() {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{common_tls_context, UpstreamTlsContext};
    let mut mesh = mesh();
    let store = MemoryConfigStore::new();
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: default}\nspec:\n  host: reviews\n  trafficPolicy:\n    tls: {mode: ISTIO_MUTUAL, subjectAltNames: [\"spiffe://cluster.local/ns/default/sa/expected\"]}\n";
    for doc in config::parse_documents(dr).unwrap() {
        if let Decoded::Istio { resource, .. } = config::decode(doc, "default").unwrap() {
            store.upsert(resource);
        }
    }
    mesh.config = store.snapshot();
    let cfg = translate(&mesh, &ProxyIdentity::sidecar("productpage-v1", "default", Default::default()));
    let set = resources(&cfg, Flavor::ProxylessGrpc, false).resources;
    let c: Cluster = decode(&set, CLUSTER, "outbound|9080||reviews.default.svc.cluster.local");
    let Some(envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(any)) =
        c.transport_socket.and_then(|t| t.config_type)
    else {
        panic!("no TLS")
    };
    let tls = UpstreamTlsContext::decode(any.value.as_slice()).unwrap().common_tls_context.unwrap();
    let provider = tls.tls_certificate_provider_instance.unwrap();
    assert_eq!((provider.instance_name.as_str(), provider.certificate_name.as_str()), ("default", "default"));
    let Some(common_tls_context::ValidationContextType::ValidationContext(v)) = tls.validation_context_type else {
        panic!("no validation context")
    };
    assert_eq!(v.ca_certificate_provider_instance.unwrap().certificate_name, "ROOTCA");
    #[allow(deprecated)]
    let names: Vec<String> = v.match_subject_alt_names.iter().map(|m| format!("{:?}", m.match_pattern)).collect();
    assert_eq!(names, ["Some(Exact(\"spiffe://cluster.local/ns/default/sa/expected\"))"]);
}

/// A gateway's RequestAuthentication as istiod sends it: jwt_authn before
/// RBAC, inline keys; an issuer whose keys were never fetched is named
/// once, and its provider still gets keys Envoy loads.
#[test]
fn request_authentication_reaches_the_gateway_as_jwt_authn() {
    use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{jwt_provider, JwtAuthentication};
    let mut cfg = translate(&mesh(), &ProxyIdentity::gateway("gw", "istio-system", Default::default()));
    cfg.listeners.push(mesh_core::proxy_config::Listener {
        name: "0.0.0.0_8080".into(),
        address: "0.0.0.0".into(),
        port: 8080,
        direction: mesh_core::proxy_config::TrafficDirection::Gateway,
        use_original_dst: false,
        bind_to_port: true,
        filter_chains: vec![mesh_core::proxy_config::FilterChain {
            server_names: vec![],
            destination_port: None,
            tls: None,
            action: mesh_core::proxy_config::ChainAction::Http {
                route_config: "http.8080".into(),
                protocol: mesh_core::model::Protocol::Http,
            },
            rbac: Vec::new(),
            local_rate_limits: Vec::new(),
            request_authentication: Vec::new(),
        }],
    });
    let mut second = cfg.listeners.last().unwrap().clone();
    (second.name, second.port) = ("0.0.0.0_8081".into(), 8081);
    cfg.listeners.push(second);
    let rules: [mesh_core::config::security::JwtRule; 2] = [
        serde_json::from_value(serde_json::json!({"issuer": "https://a", "jwks": "{\"keys\":[]}"})).unwrap(),
        serde_json::from_value(serde_json::json!({"issuer": "https://b", "jwksUri": "https://b/jwks"})).unwrap(),
    ];
    cfg.request_authentication = rules.iter().map(|r| mesh_core::jwt::JwtProvider::from_rule("ns/ra", r)).collect();
    cfg.authorization = vec![];
    let translated = resources(&cfg, Flavor::Envoy, true);
    let l: Listener = decode(&translated.resources, LISTENER, "0.0.0.0_8080");
    let Some(filter::ConfigType::TypedConfig(any)) = &l.filter_chains[0].filters[0].config_type else { panic!() };
    let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
    assert_eq!(hcm.http_filters[0].name, super::jwt::FILTER);
    let Some(envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType::TypedConfig(any)) =
        &hcm.http_filters[0].config_type
    else {
        panic!("a typed config")
    };
    let authn = JwtAuthentication::decode(any.value.as_slice()).unwrap();
    let names: std::collections::BTreeSet<&String> = authn.providers.keys().collect();
    assert_eq!(names.into_iter().cloned().collect::<Vec<_>>(), ["origins-0", "origins-1"]);
    let b = &authn.providers["origins-1"];
    assert_eq!(b.payload_in_metadata, "payload");
    let Some(jwt_provider::JwksSourceSpecifier::LocalJwks(keys)) = &b.jwks_source_specifier else {
        panic!("inline keys")
    };
    assert!(format!("{keys:?}").contains("unfetched"), "keys that verify nothing: {keys:?}");
    let named: Vec<&String> = translated.unsupported.iter().filter(|u| u.contains("https://b")).collect();
    assert_eq!(named.len(), 1, "named once for two listeners: {:?}", translated.unsupported);
}
