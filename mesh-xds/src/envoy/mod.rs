//! mesh-core's [`ProxyConfig`] as Envoy v3 resources: what Envoy (and
//! gRPC's xDS client) must be sent for it to route as the Istio config says.
//!
//! One module per resource type; each is a pure function of the config.
//! What Envoy has no field for is left out and listed in the crate docs.

mod clusters;
mod endpoints;
pub mod jwt;
mod listeners;
mod rbac;
mod routes;
mod telemetry;
mod tls;

use envoy_types::pb::envoy::config::core::v3::{
    config_source::ConfigSourceSpecifier, AggregatedConfigSource, ApiVersion, ConfigSource,
};
use envoy_types::pb::envoy::r#type::v3::{fractional_percent::DenominatorType, FractionalPercent};
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration as PbDuration, UInt32Value};
use mesh_core::ProxyConfig;
use prost::{Message, Name};

use crate::resources::{Resource, ResourceSet, CLUSTER, ENDPOINT, LISTENER, ROUTE};

/// Who consumes the resources: Envoy, or a proxyless gRPC client, which
/// looks up listeners by `host:port` and expects them to carry an
/// `api_listener` instead of sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Flavor {
    Envoy,
    ProxylessGrpc,
}

/// One proxy's config as Envoy resources, and what of it they cannot
/// express.
#[derive(Debug, Default)]
pub struct Translated {
    pub resources: ResourceSet,
    /// Each thing left out or narrowed, naming the resource and why.
    pub unsupported: Vec<String>,
    /// The credentials the resources refer to over SDS.
    pub credentials: std::collections::BTreeSet<crate::sds::SecretRef>,
}

/// All resources of one proxy's config, by type. `has_certificate`: the
/// node can do Istio mTLS (see [`crate::node::NodeInfo`]); one that cannot
/// gets no auto mTLS (Envoy would wait for secrets that never come), so
/// plaintext where the label alone would have chosen mTLS.
pub fn resources(cfg: &ProxyConfig, flavor: Flavor, has_certificate: bool) -> Translated {
    resources_with(cfg, flavor, has_certificate, &jwt::NoJwks)
}

/// [`resources`], with the JWKS documents of RequestAuthentication's
/// `jwksUri`s the control plane fetched.
pub fn resources_with(
    cfg: &ProxyConfig,
    flavor: Flavor,
    has_certificate: bool,
    jwks: &dyn jwt::JwksLookup,
) -> Translated {
    let mut set = ResourceSet::default();
    let mut unsupported = Vec::new();
    let auto_mtls = flavor == Flavor::Envoy && has_certificate;
    for c in &cfg.clusters {
        set.insert(CLUSTER, Resource::new(c.name.clone(), &clusters::cluster(c, cfg, flavor, auto_mtls)));
    }
    for c in &cfg.clusters {
        let Some(l) = &c.locality_lb else { continue };
        if !l.distribute.is_empty() || !l.failover_priority.is_empty() {
            unsupported.push(format!("cluster {}: localityLbSetting distribute and failoverPriority are not carried (failover by locality is)", c.name));
        }
    }
    let has_auto = cfg.clusters.iter().any(|c| c.tls.as_ref().is_some_and(|t| t.auto));
    if has_auto && flavor == Flavor::Envoy && !has_certificate {
        unsupported.push("auto mTLS: this node proved no identity (the plaintext xDS port) and gets no certificate, so it is sent plaintext where auto mTLS would apply".into());
    }
    for la in &cfg.endpoints {
        // DNS and static clusters carry their endpoints inline.
        if cfg.cluster(&la.cluster_name).is_some_and(|c| c.discovery == mesh_core::proxy_config::DiscoveryType::Eds) {
            set.insert(ENDPOINT, Resource::new(la.cluster_name.clone(), &endpoints::load_assignment(la)));
        }
    }
    for rc in &cfg.route_configs {
        let encoded = routes::encoded_route_configuration(rc, cfg, flavor);
        set.insert(ROUTE, Resource::from_encoded(rc.name.clone(), ROUTE, &encoded));
    }
    match flavor {
        Flavor::Envoy => {
            for c in telemetry::collector_clusters(cfg).into_iter().chain(clusters::passthrough_clusters(cfg)) {
                set.insert(CLUSTER, Resource::new(c.name.clone(), &c));
            }
            for l in &cfg.listeners {
                if let Some(listener) = listeners::listener(l, cfg, jwks, &mut unsupported) {
                    set.insert(LISTENER, Resource::new(l.name.clone(), &listener));
                }
            }
        }
        Flavor::ProxylessGrpc => {
            for (name, l) in listeners::api_listeners(cfg) {
                set.insert(LISTENER, Resource::new(name, &l));
            }
            if has_auto {
                unsupported.push("auto mTLS: proxyless gRPC is sent plaintext where no DestinationRule asks for TLS (its certificates come from its own providers, not SDS)".into());
            }
            if !cfg.authorization.is_empty() {
                unsupported
                    .push(format!("{} AuthorizationPolicies: not sent to proxyless gRPC", cfg.authorization.len()));
            }
            let claim_routes = cfg
                .route_configs
                .iter()
                .flat_map(|rc| rc.virtual_hosts.iter().flat_map(|vh| &vh.routes))
                .filter(|r| r.matches.iter().any(|m| !m.claims.is_empty()))
                .count();
            if claim_routes > 0 {
                unsupported.push(format!("{claim_routes} routes matching JWT claims: left out for proxyless gRPC"));
            }
            if !cfg.request_authentication.is_empty() {
                unsupported.push(format!(
                    "{} RequestAuthentication rules: not sent to proxyless gRPC (it has no JWT filter)",
                    cfg.request_authentication.len()
                ));
            }
        }
    }
    if flavor == Flavor::ProxylessGrpc && !cfg.local_rate_limits.is_empty() {
        unsupported.push(format!("{} local rate limits: not sent to proxyless gRPC", cfg.local_rate_limits.len()));
    }
    // Per-listener findings (a JWT issuer's keys) come once per listener.
    let mut seen = std::collections::HashSet::new();
    unsupported.retain(|item| seen.insert(item.clone()));
    Translated { resources: set, unsupported, credentials: tls::credential_refs(cfg) }
}

/// One EDS resource: what an endpoint-only change re-encodes.
pub fn endpoint_resource(la: &mesh_core::proxy_config::ClusterLoadAssignment) -> Resource {
    Resource::new(la.cluster_name.clone(), &endpoints::load_assignment(la))
}

pub(crate) fn any<T: Message + Name>(msg: &T) -> Any {
    Any { type_url: T::type_url(), value: msg.encode_to_vec() }
}

/// A file Envoy reads itself (certificates, keys, CAs).
fn file(path: &Option<String>) -> Option<envoy_types::pb::envoy::config::core::v3::DataSource> {
    use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
    path.as_ref().map(|p| DataSource { specifier: Some(Specifier::Filename(p.clone())), ..Default::default() })
}

/// Dynamic resources come over the same ADS stream.
fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

fn duration(d: std::time::Duration) -> PbDuration {
    PbDuration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

fn uint32(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

fn boolean(value: bool) -> Option<BoolValue> {
    Some(BoolValue { value })
}

/// A percentage with Istio's precision (up to 4 decimals), as a fraction
/// of a million.
fn percent(p: f64) -> FractionalPercent {
    FractionalPercent {
        numerator: (p.clamp(0.0, 100.0) * 10_000.0).round() as u32,
        denominator: DenominatorType::Million as i32,
    }
}

#[cfg(test)]
pub(crate) mod tests;
