//! An ADS client (state of the world) that turns a control plane's Envoy
//! resources into a stream of [`ProxyConfig`]s for mesh-proxy.
//!
//! It subscribes to every cluster and listener, then to the endpoints and
//! route tables they name; ACKs what it can use and NACKs, with the
//! resource and field in the error detail, what it cannot (keeping the
//! last good resources of that type); emits a config once every named
//! route table and endpoint set has arrived; and reconnects with capped,
//! jittered backoff when the stream fails, keeping what it has, so the
//! proxy goes on serving the last config meanwhile.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use mesh_core::proxy_config::{ChainAction, Cluster, ClusterLoadAssignment, DiscoveryType, Listener};
use mesh_core::routing::RouteTable;
use mesh_core::translate::ProxyKind;
use mesh_core::ProxyConfig;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::import::{self, ImportError, ImportedRoutes};
use crate::resources::{short_name, CLUSTER, ENDPOINT, LISTENER, ROUTE};

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `http://127.0.0.1:15010`.
    pub server: String,
    pub node: Node,
    /// Gateways' outbound listeners serve gateway traffic.
    pub kind: ProxyKind,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl ClientOptions {
    pub fn new(server: impl Into<String>, node: Node, kind: ProxyKind) -> ClientOptions {
        ClientOptions {
            server: server.into(),
            node,
            kind,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// What the client has done, for tests and admin pages.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ClientStatus {
    pub connected: bool,
    pub connects: u64,
    pub acks: u64,
    pub nacks: u64,
    pub last_nack: Option<String>,
    /// Accepted version per type (`CDS`, ...).
    pub versions: BTreeMap<String, String>,
    pub configs_emitted: u64,
}

/// A running client: its configs, and its status.
pub struct XdsClient {
    pub configs: BoxStream<'static, ProxyConfig>,
    pub status: Arc<Mutex<ClientStatus>>,
}

/// Start the client on the current runtime. Configs are coalesced: a
/// consumer that falls behind gets the latest one.
pub fn start(options: ClientOptions) -> XdsClient {
    let (tx, rx) = watch::channel(None::<ProxyConfig>);
    let status = Arc::new(Mutex::new(ClientStatus::default()));
    tokio::spawn(run(options, tx, status.clone()));
    let configs = tokio_stream::wrappers::WatchStream::from_changes(rx).filter_map(|c| async move { c }).boxed();
    XdsClient { configs, status }
}

/// Everything accepted so far, by type, kept across reconnects.
#[derive(Default)]
struct State {
    listeners: BTreeMap<String, Listener>,
    routes: BTreeMap<String, ImportedRoutes>,
    clusters: BTreeMap<String, (Cluster, Option<ClusterLoadAssignment>)>,
    endpoints: BTreeMap<String, ClusterLoadAssignment>,
    /// Per type: the accepted version and the last nonce seen.
    versions: BTreeMap<&'static str, String>,
    nonces: BTreeMap<&'static str, String>,
    /// The names subscribed for RDS and EDS.
    names: BTreeMap<&'static str, BTreeSet<String>>,
}

impl State {
    fn route_names(&self) -> BTreeSet<String> {
        self.listeners
            .values()
            .flat_map(|l| &l.filter_chains)
            .filter_map(|c| match &c.action {
                ChainAction::Http { route_config, .. } => Some(route_config.clone()),
                ChainAction::Tcp { .. } => None,
            })
            .collect()
    }

    fn endpoint_names(&self) -> BTreeSet<String> {
        self.clusters.values().filter(|(c, _)| c.discovery == DiscoveryType::Eds).map(|(c, _)| c.name.clone()).collect()
    }

    /// Complete once every named route table and endpoint set is here
    /// (Envoy's warming).
    fn config(&self) -> Option<ProxyConfig> {
        if self.listeners.is_empty() && self.clusters.is_empty() {
            return None;
        }
        if !self.route_names().iter().all(|n| self.routes.contains_key(n))
            || !self.endpoint_names().iter().all(|n| self.endpoints.contains_key(n))
        {
            return None;
        }
        let mut endpoints: Vec<ClusterLoadAssignment> = self.endpoints.values().cloned().collect();
        endpoints.extend(self.clusters.values().filter_map(|(_, inline)| inline.clone()));
        Some(import::assemble(
            self.listeners.values().cloned().collect(),
            self.routes.values().cloned().collect(),
            self.clusters.values().map(|(c, _)| c.clone()).collect(),
            endpoints,
        ))
    }

    fn forget_unnamed(&mut self) {
        let (routes, endpoints) = (self.route_names(), self.endpoint_names());
        self.routes.retain(|name, _| routes.contains(name));
        self.endpoints.retain(|name, _| endpoints.contains(name));
    }

    /// Apply one response, all or nothing.
    fn apply(&mut self, resp: &DiscoveryResponse, kind: ProxyKind) -> Result<&'static str, ImportError> {
        match resp.type_url.as_str() {
            CLUSTER => {
                self.clusters = import_all(resp, "Cluster", import::cluster, |c| c.0.name.clone())?;
                self.forget_unnamed();
                Ok(CLUSTER)
            }
            LISTENER => {
                let listeners = import_all(resp, "Listener", |l| import::listener(l, kind), |l| l.name.clone())?;
                import::jwt_alike(listeners.values())?;
                self.listeners = listeners;
                self.forget_unnamed();
                Ok(LISTENER)
            }
            ROUTE => {
                let routes = import_all(resp, "RouteConfiguration", import::route_config, |r| r.config.name.clone())?;
                // What mesh-proxy would refuse later (a regex it cannot
                // compile), refused now so the control plane hears of it.
                for r in routes.values() {
                    RouteTable::new(Arc::clone(&r.config)).map_err(|e| {
                        ImportError::new("RouteConfiguration", &r.config.name, "virtual_hosts", e.to_string())
                    })?;
                }
                // Routes and endpoints are asked for by name, so a response
                // may carry only the ones that changed (the server's partial
                // pushes): merge, then forget what nothing names any more.
                self.routes.extend(routes);
                self.forget_unnamed();
                Ok(ROUTE)
            }
            ENDPOINT => {
                let endpoints =
                    import_all(resp, "ClusterLoadAssignment", import::load_assignment, |la| la.cluster_name.clone())?;
                self.endpoints.extend(endpoints);
                self.forget_unnamed();
                Ok(ENDPOINT)
            }
            other => Err(ImportError::new("type", other, "type_url", "not subscribed")),
        }
    }
}

/// Every resource of a response decoded as `M` and imported, by name; the
/// first one that fails fails the whole response.
fn import_all<M: prost::Message + prost::Name + Default, T>(
    resp: &DiscoveryResponse,
    kind: &'static str,
    import: impl Fn(&M) -> Result<T, ImportError>,
    name: impl Fn(&T) -> String,
) -> Result<BTreeMap<String, T>, ImportError> {
    let mut out = BTreeMap::new();
    for (i, any) in resp.resources.iter().enumerate() {
        let msg = import::decode::<M>(any, kind).map_err(|e| ImportError { name: format!("resources[{i}]"), ..e })?;
        let item = import(&msg)?;
        out.insert(name(&item), item);
    }
    Ok(out)
}

fn request(options: &ClientOptions, state: &State, type_url: &'static str, with_node: bool) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: state.versions.get(type_url).cloned().unwrap_or_default(),
        node: with_node.then(|| options.node.clone()),
        resource_names: state.names.get(type_url).map(|n| n.iter().cloned().collect()).unwrap_or_default(),
        type_url: type_url.to_string(),
        response_nonce: state.nonces.get(type_url).cloned().unwrap_or_default(),
        ..Default::default()
    }
}

async fn run(options: ClientOptions, configs: watch::Sender<Option<ProxyConfig>>, status: Arc<Mutex<ClientStatus>>) {
    let mut state = State::default();
    let mut backoff = options.backoff_min;
    loop {
        let answered = || with(&status, |s| s.acks + s.nacks);
        let before = answered();
        match session(&options, &mut state, &configs, &status).await {
            Ok(()) => tracing::warn!(server = %options.server, "xDS stream ended"),
            Err(e) => tracing::warn!(server = %options.server, error = %e, "xDS stream failed"),
        }
        with(&status, |s| s.connected = false);
        if configs.is_closed() {
            return;
        }
        // A session that got responses was healthy: start over from the
        // shortest wait. Jitter spreads a fleet's reconnects.
        backoff = if answered() > before { options.backoff_min } else { (backoff * 2).min(options.backoff_max) };
        tokio::time::sleep(backoff.mul_f64(0.5 + fastrand::f64())).await;
    }
}

fn with<T>(status: &Mutex<ClientStatus>, f: impl FnOnce(&mut ClientStatus) -> T) -> T {
    f(&mut status.lock().unwrap_or_else(|e| e.into_inner()))
}

async fn session(
    options: &ClientOptions,
    state: &mut State,
    configs: &watch::Sender<Option<ProxyConfig>>,
    status: &Mutex<ClientStatus>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let channel = tonic::transport::Endpoint::from_shared(options.server.clone())?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .connect()
        .await?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel(16);
    // CDS first: its clusters must exist before routes point at them. A
    // reconnect re-sends the versions held, so nothing is pushed for nothing.
    tx.send(request(options, state, CLUSTER, true)).await?;
    tx.send(request(options, state, LISTENER, false)).await?;
    for type_url in [ENDPOINT, ROUTE] {
        if state.names.get(type_url).is_some_and(|n| !n.is_empty()) {
            tx.send(request(options, state, type_url, false)).await?;
        }
    }
    let mut responses =
        client.stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    with(status, |s| s.connects += 1);
    while let Some(resp) = responses.message().await? {
        with(status, |s| s.connected = true);
        let type_url = match resp.type_url.as_str() {
            CLUSTER => CLUSTER,
            LISTENER => LISTENER,
            ROUTE => ROUTE,
            ENDPOINT => ENDPOINT,
            _ => continue,
        };
        state.nonces.insert(type_url, resp.nonce.clone());
        match state.apply(&resp, options.kind) {
            Ok(_) => {
                state.versions.insert(type_url, resp.version_info.clone());
                with(status, |s| {
                    s.acks += 1;
                    s.versions.insert(short_name(type_url).to_string(), resp.version_info.clone());
                });
            }
            Err(e) => {
                tracing::warn!(r#type = short_name(type_url), error = %e, "NACK: keeping the last good resources");
                with(status, |s| {
                    s.nacks += 1;
                    s.last_nack = Some(e.to_string());
                });
                let mut nack = request(options, state, type_url, false);
                nack.error_detail = Some(RpcStatus { code: 3, message: e.to_string(), details: vec![] });
                tx.send(nack).await?;
                continue;
            }
        }
        tx.send(request(options, state, type_url, false)).await?;
        // New clusters or listeners may name other endpoints or routes.
        for (dependent, names) in [(ENDPOINT, state.endpoint_names()), (ROUTE, state.route_names())] {
            if state.names.get(dependent) != Some(&names) {
                state.names.insert(dependent, names);
                tx.send(request(options, state, dependent, false)).await?;
            }
        }
        if let Some(cfg) = state.config() {
            let fresh = configs.borrow().as_ref().is_none_or(|c| c.version != cfg.version);
            if fresh {
                with(status, |s| s.configs_emitted += 1);
                configs.send_replace(Some(cfg));
            }
        }
    }
    Ok(())
}
