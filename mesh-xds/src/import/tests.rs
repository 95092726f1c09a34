//! The round trip: mesh-core config -> Envoy resources -> mesh-core config
//! gives back what mesh-proxy executes.

use envoy_types::pb::envoy::config::cluster::v3::Cluster as EnvoyCluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment as EnvoyLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener as EnvoyListener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use mesh_core::model::Protocol;
use mesh_core::proxy_config::LbPolicy;
use mesh_core::translate::{translate, ProxyIdentity, ProxyKind};
use mesh_core::ProxyConfig;
use prost::Message;

use super::*;
use crate::envoy::{resources, tests::mesh, Flavor};
use crate::resources::{ResourceSet, CLUSTER, ENDPOINT, LISTENER, ROUTE};

fn all<M: Message + Default>(set: &ResourceSet, type_url: &str) -> Vec<M> {
    set.of_type(type_url).map(|m| m.values().map(|r| M::decode(r.value()).unwrap()).collect()).unwrap_or_default()
}

fn round_trip(cfg: &ProxyConfig, kind: ProxyKind) -> ProxyConfig {
    let set = resources(cfg, Flavor::Envoy, true).resources;
    proxy_config(
        kind,
        &all::<EnvoyListener>(&set, LISTENER),
        &all::<RouteConfiguration>(&set, ROUTE),
        &all::<EnvoyCluster>(&set, CLUSTER),
        &all::<EnvoyLoadAssignment>(&set, ENDPOINT),
    )
    .unwrap()
}

/// What xDS does not carry (yet): policies mesh-proxy enforces itself,
/// gRPC-ness of a port (HTTP/2 on the wire either way), and the config's
/// order.
fn comparable(mut cfg: ProxyConfig) -> ProxyConfig {
    cfg.version.clear();
    cfg.authorization.clear();
    cfg.local_rate_limits.clear();
    cfg.listeners.sort_by(|a, b| a.name.cmp(&b.name));
    for l in &mut cfg.listeners {
        for c in &mut l.filter_chains {
            if let ChainAction::Http { protocol, .. } = &mut c.action {
                *protocol = Protocol::Http;
            }
        }
    }
    // Envoy refuses a listener without chains: it is not sent.
    cfg.listeners.retain(|l| !l.filter_chains.is_empty());
    cfg.route_configs.sort_by(|a, b| a.name.cmp(&b.name));
    // Istio's endpoint metadata names the workload without app and version.
    for e in cfg.endpoints.iter_mut().flat_map(|la| &mut la.endpoints) {
        if let Some(w) = &mut e.workload {
            let w = std::sync::Arc::make_mut(w);
            (w.app, w.version) = (String::new(), String::new());
        }
    }
    // Envoy is sent Istio's passthrough clusters, which the sidecar
    // chains name and mesh-proxy knows without them.
    use mesh_core::translate::{BLACKHOLE, INBOUND_PASSTHROUGH, OUTBOUND_PASSTHROUGH};
    let passthrough = [INBOUND_PASSTHROUGH, OUTBOUND_PASSTHROUGH, BLACKHOLE];
    cfg.clusters.retain(|c| !passthrough.contains(&c.name.as_str()));
    cfg.clusters.sort_by(|a, b| a.name.cmp(&b.name));
    // Envoy hashes on routes: a cluster no route sends to has no hash key.
    let routed: std::collections::BTreeSet<String> = cfg
        .route_configs
        .iter()
        .flat_map(|rc| &rc.virtual_hosts)
        .flat_map(|vh| &vh.routes)
        .filter_map(|r| match &r.action {
            mesh_core::proxy_config::RouteAction::Forward { clusters } => {
                Some(clusters.iter().map(|c| c.cluster.clone()))
            }
            _ => None,
        })
        .flatten()
        .collect();
    for c in &mut cfg.clusters {
        c.locality_lb = None;
        if let (LbPolicy::RingHash { hash, .. } | LbPolicy::Maglev { hash, .. }, false) =
            (&mut c.lb, routed.contains(&c.name))
        {
            *hash = mesh_core::proxy_config::HashPolicy::SourceIp;
        }
        if c.protocol == Protocol::Grpc {
            c.protocol = Protocol::Http2;
        }
        if !c.protocol.is_http() {
            c.protocol = Protocol::Tcp;
        }
    }
    cfg.endpoints.sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
    for la in &mut cfg.endpoints {
        la.endpoints.sort_by(|a, b| (&a.address, a.port).cmp(&(&b.address, b.port)));
    }
    cfg
}

use mesh_core::proxy_config::ChainAction;

fn assert_same(original: &ProxyConfig, back: &ProxyConfig) {
    let (a, b) = (comparable(original.clone()), comparable(back.clone()));
    for (what, x, y) in [
        ("listeners", serde_json::to_string_pretty(&a.listeners), serde_json::to_string_pretty(&b.listeners)),
        ("routes", serde_json::to_string_pretty(&a.route_configs), serde_json::to_string_pretty(&b.route_configs)),
        ("clusters", serde_json::to_string_pretty(&a.clusters), serde_json::to_string_pretty(&b.clusters)),
        ("endpoints", serde_json::to_string_pretty(&a.endpoints), serde_json::to_string_pretty(&b.endpoints)),
    ] {
        let (x, y) = (x.unwrap(), y.unwrap());
        if x != y {
            let line = x.lines().zip(y.lines()).position(|(l, r)| l != r).unwrap_or(0);
            let around = |t: &str| t.lines().skip(line.saturating_sub(8)).take(16).collect::<Vec<_>>().join("\n");
            panic!(
                "{what} differ after the round trip near line {line}:\n--- sent\n{}\n--- imported\n{}",
                around(&x),
                around(&y)
            );
        }
    }
}

#[test]
fn a_sidecar_config_survives_the_round_trip() {
    let cfg = translate(&mesh(), &ProxyIdentity::sidecar("productpage-v1", "default", Default::default()));
    let back = round_trip(&cfg, ProxyKind::Sidecar);
    assert_same(&cfg, &back);
    // The hash key went from the route back to the cluster.
    let c = back.cluster("outbound|9080|v1|reviews.default.svc.cluster.local").unwrap();
    assert!(
        matches!(&c.lb, LbPolicy::Maglev { hash: mesh_core::proxy_config::HashPolicy::Header(h), .. } if h == "x-user"),
        "{:?}",
        c.lb
    );
}

/// reviews-v1's sidecar, its endpoints all sidecars: auto mTLS outbound,
/// PERMISSIVE inbound (an mTLS and a plaintext chain on 9080).
fn reviews_sidecar() -> ProxyConfig {
    let mesh = crate::envoy::tests::mesh_with_endpoint_labels(&[("security.istio.io/tlsMode", "istio")]);
    let mut proxy = ProxyIdentity::sidecar("reviews-v1", "default", [("version".into(), "v1".into())].into());
    proxy.ip = Some("10.0.0.1".into());
    translate(&mesh, &proxy)
}

#[test]
fn in_mesh_mtls_survives_the_round_trip() {
    let cfg = reviews_sidecar();
    let inbound = cfg.listeners.iter().find(|l| l.name == "virtualInbound").unwrap();
    let modes = |port: Option<u16>| -> Vec<Option<&str>> {
        let chains = inbound.filter_chains.iter().filter(|c| c.destination_port.is_some() == port.is_some());
        chains.map(|c| c.tls.as_ref().map(|t| t.mode.as_str())).collect()
    };
    assert_eq!(modes(Some(9080)), [Some("ISTIO_MUTUAL"), None]);
    assert_eq!(modes(None), [Some("ISTIO_MUTUAL"), None], "undeclared ports: PERMISSIVE too");
    assert!(cfg.clusters.iter().any(|c| c.tls.as_ref().is_some_and(|t| t.auto)));
    let outbound = cfg.endpoints.iter().filter(|la| la.cluster_name.starts_with("outbound|"));
    assert!(outbound.flat_map(|la| &la.endpoints).all(|e| e.mtls_ready));
    let v2 = cfg.endpoints.iter().flat_map(|la| &la.endpoints).find(|e| e.address == "10.0.0.2").unwrap();
    let workload = v2.workload.as_deref().unwrap();
    assert_eq!(
        (workload.name.as_str(), workload.canonical_service.as_str(), workload.canonical_revision.as_str()),
        ("reviews-v2", "reviews-v2", "v2"),
        "named by the registry, carried as Istio's istio.workload metadata"
    );
    assert_same(&cfg, &round_trip(&cfg, ProxyKind::Sidecar));
}

/// Auto mTLS as istiod lays it out (a `tlsMode-disabled` raw_buffer
/// match after the `tlsMode: istio` one) imports as our shorter layout
/// does; a match on anything else is refused.
#[test]
fn auto_mtls_in_istiods_layout_imports_too() {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
    use envoy_types::pb::envoy::config::core::v3::{transport_socket::ConfigType, TransportSocket};
    use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
    let cfg = reviews_sidecar();
    let set = resources(&cfg, Flavor::Envoy, true).resources;
    let ours = all::<EnvoyCluster>(&set, CLUSTER);
    let istiod: Vec<EnvoyCluster> = ours
        .iter()
        .cloned()
        .map(|mut c| {
            if !c.transport_socket_matches.is_empty() {
                c.transport_socket_matches.push(TransportSocketMatch {
                    name: "tlsMode-disabled".into(),
                    r#match: Some(Struct::default()),
                    transport_socket: Some(TransportSocket {
                        name: "envoy.transport_sockets.raw_buffer".into(),
                        config_type: Some(ConfigType::TypedConfig(crate::envoy::any(&RawBuffer::default()))),
                    }),
                });
            }
            c
        })
        .collect();
    assert!(istiod.iter().any(|c| c.transport_socket_matches.len() == 2), "the mesh has auto mTLS clusters");
    let import =
        |clusters: &[EnvoyCluster]| proxy_config(ProxyKind::Sidecar, &[], &[], clusters, &[]).map(|c| c.clusters);
    assert_eq!(import(&istiod).unwrap(), import(&ours).unwrap());

    let mut foreign = istiod.into_iter().find(|c| c.transport_socket_matches.len() == 2).unwrap();
    foreign.transport_socket_matches[1].r#match =
        Some(Struct { fields: [("zone".to_string(), Value { kind: Some(Kind::StringValue("a".into())) })].into() });
    let e = import(&[foreign]).unwrap_err();
    assert_eq!(e.field, "transport_socket_matches", "{e}");
}

#[test]
fn tls_mesh_proxy_cannot_enforce_is_refused() {
    use envoy_types::pb::envoy::config::core::v3::{transport_socket::ConfigType, TransportSocket};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        CommonTlsContext, SdsSecretConfig, UpstreamTlsContext,
    };
    let context = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![SdsSecretConfig { name: "spiffe-other".into(), sds_config: None }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let cluster = EnvoyCluster {
        name: "c1".into(),
        transport_socket: Some(TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(ConfigType::TypedConfig(crate::envoy::any(&context))),
        }),
        ..Default::default()
    };
    let e = proxy_config(ProxyKind::Sidecar, &[], &[], &[cluster], &[]).unwrap_err();
    assert_eq!((e.kind, e.name.as_str(), e.field.as_str()), ("Cluster", "c1", "transport_socket"));
    assert!(e.message.contains("spiffe-other"), "{e}");
}

#[test]
fn refusals_name_the_resource_and_field() {
    let listener = EnvoyListener { name: "l1".into(), ..Default::default() };
    let e = proxy_config(ProxyKind::Sidecar, &[listener], &[], &[], &[]).unwrap_err();
    assert_eq!(e.to_string(), "Listener \"l1\": address: a socket address with a port value is required");
    let cluster = EnvoyCluster { name: "c1".into(), lb_policy: 99, ..Default::default() };
    let e = proxy_config(ProxyKind::Sidecar, &[], &[], &[cluster], &[]).unwrap_err();
    assert_eq!((e.kind, e.name.as_str(), e.field.as_str()), ("Cluster", "c1", "lb_policy"));
}

/// A virtual host's retry policy is its forwarding routes' unless they
/// have their own; what else a host could set for all its routes is
/// refused rather than left unapplied.
#[test]
fn a_virtual_hosts_retry_policy_reaches_its_routes_and_its_other_settings_are_refused() {
    use envoy_types::pb::envoy::config::route::v3::{route::Action, RetryPolicy as EnvoyRetry, VirtualHost};
    let set = resources(&reviews_sidecar(), Flavor::Envoy, true).resources;
    let mut rc = all::<RouteConfiguration>(&set, ROUTE).into_iter().next().expect("a route table");
    let host_retry = EnvoyRetry { retry_on: "reset".into(), ..Default::default() };
    let vh: &mut VirtualHost = &mut rc.virtual_hosts[0];
    vh.retry_policy = Some(host_retry);
    let Some(Action::Route(first)) = &mut vh.routes[0].action else { panic!("a forwarding route") };
    first.retry_policy = Some(EnvoyRetry { retry_on: "5xx".into(), ..Default::default() });
    for r in &mut vh.routes[1..] {
        if let Some(Action::Route(a)) = &mut r.action {
            a.retry_policy = None;
        }
    }
    let imported = route_config(&rc).unwrap().config;
    let retry_on: Vec<String> = imported.virtual_hosts[0]
        .routes
        .iter()
        .map(|r| format!("{:?}", r.retry.as_ref().map(|p| p.retry_on)))
        .collect();
    assert_ne!(retry_on[0], retry_on[1], "the first route keeps its own: {retry_on:?}");
    assert!(retry_on[1..].iter().all(|r| *r == retry_on[1] && r != "None"), "the host's for the rest: {retry_on:?}");

    rc.virtual_hosts[0].request_headers_to_remove = vec!["x-secret".into()];
    let e = route_config(&rc).unwrap_err();
    assert_eq!(e.field, "virtual_hosts[0].request_headers_to_remove", "{e}");
}

/// AuthorizationPolicy arrives as Envoy's RBAC filters and local rate
/// limits as its local_ratelimit filter; both are imported as such, on
/// every inbound chain. What mesh-proxy cannot take over xDS is refused,
/// not run without: JWT authentication (and so RBAC on its payload),
/// claim routes.
#[test]
fn rbac_and_rate_limits_are_imported_and_filters_mesh_proxy_does_not_take_are_refused() {
    let mut cfg = reviews_sidecar();
    let policy = mesh_core::config::Resource::from_yaml(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny, namespace: default}\nspec:\n  action: DENY\n  rules: [{to: [{operation: {paths: [/admin]}}]}]\n",
    )
    .unwrap();
    let mesh_core::config::Spec::AuthorizationPolicy(policy) = policy.spec else { panic!("a policy") };
    cfg.authorization.push(mesh_core::proxy_config::AuthorizationPolicyRef {
        namespace: "default".into(),
        name: "deny".into(),
        policy,
    });
    let set = resources(&cfg, Flavor::Envoy, true).resources;
    let imported = proxy_config(ProxyKind::Sidecar, &all::<EnvoyListener>(&set, LISTENER), &[], &[], &[]).unwrap();
    let inbound = imported.listeners.iter().find(|l| l.name == "virtualInbound").expect("virtualInbound");
    let chains: Vec<_> = inbound.filter_chains.iter().filter(|c| c.destination_port.is_some()).collect();
    assert!(!chains.is_empty());
    for chain in chains {
        let [filter] = chain.rbac.as_slice() else { panic!("one RBAC filter on {chain:?}") };
        assert_eq!(filter.action, mesh_core::rbac::RbacAction::Deny);
        let names: Vec<&str> = filter.policies.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["ns[default]-policy[deny]-rule[0]"]);
    }
    assert!(imported.authorization.is_empty(), "enforced from the chains' RBAC, not Istio's policies");

    // A local rate limit: a bucket on each inbound chain.
    let mut cfg = reviews_sidecar();
    let limit = mesh_core::rate_limit::LocalRateLimit {
        max_tokens: 5,
        tokens_per_fill: 2,
        fill_interval: std::time::Duration::from_secs(10),
        context: "SIDECAR_INBOUND".into(),
        response_headers: vec![("x-limited".into(), "yes".into())],
    };
    cfg.local_rate_limits = vec![limit.clone()];
    let set = resources(&cfg, Flavor::Envoy, true).resources;
    let imported = proxy_config(ProxyKind::Sidecar, &all::<EnvoyListener>(&set, LISTENER), &[], &[], &[]).unwrap();
    let inbound = imported.listeners.iter().find(|l| l.name == "virtualInbound").expect("virtualInbound");
    for chain in inbound.filter_chains.iter().filter(|c| matches!(c.action, ChainAction::Http { .. })) {
        let expected = mesh_core::rate_limit::LocalRateLimit { context: "ANY".into(), ..limit.clone() };
        assert_eq!(chain.local_rate_limits, [expected]);
    }

    let mut cfg = reviews_sidecar();
    let rule =
        serde_json::from_value(serde_json::json!({"issuer": "https://issuer", "jwks": "{\"keys\": []}"})).unwrap();
    let provider = mesh_core::jwt::JwtProvider::from_rule("default/jwt", &rule);
    cfg.request_authentication.push(provider.clone());
    let policy = mesh_core::config::Resource::from_yaml(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: jwt, namespace: default}\nspec:\n  rules: [{from: [{source: {requestPrincipals: [\"https://issuer/*\"]}}]}]\n",
    )
    .unwrap();
    let mesh_core::config::Spec::AuthorizationPolicy(policy) = policy.spec else { panic!("a policy") };
    cfg.authorization = vec![mesh_core::proxy_config::AuthorizationPolicyRef {
        namespace: "default".into(),
        name: "jwt".into(),
        policy,
    }];
    let set = resources(&cfg, Flavor::Envoy, true).resources;
    let imported = proxy_config(ProxyKind::Sidecar, &all::<EnvoyListener>(&set, LISTENER), &[], &[], &[]).unwrap();
    // The provider, named by its place in the filter (its origin is not sent).
    let expected = mesh_core::jwt::JwtProvider { origin: "origins-0".into(), ..provider };
    assert_eq!(imported.request_authentication, std::slice::from_ref(&expected));
    let inbound = imported.listeners.iter().find(|l| l.name == "virtualInbound").expect("virtualInbound");
    let http = inbound.filter_chains.iter().find(|c| matches!(c.action, ChainAction::Http { .. })).expect("HTTP");
    let principals = format!("{:?}", http.rbac[0].policies[0].principals);
    assert!(principals.contains("JwtClaim") && principals.contains("\"iss\""), "{principals}");

    // mesh-proxy has one set of providers: another listener with others is
    // refused, not left unchecked.
    let mut listeners = imported.listeners.clone();
    let mut other = listeners[0].clone();
    other.name = "other".into();
    let mut elsewhere = expected.clone();
    elsewhere.issuer = "https://elsewhere".into();
    for c in &mut other.filter_chains {
        c.request_authentication = vec![elsewhere.clone()];
    }
    assert_eq!(jwt_alike(&listeners), Ok(()));
    listeners.push(other);
    let e = jwt_alike(&listeners).unwrap_err();
    assert_eq!((e.kind, e.name.as_str(), e.field.as_str()), ("Listener", "other", "filter_chains"), "{e}");
}
