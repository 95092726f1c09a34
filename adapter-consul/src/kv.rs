//! [`ConsulKvStore`]: Istio YAML kept under a Consul KV prefix, as a
//! [`ConfigStore`], followed by a blocking query on the prefix. Each key
//! holds one or more YAML documents; a key that does not parse, or a
//! resource in it that does not validate, is reported with the key, the
//! resource and the field, and its last good version keeps applying.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine;
use futures_util::stream::BoxStream;
use mesh_core::config::{self, Decoded, Resource, ResourceKey};
use mesh_core::keyed::Publisher;
use mesh_core::store::{ConfigEvent, ConfigSnapshot, ConfigStore};
use serde::Serialize;
use tokio::sync::watch as signal;

use crate::api::{ConsulClient, KvPair};
use crate::query::{Counters, Query, WatchOptions};

#[derive(Clone, Debug, Default, Serialize)]
pub struct KvStatus {
    pub synced: bool,
    pub keys: usize,
    pub resources: usize,
    /// What is wrong now: `<key>: <what>` (the key's last good resources
    /// still apply).
    pub problems: Vec<String>,
    pub requests_total: u64,
    pub errors_total: u64,
}

/// What one key last gave.
struct KeyState {
    modify_index: u64,
    /// The last good resources of this key.
    resources: Vec<Resource>,
    problems: Vec<String>,
}

pub struct ConsulKvStore {
    config: Arc<Publisher<ResourceKey, Arc<Resource>>>,
    status: Arc<Mutex<KvStatus>>,
    counters: Arc<Counters>,
    ready: signal::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ConsulKvStore {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The status is replaced whole.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The resources in one key's text, or what is wrong with them. Every
/// document must be good for the key to apply (a half-applied file is
/// what the files adapter refuses too).
fn parse_key(key: &str, text: &str) -> Result<Vec<Resource>, Vec<String>> {
    let docs = config::parse_documents(text).map_err(|e| vec![format!("{key}: {e}")])?;
    let (mut resources, mut problems) = (Vec::new(), Vec::new());
    for (i, doc) in docs.into_iter().enumerate() {
        match config::decode(doc, "default") {
            Ok(Decoded::Istio { resource, .. }) => resources.push(resource),
            Ok(Decoded::Other { api_version, kind, .. }) => {
                tracing::info!(target: "adapter_consul", key, api_version, kind, "not an Istio kind; skipped");
            }
            Err(e) => problems.push(format!("{key} (document {}): {e}", i + 1)),
        }
    }
    if problems.is_empty() {
        Ok(resources)
    } else {
        Err(problems)
    }
}

impl ConsulKvStore {
    /// Follow every key under `prefix` (`mesh/config/`); call within a
    /// tokio runtime.
    pub fn start(client: ConsulClient, prefix: &str, options: WatchOptions) -> ConsulKvStore {
        let config: Arc<Publisher<ResourceKey, Arc<Resource>>> = Arc::default();
        let status = Arc::new(Mutex::new(KvStatus::default()));
        let counters: Arc<Counters> = Arc::default();
        let (ready_tx, ready) = signal::channel(false);
        let path = format!("/v1/kv/{}?recurse=true", prefix.trim_start_matches('/'));
        let mut query = Query::new(client, path, &options, counters.clone());
        let (publish, status_out) = (config.clone(), status.clone());
        let task = tokio::spawn(async move {
            let mut keys: BTreeMap<String, KeyState> = BTreeMap::new();
            loop {
                let Some(pairs) = query.next::<Vec<KvPair>>().await else { continue };
                let present: std::collections::BTreeSet<&str> = pairs.iter().map(|p| p.key.as_str()).collect();
                keys.retain(|k, _| present.contains(k.as_str()));
                for pair in &pairs {
                    if keys.get(&pair.key).is_some_and(|k| k.modify_index == pair.modify_index) {
                        continue;
                    }
                    let text = match pair.value.as_deref().map(|v| base64::engine::general_purpose::STANDARD.decode(v))
                    {
                        None => continue,
                        Some(Ok(bytes)) => {
                            String::from_utf8(bytes).map_err(|_| vec![format!("{}: not UTF-8", pair.key)])
                        }
                        Some(Err(e)) => Err(vec![format!("{}: value is not base64: {e}", pair.key)]),
                    };
                    let parsed = text.and_then(|t| parse_key(&pair.key, &t));
                    let state = keys.entry(pair.key.clone()).or_insert(KeyState {
                        modify_index: 0,
                        resources: Vec::new(),
                        problems: Vec::new(),
                    });
                    state.modify_index = pair.modify_index;
                    match parsed {
                        Ok(resources) => (state.resources, state.problems) = (resources, Vec::new()),
                        Err(problems) => {
                            for p in &problems {
                                tracing::warn!(target: "adapter_consul", "{p}; the key's last good version still applies");
                            }
                            state.problems = problems;
                        }
                    }
                }
                // First key (in key order) wins a resource defined twice.
                let mut all: BTreeMap<ResourceKey, Arc<Resource>> = BTreeMap::new();
                for state in keys.values() {
                    for r in &state.resources {
                        all.entry(r.key()).or_insert_with(|| Arc::new(r.clone()));
                    }
                }
                let resources = all.len();
                publish.replace_all(all);
                let mut s = lock(&status_out);
                s.synced = true;
                s.keys = keys.len();
                s.resources = resources;
                s.problems = keys.values().flat_map(|k| k.problems.iter().cloned()).collect();
                drop(s);
                let _ = ready_tx.send(true);
            }
        });
        ConsulKvStore { config, status, counters, ready, task }
    }

    pub async fn ready(&self) {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|r| *r).await;
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    pub fn status(&self) -> KvStatus {
        let mut status = lock(&self.status).clone();
        let c = self.counters.read();
        (status.requests_total, status.errors_total) = (c.requests, c.errors);
        status
    }
}

impl ConfigStore for ConsulKvStore {
    fn snapshot(&self) -> Arc<ConfigSnapshot> {
        self.config.snapshot()
    }

    fn watch(&self) -> BoxStream<'static, ConfigEvent> {
        self.config.watch()
    }
}
