//! EDS: endpoints grouped by locality, with health and weight.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{
    address::Address as AddressKind, socket_address::PortSpecifier, Address, HealthStatus, Locality as EnvoyLocality,
    SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment as EnvoyLoadAssignment, Endpoint, LbEndpoint as EnvoyLbEndpoint,
    LocalityLbEndpoints,
};
use mesh_core::model::{Health, Locality};
use mesh_core::proxy_config::{ClusterLoadAssignment, LbEndpoint};

use super::uint32;

pub(super) fn load_assignment(la: &ClusterLoadAssignment) -> EnvoyLoadAssignment {
    let mut by_locality: BTreeMap<&Locality, Vec<&LbEndpoint>> = BTreeMap::new();
    for e in &la.endpoints {
        by_locality.entry(&e.locality).or_default().push(e);
    }
    EnvoyLoadAssignment {
        cluster_name: la.cluster_name.clone(),
        endpoints: by_locality
            .into_iter()
            .map(|(locality, eps)| LocalityLbEndpoints {
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

fn lb_endpoint(e: &LbEndpoint) -> EnvoyLbEndpoint {
    EnvoyLbEndpoint {
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
        ..Default::default()
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
