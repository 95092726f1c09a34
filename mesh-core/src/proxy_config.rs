//! `ProxyConfig`: what one proxy must do, compiled from Istio config and the
//! registry. Envoy-shaped (listeners -> route tables -> clusters ->
//! endpoints) so the in-process proxy and the xDS server consume the same
//! thing, and immutable: a change is a new `ProxyConfig`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::duration::{opt_text, text};
use crate::model::{Health, Locality, Protocol};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProxyConfig {
    /// A digest of everything below: equal configs have equal versions.
    pub version: String,
    pub listeners: Vec<Listener>,
    /// Shared with the route tables compiled from them.
    pub route_configs: Vec<Arc<RouteConfig>>,
    pub clusters: Vec<Cluster>,
    pub endpoints: Vec<ClusterLoadAssignment>,
    /// The AuthorizationPolicies that apply to this proxy, in evaluation
    /// order (namespace, name).
    pub authorization: Vec<AuthorizationPolicyRef>,
    /// The JWT issuers RequestAuthentications accept here, by issuer.
    #[serde(default)]
    pub request_authentication: Vec<crate::jwt::JwtProvider>,
    /// Local rate limits (from EnvoyFilters) that apply to this proxy.
    #[serde(default)]
    pub local_rate_limits: Vec<crate::rate_limit::LocalRateLimit>,
    /// Tracing, access logging and metrics, from the Telemetry API.
    #[serde(default)]
    pub telemetry: crate::telemetry::TelemetryConfig,
}

/// One AuthorizationPolicy as it applies to a proxy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuthorizationPolicyRef {
    pub namespace: String,
    pub name: String,
    pub policy: crate::config::security::AuthorizationPolicy,
}

impl ProxyConfig {
    pub fn route_config(&self, name: &str) -> Option<&Arc<RouteConfig>> {
        self.route_configs.iter().find(|r| r.name == name)
    }

    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }

    pub fn load_assignment(&self, cluster: &str) -> Option<&ClusterLoadAssignment> {
        self.endpoints.iter().find(|e| e.cluster_name == cluster)
    }
}

// ---------------------------------------------------------------- listeners

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrafficDirection {
    Outbound,
    Inbound,
    Gateway,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Listener {
    /// Istio's names: `0.0.0.0_8080`, `virtualOutbound`, `virtualInbound`.
    pub name: String,
    pub address: String,
    pub port: u16,
    pub direction: TrafficDirection,
    /// Sidecar capture listeners hand connections to the listener for the
    /// original destination port instead of serving them themselves.
    pub use_original_dst: bool,
    /// `false` for a sidecar's per-port listeners: they get connections only
    /// through the capture listener, and never hold the port (Envoy's
    /// `bind_to_port`).
    pub bind_to_port: bool,
    pub filter_chains: Vec<FilterChain>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FilterChain {
    /// SNI names this chain serves (empty: any).
    pub server_names: Vec<String>,
    /// For capture listeners: the original destination port this chain
    /// serves (`None`: any).
    pub destination_port: Option<u16>,
    pub tls: Option<ServerTls>,
    pub action: ChainAction,
    /// Envoy's RBAC filters on this chain, in order, as received over
    /// xDS. Config from Istio resources authorizes with
    /// [`ProxyConfig::authorization`] instead, and leaves this empty.
    #[serde(default)]
    pub rbac: Vec<crate::rbac::RbacFilter>,
    /// Envoy's local rate limit filters on this chain (one bucket each),
    /// as received over xDS. Config from Istio resources sets
    /// [`ProxyConfig::local_rate_limits`] instead.
    #[serde(default)]
    pub local_rate_limits: Vec<crate::rate_limit::LocalRateLimit>,
    /// Envoy's JWT filter on this chain, as received over xDS (mesh-proxy
    /// checks tokens once per proxy: the import lifts these into
    /// [`ProxyConfig::request_authentication`]).
    #[serde(default)]
    pub request_authentication: Vec<crate::jwt::JwtProvider>,
}

impl FilterChain {
    /// A chain for any connection (no SNI, port or TLS), with no filters
    /// of its own: the base the translation's chains build on.
    pub fn new(action: ChainAction) -> FilterChain {
        FilterChain {
            server_names: Vec::new(),
            destination_port: None,
            tls: None,
            action,
            rbac: Vec::new(),
            local_rate_limits: Vec::new(),
            request_authentication: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ChainAction {
    /// HTTP connection manager with the named route table.
    Http { route_config: String, protocol: Protocol },
    /// Plain TCP proxy: weighted clusters, as a `tcp` route says.
    Tcp { clusters: Vec<WeightedCluster> },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerTls {
    /// `SIMPLE`, `MUTUAL`, `PASSTHROUGH`, ...
    pub mode: String,
    pub certificate_chain: Option<String>,
    pub private_key: Option<String>,
    pub ca_certificates: Option<String>,
    pub credential_name: Option<String>,
    pub alpn: Vec<String>,
    /// `ISTIO_MUTUAL`: the trust domains a client's SPIFFE ID may be of
    /// (the mesh's and its aliases).
    #[serde(default)]
    pub peer_trust_domains: Vec<String>,
}

// ---------------------------------------------------------------- routes

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteConfig {
    /// `8080` for a sidecar port, `http.8080` for a gateway port.
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VirtualHost {
    /// `reviews.default.svc.cluster.local:9080`.
    pub name: String,
    /// Host names served, exact or with a leading `*` wildcard; ports
    /// included where Istio includes them.
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub name: String,
    /// Any one of these must match (Istio's `match` list); empty matches all.
    pub matches: Vec<RouteMatch>,
    pub action: RouteAction,
    // Policies most routes leave unset are boxed, so that a route is not
    // sized by all of them.
    pub rewrite: Option<Box<Rewrite>>,
    #[serde(with = "opt_text", default)]
    pub timeout: Option<Duration>,
    pub retry: Option<Box<RetryPolicy>>,
    pub fault: Option<FaultPolicy>,
    pub mirrors: Vec<MirrorPolicy>,
    pub headers: HeaderOps,
    pub cors: Option<Box<CorsPolicy>>,
}

impl Route {
    /// A route that matches everything and forwards to one cluster, with
    /// no policies: the base that translation and tests build on.
    pub fn forward(name: &str, cluster: &str) -> Route {
        Route {
            name: name.into(),
            matches: vec![],
            action: RouteAction::Forward { clusters: vec![WeightedCluster::only(cluster)] },
            rewrite: None,
            timeout: None,
            retry: None,
            fault: None,
            mirrors: vec![],
            headers: HeaderOps::default(),
            cors: None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteMatch {
    pub uri: Option<StringMatcher>,
    pub scheme: Option<StringMatcher>,
    pub method: Option<StringMatcher>,
    pub authority: Option<StringMatcher>,
    pub headers: Vec<HeaderMatcher>,
    /// Istio's `@request.auth.claims.*` header matches: the verified JWT's
    /// claims, never the request's headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<ClaimMatcher>,
    pub query_params: Vec<QueryParamMatcher>,
    pub port: Option<u16>,
    pub ignore_uri_case: bool,
}

/// A match on a claim of the request's verified JWT: a string claim, or
/// any string of a list claim. No token or no such claim matches nothing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClaimMatcher {
    /// Nested claim names, outermost first.
    pub path: Vec<String>,
    pub matcher: StringMatcher,
    /// `withoutHeaders`: the route matches when this does not.
    pub invert: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StringMatcher {
    Exact(String),
    Prefix(String),
    Regex(String),
    /// Present with any value.
    Present,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeaderMatcher {
    /// Lower case.
    pub name: String,
    pub matcher: StringMatcher,
    /// `withoutHeaders`: the route matches when this does not.
    pub invert: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueryParamMatcher {
    pub name: String,
    pub matcher: StringMatcher,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RouteAction {
    /// Forward to one of these clusters, chosen by weight.
    Forward {
        clusters: Vec<WeightedCluster>,
    },
    Redirect(Box<Redirect>),
    DirectResponse {
        status: u16,
        body: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightedCluster {
    pub cluster: String,
    pub weight: u32,
    /// Header operations of this destination only.
    pub headers: HeaderOps,
}

impl WeightedCluster {
    /// The whole of the traffic to one cluster.
    pub fn only(cluster: &str) -> WeightedCluster {
        WeightedCluster { cluster: cluster.into(), weight: 100, headers: HeaderOps::default() }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Redirect {
    pub path: Option<String>,
    pub prefix_rewrite: Option<String>,
    pub authority: Option<String>,
    pub scheme: Option<String>,
    pub port: Option<u16>,
    /// Take the port from the request (`derivePort: FROM_REQUEST_PORT`).
    pub port_from_request: bool,
    pub code: u16,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rewrite {
    /// Replaces the part of the path the route's prefix (or exact) match
    /// matched, as Envoy's `prefix_rewrite`.
    pub uri_prefix: Option<String>,
    pub uri_regex: Option<(String, String)>,
    pub authority: Option<String>,
}

/// Header operations (Istio `headers`): applied in the order remove, set, add.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HeaderOps {
    pub request_set: Vec<(String, String)>,
    pub request_add: Vec<(String, String)>,
    pub request_remove: Vec<String>,
    pub response_set: Vec<(String, String)>,
    pub response_add: Vec<(String, String)>,
    pub response_remove: Vec<String>,
}

impl HeaderOps {
    /// Asked per request and route: no default is built to compare.
    pub fn is_empty(&self) -> bool {
        !self.changes_requests() && !self.changes_responses()
    }

    pub fn changes_requests(&self) -> bool {
        !(self.request_set.is_empty() && self.request_add.is_empty() && self.request_remove.is_empty())
    }

    pub fn changes_responses(&self) -> bool {
        !(self.response_set.is_empty() && self.response_add.is_empty() && self.response_remove.is_empty())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Retries after the first try (Istio's `attempts`).
    pub attempts: u32,
    #[serde(with = "opt_text", default)]
    pub per_try_timeout: Option<Duration>,
    pub retry_on: crate::resilience::retry::RetryOn,
    pub retriable_status_codes: Vec<u16>,
    #[serde(with = "text")]
    pub backoff_base: Duration,
    #[serde(with = "text")]
    pub backoff_max: Duration,
    /// Prefer a host not tried before (Envoy's previous_hosts predicate).
    pub retry_other_hosts: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultPolicy {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultDelay {
    #[serde(with = "text")]
    pub delay: Duration,
    pub percent: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultAbort {
    pub status: AbortStatus,
    pub percent: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AbortStatus {
    Http(u16),
    /// A gRPC status code: answered as HTTP 200 with `grpc-status`.
    Grpc(u32),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MirrorPolicy {
    pub cluster: String,
    pub percent: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CorsPolicy {
    pub allow_origins: Vec<StringMatcher>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    #[serde(with = "opt_text", default)]
    pub max_age: Option<Duration>,
    pub allow_credentials: bool,
}

// ---------------------------------------------------------------- clusters

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiscoveryType {
    /// Endpoints from the registry (Envoy EDS).
    Eds,
    /// Endpoints are DNS names to resolve (Envoy STRICT_DNS).
    Dns,
    /// To the address the client dialed (Envoy ORIGINAL_DST).
    OriginalDst,
    /// A fixed local address (inbound to the application).
    Static,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    /// `outbound|9080|v2|reviews.default.svc.cluster.local`.
    pub name: String,
    pub service: String,
    pub port: u16,
    pub subset: Option<String>,
    pub discovery: DiscoveryType,
    pub protocol: Protocol,
    pub lb: LbPolicy,
    pub locality_lb: Option<LocalityLbConfig>,
    #[serde(with = "text")]
    pub connect_timeout: Duration,
    pub circuit_breakers: CircuitBreakerThresholds,
    pub max_requests_per_connection: Option<u32>,
    #[serde(with = "opt_text", default)]
    pub idle_timeout: Option<Duration>,
    pub outlier_detection: Option<OutlierDetectionConfig>,
    pub tls: Option<UpstreamTls>,
    pub retry_budget: Option<RetryBudgetConfig>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest {
        choice_count: u32,
    },
    Random,
    RingHash {
        minimum_ring_size: u64,
        hash: HashPolicy,
    },
    Maglev {
        table_size: u64,
        hash: HashPolicy,
    },
    /// Connect to the original destination; no balancing.
    Passthrough,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HashPolicy {
    Header(String),
    Cookie {
        name: String,
        path: Option<String>,
        #[serde(with = "opt_text", default)]
        ttl: Option<Duration>,
    },
    SourceIp,
    QueryParameter(String),
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LocalityLbConfig {
    /// `distribute`: from locality pattern to destination pattern weights.
    pub distribute: Vec<(String, Vec<(String, u32)>)>,
    /// `failover`: region to region.
    pub failover: Vec<(String, String)>,
    pub failover_priority: Vec<String>,
}

/// Envoy's circuit breaker thresholds, with Istio's defaults (effectively
/// unlimited) when the DestinationRule sets none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CircuitBreakerThresholds {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
}

impl Default for CircuitBreakerThresholds {
    fn default() -> Self {
        CircuitBreakerThresholds {
            max_connections: u32::MAX,
            max_pending_requests: u32::MAX,
            max_requests: u32::MAX,
            max_retries: u32::MAX,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutlierDetectionConfig {
    pub consecutive_5xx: Option<u32>,
    pub consecutive_gateway_errors: Option<u32>,
    pub consecutive_local_origin_failures: Option<u32>,
    pub split_external_local_origin_errors: bool,
    #[serde(with = "text")]
    pub interval: Duration,
    #[serde(with = "text")]
    pub base_ejection_time: Duration,
    #[serde(with = "text")]
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
    /// Below this percentage of healthy hosts the balancer ignores health
    /// (Envoy's panic threshold, Istio's `minHealthPercent`).
    pub min_health_percent: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpstreamTls {
    pub mode: String,
    pub ca_certificates: Option<String>,
    pub client_certificate: Option<String>,
    pub private_key: Option<String>,
    /// SIMPLE and MUTUAL from a credential (a Kubernetes Secret) rather
    /// than files: its CA checks the server, and MUTUAL presents its
    /// certificate.
    #[serde(default)]
    pub credential_name: Option<String>,
    pub sni: Option<String>,
    pub subject_alt_names: Vec<String>,
    pub insecure_skip_verify: bool,
    /// ALPN offered (Istio's in-mesh protocols for `ISTIO_MUTUAL`).
    #[serde(default)]
    pub alpn: Vec<String>,
    /// Auto mTLS: only endpoints that are [`LbEndpoint::mtls_ready`] get
    /// this TLS; the others plaintext.
    #[serde(default)]
    pub auto: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryBudgetConfig {
    pub percent: f64,
    pub min_retry_concurrency: u32,
}

// ---------------------------------------------------------------- endpoints

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterLoadAssignment {
    pub cluster_name: String,
    pub endpoints: Vec<LbEndpoint>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LbEndpoint {
    pub address: String,
    pub port: u16,
    pub weight: u32,
    pub locality: Locality,
    pub health: Health,
    /// The endpoint has a sidecar (`security.istio.io/tlsMode: istio`):
    /// auto mTLS sends it mTLS.
    #[serde(default)]
    pub mtls_ready: bool,
    /// Locality failover's rank for this proxy: 0 is used first, the next
    /// as the ones before lose health.
    #[serde(default)]
    pub priority: u32,
    /// Who runs it, for the `destination_*` labels of the client's
    /// metrics; `None` when the platform did not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<std::sync::Arc<crate::workload::WorkloadMeta>>,
}

/// Metadata shown in config dumps about what the config was built for.
pub type Metadata = BTreeMap<String, String>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_ops_are_empty_only_with_no_operation_at_all() {
        assert!(HeaderOps::default().is_empty());
        let pair = || vec![("x-a".to_string(), "1".to_string())];
        for ops in [
            HeaderOps { request_set: pair(), ..HeaderOps::default() },
            HeaderOps { request_add: pair(), ..HeaderOps::default() },
            HeaderOps { request_remove: vec!["x-a".into()], ..HeaderOps::default() },
            HeaderOps { response_set: pair(), ..HeaderOps::default() },
            HeaderOps { response_add: pair(), ..HeaderOps::default() },
            HeaderOps { response_remove: vec!["x-a".into()], ..HeaderOps::default() },
        ] {
            assert!(!ops.is_empty(), "{ops:?}");
            let on_requests =
                !(ops.request_set.is_empty() && ops.request_add.is_empty() && ops.request_remove.is_empty());
            assert_eq!((ops.changes_requests(), ops.changes_responses()), (on_requests, !on_requests), "{ops:?}");
        }
    }
}
