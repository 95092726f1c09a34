//! The config in force: a `ProxyConfig` compiled for serving (route tables
//! and cluster state), swapped whole. A request loads it once and keeps it
//! to the end, so a swap never changes a request in flight.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use mesh_core::authz::Authorizer;
use mesh_core::proxy_config::ProxyConfig;
use mesh_core::proxy_config::{ChainAction, StringMatcher};
use mesh_core::routing::{CompiledMatcher, RouteTable, RouteTableError};

use crate::cluster::ClusterState;

pub struct LiveConfig {
    pub config: Arc<ProxyConfig>,
    pub routes: HashMap<String, RouteTable>,
    /// The route table of each listener's HTTP chain, by listener name.
    pub listener_routes: HashMap<String, String>,
    pub clusters: HashMap<String, Arc<ClusterState>>,
    pub authorizer: Authorizer,
    /// Regexes of rewrites and CORS origins, compiled once.
    pub regexes: HashMap<String, CompiledMatcher>,
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
            }),
            routes: HashMap::new(),
            listener_routes: HashMap::new(),
            clusters: HashMap::new(),
            authorizer: Authorizer::default(),
            regexes: HashMap::new(),
        }
    }

    /// Compile `config`, reusing the state of clusters that did not change
    /// from `previous`. A route table that does not compile rejects the
    /// whole config (the previous one keeps serving).
    pub fn compile(config: ProxyConfig, previous: &LiveConfig) -> Result<LiveConfig, RouteTableError> {
        let routes =
            config.route_configs.iter().map(|r| Ok((r.name.clone(), RouteTable::new(r)?))).collect::<Result<_, _>>()?;
        let clusters = config
            .clusters
            .iter()
            .map(|c| {
                let assignment = config.load_assignment(&c.name);
                let state = match previous.clusters.get(&c.name) {
                    Some(old) if old.unchanged(c, assignment) => Arc::clone(old),
                    _ => Arc::new(ClusterState::new(c, assignment)),
                };
                (c.name.clone(), state)
            })
            .collect();
        let authorizer = Authorizer::new(&config.authorization);
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
        let mut regexes = HashMap::new();
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
        Ok(LiveConfig { config: Arc::new(config), routes, listener_routes, clusters, authorizer, regexes })
    }
}

/// The swap point shared by listeners, the admin server and the config
/// loop.
pub type SharedConfig = Arc<ArcSwap<LiveConfig>>;
