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
    let set = resources(cfg, Flavor::Envoy);
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
/// Istio mTLS (auto mTLS and ISTIO_MUTUAL chains wait for SDS), gRPC-ness
/// of a port (HTTP/2 on the wire either way), and the config's order.
fn comparable(mut cfg: ProxyConfig) -> ProxyConfig {
    cfg.version.clear();
    cfg.authorization.clear();
    cfg.local_rate_limits.clear();
    cfg.listeners.sort_by(|a, b| a.name.cmp(&b.name));
    for c in &mut cfg.clusters {
        c.tls = c.tls.take().filter(|t| !t.auto);
    }
    for la in &mut cfg.endpoints {
        for e in &mut la.endpoints {
            e.mtls_ready = false;
        }
    }
    for l in &mut cfg.listeners {
        l.filter_chains.retain(|c| c.tls.as_ref().is_none_or(|t| t.mode != "ISTIO_MUTUAL"));
        for c in &mut l.filter_chains {
            if let ChainAction::Http { protocol, .. } = &mut c.action {
                *protocol = Protocol::Http;
            }
        }
    }
    cfg.route_configs.sort_by(|a, b| a.name.cmp(&b.name));
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

#[test]
fn refusals_name_the_resource_and_field() {
    let listener = EnvoyListener { name: "l1".into(), ..Default::default() };
    let e = proxy_config(ProxyKind::Sidecar, &[listener], &[], &[], &[]).unwrap_err();
    assert_eq!(e.to_string(), "Listener \"l1\": address: a socket address with a port value is required");
    let cluster = EnvoyCluster { name: "c1".into(), lb_policy: 99, ..Default::default() };
    let e = proxy_config(ProxyKind::Sidecar, &[], &[], &[cluster], &[]).unwrap_err();
    assert_eq!((e.kind, e.name.as_str(), e.field.as_str()), ("Cluster", "c1", "lb_policy"));
}
