//! Connections to upstream endpoints: hyper's pooled clients (keep-alive,
//! one pool per endpoint address), one client per distinct cluster
//! connection setting: HTTP/1.1 or HTTP/2 (h2c), connect timeout, idle
//! timeout. Clusters pick theirs when a config is compiled, never per
//! request, and configs share clients so pools survive config changes.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use mesh_core::model::Protocol;
use mesh_core::proxy_config::Cluster;

use crate::body::Body;

pub type UpstreamClient = Client<HttpConnector, Body>;

/// Envoy's default for idle upstream connections (Istio sets none).
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PoolKey {
    http2: bool,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

#[derive(Default)]
pub struct Upstreams {
    clients: Mutex<HashMap<PoolKey, UpstreamClient>>,
}

impl Upstreams {
    /// The client for a cluster's settings (config time only).
    pub fn client_for(&self, cluster: &Cluster) -> UpstreamClient {
        let key = PoolKey {
            http2: matches!(cluster.protocol, Protocol::Http2 | Protocol::Grpc),
            connect_timeout: cluster.connect_timeout,
            idle_timeout: cluster.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT),
        };
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        clients.entry(key).or_insert_with(|| build(key)).clone()
    }
}

fn build(key: PoolKey) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(key.connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(key.idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_only(key.http2);
    builder.build(connector)
}
