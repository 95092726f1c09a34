//! EDS (and inline load assignments) -> endpoints.

use envoy_types::pb::envoy::config::core::v3::{
    address::Address as AddressKind, socket_address::PortSpecifier, Address, HealthStatus, Metadata,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment as EnvoyLoadAssignment,
};
use envoy_types::pb::google::protobuf::value::Kind;
use mesh_core::model::{Health, Locality};
use mesh_core::proxy_config::{ClusterLoadAssignment, LbEndpoint};
use mesh_core::workload::WorkloadMeta;

use super::ImportError;

pub fn load_assignment(la: &EnvoyLoadAssignment) -> Result<ClusterLoadAssignment, ImportError> {
    let err = |field: String, msg: &str| ImportError::new("ClusterLoadAssignment", &la.cluster_name, field, msg);
    let mut endpoints = Vec::new();
    for (i, group) in la.endpoints.iter().enumerate() {
        let locality = group
            .locality
            .as_ref()
            .map(|l| Locality { region: l.region.clone(), zone: l.zone.clone(), subzone: l.sub_zone.clone() })
            .unwrap_or_default();
        for (j, e) in group.lb_endpoints.iter().enumerate() {
            let field = format!("endpoints[{i}].lb_endpoints[{j}].endpoint.address");
            let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                return Err(err(field, "only endpoints with an address are supported"));
            };
            let (address, port) = socket_address(ep.address.as_ref())
                .ok_or_else(|| err(field, "a socket address with a port value is required"))?;
            endpoints.push(LbEndpoint {
                address,
                port,
                weight: e.load_balancing_weight.as_ref().map_or(1, |w| w.value.max(1)),
                locality: locality.clone(),
                health: match HealthStatus::try_from(e.health_status).unwrap_or(HealthStatus::Unknown) {
                    HealthStatus::Unhealthy | HealthStatus::Timeout => Health::Unhealthy,
                    HealthStatus::Draining => Health::Draining,
                    _ => Health::Healthy,
                },
                mtls_ready: tls_mode_istio(e.metadata.as_ref()),
                priority: group.priority,
                workload: workload(e.metadata.as_ref()),
            });
        }
    }
    Ok(ClusterLoadAssignment { cluster_name: la.cluster_name.clone(), endpoints })
}

pub(super) fn socket_address(address: Option<&Address>) -> Option<(String, u16)> {
    let Some(AddressKind::SocketAddress(sa)) = address?.address.as_ref() else { return None };
    let Some(PortSpecifier::PortValue(port)) = sa.port_specifier else { return None };
    Some((sa.address.clone(), u16::try_from(port).ok()?))
}

/// Istio's auto mTLS mark on an endpoint: `tlsMode: istio` under
/// `envoy.transport_socket_match`.
/// Istio's `istio.workload` endpoint metadata, for the client's metrics.
fn workload(metadata: Option<&Metadata>) -> Option<std::sync::Arc<WorkloadMeta>> {
    let fields = &metadata?.filter_metadata.get("istio")?.fields;
    let Some(Kind::StringValue(text)) = fields.get("workload")?.kind.as_ref() else { return None };
    WorkloadMeta::from_endpoint_encoding(text).map(std::sync::Arc::new)
}

fn tls_mode_istio(metadata: Option<&Metadata>) -> bool {
    let Some(fields) = metadata.and_then(|m| m.filter_metadata.get("envoy.transport_socket_match")) else {
        return false;
    };
    matches!(fields.fields.get("tlsMode").and_then(|v| v.kind.as_ref()), Some(Kind::StringValue(v)) if v == "istio")
}
