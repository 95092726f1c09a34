//! EDS: endpoints grouped by locality failover priority and locality, with
//! health and weight.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{
    address::Address as AddressKind, socket_address::PortSpecifier, Address, HealthStatus, Locality as EnvoyLocality,
    Metadata, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment as EnvoyLoadAssignment, Endpoint, LbEndpoint as EnvoyLbEndpoint,
    LocalityLbEndpoints,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use mesh_core::model::{Health, Locality};
use mesh_core::proxy_config::{ClusterLoadAssignment, LbEndpoint};

use super::uint32;

pub(super) fn load_assignment(la: &ClusterLoadAssignment) -> EnvoyLoadAssignment {
    let mut by_locality: BTreeMap<(u32, &Locality), Vec<&LbEndpoint>> = BTreeMap::new();
    for e in &la.endpoints {
        by_locality.entry((e.priority, &e.locality)).or_default().push(e);
    }
    EnvoyLoadAssignment {
        cluster_name: la.cluster_name.clone(),
        endpoints: by_locality
            .into_iter()
            .map(|((priority, locality), eps)| LocalityLbEndpoints {
                priority,
                locality: Some(EnvoyLocality {
                    region: locality.region.clone(),
                    zone: locality.zone.clone(),
                    sub_zone: locality.subzone.clone(),
                }),
                load_balancing_weight: uint32(eps.iter().map(|e| e.weight.max(1)).sum()),
                lb_endpoints: eps.into_iter().map(lb_endpoint).collect(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Where Envoy's `transport_socket_matches` look, and what auto mTLS
/// matches: Istio's `security.istio.io/tlsMode` label as endpoint metadata.
const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";
pub(super) const TLS_MODE: &str = "tlsMode";
pub(super) const ISTIO: &str = "istio";
/// `istio` endpoint metadata: `name;namespace;canonical service;revision;cluster`.
pub(crate) const WORKLOAD: &str = "workload";

pub(super) fn text(s: &str) -> Value {
    Value { kind: Some(Kind::StringValue(s.to_string())) }
}

fn lb_endpoint(e: &LbEndpoint) -> EnvoyLbEndpoint {
    let mut filter_metadata = std::collections::HashMap::new();
    if e.mtls_ready {
        let tls_mode = Struct { fields: [(TLS_MODE.to_string(), text(ISTIO))].into() };
        filter_metadata.insert(TRANSPORT_SOCKET_MATCH.to_string(), tls_mode);
    }
    if let Some(w) = &e.workload {
        // Istio's stats filter names the client's destination from this.
        let workload = Struct { fields: [(WORKLOAD.to_string(), text(&w.endpoint_encoding()))].into() };
        filter_metadata.insert(ISTIO.to_string(), workload);
    }
    let metadata = (!filter_metadata.is_empty()).then(|| Metadata { filter_metadata, ..Default::default() });
    EnvoyLbEndpoint {
        metadata,
        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
            address: Some(socket_address(&e.address, e.port)),
            ..Default::default()
        })),
        health_status: match e.health {
            Health::Healthy => HealthStatus::Healthy,
            Health::Unhealthy => HealthStatus::Unhealthy,
            Health::Draining => HealthStatus::Draining,
        } as i32,
        load_balancing_weight: uint32(e.weight.max(1)),
    }
}

pub(super) fn socket_address(address: &str, port: u16) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: address.to_string(),
            port_specifier: Some(PortSpecifier::PortValue(port as u32)),
            ..Default::default()
        })),
    }
}
