//! The config in force: a `ProxyConfig` compiled for serving (route tables
//! and cluster state), swapped whole. A request loads it once and keeps it
//! to the end, so a swap never changes a request in flight.

use std::sync::Arc;

use arc_swap::ArcSwap;
use mesh_core::authz::Authorizer;
use mesh_core::proxy_config::ProxyConfig;
use mesh_core::rbac::Rbac;
use std::time::Instant;

use mesh_core::proxy_config::{ChainAction, Listener, StringMatcher, TrafficDirection};
use mesh_core::rate_limit::{LocalRateLimit, TokenBucket};
use mesh_core::routing::{CompiledMatcher, RouteTable, RouteTableError};
// Looked up on every request by short strings: a fast hash, not SipHash.
use rustc_hash::FxHashMap;

use crate::cluster::ClusterState;
use crate::upstream::Upstreams;

pub struct LiveConfig {
    pub config: Arc<ProxyConfig>,
    pub routes: FxHashMap<String, RouteTable>,
    /// The route table of each listener's HTTP chain, by listener name.
    pub listener_routes: FxHashMap<String, String>,
    pub clusters: FxHashMap<String, Arc<ClusterState>>,
    pub authorizer: Authorizer,
    /// The RBAC filters of chains received over xDS, by listener.
    pub chain_rbac: FxHashMap<String, Vec<ChainRbac>>,
    /// RequestAuthentication's JWT providers.
    pub authenticator: crate::jwt::Authenticator,
    /// Regexes of rewrites and CORS origins, compiled once.
    pub regexes: FxHashMap<String, CompiledMatcher>,
    /// The local rate limits of each listener, by listener name.
    pub rate_limits: FxHashMap<String, Vec<Arc<RateLimiter>>>,
    /// What the Telemetry API asks of metrics and the access log.
    pub telemetry: crate::metrics::TelemetryRules,
    /// Tracing per side, as the Telemetry API says.
    pub tracers: crate::trace::Tracers,
}

/// A local rate limit with its bucket; kept across configs that do not
/// change it, so an edit elsewhere does not refill it.
pub struct RateLimiter {
    pub limit: LocalRateLimit,
    /// Over xDS, the limit of one chain: of a capture listener, the
    /// destination port that chain serves. `None`: every request of the
    /// listener.
    pub port: Option<u16>,
    pub bucket: TokenBucket,
    started: Instant,
}

impl RateLimiter {
    fn new(limit: &LocalRateLimit, port: Option<u16>) -> RateLimiter {
        RateLimiter {
            limit: limit.clone(),
            port,
            bucket: TokenBucket::new(limit.max_tokens, limit.tokens_per_fill, limit.fill_interval),
            started: Instant::now(),
        }
    }

    /// Whether it limits a request to `port`.
    pub fn covers(&self, port: u16) -> bool {
        self.port.is_none_or(|p| p == port)
    }

    pub fn try_acquire(&self) -> bool {
        self.bucket.try_acquire(self.started.elapsed())
    }
}

impl LiveConfig {
    pub fn empty() -> LiveConfig {
        LiveConfig {
            config: Arc::new(ProxyConfig {
                version: String::new(),
                listeners: vec![],
                route_configs: vec![],
                clusters: vec![],
                endpoints: vec![],
                authorization: vec![],
                request_authentication: vec![],
                local_rate_limits: vec![],
                telemetry: Default::default(),
            }),
            routes: FxHashMap::default(),
            listener_routes: FxHashMap::default(),
            clusters: FxHashMap::default(),
            authorizer: Authorizer::default(),
            chain_rbac: FxHashMap::default(),
            authenticator: crate::jwt::Authenticator::default(),
            regexes: FxHashMap::default(),
            rate_limits: FxHashMap::default(),
            telemetry: Default::default(),
            tracers: Default::default(),
        }
    }

    /// Compile `config`, reusing the state of clusters that did not change
    /// from `previous`. A route table that does not compile rejects the
    /// whole config (the previous one keeps serving).
    pub fn compile(
        config: ProxyConfig,
        previous: &LiveConfig,
        upstreams: &Upstreams,
        jwks: &Arc<crate::jwt::remote::JwksCache>,
        tracing: &crate::trace::Setup,
    ) -> Result<LiveConfig, RouteTableError> {
        if config.telemetry.warnings != previous.config.telemetry.warnings {
            for warning in &config.telemetry.warnings {
                tracing::warn!("{warning}");
            }
        }
        // Compiled again only when it changed (not on every endpoint update).
        let telemetry = if config.telemetry == previous.config.telemetry {
            previous.telemetry.clone()
        } else {
            crate::metrics::TelemetryRules::of(&config.telemetry)
        };
        let routes = config
            .route_configs
            .iter()
            .map(|r| Ok((r.name.clone(), RouteTable::new(Arc::clone(r))?)))
            .collect::<Result<_, _>>()?;
        let clusters = config
            .clusters
            .iter()
            .map(|c| {
                let assignment = config.load_assignment(&c.name);
                let state = match previous.clusters.get(&c.name) {
                    Some(old) if old.unchanged(c, assignment) => Arc::clone(old),
                    _ => Arc::new(ClusterState::new(c, assignment, upstreams)),
                };
                (c.name.clone(), state)
            })
            .collect();
        let authorizer = Authorizer::new(&config.authorization);
        if config.authorization != previous.config.authorization {
            for narrowed in authorizer.narrowed() {
                tracing::info!("on TCP connections: {narrowed}");
            }
        }
        let chain_rbac = chain_rbac(&config);
        let authenticator = crate::jwt::Authenticator::new(&config.request_authentication, jwks);
        let listener_routes = config
            .listeners
            .iter()
            .filter_map(|l| {
                l.filter_chains.iter().find_map(|c| match &c.action {
                    ChainAction::Http { route_config, .. } => Some((l.name.clone(), route_config.clone())),
                    ChainAction::Tcp { .. } => None,
                })
            })
            .collect();
        let mut regexes = FxHashMap::default();
        for route in config.route_configs.iter().flat_map(|r| &r.virtual_hosts).flat_map(|v| &v.routes) {
            let patterns =
                route
                    .rewrite
                    .iter()
                    .filter_map(|r| r.uri_regex.as_ref().map(|(p, _)| StringMatcher::Regex(p.clone())))
                    .chain(route.cors.iter().flat_map(|c| {
                        c.allow_origins.iter().filter(|m| matches!(m, StringMatcher::Regex(_))).cloned()
                    }));
            for m in patterns {
                if let StringMatcher::Regex(p) = &m {
                    // Validation already rejected bad regexes; one that still
                    // fails to compile simply never matches.
                    if let Ok(compiled) = CompiledMatcher::new(&m, false) {
                        regexes.insert(p.clone(), compiled);
                    }
                }
            }
        }
        let limiters: Vec<Arc<RateLimiter>> = config
            .local_rate_limits
            .iter()
            .map(|l| {
                let old = previous.rate_limits.values().flatten().find(|r| r.limit == *l && r.port.is_none());
                old.cloned().unwrap_or_else(|| Arc::new(RateLimiter::new(l, None)))
            })
            .collect();
        let rate_limits = config
            .listeners
            .iter()
            .map(|l| {
                let applies = |r: &&Arc<RateLimiter>| match r.limit.context.as_str() {
                    "SIDECAR_INBOUND" => l.direction == TrafficDirection::Inbound,
                    "SIDECAR_OUTBOUND" => l.direction == TrafficDirection::Outbound,
                    "GATEWAY" => l.direction == TrafficDirection::Gateway,
                    _ => true,
                };
                let mut of_listener: Vec<Arc<RateLimiter>> = limiters.iter().filter(applies).cloned().collect();
                of_listener.extend(chain_rate_limits(l, previous.rate_limits.get(&l.name)));
                (l.name.clone(), of_listener)
            })
            .collect();
        Ok(LiveConfig {
            telemetry,
            tracers: crate::trace::Tracers::compile(&config.telemetry, tracing),
            config: Arc::new(config),
            routes,
            listener_routes,
            clusters,
            authorizer,
            chain_rbac,
            authenticator,
            regexes,
            rate_limits,
        })
    }
}

/// One chain's RBAC: the chain by its destination port (capture
/// listeners) and kind (HTTP or TCP, which istiod narrows apart).
pub struct ChainRbac {
    pub port: Option<u16>,
    pub tcp: bool,
    pub rbac: Rbac,
}

impl LiveConfig {
    /// The RBAC of the chain a request (`tcp`: a connection) came in on.
    pub fn rbac_for(&self, listener: &str, port: u16, tcp: bool) -> Option<&Rbac> {
        // Config from Istio resources has none: no lookup per request.
        if self.chain_rbac.is_empty() {
            return None;
        }
        let chains = self.chain_rbac.get(listener)?;
        let of_port = |p: Option<u16>| chains.iter().find(|c| c.tcp == tcp && c.port == p);
        of_port(Some(port)).or_else(|| of_port(None)).map(|c| &c.rbac)
    }
}

/// The local rate limits of a listener's chains (over xDS), a bucket per
/// chain and limit, kept from `previous` when unchanged. Chains alike but
/// for their SNI share one.
fn chain_rate_limits(l: &Listener, previous: Option<&Vec<Arc<RateLimiter>>>) -> Vec<Arc<RateLimiter>> {
    let mut out: Vec<Arc<RateLimiter>> = Vec::new();
    for c in &l.filter_chains {
        for limit in &c.local_rate_limits {
            let same = |r: &&Arc<RateLimiter>| r.port == c.destination_port && r.limit == *limit;
            if out.iter().any(|r| same(&r)) {
                continue;
            }
            let old = previous.into_iter().flatten().find(same).cloned();
            out.push(old.unwrap_or_else(|| Arc::new(RateLimiter::new(limit, c.destination_port))));
        }
    }
    out
}

/// Each chain's RBAC compiled. The import checked the regexes; one that
/// still fails makes its chain deny everything, never allow. Chains
/// alike but for their SNI carry the same RBAC (istiod's), so the first
/// stands for them.
fn chain_rbac(config: &ProxyConfig) -> FxHashMap<String, Vec<ChainRbac>> {
    let mut out: FxHashMap<String, Vec<ChainRbac>> = FxHashMap::default();
    for l in &config.listeners {
        for c in l.filter_chains.iter().filter(|c| !c.rbac.is_empty()) {
            let (port, tcp) = (c.destination_port, matches!(c.action, ChainAction::Tcp { .. }));
            let chains = out.entry(l.name.clone()).or_default();
            if chains.iter().any(|k| k.port == port && k.tcp == tcp) {
                continue;
            }
            let rbac = Rbac::new(&c.rbac).unwrap_or_else(|e| {
                tracing::warn!(listener = %l.name, "RBAC does not compile ({e}): the chain denies everything");
                Rbac::deny_all()
            });
            chains.push(ChainRbac { port, tcp, rbac });
        }
    }
    out
}

/// The swap point shared by listeners, the admin server and the config
/// loop.
pub type SharedConfig = Arc<ArcSwap<LiveConfig>>;
