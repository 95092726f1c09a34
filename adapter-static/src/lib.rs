//! # adapter-static
//!
//! Istio YAML (and JSON) from files as a [`ServiceRegistry`] and a
//! [`ConfigStore`]: the embedded default of the mesh, with no Kubernetes and
//! no Consul. Galley's job for files.
//!
//! - Istio kinds are the config. ServiceEntry (with `endpoints`) and
//!   WorkloadEntry (matched by `workloadSelector`) are also the registry, as
//!   Istio does for workloads outside Kubernetes; so are Kubernetes
//!   `Service`, `discovery.k8s.io/v1` `EndpointSlice` and `Pod` objects, so a
//!   saved `kubectl get svc,endpointslices,pods -A -o yaml` serves offline.
//! - Every problem names the file, the document (index and line), the
//!   resource and the field. What is applied when something is wrong is
//!   set out in [`catalog`]: valid resources apply, and a bad edit never
//!   replaces the last good version.
//! - [`StaticSource::watch_files`] reloads on change (editors' rename-over,
//!   deletes, Kubernetes ConfigMap `..data` swaps), debounced, and publishes
//!   each reload as one consistent change.
//!
//! | module | what it holds |
//! |---|---|
//! | [`catalog`] | files to config + registry, the rules for bad input |
//! | [`documents`] | YAML documents with their lines; `kind: List` |
//! | [`field_lines`] | the line of a field named by its path, for problems |
//! | [`files`] | walking the paths: hidden entries, symlink loops, limits |
//! | [`kube`] | Kubernetes objects to services and endpoints |
//! | [`problem`] | located problems |
//! | [`watch`] | the file watcher and its debounce |
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use adapter_static::{StaticOptions, StaticSource};
//!
//! let source = Arc::new(StaticSource::load(StaticOptions::new(["config/"])));
//! for problem in &source.status().problems {
//!     eprintln!("{problem}");
//! }
//! let _watch = source.watch_files()?; // reloads until dropped
//! // `source` is a ConfigStore and a ServiceRegistry: hand it to
//! // mesh_core::mesh::watch, mesh-proxy or mesh-xds.
//! # Ok(()) }
//! ```

pub mod catalog;
pub mod documents;
pub mod field_lines;
pub mod files;
pub mod kube;
pub mod problem;
pub mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::stream::BoxStream;
use mesh_core::config::ResourceKey;
use mesh_core::keyed::Publisher;
use mesh_core::model::ServiceState;
use mesh_core::registry::{RegistryEvent, RegistrySnapshot, ServiceRegistry};
use mesh_core::store::{ConfigEvent, ConfigSnapshot, ConfigStore, Rejected};
use serde::Serialize;

pub use catalog::{Catalog, Loader, LoaderOptions, Workload};
pub use problem::{Location, Problem, Severity};
pub use watch::FileWatch;

#[derive(Clone, Debug)]
pub struct StaticOptions {
    /// Files and directories to read.
    pub paths: Vec<PathBuf>,
    pub loader: LoaderOptions,
    /// Quiet time after the last file event before reloading.
    pub debounce: Duration,
}

impl StaticOptions {
    pub fn new<P: Into<PathBuf>>(paths: impl IntoIterator<Item = P>) -> StaticOptions {
        StaticOptions {
            paths: paths.into_iter().map(Into::into).collect(),
            loader: LoaderOptions::default(),
            debounce: Duration::from_millis(100),
        }
    }
}

/// What the last load found: for logs, a status endpoint and tests.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    /// Increments with every load that changed what is served.
    pub generation: u64,
    /// Unix milliseconds of the last load.
    pub loaded_at_ms: u64,
    pub files: usize,
    pub resources: usize,
    pub services: usize,
    pub endpoints: usize,
    pub errors: usize,
    pub warnings: usize,
    /// Loads done, and loads that found at least one error.
    pub loads_total: u64,
    pub loads_with_errors_total: u64,
    pub problems: Vec<Problem>,
}

/// Config and services from files. Cheap to share: wrap it in an `Arc`.
pub struct StaticSource {
    options: StaticOptions,
    loader: Mutex<Loader>,
    config: Arc<Publisher<ResourceKey, Arc<mesh_core::config::Resource>>>,
    services: Arc<Publisher<String, ServiceState>>,
    status: Mutex<Status>,
    origins: Mutex<Arc<BTreeMap<ResourceKey, Location>>>,
    workloads: Mutex<Arc<Vec<Workload>>>,
    loads: AtomicU64,
    loads_with_errors: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section leaves its data whole.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl StaticSource {
    /// Read the files now. Problems do not fail the load: they are in
    /// [`StaticSource::status`], and what was valid is served.
    pub fn load(options: StaticOptions) -> StaticSource {
        let loader = Loader::new(options.paths.clone(), options.loader.clone());
        let source = StaticSource {
            options,
            loader: Mutex::new(loader),
            config: Arc::default(),
            services: Arc::default(),
            status: Mutex::new(Status::default()),
            origins: Mutex::default(),
            workloads: Mutex::default(),
            loads: AtomicU64::new(0),
            loads_with_errors: AtomicU64::new(0),
        };
        source.reload();
        source
    }

    pub fn options(&self) -> &StaticOptions {
        &self.options
    }

    /// Read the files again and publish what changed, as one change.
    pub fn reload(&self) -> Status {
        let catalog = lock(&self.loader).load();
        self.publish(catalog)
    }

    fn publish(&self, catalog: Catalog) -> Status {
        let loads = self.loads.fetch_add(1, Ordering::Relaxed) + 1;
        let errors = catalog.errors();
        let with_errors = if errors > 0 {
            self.loads_with_errors.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.loads_with_errors.load(Ordering::Relaxed)
        };
        for p in &catalog.problems {
            match p.severity {
                Severity::Error => tracing::warn!(target: "adapter_static", "{p}"),
                Severity::Warning => tracing::info!(target: "adapter_static", "{p}"),
            }
        }
        let mut status = lock(&self.status);
        *lock(&self.origins) = Arc::new(catalog.origins);
        *lock(&self.workloads) = Arc::new(catalog.workloads.into_iter().collect());
        let (resources, services) = (catalog.config.len(), catalog.services.len());
        let endpoints = catalog.services.values().map(|s| s.endpoints.len()).sum();
        // Registry first: a route must never name a cluster whose
        // endpoints have not arrived.
        let services_changed = self.services.replace_all(catalog.services);
        let config_changed = self.config.replace_all(catalog.config);
        let changed = services_changed || config_changed;
        *status = Status {
            generation: status.generation + u64::from(changed),
            loaded_at_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            files: catalog.files,
            resources,
            services,
            endpoints,
            errors,
            warnings: catalog.problems.len() - errors,
            loads_total: loads,
            loads_with_errors_total: with_errors,
            problems: catalog.problems,
        };
        if errors > 0 {
            tracing::warn!(target: "adapter_static", errors, "config loaded with errors; invalid resources were not applied");
        }
        status.clone()
    }

    pub fn status(&self) -> Status {
        lock(&self.status).clone()
    }

    /// Where each Istio resource was read from.
    pub fn origins(&self) -> Arc<BTreeMap<ResourceKey, Location>> {
        Arc::clone(&lock(&self.origins))
    }

    /// The workloads the files declare (label sets by namespace).
    pub fn workloads(&self) -> Arc<Vec<Workload>> {
        Arc::clone(&lock(&self.workloads))
    }
}

impl ConfigStore for StaticSource {
    fn snapshot(&self) -> Arc<ConfigSnapshot> {
        self.config.snapshot()
    }

    fn watch(&self) -> BoxStream<'static, ConfigEvent> {
        self.config.watch()
    }

    /// The last load's errors: each resource or file not applied.
    fn rejected(&self) -> Vec<Rejected> {
        let status = lock(&self.status);
        status.problems.iter().filter(|p| p.severity == Severity::Error).map(Problem::rejected).collect()
    }
}

impl ServiceRegistry for StaticSource {
    fn name(&self) -> &str {
        "static"
    }

    fn snapshot(&self) -> Arc<RegistrySnapshot> {
        self.services.snapshot()
    }

    fn watch(&self) -> BoxStream<'static, RegistryEvent> {
        self.services.watch()
    }
}

/// The README's snippets, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
