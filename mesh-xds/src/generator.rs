//! From the mesh to the cache: every connected node key gets a snapshot
//! built from the latest mesh, rebuilt when the mesh changes.
//!
//! Translation runs once per key, not per connection: identical sidecars
//! (same namespace, labels, IP, flavor) share one. An endpoint-only change
//! is translated like any other; the cache's per-resource versions then
//! make only EDS go out, and only to nodes whose endpoints moved.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::{Stream, StreamExt};
use mesh_core::mesh::{MeshSnapshot, MeshUpdate};
use mesh_core::translate::translate;
use mesh_core::ProxyConfig;
use tokio::sync::watch;

use crate::cache::{Snapshot, SnapshotCache};
use crate::envoy;
use crate::node::NodeInfo;

struct Attached {
    node: NodeInfo,
    connections: usize,
}

pub struct Generator {
    cache: Arc<SnapshotCache>,
    mesh: watch::Sender<Option<Arc<MeshSnapshot>>>,
    attached: Mutex<HashMap<String, Attached>>,
}

/// Build one node's config and its resources.
pub fn build(mesh: &MeshSnapshot, node: &NodeInfo) -> (ProxyConfig, Snapshot) {
    let config = translate(mesh, &node.identity);
    let snapshot =
        Snapshot { config_version: config.version.clone(), resources: envoy::resources(&config, node.flavor) };
    (config, snapshot)
}

impl Generator {
    pub fn new(cache: Arc<SnapshotCache>) -> Arc<Generator> {
        Arc::new(Generator { cache, mesh: watch::channel(None).0, attached: Mutex::default() })
    }

    pub fn cache(&self) -> &Arc<SnapshotCache> {
        &self.cache
    }

    /// The mesh the snapshots are built from; `None` until the sources
    /// have given their first full state (nothing is pushed before that,
    /// so a starting control plane never pushes an empty mesh).
    pub fn mesh(&self) -> Option<Arc<MeshSnapshot>> {
        self.mesh.borrow().clone()
    }

    /// Wait until the first mesh arrived.
    pub async fn ready(&self) {
        let mut rx = self.mesh.subscribe();
        let _ = rx.wait_for(Option::is_some).await;
    }

    /// A connection for `node` opened: its key is kept built until the
    /// last connection for it closes.
    pub async fn attach(self: &Arc<Self>, node: &NodeInfo) -> watch::Receiver<Option<Arc<Snapshot>>> {
        let key = node.key();
        let first = {
            let mut attached = self.lock();
            let entry = attached.entry(key.clone()).or_insert_with(|| Attached { node: node.clone(), connections: 0 });
            entry.connections += 1;
            entry.connections == 1
        };
        let rx = self.cache.watch(&key);
        if first && self.cache.get(&key).is_none() {
            if let Some(mesh) = self.mesh() {
                let node = node.clone();
                let this = self.clone();
                // Translation is CPU work: keep it off the reactor.
                let _ = tokio::task::spawn_blocking(move || this.cache.set(&node.key(), build(&mesh, &node).1)).await;
            }
        }
        rx
    }

    /// The node an attached key was built for.
    pub fn node_for_key(&self, key: &str) -> Option<NodeInfo> {
        self.lock().get(key).map(|a| a.node.clone())
    }

    pub fn detach(&self, node: &NodeInfo) {
        let key = node.key();
        let mut attached = self.lock();
        if let Some(entry) = attached.get_mut(&key) {
            entry.connections -= 1;
            if entry.connections == 0 {
                attached.remove(&key);
                drop(attached);
                self.cache.remove(&key);
            }
        }
    }

    /// A new mesh: rebuild every attached key.
    pub fn update(&self, mesh: MeshSnapshot) {
        let mesh = Arc::new(mesh);
        self.mesh.send_replace(Some(mesh.clone()));
        let nodes: Vec<NodeInfo> = self.lock().values().map(|a| a.node.clone()).collect();
        for node in nodes {
            self.cache.set(&node.key(), build(&mesh, &node).1);
        }
    }

    /// Follow the mesh until its stream ends.
    pub async fn run(self: Arc<Self>, updates: impl Stream<Item = MeshUpdate> + Send + 'static) {
        let mut updates = Box::pin(updates);
        while let Some(update) = updates.next().await {
            let this = self.clone();
            let started = std::time::Instant::now();
            let keys = tokio::task::spawn_blocking(move || {
                this.update(update.snapshot);
                this.lock().len()
            })
            .await
            .unwrap_or(0);
            tracing::info!(keys, elapsed_ms = started.elapsed().as_millis() as u64, "mesh changed, snapshots rebuilt");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Attached>> {
        self.attached.lock().unwrap_or_else(|e| e.into_inner())
    }
}
