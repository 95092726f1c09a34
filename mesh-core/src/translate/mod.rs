//! Translation: (config snapshot, registry snapshot, proxy identity) ->
//! `ProxyConfig`, as Pilot builds the Envoy config of one proxy.
//!
//! Deterministic: every collection is walked in key order, so the same input
//! gives the same output byte for byte, and the version is a digest of it.
//!
//! Here: the entry points, names and the translator's indexes. Then, each
//! a part of the one `Translator`:
//! - `clusters`: outbound clusters under their DestinationRules, inbound ones;
//! - `sidecar`: a sidecar's listeners (capture, per HTTP port, per TCP service);
//! - `gateway`: a gateway's listeners from the Gateways selecting it;
//! - `routes`: VirtualService rules as routes and weighted clusters;
//! - `security`: authorization, request authentication, rate limits, telemetry.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::duration;
use crate::config::networking::{self as istio, DestinationRule, Gateway, TrafficPolicy, VirtualService};
use crate::config::security::AuthorizationPolicy;
use crate::config::{Kind, Resource, Spec};
use crate::mesh::MeshSnapshot;
use crate::mesh_config::{MeshConfig, OutboundMode};
use crate::model::{labels_match, Labels, Locality, Protocol, Resolution, Service, ServicePort, ServiceState};
use crate::proxy_config::*;
use crate::registry::RegistrySnapshot;
use crate::resilience::retry::RetryOn;
use crate::sidecar_scope::SidecarScope;
use crate::store::{of_kind, ConfigSnapshot};
use crate::workload::WorkloadMeta;
use crate::{mtls, peer_authentication};

mod clusters;
mod gateway;
mod routes;
mod security;
mod sidecar;

use gateway::*;
pub use routes::default_retry_policy;
use routes::*;

/// The DNS suffix of Kubernetes service names.
pub const DOMAIN_SUFFIX: &str = "cluster.local";
/// Istio's root namespace: policies there apply mesh-wide.
pub const ROOT_NAMESPACE: &str = "istio-system";
/// Envoy's default base interval for retry backoff.
const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProxyKind {
    /// Next to one workload: outbound capture and inbound to the app.
    Sidecar,
    /// A standalone ingress/egress gateway serving Gateway resources.
    Gateway,
}

/// Who the config is for: Istio's node metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyIdentity {
    pub kind: ProxyKind,
    /// The workload (pod) name, for logs and debug output.
    pub name: String,
    pub namespace: String,
    pub labels: Labels,
    /// The workload's IP, which finds the services it serves inbound.
    pub ip: Option<String>,
    /// Where the workload runs: locality failover ranks endpoints by how
    /// close they are to it.
    #[serde(default)]
    pub locality: Locality,
}

impl ProxyIdentity {
    pub fn sidecar(name: &str, namespace: &str, labels: Labels) -> ProxyIdentity {
        ProxyIdentity::new(ProxyKind::Sidecar, name, namespace, labels)
    }

    pub fn gateway(name: &str, namespace: &str, labels: Labels) -> ProxyIdentity {
        ProxyIdentity::new(ProxyKind::Gateway, name, namespace, labels)
    }

    fn new(kind: ProxyKind, name: &str, namespace: &str, labels: Labels) -> ProxyIdentity {
        let (name, namespace) = (name.into(), namespace.into());
        ProxyIdentity { kind, name, namespace, labels, ip: None, locality: Locality::default() }
    }
}

/// Istio's short-name resolution: `reviews` in namespace `default` is
/// `reviews.default.svc.cluster.local`; names with a dot are taken as given.
pub fn resolve_host(host: &str, namespace: &str) -> String {
    if host.contains('.') || host.contains('*') {
        host.to_string()
    } else {
        format!("{host}.{namespace}.svc.{DOMAIN_SUFFIX}")
    }
}

/// Does a (possibly wildcard) pattern cover a concrete host?
pub fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// Do two host patterns overlap (either covers the other)?
fn hosts_intersect(a: &str, b: &str) -> bool {
    host_matches(a, b) || host_matches(b, a)
}

/// Istio's cluster for inbound connections to ports no Service declares:
/// on to where they were going.
pub const INBOUND_PASSTHROUGH: &str = "InboundPassthroughClusterIpv4";

/// Istio's cluster for outbound connections to what the mesh does not
/// know: on to where they were going.
pub const OUTBOUND_PASSTHROUGH: &str = "PassthroughCluster";

/// Istio's cluster for connections REGISTRY_ONLY refuses: no endpoints,
/// so they are closed.
pub const BLACKHOLE: &str = "BlackHoleCluster";

/// Istio's last virtual host of a REGISTRY_ONLY sidecar's HTTP routes: a
/// host the mesh does not know is answered 502.
fn block_all() -> VirtualHost {
    let mut route = Route::forward("block_all", BLACKHOLE);
    route.action = RouteAction::DirectResponse { status: 502, body: None };
    VirtualHost { name: "block_all".into(), domains: vec!["*".into()], routes: vec![route] }
}

/// Istio's cluster name.
pub fn cluster_name(direction: &str, port: u16, subset: Option<&str>, host: &str) -> String {
    format!("{direction}|{port}|{}|{host}", subset.unwrap_or(""))
}

/// Build the config of one proxy, with Istio's default mesh settings.
pub fn translate(mesh: &MeshSnapshot, proxy: &ProxyIdentity) -> ProxyConfig {
    translate_with(mesh, proxy, default_mesh_config())
}

fn default_mesh_config() -> &'static MeshConfig {
    static DEFAULT: std::sync::OnceLock<MeshConfig> = std::sync::OnceLock::new();
    DEFAULT.get_or_init(MeshConfig::default)
}

/// Build the config of one proxy under the mesh settings `mesh_config`.
pub fn translate_with(mesh: &MeshSnapshot, proxy: &ProxyIdentity, mesh_config: &MeshConfig) -> ProxyConfig {
    let t = Translator::new(mesh, proxy, mesh_config);
    let (clusters, endpoints) = t.clusters();
    let mut cfg = ProxyConfig {
        version: String::new(),
        listeners: Vec::new(),
        route_configs: Vec::new(),
        clusters,
        endpoints,
        authorization: t.authorization_policies(),
        request_authentication: t.request_authentication(),
        local_rate_limits: t.local_rate_limits(),
        telemetry: t.telemetry(),
    };
    match proxy.kind {
        ProxyKind::Sidecar => t.sidecar_listeners(&mut cfg),
        ProxyKind::Gateway => t.gateway_listeners(&mut cfg),
    }
    cfg.version = digest(&cfg);
    cfg
}

/// The endpoints of one proxy's outbound clusters of these services only:
/// all an endpoint-only change needs rebuilt.
pub fn load_assignments(
    mesh: &MeshSnapshot,
    proxy: &ProxyIdentity,
    hostnames: &BTreeSet<String>,
) -> Vec<ClusterLoadAssignment> {
    Translator::new(mesh, proxy, default_mesh_config()).outbound_clusters(|h| hostnames.contains(h)).1
}

/// A digest of a config's content (its version left out).
pub fn version_of(cfg: &ProxyConfig) -> String {
    if cfg.version.is_empty() {
        return digest(cfg);
    }
    let mut unversioned = cfg.clone();
    unversioned.version.clear();
    digest(&unversioned)
}

/// The serialized config streamed through xxHash64, without building the
/// JSON text in memory.
fn digest(cfg: &ProxyConfig) -> String {
    struct HashWriter(xxhash_rust::xxh64::Xxh64);
    impl std::io::Write for HashWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut w = HashWriter(xxhash_rust::xxh64::Xxh64::new(0));
    // Plain data with string keys always serializes.
    let _ = serde_json::to_writer(&mut w, cfg);
    format!("{:016x}", w.0.digest())
}

struct Translator<'a> {
    proxy: &'a ProxyIdentity,
    mesh_config: &'a MeshConfig,
    peer_authentications: Vec<&'a Resource>,
    config: &'a ConfigSnapshot,
    /// Services this proxy may reach (after the Sidecar resource's egress).
    services: Vec<&'a ServiceState>,
    all_services: &'a RegistrySnapshot,
    /// VirtualServices in (namespace, name) order.
    virtual_services: Vec<(&'a Resource, &'a VirtualService)>,
    /// Indices into `virtual_services` by resolved host.
    vs_hosts: HostIndex<usize>,
    destination_rules: HostIndex<(&'a Resource, &'a DestinationRule)>,
    /// Where a sidecar sends what it has no listener or host for.
    outbound_mode: OutboundMode,
}

/// Items by the (resolved) host they name: exact hosts in a map, wildcard
/// patterns in a list; so a lookup per service costs no scan of all config.
struct HostIndex<T> {
    exact: std::collections::HashMap<String, Vec<T>>,
    wildcard: Vec<(String, T)>,
}

impl<T: Copy> HostIndex<T> {
    fn new() -> Self {
        HostIndex { exact: Default::default(), wildcard: Vec::new() }
    }

    fn insert(&mut self, host: String, item: T) {
        if host.contains('*') {
            self.wildcard.push((host, item));
        } else {
            self.exact.entry(host).or_default().push(item);
        }
    }

    /// Items whose host covers `host`, exact ones first.
    fn covering<'s>(&'s self, host: &str) -> impl Iterator<Item = (&'s str, T)> + 's {
        let exact =
            self.exact.get_key_value(host).into_iter().flat_map(|(k, v)| v.iter().map(move |t| (k.as_str(), *t)));
        let host = host.to_string();
        exact.chain(self.wildcard.iter().filter(move |(p, _)| host_matches(p, &host)).map(|(p, t)| (p.as_str(), *t)))
    }
}

impl<'a> Translator<'a> {
    fn new(mesh: &'a MeshSnapshot, proxy: &'a ProxyIdentity, mesh_config: &'a MeshConfig) -> Self {
        let config = &*mesh.config;
        let scope = SidecarScope::of(config, proxy, mesh_config);
        let services = mesh.services.values().filter(|s| scope.sees(&s.service)).collect();
        let virtual_services: Vec<(&Resource, &VirtualService)> = of_kind(config, Kind::VirtualService)
            .filter_map(|r| match &r.spec {
                Spec::VirtualService(vs) => Some((&**r, vs)),
                _ => None,
            })
            .collect();
        let mut vs_hosts = HostIndex::new();
        for (i, (r, vs)) in virtual_services.iter().enumerate() {
            let hosts: BTreeSet<String> = vs.hosts.iter().map(|h| resolve_host(h, &r.meta.namespace)).collect();
            for h in hosts {
                vs_hosts.insert(h, i);
            }
        }
        let mut destination_rules = HostIndex::new();
        for r in of_kind(config, Kind::DestinationRule) {
            if let Spec::DestinationRule(dr) = &r.spec {
                destination_rules.insert(resolve_host(&dr.host, &r.meta.namespace), (&**r, dr));
            }
        }
        Translator {
            proxy,
            mesh_config,
            peer_authentications: of_kind(config, Kind::PeerAuthentication).map(|r| &**r).collect(),
            config,
            services,
            all_services: &mesh.services,
            virtual_services,
            vs_hosts,
            destination_rules,
            outbound_mode: scope.outbound_mode,
        }
    }
}

/// A listener on one address and port, named as Istio names it
/// (`0.0.0.0_8080`).
fn port_listener(address: &str, port: u16, direction: TrafficDirection, filter_chains: Vec<FilterChain>) -> Listener {
    Listener {
        name: format!("{address}_{port}"),
        address: address.to_string(),
        port,
        // A sidecar's per-port listeners are reached through 15001 only.
        bind_to_port: direction == TrafficDirection::Gateway,
        direction,
        use_original_dst: false,
        filter_chains,
    }
}
