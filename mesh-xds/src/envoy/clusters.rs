//! CDS: one Envoy `Cluster` per mesh-core cluster.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers::{thresholds::RetryBudget, Thresholds},
    cluster::{
        ClusterDiscoveryType, CommonLbConfig, DiscoveryType as EnvoyDiscovery, EdsClusterConfig, LbConfig,
        LbPolicy as EnvoyLb, LeastRequestLbConfig, MaglevLbConfig, RingHashLbConfig,
    },
    CircuitBreakers, Cluster as EnvoyCluster, OutlierDetection,
};
use envoy_types::pb::envoy::config::core::v3::{
    socket_address::PortSpecifier, BindConfig, Http1ProtocolOptions, Http2ProtocolOptions,
    HttpProtocolOptions as CommonHttpOptions, Metadata, SocketAddress,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options::{explicit_http_config::ProtocolConfig, ExplicitHttpConfig, UpstreamProtocolOptions},
    HttpProtocolOptions,
};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};
use mesh_core::model::Protocol;
use mesh_core::proxy_config::{
    ChainAction, Cluster, DiscoveryType, LbPolicy, OutlierDetectionConfig, ProxyConfig, UpstreamTls,
};
use mesh_core::translate::{BLACKHOLE, INBOUND_PASSTHROUGH, OUTBOUND_PASSTHROUGH};

use super::endpoints::{text, ISTIO, TLS_MODE};

/// `istio` cluster metadata: the services a cluster is for.
pub(crate) const SERVICES: &str = "services";
use super::{ads, any, duration, endpoints, uint32, Flavor};

pub(super) fn cluster(c: &Cluster, cfg: &ProxyConfig, flavor: Flavor, auto_mtls: bool) -> EnvoyCluster {
    let mut out = EnvoyCluster {
        name: c.name.clone(),
        connect_timeout: Some(duration(c.connect_timeout)),
        circuit_breakers: Some(circuit_breakers(c)),
        outlier_detection: c.outlier_detection.as_ref().map(outlier_detection),
        typed_extension_protocol_options: protocol_options(c),
        ..Default::default()
    };
    transport(&mut out, c.tls.as_ref(), flavor, auto_mtls);
    out.metadata = inbound_service(c);
    let discovery = match c.discovery {
        DiscoveryType::Eds => {
            out.eds_cluster_config = Some(EdsClusterConfig { eds_config: Some(ads()), service_name: String::new() });
            EnvoyDiscovery::Eds
        }
        DiscoveryType::Dns => EnvoyDiscovery::StrictDns,
        DiscoveryType::Static => EnvoyDiscovery::Static,
        DiscoveryType::OriginalDst => EnvoyDiscovery::OriginalDst,
    };
    out.cluster_discovery_type = Some(ClusterDiscoveryType::Type(discovery as i32));
    if matches!(c.discovery, DiscoveryType::Dns | DiscoveryType::Static) {
        out.load_assignment = cfg.load_assignment(&c.name).map(endpoints::load_assignment);
    }
    let (policy, config) = match &lb_policy(&c.lb, flavor) {
        LbPolicy::RoundRobin => (EnvoyLb::RoundRobin, None),
        LbPolicy::Random => (EnvoyLb::Random, None),
        LbPolicy::LeastRequest { choice_count } => (
            EnvoyLb::LeastRequest,
            Some(LbConfig::LeastRequestLbConfig(LeastRequestLbConfig {
                choice_count: uint32(*choice_count),
                ..Default::default()
            })),
        ),
        LbPolicy::RingHash { minimum_ring_size, .. } => (
            EnvoyLb::RingHash,
            Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
                minimum_ring_size: Some(envoy_types::pb::google::protobuf::UInt64Value { value: *minimum_ring_size }),
                ..Default::default()
            })),
        ),
        LbPolicy::Maglev { table_size, .. } => (
            EnvoyLb::Maglev,
            Some(LbConfig::MaglevLbConfig(MaglevLbConfig {
                table_size: Some(envoy_types::pb::google::protobuf::UInt64Value { value: *table_size }),
            })),
        ),
        LbPolicy::Passthrough => (EnvoyLb::ClusterProvided, None),
    };
    out.lb_policy = policy as i32;
    out.lb_config = config;
    if let Some(od) = &c.outlier_detection {
        out.common_lb_config = Some(CommonLbConfig {
            healthy_panic_threshold: Some(Percent { value: od.min_health_percent as f64 }),
            ..Default::default()
        });
    }
    out
}

/// gRPC's xDS client balances only by round robin and ring hash (it
/// rejects the rest): least request and random become round robin, Maglev
/// becomes ring hash on the same key, as Istio's gRPC generator does.
fn lb_policy(lb: &LbPolicy, flavor: Flavor) -> LbPolicy {
    match (flavor, lb) {
        (Flavor::ProxylessGrpc, LbPolicy::LeastRequest { .. } | LbPolicy::Random) => LbPolicy::RoundRobin,
        (Flavor::ProxylessGrpc, LbPolicy::Maglev { hash, .. }) => {
            LbPolicy::RingHash { minimum_ring_size: 1024, hash: hash.clone() }
        }
        _ => lb.clone(),
    }
}

fn circuit_breakers(c: &Cluster) -> CircuitBreakers {
    let t = c.circuit_breakers;
    CircuitBreakers {
        thresholds: vec![Thresholds {
            max_connections: uint32(t.max_connections),
            max_pending_requests: uint32(t.max_pending_requests),
            max_requests: uint32(t.max_requests),
            max_retries: uint32(t.max_retries),
            retry_budget: c.retry_budget.as_ref().map(|b| RetryBudget {
                budget_percent: Some(Percent { value: b.percent }),
                min_retry_concurrency: uint32(b.min_retry_concurrency),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Istio's clusters for the sidecar chains that name them:
/// `PassthroughCluster` (outbound, on to what the mesh does not know),
/// `InboundPassthroughClusterIpv4` (inbound, on to a port no Service
/// declares; from 127.0.0.6, which iptables lets reach the app instead of
/// capturing it again) and `BlackHoleCluster` (REGISTRY_ONLY: no
/// endpoints, so the connection is closed).
pub(super) fn passthrough_clusters(cfg: &ProxyConfig) -> Vec<EnvoyCluster> {
    let named =
        |name: &str| {
            cfg.listeners.iter().flat_map(|l| &l.filter_chains).any(
                |c| matches!(&c.action, ChainAction::Tcp { clusters } if clusters.iter().any(|w| w.cluster == name)),
            ) && cfg.cluster(name).is_none()
        };
    let inbound_source = BindConfig {
        source_address: Some(SocketAddress {
            address: "127.0.0.6".into(),
            port_specifier: Some(PortSpecifier::PortValue(0)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let original_destination = |bind: Option<BindConfig>| EnvoyCluster {
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(EnvoyDiscovery::OriginalDst as i32)),
        lb_policy: EnvoyLb::ClusterProvided as i32,
        // Istio lifts Envoy's default limits (1,024) off passthrough.
        circuit_breakers: Some(CircuitBreakers {
            thresholds: vec![Thresholds {
                max_connections: uint32(u32::MAX),
                max_pending_requests: uint32(u32::MAX),
                max_requests: uint32(u32::MAX),
                max_retries: uint32(u32::MAX),
                ..Default::default()
            }],
            ..Default::default()
        }),
        upstream_bind_config: bind,
        ..Default::default()
    };
    let blackhole = EnvoyCluster {
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(EnvoyDiscovery::Static as i32)),
        ..Default::default()
    };
    [
        (OUTBOUND_PASSTHROUGH, original_destination(None)),
        (INBOUND_PASSTHROUGH, original_destination(Some(inbound_source))),
        (BLACKHOLE, blackhole),
    ]
    .into_iter()
    .filter(|(name, _)| named(name))
    .map(|(name, cluster)| EnvoyCluster {
        name: name.into(),
        connect_timeout: Some(duration(PASSTHROUGH_CONNECT_TIMEOUT)),
        ..cluster
    })
    .collect()
}

/// Istio's mesh default `connectTimeout`.
const PASSTHROUGH_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Istio's mapping: a threshold that is set is enforced at 100%; one that
/// is not is switched off rather than left at Envoy's default.
fn outlier_detection(od: &OutlierDetectionConfig) -> OutlierDetection {
    let enforce = |v: Option<u32>| uint32(if v.is_some() { 100 } else { 0 });
    OutlierDetection {
        consecutive_5xx: od.consecutive_5xx.and_then(uint32),
        enforcing_consecutive_5xx: enforce(od.consecutive_5xx),
        consecutive_gateway_failure: od.consecutive_gateway_errors.and_then(uint32),
        enforcing_consecutive_gateway_failure: enforce(od.consecutive_gateway_errors),
        consecutive_local_origin_failure: od.consecutive_local_origin_failures.and_then(uint32),
        enforcing_consecutive_local_origin_failure: enforce(od.consecutive_local_origin_failures),
        split_external_local_origin_errors: od.split_external_local_origin_errors,
        interval: Some(duration(od.interval)),
        base_ejection_time: Some(duration(od.base_ejection_time)),
        max_ejection_time: Some(duration(od.max_ejection_time)),
        max_ejection_percent: uint32(od.max_ejection_percent),
        ..Default::default()
    }
}

/// The service an inbound cluster serves, as Istio's `istio.services`
/// cluster metadata (an outbound cluster's name says it already).
fn inbound_service(c: &Cluster) -> Option<Metadata> {
    if !c.name.starts_with("inbound|") || c.service.is_empty() {
        return None;
    }
    let mut service = Struct::default();
    service.fields.insert("host".into(), text(&c.service));
    let mut parts = c.service.splitn(3, '.');
    if let (Some(name), Some(namespace)) = (parts.next(), parts.next()) {
        service.fields.insert("name".into(), text(name));
        service.fields.insert("namespace".into(), text(namespace));
    }
    let services = Value {
        kind: Some(Kind::ListValue(ListValue { values: vec![Value { kind: Some(Kind::StructValue(service)) }] })),
    };
    let istio = Struct { fields: [(SERVICES.to_string(), services)].into() };
    Some(Metadata { filter_metadata: [(ISTIO.to_string(), istio)].into(), ..Default::default() })
}

/// HTTP/2 toward gRPC and HTTP/2 ports, pool limits for every HTTP cluster.
fn protocol_options(c: &Cluster) -> HashMap<String, envoy_types::pb::google::protobuf::Any> {
    let upstream = match c.protocol {
        Protocol::Http2 | Protocol::Grpc => ProtocolConfig::Http2ProtocolOptions(Http2ProtocolOptions::default()),
        Protocol::Http => ProtocolConfig::HttpProtocolOptions(Http1ProtocolOptions::default()),
        _ => return HashMap::new(),
    };
    let options = HttpProtocolOptions {
        common_http_protocol_options: Some(CommonHttpOptions {
            idle_timeout: c.idle_timeout.map(duration),
            max_requests_per_connection: c.max_requests_per_connection.and_then(uint32),
            ..Default::default()
        }),
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(upstream),
        })),
        ..Default::default()
    };
    HashMap::from([("envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(), any(&options))])
}

/// The cluster's TLS. Auto mTLS (no DestinationRule `tls`) is per
/// endpoint, as Istio does it: endpoints labelled `tlsMode: istio` match
/// the mTLS socket, the rest plaintext; only for Envoy nodes sent their
/// certificate over SDS (`auto_mtls`). Proxyless gRPC takes certificates
/// from its own providers, not SDS: auto mTLS is left out for it (the
/// translation report says so), ISTIO_MUTUAL names its provider instances
/// as Istio does, and other TLS a DestinationRule asks for is sent as for
/// Envoy, which its xDS credentials refuse rather than connect in
/// plaintext.
fn transport(out: &mut EnvoyCluster, tls: Option<&UpstreamTls>, flavor: Flavor, auto_mtls: bool) {
    let Some(tls) = tls.filter(|t| auto_mtls || !t.auto) else { return };
    let Some(socket) = super::tls::upstream(tls, flavor) else { return };
    if !tls.auto {
        out.transport_socket = Some(socket);
        return;
    }
    // An endpoint without the label matches nothing and takes the
    // cluster's own socket: none, so plaintext. Istio spells that out as a
    // second, `tlsMode-disabled` match of raw_buffer; left out, it saves
    // 150 bytes a cluster, a fifth of an auto mTLS cluster on the wire.
    let istio = Struct { fields: [(TLS_MODE.to_string(), text(ISTIO))].into() };
    out.transport_socket_matches = vec![TransportSocketMatch {
        name: "tlsMode-istio".into(),
        r#match: Some(istio),
        transport_socket: Some(socket),
    }];
}
