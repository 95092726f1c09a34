//! Translation: (config snapshot, registry snapshot, proxy identity) ->
//! `ProxyConfig`, as Pilot builds the Envoy config of one proxy.
//!
//! Deterministic: every collection is walked in key order, so the same input
//! gives the same output byte for byte, and the version is a digest of it.

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

    // ------------------------------------------------------------ clusters

    /// The DestinationRule for a host, by Istio's precedence: the proxy's
    /// namespace, then the service's, then the root namespace; an exact host
    /// before a wildcard.
    fn destination_rule(&self, host: &str, service_ns: &str) -> Option<&'a DestinationRule> {
        let mut best: Option<(u8, u8, &'a DestinationRule)> = None;
        for (dr_host, (r, dr)) in self.destination_rules.covering(host) {
            if let Some(sel) = &dr.workload_selector {
                if r.meta.namespace != self.proxy.namespace || !labels_match(&sel.match_labels, &self.proxy.labels) {
                    continue;
                }
            }
            let ns_rank = if r.meta.namespace == self.proxy.namespace {
                0
            } else if r.meta.namespace == service_ns {
                1
            } else if r.meta.namespace == ROOT_NAMESPACE {
                2
            } else {
                3
            };
            let host_rank = u8::from(dr_host != host);
            if best.is_none_or(|(n, h, _)| (ns_rank, host_rank) < (n, h)) {
                best = Some((ns_rank, host_rank, dr));
            }
        }
        best.map(|(_, _, dr)| dr)
    }

    /// Outbound clusters and their endpoints, for the visible services
    /// `wanted` accepts.
    fn outbound_clusters(&self, wanted: impl Fn(&str) -> bool) -> (Vec<Cluster>, Vec<ClusterLoadAssignment>) {
        let mut clusters = Vec::new();
        let mut assignments = Vec::new();
        for state in self.services.iter().filter(|s| wanted(&s.service.hostname)) {
            let svc = &state.service;
            let dr = self.destination_rule(&svc.hostname, &svc.namespace);
            for port in &svc.ports {
                let base_policy = dr.and_then(|d| d.traffic_policy.as_ref());
                let mut variants: Vec<(Option<&str>, Option<&Labels>, Option<&TrafficPolicy>)> =
                    vec![(None, None, base_policy)];
                for subset in dr.map(|d| d.subsets.as_slice()).unwrap_or_default() {
                    variants.push((Some(&subset.name), Some(&subset.labels), subset.traffic_policy.as_ref()));
                }
                for (subset, labels, subset_policy) in variants {
                    let policy = effective_policy(base_policy, subset_policy.filter(|_| subset.is_some()), port.port);
                    let name = cluster_name("outbound", port.port, subset, &svc.hostname);
                    let tls = self.upstream_tls(state, port, subset, policy.tls.as_ref());
                    let cluster = build_cluster(&name, svc, port, subset, &policy, tls);
                    let failover = self.failover(&cluster).map(<[_]>::to_vec);
                    clusters.push(cluster);
                    if svc.resolution != Resolution::Passthrough {
                        let mut endpoints: Vec<LbEndpoint> = state
                            .endpoints
                            .iter()
                            .filter(|e| labels.is_none_or(|l| labels_match(l, &e.labels)))
                            .map(|e| LbEndpoint {
                                address: e.address.clone(),
                                port: e.port_for(port),
                                weight: e.weight.max(1),
                                locality: e.locality.clone(),
                                health: e.health,
                                mtls_ready: mtls::endpoint_mtls_ready(e),
                                priority: 0,
                                workload: WorkloadMeta::of_endpoint(e, &svc.namespace),
                            })
                            .collect();
                        if let Some(rules) = &failover {
                            crate::lb::locality::assign_priorities(&mut endpoints, &self.proxy.locality, rules);
                        }
                        assignments.push(ClusterLoadAssignment { cluster_name: name, endpoints });
                    }
                }
            }
        }
        (clusters, assignments)
    }

    /// The failover rules when endpoints are to be ranked by locality, as
    /// Istio ranks them: locality balancing on (the mesh default), no
    /// `distribute` or `failoverPriority`, outlier detection set (without
    /// it a dead endpoint would never fail over), and the proxy's
    /// locality known.
    fn failover<'c>(&self, cluster: &'c Cluster) -> Option<&'c [(String, String)]> {
        let setting = cluster.locality_lb.as_ref()?;
        let by_locality = setting.distribute.is_empty() && setting.failover_priority.is_empty();
        let applies = by_locality && cluster.outlier_detection.is_some() && !self.proxy.locality.region.is_empty();
        applies.then_some(setting.failover.as_slice())
    }

    /// A cluster's TLS: the DestinationRule's, or auto mTLS.
    fn upstream_tls(
        &self,
        state: &ServiceState,
        port: &ServicePort,
        subset: Option<&str>,
        rule: Option<&istio::ClientTlsSettings>,
    ) -> Option<UpstreamTls> {
        let svc = &state.service;
        let root = &self.mesh_config.root_namespace;
        let destination = mtls::Destination {
            service: svc,
            port: port.port,
            subset,
            http2: matches!(port.protocol, Protocol::Http2 | Protocol::Grpc),
            identities: mtls::service_identities(&self.mesh_config.trust_domain, svc, &state.endpoints),
            namespace_mode: peer_authentication::effective(
                root,
                &svc.namespace,
                &Labels::new(),
                &self.peer_authentications,
            )
            .mode,
        };
        mtls::upstream_tls(rule, &destination, self.mesh_config)
    }

    fn clusters(&self) -> (Vec<Cluster>, Vec<ClusterLoadAssignment>) {
        let (mut clusters, mut assignments) = self.outbound_clusters(|_| true);
        if self.proxy.kind == ProxyKind::Sidecar {
            for (port, svc) in self.inbound_ports() {
                let name = cluster_name("inbound", port.port, None, "");
                let target = port.target_port.unwrap_or(port.port);
                clusters.push(Cluster {
                    name: name.clone(),
                    // The service the port serves, for the server's metrics.
                    service: svc.hostname.clone(),
                    port: target,
                    subset: None,
                    discovery: DiscoveryType::Static,
                    protocol: port.protocol,
                    lb: LbPolicy::RoundRobin,
                    locality_lb: None,
                    connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                    circuit_breakers: CircuitBreakerThresholds::default(),
                    max_requests_per_connection: None,
                    idle_timeout: None,
                    outlier_detection: None,
                    tls: None,
                    retry_budget: None,
                });
                let mut local = crate::model::Endpoint::new("127.0.0.1");
                local.weight = 1;
                assignments.push(ClusterLoadAssignment {
                    cluster_name: name,
                    endpoints: vec![LbEndpoint {
                        address: local.address,
                        port: target,
                        weight: 1,
                        locality: Default::default(),
                        health: Default::default(),
                        mtls_ready: false,
                        priority: 0,
                        workload: None,
                    }],
                });
            }
        }
        (clusters, assignments)
    }

    /// Ports of the services this sidecar's workload serves.
    fn inbound_ports(&self) -> Vec<(ServicePort, &'a Service)> {
        let mut ports: BTreeMap<u16, (ServicePort, &'a Service)> = BTreeMap::new();
        for state in self.all_services.values() {
            let serves = state.endpoints.iter().any(|e| {
                self.proxy.ip.as_deref() == Some(e.address.as_str())
                    || (!e.labels.is_empty()
                        && state.service.namespace == self.proxy.namespace
                        && labels_match(&e.labels, &self.proxy.labels))
            });
            if serves {
                for p in &state.service.ports {
                    let e = state.endpoints.iter().find(|e| {
                        self.proxy.ip.as_deref() == Some(e.address.as_str())
                            || labels_match(&e.labels, &self.proxy.labels)
                    });
                    let target = e.map(|e| e.port_for(p)).unwrap_or(p.port);
                    ports.entry(target).or_insert_with(|| {
                        (ServicePort { target_port: Some(target), port: target, ..p.clone() }, &*state.service)
                    });
                }
            }
        }
        ports.into_values().collect()
    }

    // ------------------------------------------------------------ sidecar

    /// Where a sidecar's connections to what the mesh does not know go.
    fn unknown_destinations(&self) -> &'static str {
        match self.outbound_mode {
            OutboundMode::AllowAny => OUTBOUND_PASSTHROUGH,
            OutboundMode::RegistryOnly => BLACKHOLE,
        }
    }

    fn sidecar_listeners(&self, cfg: &mut ProxyConfig) {
        cfg.listeners.push(Listener {
            name: "virtualOutbound".into(),
            address: "0.0.0.0".into(),
            port: 15001,
            direction: TrafficDirection::Outbound,
            use_original_dst: true,
            bind_to_port: true,
            filter_chains: vec![FilterChain {
                server_names: vec![],
                destination_port: None,
                tls: None,
                action: ChainAction::Tcp { clusters: vec![WeightedCluster::only(self.unknown_destinations())] },
                rbac: Vec::new(),
                local_rate_limits: Vec::new(),
                request_authentication: Vec::new(),
            }],
        });
        // One HTTP listener and route table per HTTP port; TCP ports get a
        // TCP proxy per service.
        let mut http_ports: BTreeMap<u16, Vec<(&'a ServiceState, &'a ServicePort)>> = BTreeMap::new();
        let mut tcp_listeners: BTreeMap<(String, u16), Listener> = BTreeMap::new();
        for state in &self.services {
            for port in &state.service.ports {
                if port.protocol.is_http() || port.protocol == Protocol::Unknown {
                    http_ports.entry(port.port).or_default().push((state, port));
                } else {
                    let address = state.service.addresses.first().cloned().unwrap_or_else(|| "0.0.0.0".into());
                    let key = (address.clone(), port.port);
                    if tcp_listeners.contains_key(&key) {
                        continue;
                    }
                    let clusters = self.tcp_destinations(&state.service, port.port, None);
                    tcp_listeners.insert(
                        key,
                        port_listener(
                            &address,
                            port.port,
                            TrafficDirection::Outbound,
                            vec![FilterChain {
                                server_names: vec![],
                                destination_port: None,
                                tls: None,
                                action: ChainAction::Tcp { clusters },
                                rbac: Vec::new(),
                                local_rate_limits: Vec::new(),
                                request_authentication: Vec::new(),
                            }],
                        ),
                    );
                }
            }
        }
        for (port, services) in http_ports {
            let mut vhosts = Vec::new();
            for (state, svc_port) in services {
                let svc = &state.service;
                let routes = self
                    .routes_for_host(&svc.hostname, port, None)
                    .unwrap_or_else(|| vec![self.default_route(&svc.hostname, svc_port.port)]);
                vhosts.push(VirtualHost {
                    name: format!("{}:{}", svc.hostname, port),
                    domains: sidecar_domains(svc, port, &self.proxy.namespace),
                    routes,
                });
            }
            if self.outbound_mode == OutboundMode::RegistryOnly {
                vhosts.push(block_all());
            }
            let route_name = port.to_string();
            cfg.route_configs.push(Arc::new(RouteConfig { name: route_name.clone(), virtual_hosts: vhosts }));
            cfg.listeners.push(port_listener(
                "0.0.0.0",
                port,
                TrafficDirection::Outbound,
                vec![FilterChain {
                    server_names: vec![],
                    destination_port: None,
                    tls: None,
                    action: ChainAction::Http { route_config: route_name, protocol: Protocol::Http },
                    rbac: Vec::new(),
                    local_rate_limits: Vec::new(),
                    request_authentication: Vec::new(),
                }],
            ));
        }
        cfg.listeners.extend(tcp_listeners.into_values());

        // Inbound: everything arriving on 15006 goes to the local app, as
        // the workload's PeerAuthentication says (mTLS, plaintext or both).
        let peer_authentication = peer_authentication::effective(
            &self.mesh_config.root_namespace,
            &self.proxy.namespace,
            &self.proxy.labels,
            &self.peer_authentications,
        );
        let mut chains = Vec::new();
        let mut declared = std::collections::BTreeSet::new();
        for (port, _svc) in self.inbound_ports() {
            let cluster = cluster_name("inbound", port.port, None, "");
            let action = if port.protocol.is_http() || port.protocol == Protocol::Unknown {
                let name = format!("inbound|{}||", port.port);
                cfg.route_configs.push(Arc::new(RouteConfig {
                    name: name.clone(),
                    virtual_hosts: vec![VirtualHost {
                        name: format!("inbound|http|{}", port.port),
                        domains: vec!["*".into()],
                        routes: vec![Route::forward("default", &cluster)],
                    }],
                }));
                ChainAction::Http { route_config: name, protocol: port.protocol }
            } else {
                ChainAction::Tcp {
                    clusters: vec![WeightedCluster { cluster, weight: 100, headers: HeaderOps::default() }],
                }
            };
            let target = port.target_port.unwrap_or(port.port);
            declared.insert(target);
            for tls in mtls::inbound_chains(peer_authentication.mode_for_port(target), self.mesh_config) {
                chains.push(FilterChain {
                    server_names: vec![],
                    destination_port: Some(target),
                    tls,
                    action: action.clone(),
                    rbac: Vec::new(),
                    local_rate_limits: Vec::new(),
                    request_authentication: Vec::new(),
                });
            }
        }
        // Ports no Service declares pass through to the app, with mTLS as
        // PeerAuthentication says (its port level, then the workload's).
        let undeclared = peer_authentication.per_port.iter().filter(|(p, _)| !declared.contains(*p));
        let passthrough = undeclared.map(|(p, mode)| (Some(*p), *mode)).chain([(None, peer_authentication.mode)]);
        for (port, mode) in passthrough {
            for tls in mtls::inbound_chains(mode, self.mesh_config) {
                chains.push(FilterChain {
                    server_names: vec![],
                    destination_port: port,
                    tls,
                    action: ChainAction::Tcp { clusters: vec![WeightedCluster::only(INBOUND_PASSTHROUGH)] },
                    rbac: Vec::new(),
                    local_rate_limits: Vec::new(),
                    request_authentication: Vec::new(),
                });
            }
        }
        cfg.listeners.push(Listener {
            name: "virtualInbound".into(),
            address: "0.0.0.0".into(),
            port: 15006,
            direction: TrafficDirection::Inbound,
            use_original_dst: true,
            bind_to_port: true,
            filter_chains: chains,
        });
    }

    /// Istio's route when no VirtualService covers a host.
    fn default_route(&self, host: &str, port: u16) -> Route {
        let mut route = Route::forward("default", &cluster_name("outbound", port, None, host));
        route.retry = Some(Box::new(default_retry_policy()));
        route
    }

    /// Routes from the first VirtualService (sidecar) or all bound
    /// VirtualServices (gateway, merged in order) covering `host`.
    fn routes_for_host(&self, host: &str, port: u16, gateway: Option<&str>) -> Option<Vec<Route>> {
        let mut routes = Vec::new();
        let mut found = false;
        let mut candidates: Vec<usize> = self.vs_hosts.covering(host).map(|(_, i)| i).collect();
        candidates.sort_unstable();
        candidates.dedup();
        for i in candidates {
            let (r, vs) = self.virtual_services[i];
            if !self.vs_applies(r, vs, gateway) {
                continue;
            }
            found = true;
            routes.extend(self.http_routes(r, vs, port, gateway));
            if gateway.is_none() {
                break;
            }
        }
        found.then_some(routes)
    }

    fn vs_applies(&self, r: &Resource, vs: &VirtualService, gateway: Option<&str>) -> bool {
        if !vs.export_to.is_empty()
            && !vs.export_to.iter().any(|e| {
                e == "*" || (e == "." && r.meta.namespace == self.proxy.namespace) || *e == self.proxy.namespace
            })
        {
            return false;
        }
        let gateways: Vec<String> = vs.gateways.iter().map(|g| qualify_gateway(g, &r.meta.namespace)).collect();
        match gateway {
            None => gateways.is_empty() || gateways.iter().any(|g| g == "mesh"),
            Some(gw) => gateways.iter().any(|g| g == gw),
        }
    }

    fn http_routes(&self, r: &Resource, vs: &VirtualService, port: u16, gateway: Option<&str>) -> Vec<Route> {
        let ns = &r.meta.namespace;
        let mut out = Vec::new();
        for (i, http) in vs.http.iter().enumerate() {
            let matches: Vec<RouteMatch> =
                http.matches.iter().filter(|m| self.match_applies(m, ns, port, gateway)).map(route_match).collect();
            if !http.matches.is_empty() && matches.is_empty() {
                continue;
            }
            let name = http.name.clone().unwrap_or_else(|| format!("{ns}.{}.{i}", r.meta.name));
            let action = if let Some(redirect) = &http.redirect {
                RouteAction::Redirect(Box::new(Redirect {
                    path: redirect.uri.clone(),
                    prefix_rewrite: redirect.prefix_rewrite.clone(),
                    authority: redirect.authority.clone(),
                    scheme: redirect.scheme.clone(),
                    port: redirect.port.and_then(|p| u16::try_from(p).ok()),
                    port_from_request: redirect.derive_port.as_deref() == Some("FROM_REQUEST_PORT"),
                    code: redirect.redirect_code.and_then(|c| u16::try_from(c).ok()).unwrap_or(301),
                }))
            } else if let Some(direct) = &http.direct_response {
                RouteAction::DirectResponse {
                    status: u16::try_from(direct.status).unwrap_or(500),
                    body: direct.body.as_ref().and_then(|b| b.string.clone().or_else(|| b.bytes.clone())),
                }
            } else {
                let single = http.route.len() == 1;
                let clusters = http
                    .route
                    .iter()
                    .map(|d| WeightedCluster {
                        cluster: self.destination_cluster(&d.destination, ns, port),
                        weight: destination_weight(d.weight, single),
                        headers: header_ops(d.headers.as_deref()),
                    })
                    .collect();
                RouteAction::Forward { clusters }
            };
            let rewrite = http.rewrite.as_ref().map(|rw| {
                Box::new(Rewrite {
                    uri_prefix: rw.uri.clone(),
                    uri_regex: rw.uri_regex_rewrite.as_ref().map(|r| (r.pattern.clone(), r.rewrite.clone())),
                    authority: rw.authority.clone(),
                })
            });
            let timeout = http.timeout.as_deref().and_then(|t| duration::parse(t).ok()).filter(|d| !d.is_zero());
            let mut mirrors: Vec<MirrorPolicy> = http
                .mirrors
                .iter()
                .map(|m| MirrorPolicy {
                    cluster: self.destination_cluster(&m.destination, ns, port),
                    percent: m.percentage.as_ref().map_or(100.0, |p| p.value),
                })
                .collect();
            if let Some(m) = &http.mirror {
                let percent = http
                    .mirror_percentage
                    .as_ref()
                    .map(|p| p.value)
                    .or(http.mirror_percent.or(http.mirror_percent_snake).map(f64::from))
                    .unwrap_or(100.0);
                mirrors.push(MirrorPolicy { cluster: self.destination_cluster(m, ns, port), percent });
            }
            out.push(Route {
                name,
                matches,
                action,
                rewrite,
                timeout,
                retry: retry_policy(http.retries.as_deref()).map(Box::new),
                fault: http.fault.as_deref().map(fault_policy),
                mirrors,
                headers: header_ops(http.headers.as_deref()),
                cors: http.cors_policy.as_deref().map(cors_policy).map(Box::new),
            });
        }
        out
    }

    /// Istio evaluates these match fields per proxy when it builds the
    /// config, not per request.
    fn match_applies(&self, m: &istio::HttpMatchRequest, vs_ns: &str, port: u16, gateway: Option<&str>) -> bool {
        if m.port.is_some_and(|p| p != u32::from(port)) {
            return false;
        }
        if !m.gateways.is_empty() {
            let here = gateway.unwrap_or("mesh");
            if !m.gateways.iter().any(|g| qualify_gateway(g, vs_ns) == here) {
                return false;
            }
        }
        if gateway.is_none() {
            if !m.source_labels.is_empty() && !labels_match(&m.source_labels, &self.proxy.labels) {
                return false;
            }
            if m.source_namespace.as_ref().is_some_and(|ns| *ns != self.proxy.namespace) {
                return false;
            }
        }
        true
    }

    /// The cluster a destination names. The port is the destination's, or
    /// the service's only port, or the port the request came in on.
    fn destination_cluster(&self, d: &istio::Destination, vs_ns: &str, listener_port: u16) -> String {
        let host = resolve_host(&d.host, vs_ns);
        let service = self.all_services.get(&host).map(|s| &s.service);
        let port = d
            .port
            .as_ref()
            .and_then(|p| p.number)
            .and_then(|n| u16::try_from(n).ok())
            .or_else(|| match service.map(|s| s.ports.as_slice()) {
                Some([only]) => Some(only.port),
                Some(ports) if ports.iter().any(|p| p.port == listener_port) => Some(listener_port),
                Some([first, ..]) => Some(first.port),
                _ => None,
            })
            .unwrap_or(listener_port);
        cluster_name("outbound", port, d.subset.as_deref(), &host)
    }

    fn l4_clusters(&self, route: &[istio::RouteDestination], ns: &str, port: u16) -> Vec<WeightedCluster> {
        route
            .iter()
            .map(|d| WeightedCluster {
                cluster: self.destination_cluster(&d.destination, ns, port),
                weight: destination_weight(d.weight, route.len() == 1),
                headers: HeaderOps::default(),
            })
            .collect()
    }

    fn tcp_destinations(&self, svc: &Service, port: u16, gateway: Option<&str>) -> Vec<WeightedCluster> {
        for (r, vs) in &self.virtual_services {
            if !self.vs_applies(r, vs, gateway) {
                continue;
            }
            let covers = gateway.is_some()
                || vs.hosts.iter().any(|h| host_matches(&resolve_host(h, &r.meta.namespace), &svc.hostname));
            if !covers {
                continue;
            }
            for tcp in &vs.tcp {
                let applies = tcp.matches.is_empty()
                    || tcp.matches.iter().any(|m| {
                        m.port.is_none_or(|p| p == u32::from(port))
                            && (gateway.is_some() || labels_match(&m.source_labels, &self.proxy.labels))
                            && (m.gateways.is_empty()
                                || m.gateways
                                    .iter()
                                    .any(|g| qualify_gateway(g, &r.meta.namespace) == gateway.unwrap_or("mesh")))
                    });
                if applies {
                    return self.l4_clusters(&tcp.route, &r.meta.namespace, port);
                }
            }
        }
        vec![WeightedCluster {
            cluster: cluster_name("outbound", port, None, &svc.hostname),
            weight: 100,
            headers: HeaderOps::default(),
        }]
    }

    // ------------------------------------------------------------ gateway

    fn gateway_listeners(&self, cfg: &mut ProxyConfig) {
        // Servers by port, from every Gateway that selects this proxy.
        let mut by_port: BTreeMap<u16, Vec<(String, &'a istio::Server)>> = BTreeMap::new();
        for r in of_kind(self.config, Kind::Gateway) {
            let Spec::Gateway(gw) = &r.spec else { continue };
            if !gateway_selects(gw, &self.proxy.labels) {
                continue;
            }
            let gw_name = format!("{}/{}", r.meta.namespace, r.meta.name);
            for server in &gw.servers {
                if let Ok(port) = u16::try_from(server.port.number) {
                    by_port.entry(port).or_default().push((gw_name.clone(), server));
                }
            }
        }
        for (port, servers) in by_port {
            let mut chains = Vec::new();
            let mut http_vhosts: BTreeMap<String, VirtualHost> = BTreeMap::new();
            let mut plain_http = false;
            for (gw_name, server) in &servers {
                let protocol = Protocol::parse(&server.port.protocol);
                let tls_mode = server.tls.as_ref().and_then(|t| t.mode.clone()).unwrap_or_else(|| "SIMPLE".into());
                let terminates_tls = protocol == Protocol::Https
                    || (protocol == Protocol::Tls && tls_mode != "PASSTHROUGH" && tls_mode != "AUTO_PASSTHROUGH");
                let hosts: Vec<String> =
                    server.hosts.iter().map(|h| h.split_once('/').map_or(h.as_str(), |(_, h)| h).to_string()).collect();
                if protocol.is_http() || protocol == Protocol::Https {
                    let vhosts = self.gateway_virtual_hosts(gw_name, &hosts, port, server);
                    if terminates_tls {
                        let route_name = format!(
                            "https.{port}.{}.{}",
                            server.name.as_deref().unwrap_or(&server.port.name),
                            gw_name.replace('/', ".")
                        );
                        cfg.route_configs.push(Arc::new(RouteConfig {
                            name: route_name.clone(),
                            virtual_hosts: vhosts.into_values().collect(),
                        }));
                        chains.push(FilterChain {
                            server_names: hosts.iter().filter(|h| *h != "*").cloned().collect(),
                            destination_port: None,
                            tls: server.tls.as_ref().map(|t| server_tls(t, &tls_mode, self.mesh_config)),
                            action: ChainAction::Http { route_config: route_name, protocol: Protocol::Http },
                            rbac: Vec::new(),
                            local_rate_limits: Vec::new(),
                            request_authentication: Vec::new(),
                        });
                    } else {
                        plain_http = true;
                        for (name, vh) in vhosts {
                            match http_vhosts.get_mut(&name) {
                                Some(existing) => existing.routes.extend(vh.routes),
                                None => {
                                    http_vhosts.insert(name, vh);
                                }
                            }
                        }
                    }
                } else {
                    // TCP, or TLS passed through by SNI.
                    let routes =
                        self.gateway_l4_routes(gw_name, port, &hosts, protocol == Protocol::Tls && !terminates_tls);
                    for (sni, clusters) in routes {
                        chains.push(FilterChain {
                            server_names: sni,
                            destination_port: None,
                            tls: terminates_tls
                                .then(|| server.tls.as_ref().map(|t| server_tls(t, &tls_mode, self.mesh_config)))
                                .flatten(),
                            action: ChainAction::Tcp { clusters },
                            rbac: Vec::new(),
                            local_rate_limits: Vec::new(),
                            request_authentication: Vec::new(),
                        });
                    }
                }
            }
            if plain_http {
                let route_name = format!("http.{port}");
                cfg.route_configs.push(Arc::new(RouteConfig {
                    name: route_name.clone(),
                    virtual_hosts: http_vhosts.into_values().collect(),
                }));
                chains.push(FilterChain {
                    server_names: vec![],
                    destination_port: None,
                    tls: None,
                    action: ChainAction::Http { route_config: route_name, protocol: Protocol::Http },
                    rbac: Vec::new(),
                    local_rate_limits: Vec::new(),
                    request_authentication: Vec::new(),
                });
            }
            cfg.listeners.push(port_listener("0.0.0.0", port, TrafficDirection::Gateway, chains));
        }
    }

    fn gateway_virtual_hosts(
        &self,
        gw_name: &str,
        server_hosts: &[String],
        port: u16,
        server: &istio::Server,
    ) -> BTreeMap<String, VirtualHost> {
        let mut vhosts: BTreeMap<String, VirtualHost> = BTreeMap::new();
        let https_redirect = server.tls.as_ref().and_then(|t| t.https_redirect).unwrap_or(false);
        for (r, vs) in &self.virtual_services {
            if !self.vs_applies(r, vs, Some(gw_name)) {
                continue;
            }
            for vs_host in &vs.hosts {
                let host = resolve_host(vs_host, &r.meta.namespace);
                let Some(server_host) = server_hosts.iter().find(|sh| hosts_intersect(sh, &host)) else { continue };
                // The narrower of the two names the virtual host.
                let name = if host_matches(server_host, &host) { host.clone() } else { server_host.clone() };
                let routes = if https_redirect {
                    vec![https_redirect_route()]
                } else {
                    self.http_routes(r, vs, port, Some(gw_name))
                };
                match vhosts.get_mut(&name) {
                    Some(vh) if !https_redirect => vh.routes.extend(routes),
                    Some(_) => {}
                    None => {
                        let domains =
                            if name == "*" { vec!["*".into()] } else { vec![name.clone(), format!("{name}:{port}")] };
                        vhosts.insert(name.clone(), VirtualHost { name: format!("{name}:{port}"), domains, routes });
                    }
                }
            }
        }
        vhosts
    }

    fn gateway_l4_routes(
        &self,
        gw_name: &str,
        port: u16,
        server_hosts: &[String],
        by_sni: bool,
    ) -> Vec<(Vec<String>, Vec<WeightedCluster>)> {
        let mut out = Vec::new();
        for (r, vs) in &self.virtual_services {
            if !self.vs_applies(r, vs, Some(gw_name)) {
                continue;
            }
            let ns = &r.meta.namespace;
            if by_sni {
                for tls in &vs.tls {
                    for m in &tls.matches {
                        if m.port.is_some_and(|p| p != u32::from(port)) {
                            continue;
                        }
                        let sni: Vec<String> = m
                            .sni_hosts
                            .iter()
                            .filter(|s| server_hosts.iter().any(|h| hosts_intersect(h, s)))
                            .cloned()
                            .collect();
                        if sni.is_empty() {
                            continue;
                        }
                        let clusters = self.l4_clusters(&tls.route, ns, port);
                        out.push((sni, clusters));
                    }
                }
            } else if !vs.tcp.is_empty()
                && vs.hosts.iter().any(|h| server_hosts.iter().any(|s| hosts_intersect(s, &resolve_host(h, ns))))
            {
                let dummy = Service {
                    hostname: String::new(),
                    namespace: ns.clone(),
                    ports: vec![],
                    labels: Labels::new(),
                    addresses: vec![],
                    resolution: Resolution::Static,
                    mesh_external: false,
                    subject_alt_names: Vec::new(),
                };
                out.push((vec![], self.tcp_destinations(&dummy, port, Some(gw_name))));
                break;
            }
        }
        out
    }

    /// EnvoyFilters in the proxy's namespace (or the root namespace) whose
    /// selector matches it, that insert Envoy's local rate limit filter.
    fn local_rate_limits(&self) -> Vec<crate::rate_limit::LocalRateLimit> {
        of_kind(self.config, Kind::EnvoyFilter)
            .filter(|r| r.meta.namespace == self.proxy.namespace || r.meta.namespace == ROOT_NAMESPACE)
            .filter_map(|r| match &r.spec {
                Spec::EnvoyFilter(ef) => Some(ef),
                _ => None,
            })
            .filter(|ef| ef.workload_selector.as_ref().is_none_or(|s| labels_match(&s.labels, &self.proxy.labels)))
            .flat_map(|ef| ef.config_patches.iter().filter_map(|p| crate::rate_limit::local_rate_limit_of(p)?.ok()))
            .filter(|l| match l.context.as_str() {
                "GATEWAY" => self.proxy.kind == ProxyKind::Gateway,
                "SIDECAR_INBOUND" | "SIDECAR_OUTBOUND" => self.proxy.kind == ProxyKind::Sidecar,
                _ => true,
            })
            .collect()
    }

    // ------------------------------------------------------------ security

    /// Policies selecting this proxy: those in the root namespace without a
    /// selector apply mesh-wide; others apply in their namespace, to the
    /// workloads their selector matches.
    fn authorization_policies(&self) -> Vec<AuthorizationPolicyRef> {
        of_kind(self.config, Kind::AuthorizationPolicy)
            .filter_map(|r| {
                let Spec::AuthorizationPolicy(p) = &r.spec else { return None };
                let targeted = p.target_ref.is_some() || !p.target_refs.is_empty();
                self.policy_selects(&r.meta.namespace, p.selector.as_ref(), targeted).then(|| AuthorizationPolicyRef {
                    namespace: r.meta.namespace.clone(),
                    name: r.meta.name.clone(),
                    policy: with_trust_domain_aliases(p, &self.mesh_config.trust_domains()),
                })
            })
            .collect()
    }
}

impl Translator<'_> {
    /// RequestAuthentications selecting this proxy, as Istio selects
    /// them: all their rules apply together, ordered by issuer.
    fn request_authentication(&self) -> Vec<crate::jwt::JwtProvider> {
        crate::jwt::providers(of_kind(self.config, Kind::RequestAuthentication).filter_map(|r| {
            let Spec::RequestAuthentication(ra) = &r.spec else { return None };
            let targeted = ra.target_ref.is_some() || !ra.target_refs.is_empty();
            self.policy_selects(&r.meta.namespace, ra.selector.as_ref(), targeted).then_some((
                r.meta.namespace.as_str(),
                r.meta.name.as_str(),
                ra,
            ))
        }))
    }

    /// The Telemetry resources for this proxy (root namespace's, its
    /// namespace's, then the one selecting it), merged with MeshConfig.
    fn telemetry(&self) -> crate::telemetry::TelemetryConfig {
        let root = &self.mesh_config.root_namespace;
        let mut levels: [Vec<(String, &crate::config::telemetry::Telemetry)>; 3] = Default::default();
        for r in of_kind(self.config, Kind::Telemetry) {
            let Spec::Telemetry(t) = &r.spec else { continue };
            let (ns, selector) = (&r.meta.namespace, t.selector.as_ref());
            let level = match (ns == root, ns == &self.proxy.namespace, selector) {
                (true, _, None) => 0,
                (false, true, None) => 1,
                (_, true, Some(sel)) if labels_match(&sel.match_labels, &self.proxy.labels) => 2,
                _ => continue,
            };
            levels[level].push((format!("{ns}/{}", r.meta.name), t));
        }
        // Several at one level: Istio takes one; the first by name here.
        let names: Vec<(String, &crate::config::telemetry::Telemetry)> =
            levels.into_iter().filter_map(|mut l| (!l.is_empty()).then(|| l.swap_remove(0))).collect();
        let scopes = crate::telemetry::Scopes { ordered: names.iter().map(|(n, t)| (n.as_str(), *t)).collect() };
        crate::telemetry::resolve(&scopes, self.mesh_config)
    }

    /// Whether a security policy in `namespace` applies to this proxy: one
    /// in the root namespace without a selector applies mesh-wide; others
    /// in their namespace (or from the root namespace) to the workloads
    /// their selector matches. targetRef(s) attach to Gateway API objects,
    /// which this mesh does not run; such policies do not apply.
    fn policy_selects(
        &self,
        namespace: &str,
        selector: Option<&crate::config::networking::WorkloadSelector>,
        targeted: bool,
    ) -> bool {
        let in_scope = namespace == ROOT_NAMESPACE || namespace == self.proxy.namespace;
        let selected = selector.is_none_or(|sel| labels_match(&sel.match_labels, &self.proxy.labels));
        in_scope && selected && !targeted
    }
}

/// A policy whose principals of the mesh's trust domain (or one of its
/// aliases) name every alias too, as Istio widens them: a mesh renamed
/// from `old.td` still matches `old.td/ns/foo/sa/sleep`.
fn with_trust_domain_aliases(
    policy: &AuthorizationPolicy,
    domains: &crate::identity::TrustDomains,
) -> AuthorizationPolicy {
    let mut policy = policy.clone();
    if domains.aliases.is_empty() {
        return policy;
    }
    let widen = |list: &mut Vec<String>| *list = list.iter().flat_map(|p| domains.principals_for(p)).collect();
    for from in policy.rules.iter_mut().flat_map(|r| r.from.iter_mut()) {
        widen(&mut from.source.principals);
        widen(&mut from.source.not_principals);
    }
    policy
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

/// Istio's weights: a lone destination without a weight takes all the
/// traffic; among several, an unset weight is 0.
fn destination_weight(weight: Option<i32>, single: bool) -> u32 {
    match weight {
        Some(w) => u32::try_from(w).unwrap_or(0),
        None if single => 100,
        None => 0,
    }
}

fn qualify_gateway(g: &str, namespace: &str) -> String {
    if g == "mesh" || g.contains('/') {
        g.to_string()
    } else {
        format!("{namespace}/{g}")
    }
}

fn gateway_selects(gw: &Gateway, labels: &Labels) -> bool {
    labels_match(&gw.selector, labels)
}

/// The names a sidecar's app may use for a service, as Istio generates them.
fn sidecar_domains(svc: &Service, port: u16, proxy_ns: &str) -> Vec<String> {
    let mut names = vec![svc.hostname.clone()];
    let kube_suffix = format!(".{}.svc.{DOMAIN_SUFFIX}", svc.namespace);
    if let Some(short) = svc.hostname.strip_suffix(&kube_suffix) {
        if svc.namespace == proxy_ns {
            names.push(short.to_string());
        }
        names.push(format!("{short}.{}", svc.namespace));
        names.push(format!("{short}.{}.svc", svc.namespace));
    }
    names.extend(svc.addresses.iter().filter(|a| !a.contains('/')).cloned());
    let mut domains = BTreeSet::new();
    for n in names {
        domains.insert(format!("{n}:{port}"));
        domains.insert(n);
    }
    let mut ordered: Vec<String> = vec![svc.hostname.clone(), format!("{}:{port}", svc.hostname)];
    ordered.extend(domains.into_iter().filter(|d| *d != svc.hostname && *d != format!("{}:{port}", svc.hostname)));
    ordered
}

fn https_redirect_route() -> Route {
    Route {
        action: RouteAction::Redirect(Box::new(Redirect {
            path: None,
            prefix_rewrite: None,
            authority: None,
            scheme: Some("https".into()),
            port: None,
            port_from_request: false,
            code: 301,
        })),
        ..Route::forward("https_redirect", "")
    }
}

fn string_matcher(m: &istio::StringMatch) -> StringMatcher {
    if let Some(e) = &m.exact {
        StringMatcher::Exact(e.clone())
    } else if let Some(p) = &m.prefix {
        StringMatcher::Prefix(p.clone())
    } else if let Some(r) = &m.regex {
        StringMatcher::Regex(r.clone())
    } else {
        StringMatcher::Present
    }
}

fn route_match(m: &istio::HttpMatchRequest) -> RouteMatch {
    let (mut headers, mut claims) = (Vec::new(), Vec::new());
    let all = m.headers.iter().map(|h| (h, false)).chain(m.without_headers.iter().map(|h| (h, true)));
    for ((name, value), invert) in all {
        let matcher = string_matcher(value);
        match crate::jwt::routing_claim(name) {
            Some(path) => claims.push(ClaimMatcher { path, matcher, invert }),
            None => headers.push(HeaderMatcher { name: name.to_ascii_lowercase(), matcher, invert }),
        }
    }
    RouteMatch {
        uri: m.uri.as_ref().map(string_matcher),
        scheme: m.scheme.as_ref().map(string_matcher),
        method: m.method.as_ref().map(string_matcher),
        authority: m.authority.as_ref().map(string_matcher),
        headers,
        claims,
        query_params: m
            .query_params
            .iter()
            .map(|(k, v)| QueryParamMatcher {
                name: k.clone(),
                matcher: match string_matcher(v) {
                    StringMatcher::Exact(e) if e.is_empty() => StringMatcher::Present,
                    other => other,
                },
            })
            .collect(),
        port: None,
        ignore_uri_case: m.ignore_uri_case,
    }
}

fn header_ops(h: Option<&istio::Headers>) -> HeaderOps {
    let Some(h) = h else { return HeaderOps::default() };
    let pairs = |m: &BTreeMap<String, String>| m.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect();
    let req = h.request.clone().unwrap_or_default();
    let resp = h.response.clone().unwrap_or_default();
    HeaderOps {
        request_set: pairs(&req.set),
        request_add: pairs(&req.add),
        request_remove: req.remove.iter().map(|s| s.to_ascii_lowercase()).collect(),
        response_set: pairs(&resp.set),
        response_add: pairs(&resp.add),
        response_remove: resp.remove.iter().map(|s| s.to_ascii_lowercase()).collect(),
    }
}

/// Istio's default retry policy: 2 retries on connection failures, refused
/// streams, gRPC unavailable/cancelled and HTTP 503, on another host.
pub fn default_retry_policy() -> RetryPolicy {
    RetryPolicy {
        attempts: 2,
        per_try_timeout: None,
        retry_on: RetryOn::CONNECT_FAILURE
            | RetryOn::REFUSED_STREAM
            | RetryOn::UNAVAILABLE
            | RetryOn::CANCELLED
            | RetryOn::RETRIABLE_STATUS_CODES,
        retriable_status_codes: vec![503],
        backoff_base: DEFAULT_BACKOFF,
        backoff_max: DEFAULT_BACKOFF * 10,
        retry_other_hosts: true,
    }
}

fn retry_policy(r: Option<&istio::HttpRetry>) -> Option<RetryPolicy> {
    let Some(r) = r else { return Some(default_retry_policy()) };
    let attempts = u32::try_from(r.attempts.unwrap_or(2)).unwrap_or(0);
    if attempts == 0 {
        return None;
    }
    let mut policy = default_retry_policy();
    policy.attempts = attempts;
    policy.per_try_timeout = r.per_try_timeout.as_deref().and_then(|t| duration::parse(t).ok());
    if let Some(on) = r.retry_on.as_deref().filter(|s| !s.trim().is_empty()) {
        let (flags, codes) = RetryOn::parse(on);
        policy.retry_on = flags;
        policy.retriable_status_codes = codes;
    }
    if let Some(base) = r.backoff.as_deref().and_then(|b| duration::parse(b).ok()) {
        policy.backoff_base = base;
        policy.backoff_max = base * 10;
    }
    policy.retry_other_hosts = r.retry_ignore_previous_hosts.unwrap_or(true);
    Some(policy)
}

fn fault_policy(f: &istio::HttpFaultInjection) -> FaultPolicy {
    FaultPolicy {
        delay: f.delay.as_ref().and_then(|d| {
            let delay =
                d.fixed_delay.as_deref().or(d.exponential_delay.as_deref()).and_then(|t| duration::parse(t).ok())?;
            let percent = d.percentage.as_ref().map(|p| p.value).or(d.percent.map(f64::from)).unwrap_or(100.0);
            Some(FaultDelay { delay, percent })
        }),
        abort: f.abort.as_ref().and_then(|a| {
            let status = match (a.http_status, a.grpc_status.as_deref()) {
                (Some(s), _) => AbortStatus::Http(u16::try_from(s).ok()?),
                (None, Some(g)) => AbortStatus::Grpc(crate::fault::grpc_status_code(g)?),
                _ => return None,
            };
            Some(FaultAbort { status, percent: a.percentage.as_ref().map_or(100.0, |p| p.value) })
        }),
    }
}

fn cors_policy(c: &istio::CorsPolicy) -> CorsPolicy {
    let mut origins: Vec<StringMatcher> = c.allow_origins.iter().map(string_matcher).collect();
    origins.extend(c.allow_origin.iter().map(|o| {
        if o == "*" {
            StringMatcher::Prefix(String::new())
        } else {
            StringMatcher::Exact(o.clone())
        }
    }));
    CorsPolicy {
        allow_origins: origins,
        allow_methods: c.allow_methods.clone(),
        allow_headers: c.allow_headers.clone(),
        expose_headers: c.expose_headers.clone(),
        max_age: c.max_age.as_deref().and_then(|t| duration::parse(t).ok()),
        allow_credentials: c.allow_credentials.unwrap_or(false),
    }
}

fn server_tls(t: &istio::ServerTlsSettings, mode: &str, mesh: &MeshConfig) -> ServerTls {
    ServerTls {
        mode: mode.to_string(),
        certificate_chain: t.server_certificate.clone(),
        private_key: t.private_key.clone(),
        ca_certificates: t.ca_certificates.clone(),
        credential_name: t.credential_name.clone().or_else(|| t.credential_names.first().cloned()),
        alpn: vec!["h2".into(), "http/1.1".into()],
        peer_trust_domains: if mode == mtls::ISTIO_MUTUAL { mtls::peer_trust_domains(mesh) } else { Vec::new() },
    }
}

/// Istio merges traffic policies section by section: port-level settings
/// override the top level for their port, and a subset's policy overrides
/// both.
fn effective_policy(base: Option<&TrafficPolicy>, subset: Option<&TrafficPolicy>, port: u16) -> TrafficPolicy {
    let mut out = TrafficPolicy::default();
    for layer in [base, subset].into_iter().flatten() {
        overlay(&mut out, layer);
        if let Some(pl) =
            layer.port_level_settings.iter().find(|p| p.port.as_ref().and_then(|p| p.number) == Some(u32::from(port)))
        {
            overlay(&mut out, &pl.as_policy());
        }
    }
    out
}

fn overlay(out: &mut TrafficPolicy, layer: &TrafficPolicy) {
    if layer.load_balancer.is_some() {
        out.load_balancer.clone_from(&layer.load_balancer);
    }
    if layer.connection_pool.is_some() {
        out.connection_pool.clone_from(&layer.connection_pool);
    }
    if layer.outlier_detection.is_some() {
        out.outlier_detection.clone_from(&layer.outlier_detection);
    }
    if layer.tls.is_some() {
        out.tls.clone_from(&layer.tls);
    }
    if layer.retry_budget.is_some() {
        out.retry_budget.clone_from(&layer.retry_budget);
    }
}

fn build_cluster(
    name: &str,
    svc: &Service,
    port: &ServicePort,
    subset: Option<&str>,
    policy: &TrafficPolicy,
    tls: Option<UpstreamTls>,
) -> Cluster {
    let parse = |t: &Option<String>| t.as_deref().and_then(|t| duration::parse(t).ok());
    let positive = |v: Option<i32>| v.and_then(|v| u32::try_from(v).ok()).filter(|v| *v > 0);
    let lb_settings = policy.load_balancer.as_ref();
    let lb = lb_policy(lb_settings, svc);
    let pool = policy.connection_pool.as_ref();
    let tcp = pool.and_then(|p| p.tcp.as_ref());
    let http = pool.and_then(|p| p.http.as_ref());
    let mut breakers = CircuitBreakerThresholds::default();
    if let Some(n) = positive(tcp.and_then(|t| t.max_connections)) {
        breakers.max_connections = n;
    }
    if let Some(n) = positive(http.and_then(|h| h.http1_max_pending_requests)) {
        breakers.max_pending_requests = n;
    }
    if let Some(n) = positive(http.and_then(|h| h.http2_max_requests)) {
        breakers.max_requests = n;
    }
    if let Some(n) = http.and_then(|h| h.max_retries).and_then(|v| u32::try_from(v).ok()) {
        breakers.max_retries = n;
    }
    let outlier = policy.outlier_detection.as_ref().map(|od| {
        let consecutive_5xx =
            od.consecutive_5xx_errors.or(od.consecutive_errors.and_then(|n| u32::try_from(n).ok())).unwrap_or(5);
        OutlierDetectionConfig {
            consecutive_5xx: (consecutive_5xx > 0).then_some(consecutive_5xx),
            consecutive_gateway_errors: od.consecutive_gateway_errors.filter(|n| *n > 0),
            consecutive_local_origin_failures: od.consecutive_local_origin_failures.filter(|n| *n > 0),
            split_external_local_origin_errors: od.split_external_local_origin_errors.unwrap_or(false),
            interval: parse(&od.interval).unwrap_or(Duration::from_secs(10)),
            base_ejection_time: parse(&od.base_ejection_time).unwrap_or(Duration::from_secs(30)),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: od.max_ejection_percent.and_then(|p| u32::try_from(p).ok()).unwrap_or(10),
            min_health_percent: od.min_health_percent.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
        }
    });
    Cluster {
        name: name.to_string(),
        service: svc.hostname.clone(),
        port: port.port,
        subset: subset.map(str::to_string),
        discovery: match svc.resolution {
            Resolution::Static => DiscoveryType::Eds,
            Resolution::Dns => DiscoveryType::Dns,
            Resolution::Passthrough => DiscoveryType::OriginalDst,
        },
        protocol: port.protocol,
        lb,
        // Istio's mesh default: locality balancing on, with no rules.
        locality_lb: match lb_settings.and_then(|l| l.locality_lb_setting.as_ref()) {
            None => Some(LocalityLbConfig::default()),
            Some(l) => Some(l).filter(|l| l.enabled != Some(false)).map(|l| LocalityLbConfig {
                distribute: l
                    .distribute
                    .iter()
                    .map(|d| (d.from.clone(), d.to.iter().map(|(k, v)| (k.clone(), *v)).collect()))
                    .collect(),
                failover: l.failover.iter().map(|f| (f.from.clone(), f.to.clone())).collect(),
                failover_priority: l.failover_priority.clone(),
            }),
        },
        connect_timeout: parse(&tcp.and_then(|t| t.connect_timeout.clone())).unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        circuit_breakers: breakers,
        max_requests_per_connection: positive(http.and_then(|h| h.max_requests_per_connection)),
        idle_timeout: parse(&http.and_then(|h| h.idle_timeout.clone())),
        outlier_detection: outlier,
        tls,
        retry_budget: policy.retry_budget.as_ref().map(|b| RetryBudgetConfig {
            percent: b.percent.unwrap_or(20.0),
            min_retry_concurrency: b.min_retry_concurrency.unwrap_or(3),
        }),
    }
}

fn lb_policy(lb: Option<&istio::LoadBalancerSettings>, svc: &Service) -> LbPolicy {
    if svc.resolution == Resolution::Passthrough {
        return LbPolicy::Passthrough;
    }
    let Some(lb) = lb else { return LbPolicy::LeastRequest { choice_count: 2 } };
    if let Some(ch) = &lb.consistent_hash {
        let hash = if let Some(h) = &ch.http_header_name {
            HashPolicy::Header(h.to_ascii_lowercase())
        } else if let Some(c) = &ch.http_cookie {
            HashPolicy::Cookie {
                name: c.name.clone(),
                path: c.path.clone(),
                ttl: c.ttl.as_deref().and_then(|t| duration::parse(t).ok()),
            }
        } else if let Some(q) = &ch.http_query_parameter_name {
            HashPolicy::QueryParameter(q.clone())
        } else {
            HashPolicy::SourceIp
        };
        return match &ch.maglev {
            Some(m) => {
                LbPolicy::Maglev { table_size: m.table_size.unwrap_or(crate::lb::maglev::DEFAULT_TABLE_SIZE), hash }
            }
            None => LbPolicy::RingHash {
                minimum_ring_size: ch
                    .ring_hash
                    .as_ref()
                    .and_then(|r| r.minimum_ring_size)
                    .or(ch.minimum_ring_size)
                    .unwrap_or(1024),
                hash,
            },
        };
    }
    match lb.simple {
        Some(istio::SimpleLb::RoundRobin) => LbPolicy::RoundRobin,
        Some(istio::SimpleLb::Random) => LbPolicy::Random,
        Some(istio::SimpleLb::Passthrough) => LbPolicy::Passthrough,
        // Istio's default (UNSPECIFIED) is LEAST_REQUEST; LEAST_CONN is its
        // deprecated alias.
        _ => LbPolicy::LeastRequest { choice_count: 2 },
    }
}
