//! The config in force: a `ProxyConfig` compiled for serving (route tables
//! and cluster state), swapped whole. A request loads it once and keeps it
//! to the end, so a swap never changes a request in flight.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use mesh_core::authz::Authorizer;
use mesh_core::proxy_config::ProxyConfig;
use mesh_core::routing::{RouteTable, RouteTableError};

use crate::cluster::ClusterState;

pub struct LiveConfig {
    pub config: Arc<ProxyConfig>,
    pub routes: HashMap<String, RouteTable>,
    pub clusters: HashMap<String, Arc<ClusterState>>,
    pub authorizer: Authorizer,
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
            clusters: HashMap::new(),
            authorizer: Authorizer::default(),
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
        Ok(LiveConfig { config: Arc::new(config), routes, clusters, authorizer })
    }
}

/// The swap point shared by listeners, the admin server and the config
/// loop.
pub type SharedConfig = Arc<ArcSwap<LiveConfig>>;
