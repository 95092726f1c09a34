//! From the mesh to the cache: every connected node key gets a snapshot
//! built from the latest mesh, rebuilt when the mesh changes.
//!
//! Translation runs once per key, not per connection: identical proxies
//! (same namespace, labels, IP, flavor) share one. An endpoint-only change
//! re-encodes just the changed services' endpoints into each key's
//! previous snapshot. Encoded resources are interned, so keys that get the
//! same cluster or endpoints share one copy. Translations run one at a
//! time, on a thread of their own ([`Translator`]): each holds a whole
//! config in memory.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use futures_util::{Stream, StreamExt};
use mesh_core::mesh::{MeshSnapshot, MeshUpdate};
use mesh_core::mesh_config::MeshConfig;
use mesh_core::translate::{load_assignments, translate_with};
use mesh_core::ProxyConfig;
use tokio::sync::watch;

use crate::cache::{Snapshot, SnapshotCache, TypeChange};
use crate::envoy;
use crate::node::NodeInfo;
use crate::resources::{Resource, ResourceSet, ENDPOINT};

struct Attached {
    node: NodeInfo,
    connections: usize,
}

/// Encoded resources by type and name, shared across keys while equal.
#[derive(Default)]
struct Interner {
    resources: HashMap<(String, String), Arc<Resource>>,
}

impl Interner {
    fn intern(&mut self, type_url: &str, r: Arc<Resource>) -> Arc<Resource> {
        let slot = self.resources.entry((type_url.to_string(), r.name.clone())).or_insert_with(|| r.clone());
        if slot.version != r.version {
            *slot = r;
        }
        slot.clone()
    }

    fn intern_set(&mut self, set: ResourceSet) -> ResourceSet {
        let mut out = ResourceSet::default();
        for (type_url, items) in set.types {
            let interned =
                Arc::unwrap_or_clone(items).into_iter().map(|(name, r)| (name, self.intern(&type_url, r))).collect();
            out.types.insert(type_url, Arc::new(interned));
        }
        out
    }
}

/// The thread translations run on. One thread, not Tokio's blocking pool:
/// a translation's garbage (17 MB for a 1,000-service mesh) then stays in
/// one allocator heap that the next translation reuses, instead of being
/// left behind on whichever pool thread ran it.
struct Translator {
    jobs: std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

impl Translator {
    fn start() -> Translator {
        let (jobs, queue) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        // The thread ends when the generator (and with it `jobs`) goes; a
        // job that panics fails alone, as on the blocking pool.
        std::thread::Builder::new()
            .name("xds-translate".into())
            .spawn(move || {
                for job in queue {
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })
            .expect("cannot start the translation thread");
        Translator { jobs }
    }

    /// Run `job` on the translation thread; `None` if it panicked.
    async fn run<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (done, result) = tokio::sync::oneshot::channel();
        let _ = self.jobs.send(Box::new(move || {
            let _ = done.send(job());
        }));
        result.await.ok()
    }
}

pub struct Generator {
    cache: Arc<SnapshotCache>,
    mesh: watch::Sender<Option<Arc<MeshSnapshot>>>,
    attached: Mutex<HashMap<String, Attached>>,
    interner: Mutex<Interner>,
    building: Mutex<()>,
    translator: Translator,
    options: GeneratorOptions,
}

/// How a generator translates.
#[derive(Clone, Default)]
pub struct GeneratorOptions {
    /// Istio's MeshConfig: auto mTLS, trust domains, the root namespace.
    pub mesh_config: Arc<MeshConfig>,
    pub after_translation: Option<AfterTranslation>,
    /// The JWKS documents of RequestAuthentication's `jwksUri`s, fetched
    /// by the control plane and sent inline (istiod's default); without,
    /// such issuers get keys that verify nothing. Call
    /// [`Generator::refresh`] when they change.
    pub jwks: Option<Arc<dyn envoy::jwt::JwksLookup>>,
}

/// Called on the translating thread after each whole-mesh translation,
/// with its garbage freed: where a binary can have its allocator return
/// that memory (see `control-plane`).
pub type AfterTranslation = Arc<dyn Fn() + Send + Sync>;

/// Build one node's config and its resources as `options` say.
pub fn build(mesh: &MeshSnapshot, node: &NodeInfo, options: &GeneratorOptions) -> (ProxyConfig, Snapshot) {
    let config = translate_with(mesh, &node.identity, &options.mesh_config);
    let jwks: &dyn envoy::jwt::JwksLookup = match &options.jwks {
        Some(jwks) => jwks.as_ref(),
        None => &envoy::jwt::NoJwks,
    };
    let translated = envoy::resources_with(&config, node.flavor, node.has_certificate, jwks);
    let snapshot = Snapshot {
        config_version: config.version.clone(),
        resources: translated.resources,
        changes: Default::default(),
        unsupported: Arc::new(translated.unsupported),
        credentials: Arc::new(translated.credentials),
    };
    (config, snapshot)
}

impl Generator {
    pub fn new(cache: Arc<SnapshotCache>) -> Arc<Generator> {
        Generator::with_options(cache, GeneratorOptions::default())
    }

    pub fn with_options(cache: Arc<SnapshotCache>, options: GeneratorOptions) -> Arc<Generator> {
        Arc::new(Generator {
            cache,
            mesh: watch::channel(None).0,
            attached: Mutex::default(),
            interner: Mutex::default(),
            building: Mutex::default(),
            translator: Translator::start(),
            options,
        })
    }

    /// The MeshConfig this generator translates under.
    pub fn mesh_config(&self) -> &MeshConfig {
        &self.options.mesh_config
    }

    pub fn options(&self) -> &GeneratorOptions {
        &self.options
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
            let mut attached = lock(&self.attached);
            let entry = attached.entry(key.clone()).or_insert_with(|| Attached { node: node.clone(), connections: 0 });
            entry.connections += 1;
            entry.connections == 1
        };
        let rx = self.cache.watch(&key);
        // A key nobody was attached to has not followed the mesh: build it
        // now, whatever the cache still holds for it.
        if first {
            if let Some(mesh) = self.mesh() {
                let node = node.clone();
                let this = self.clone();
                // Translation is CPU work: keep it off the reactor.
                self.translator.run(move || this.rebuild(&mesh, &node)).await;
            }
        }
        rx
    }

    /// The node an attached key was built for.
    pub fn node_for_key(&self, key: &str) -> Option<NodeInfo> {
        lock(&self.attached).get(key).map(|a| a.node.clone())
    }

    pub fn detach(&self, node: &NodeInfo) {
        let key = node.key();
        let mut attached = lock(&self.attached);
        if let Some(entry) = attached.get_mut(&key) {
            entry.connections -= 1;
            if entry.connections == 0 {
                attached.remove(&key);
                drop(attached);
                self.cache.remove(&key);
            }
        }
    }

    /// A new mesh: rebuild every attached key, or only the endpoints of
    /// the services whose endpoints alone changed.
    pub fn update(&self, update: MeshUpdate) {
        let mesh = Arc::new(update.snapshot);
        self.mesh.send_replace(Some(mesh.clone()));
        let nodes: Vec<NodeInfo> = lock(&self.attached).values().map(|a| a.node.clone()).collect();
        for node in nodes {
            if !(update.changes.endpoints_only() && self.update_endpoints(&mesh, &node, &update.changes.endpoints)) {
                self.rebuild(&mesh, &node);
            }
        }
    }

    fn rebuild(&self, mesh: &MeshSnapshot, node: &NodeInfo) {
        let _one_at_a_time = lock(&self.building);
        let key = node.key();
        let (_, built) = build(mesh, node, &self.options);
        let mut next = Snapshot { resources: lock(&self.interner).intern_set(built.resources), ..built };
        let previous = self.cache.get(&key);
        for item in next.unsupported.iter() {
            if !previous.as_ref().is_some_and(|p| p.unsupported.contains(item)) {
                tracing::warn!(key = %key, "not expressible for this node: {item}");
            }
        }
        if let Some(previous) = previous {
            share_unchanged(&previous, &mut next);
        }
        self.cache.set(&key, next);
        if let Some(hook) = &self.options.after_translation {
            hook();
        }
    }

    /// Re-encode the changed services' endpoints into the key's snapshot.
    /// `false` when that is not enough: no snapshot yet, or a changed
    /// service's endpoints live inside its cluster (DNS, static).
    fn update_endpoints(&self, mesh: &MeshSnapshot, node: &NodeInfo, hosts: &BTreeSet<String>) -> bool {
        let key = node.key();
        let Some(previous) = self.cache.get(&key) else { return false };
        let assignments = load_assignments(mesh, &node.identity, hosts);
        if assignments.iter().any(|la| previous.resources.get(ENDPOINT, &la.cluster_name).is_none()) {
            return false;
        }
        let mut next = Snapshot { changes: Default::default(), ..(*previous).clone() };
        let mut change = TypeChange {
            from: previous.resources.of_type(ENDPOINT).cloned().unwrap_or_default(),
            names: BTreeSet::new(),
        };
        let mut digest = xxhash_rust::xxh64::Xxh64::new(0);
        digest.update(previous.config_version.as_bytes());
        let mut interner = lock(&self.interner);
        for la in &assignments {
            let r = interner.intern(ENDPOINT, Arc::new(envoy::endpoint_resource(la)));
            digest.update(r.version.as_bytes());
            change.names.insert(r.name.clone());
            next.resources.insert_shared(ENDPOINT, r);
        }
        drop(interner);
        next.config_version = format!("{:016x}", digest.digest());
        next.changes.insert(ENDPOINT.to_string(), change);
        self.cache.set(&key, next);
        true
    }

    /// Rebuild every attached node on the current mesh: something the
    /// translation reads besides the mesh changed (fetched JWKS keys).
    pub async fn refresh(self: &Arc<Self>) {
        let Some(mesh) = self.mesh() else { return };
        let this = self.clone();
        self.translator
            .run(move || {
                let nodes: Vec<NodeInfo> = lock(&this.attached).values().map(|a| a.node.clone()).collect();
                for node in nodes {
                    this.rebuild(&mesh, &node);
                }
            })
            .await;
    }

    /// Follow the mesh until its stream ends.
    pub async fn run(self: Arc<Self>, updates: impl Stream<Item = MeshUpdate> + Send + 'static) {
        let mut updates = Box::pin(updates);
        while let Some(update) = updates.next().await {
            let this = self.clone();
            let started = std::time::Instant::now();
            let endpoints_only = update.changes.endpoints_only();
            let keys = self
                .translator
                .run(move || {
                    this.update(update);
                    lock(&this.attached).len()
                })
                .await
                .unwrap_or(0);
            tracing::info!(
                keys,
                endpoints_only,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "mesh changed, snapshots rebuilt"
            );
        }
    }
}

/// Keep the previous map of every type whose resources did not change (so
/// streams skip it in O(1)), and record which names changed in the rest.
fn share_unchanged(previous: &Snapshot, next: &mut Snapshot) {
    for (type_url, map) in next.resources.types.iter_mut() {
        let Some(old) = previous.resources.of_type(type_url) else { continue };
        let same_names = old.len() == map.len() && old.keys().zip(map.keys()).all(|(a, b)| a == b);
        if !same_names {
            continue;
        }
        let changed: BTreeSet<String> = map
            .iter()
            .zip(old.values())
            .filter(|((_, new), old)| !Arc::ptr_eq(new, old))
            .map(|((name, _), _)| name.clone())
            .collect();
        if changed.is_empty() {
            *map = old.clone();
        } else {
            next.changes.insert(type_url.clone(), TypeChange { from: old.clone(), names: changed });
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section leaves its data whole.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
