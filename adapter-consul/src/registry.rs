//! [`ConsulRegistry`]: the catalog followed by blocking queries. One watch
//! on `/v1/catalog/services` starts and ends one watch per service on
//! `/v1/health/service/<name>`; each publishes its service as it changes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::stream::BoxStream;
use mesh_core::keyed::Publisher;
use mesh_core::model::ServiceState;
use mesh_core::registry::{RegistryEvent, RegistrySnapshot, ServiceRegistry};
use serde::Serialize;
use tokio::sync::watch as signal;
use tokio::task::JoinHandle;

use crate::api::{ConsulClient, HealthEntry};
use crate::catalog::{service_of, Naming};
use crate::query::{Counters, Query, WatchOptions};

#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    pub naming: Naming,
    pub watch: WatchOptions,
}

/// What the watches have done: for logs, metrics, tests and the bench.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    /// The catalog and every service in it have answered once.
    pub synced: bool,
    pub services: usize,
    pub endpoints: usize,
    pub requests_total: u64,
    pub errors_total: u64,
    /// Times an index went backwards and a watch started over.
    pub index_resets_total: u64,
    pub last_error: Option<String>,
}

/// Which services are watched, and which have not answered yet.
struct Progress {
    /// A service watch publishes only while its name is here, checked
    /// under this lock: an aborted watch may still be mid-publish on
    /// another thread.
    live: BTreeSet<String>,
    catalog_listed: bool,
    pending: BTreeSet<String>,
    ready: signal::Sender<bool>,
}

struct Shared {
    client: ConsulClient,
    options: RegistryOptions,
    services: Arc<Publisher<String, ServiceState>>,
    counters: Arc<Counters>,
    progress: Mutex<Progress>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section leaves its data whole.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn query(&self, path: String) -> Query {
        Query::new(self.client.clone(), path, &self.options.watch, self.counters.clone())
    }

    fn answered(&self, service: Option<&str>) {
        let mut progress = lock(&self.progress);
        match service {
            Some(name) => {
                progress.pending.remove(name);
            }
            None => progress.catalog_listed = true,
        }
        if progress.catalog_listed && progress.pending.is_empty() && !*progress.ready.borrow() {
            let _ = progress.ready.send(true);
            tracing::info!(target: "adapter_consul", services = self.services.snapshot().len(), "initial sync complete");
        }
    }
}

/// Follow one service until aborted.
async fn watch_service(shared: Arc<Shared>, name: String) {
    let path = format!("/v1/health/service/{}", percent_encoding::utf8_percent_encode(&name, PATH_SEGMENT));
    let hostname = shared.options.naming.hostname(&name);
    let mut query = shared.query(path);
    loop {
        let Some(entries) = query.next::<Vec<HealthEntry>>().await else { continue };
        let (service, endpoints) = service_of(&name, &entries, &shared.options.naming);
        let state = ServiceState { service: Arc::new(service), endpoints: endpoints.into() };
        {
            let progress = lock(&shared.progress);
            if !progress.live.contains(&name) {
                return;
            }
            shared.services.upsert(hostname.clone(), state);
        }
        shared.answered(Some(&name));
    }
}

/// What must be escaped in a service name used as a path segment.
const PATH_SEGMENT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// A task that ends when its handle is dropped (a `JoinHandle` dropped
/// leaves its task running).
struct Watch(JoinHandle<()>);

impl Drop for Watch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Follow the catalog: a watch for every service in it, none for the rest.
/// Aborting it ends every service watch with it.
async fn watch_catalog(shared: Arc<Shared>) {
    let mut watches: BTreeMap<String, Watch> = BTreeMap::new();
    let mut query = shared.query("/v1/catalog/services".into());
    loop {
        let Some(catalog) = query.next::<BTreeMap<String, Option<Vec<String>>>>().await else { continue };
        // Consul lists itself; it is not a mesh service.
        let names: BTreeSet<String> = catalog.into_keys().filter(|n| n != "consul").collect();
        let gone: Vec<String> = watches.keys().filter(|n| !names.contains(*n)).cloned().collect();
        for name in gone {
            watches.remove(&name);
            let mut progress = lock(&shared.progress);
            progress.live.remove(&name);
            progress.pending.remove(&name);
            shared.services.delete(&shared.options.naming.hostname(&name));
        }
        for name in names {
            if watches.contains_key(&name) {
                continue;
            }
            let mut progress = lock(&shared.progress);
            progress.live.insert(name.clone());
            progress.pending.insert(name.clone());
            drop(progress);
            watches.insert(name.clone(), Watch(tokio::spawn(watch_service(shared.clone(), name))));
        }
        shared.answered(None);
    }
}

/// The Consul catalog as a [`ServiceRegistry`]. Watches run until it is
/// dropped.
pub struct ConsulRegistry {
    shared: Arc<Shared>,
    ready: signal::Receiver<bool>,
    task: JoinHandle<()>,
}

impl Drop for ConsulRegistry {
    fn drop(&mut self) {
        // The catalog task owns the service watches: they end with it.
        self.task.abort();
    }
}

impl ConsulRegistry {
    /// Start watching; call within a tokio runtime.
    pub fn start(client: ConsulClient, options: RegistryOptions) -> ConsulRegistry {
        let (ready_tx, ready) = signal::channel(false);
        let shared = Arc::new(Shared {
            client,
            options,
            services: Arc::default(),
            counters: Arc::default(),
            progress: Mutex::new(Progress {
                live: BTreeSet::new(),
                catalog_listed: false,
                pending: BTreeSet::new(),
                ready: ready_tx,
            }),
        });
        let task = tokio::spawn(watch_catalog(shared.clone()));
        ConsulRegistry { shared, ready, task }
    }

    /// Resolves once the catalog and every service in it have answered.
    pub async fn ready(&self) {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|r| *r).await;
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    pub fn status(&self) -> Status {
        let snapshot = self.shared.services.snapshot();
        let c = self.shared.counters.read();
        Status {
            synced: self.is_ready(),
            services: snapshot.len(),
            endpoints: snapshot.values().map(|s| s.endpoints.len()).sum(),
            requests_total: c.requests,
            errors_total: c.errors,
            index_resets_total: c.index_resets,
            last_error: c.last_error,
        }
    }
}

impl ServiceRegistry for ConsulRegistry {
    fn name(&self) -> &str {
        "consul"
    }

    fn snapshot(&self) -> Arc<RegistrySnapshot> {
        self.shared.services.snapshot()
    }

    fn watch(&self) -> BoxStream<'static, RegistryEvent> {
        self.shared.services.watch()
    }
}
