//! Envoy v3 resources back into mesh-core's [`ProxyConfig`]: how
//! mesh-proxy consumes xDS. The inverse of [`crate::envoy`] for everything
//! that module emits, so a config survives the trip (security included:
//! RBAC, JWT and local rate limit filters); what mesh-proxy cannot
//! execute, an HTTP filter it does not know included, is refused with an
//! error naming the resource and field (the client NACKs it).

mod clusters;
mod endpoints;
mod jwt;
mod listeners;
mod rbac;
mod routes;
mod tls;

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as EnvoyCluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment as EnvoyLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener as EnvoyListener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use mesh_core::proxy_config::{Cluster, ClusterLoadAssignment, HashPolicy, LbPolicy, Listener, RouteConfig};
use mesh_core::translate::{version_of, ProxyKind};
use mesh_core::ProxyConfig;
use prost::Message;

pub use clusters::cluster;
pub use endpoints::load_assignment;
pub use listeners::listener;
pub use routes::route_config;

/// A resource mesh-proxy cannot use, located.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name:?}: {field}: {message}")]
pub struct ImportError {
    pub kind: &'static str,
    pub name: String,
    pub field: String,
    pub message: String,
}

impl ImportError {
    pub fn new(kind: &'static str, name: &str, field: impl Into<String>, message: impl Into<String>) -> ImportError {
        ImportError { kind, name: name.to_string(), field: field.into(), message: message.into() }
    }
}

/// A route table as imported, with the hash policies its routes carry:
/// Envoy hashes on the route, mesh-core on the cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportedRoutes {
    pub config: std::sync::Arc<RouteConfig>,
    pub hash_by_cluster: BTreeMap<String, HashPolicy>,
}

/// Decode an `Any` of the expected message type.
pub fn decode<M: Message + Default + prost::Name>(any: &Any, kind: &'static str) -> Result<M, ImportError> {
    if any.type_url != M::type_url() {
        return Err(ImportError::new(kind, "?", "@type", format!("expected {}, got {}", M::type_url(), any.type_url)));
    }
    M::decode(any.value.as_slice()).map_err(|e| ImportError::new(kind, "?", "value", e.to_string()))
}

/// mesh-proxy checks tokens once per proxy, with the JWT providers of the
/// first chain that has any (istiod writes the same on every inbound and
/// gateway chain): listeners carrying others are refused, naming the first.
pub fn jwt_alike<'l>(listeners: impl IntoIterator<Item = &'l Listener>) -> Result<(), ImportError> {
    let mut first: Option<(&str, &Vec<mesh_core::jwt::JwtProvider>)> = None;
    for l in listeners {
        for c in l.filter_chains.iter().filter(|c| !c.request_authentication.is_empty()) {
            match first {
                None => first = Some((&l.name, &c.request_authentication)),
                Some((name, providers)) if *providers != c.request_authentication => {
                    let message = format!("JWT providers differing from listener {name}'s: mesh-proxy has one set");
                    return Err(ImportError::new("Listener", &l.name, "filter_chains", message));
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

/// Put the pieces together. Clusters hashed by ring hash or Maglev take
/// the hash policy of the routes that send to them.
pub fn assemble(
    listeners: Vec<Listener>,
    routes: Vec<ImportedRoutes>,
    mut clusters: Vec<Cluster>,
    endpoints: Vec<ClusterLoadAssignment>,
) -> ProxyConfig {
    let hashes: BTreeMap<&String, &HashPolicy> = routes.iter().flat_map(|r| &r.hash_by_cluster).collect();
    for c in &mut clusters {
        if let (LbPolicy::RingHash { hash, .. } | LbPolicy::Maglev { hash, .. }, Some(h)) =
            (&mut c.lb, hashes.get(&c.name))
        {
            *hash = (*h).clone();
        }
    }
    // Tokens are checked once per proxy: the JWT filter of the first chain
    // that has one (istiod's is the same on every inbound and gateway chain).
    let request_authentication = listeners
        .iter()
        .flat_map(|l| &l.filter_chains)
        .find(|c| !c.request_authentication.is_empty())
        .map(|c| c.request_authentication.clone())
        .unwrap_or_default();
    let mut cfg = ProxyConfig {
        version: String::new(),
        listeners,
        route_configs: routes.into_iter().map(|r| r.config).collect(),
        clusters,
        endpoints,
        authorization: Vec::new(),
        request_authentication,
        local_rate_limits: Vec::new(),
        // Envoy's tracing and access log settings are not imported yet.
        telemetry: Default::default(),
    };
    cfg.version = version_of(&cfg);
    cfg
}

/// Every resource type at once (for tests and one-shot use).
pub fn proxy_config(
    kind: ProxyKind,
    listeners: &[EnvoyListener],
    routes: &[RouteConfiguration],
    clusters: &[EnvoyCluster],
    endpoints: &[EnvoyLoadAssignment],
) -> Result<ProxyConfig, ImportError> {
    let listeners = listeners.iter().map(|l| listener(l, kind)).collect::<Result<Vec<_>, _>>()?;
    jwt_alike(&listeners)?;
    let routes = routes.iter().map(route_config).collect::<Result<Vec<_>, _>>()?;
    let clusters = clusters.iter().map(cluster).collect::<Result<Vec<_>, _>>()?;
    let mut assignments = endpoints.iter().map(load_assignment).collect::<Result<Vec<_>, _>>()?;
    assignments.extend(clusters.iter().filter_map(|c| c.1.clone()));
    Ok(assemble(listeners, routes, clusters.into_iter().map(|c| c.0).collect(), assignments))
}

/// The path of a file data source (inline data is not carried back).
fn file(source: Option<&envoy_types::pb::envoy::config::core::v3::DataSource>) -> Option<String> {
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
    match source?.specifier.as_ref()? {
        Specifier::Filename(f) => Some(f.clone()),
        _ => None,
    }
}

fn duration(d: &PbDuration) -> std::time::Duration {
    std::time::Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
}

#[cfg(test)]
mod tests;
