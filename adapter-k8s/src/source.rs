//! [`KubeSource`]: every watch feeding one task that owns the cluster state
//! and publishes services and Istio resources as they change.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::stream::{self, BoxStream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::watcher;
use kube::{Api, Client};
use mesh_core::config::networking::WorkloadEntry;
use mesh_core::config::{Kind, Resource, ResourceKey, Spec};
use mesh_core::keyed::{KeyedMap, Publisher};
use mesh_core::model::{Labels, ServiceState};
use mesh_core::registry::{merge_states, RegistryEvent, RegistrySnapshot, ServiceRegistry};
use mesh_core::service_entry::{services_of_all, NamespacedWorkload};
use mesh_core::store::{ConfigEvent, ConfigSnapshot, ConfigStore};
use serde::Serialize;
use tokio::sync::watch as signal;

use crate::cluster::{ClusterState, Touched};
use crate::crds::{self, Invalid};
use crate::objects::{object_name, NodeRecord, ObjectName, PodRecord, ServiceRecord, SliceRecord};
use crate::selector::LabelSelector;
use crate::watch::{changes, Change, WatchCounters};

#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// The DNS suffix of service hostnames (`name.namespace.svc.<domain>`).
    pub cluster_domain: String,
    /// Istio's `discoverySelectors`: only namespaces whose labels match one
    /// of them are seen (services and config). Empty: every namespace.
    pub discovery_selectors: Vec<LabelSelector>,
    /// Read the Istio CRDs as config (off when config comes from elsewhere).
    pub istio_config: bool,
    /// Write what is wrong with an invalid Istio object to its status (a
    /// `Reconciled: False` condition with the error, and Istio's IST0106
    /// `SchemaValidationError` message), and clear it once fixed, as
    /// istiod does with status enabled. Needs `patch` on the kinds'
    /// `/status` besides `list` and `watch`.
    pub write_status: bool,
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions {
            cluster_domain: "cluster.local".into(),
            discovery_selectors: Vec::new(),
            istio_config: true,
            write_status: false,
        }
    }
}

/// What the adapter knows and has seen: for logs, a status endpoint,
/// metrics and tests.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    /// Every watch has listed once: what is published is the cluster.
    pub synced: bool,
    pub services: usize,
    pub endpoints: usize,
    pub pods: usize,
    pub resources: usize,
    /// Istio objects skipped because they do not decode or validate (the
    /// last good version of each, if any, is still served).
    pub invalid: Vec<Invalid>,
    pub invalid_total: u64,
    pub lists_total: u64,
    pub watch_errors_total: u64,
    pub events_total: u64,
}

/// Kubernetes as a [`ServiceRegistry`] and a [`ConfigStore`]. Watches run
/// until it is dropped.
pub struct KubeSource {
    services: Arc<Publisher<String, ServiceState>>,
    config: Arc<Publisher<ResourceKey, Arc<Resource>>>,
    ready: signal::Receiver<bool>,
    status: Arc<Mutex<Status>>,
    counters: Arc<WatchCounters>,
    task: tokio::task::AbortHandle,
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Critical sections leave the status whole.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl KubeSource {
    /// Start watching. Must be called within a tokio runtime. Publishes
    /// nothing until every watch has listed once ([`KubeSource::ready`]),
    /// so a control plane never pushes a half-known mesh.
    pub fn start(client: Client, options: KubeOptions) -> KubeSource {
        let services: Arc<Publisher<String, ServiceState>> = Arc::default();
        let config: Arc<Publisher<ResourceKey, Arc<Resource>>> = Arc::default();
        let (ready_tx, ready) = signal::channel(false);
        let status = Arc::new(Mutex::new(Status::default()));
        let counters = Arc::new(WatchCounters::default());
        let sync = Sync {
            cluster: ClusterState::new(&options.cluster_domain, options.discovery_selectors.clone()),
            resources: BTreeMap::new(),
            invalid: BTreeMap::new(),
            invalid_total: 0,
            entry_services: BTreeMap::new(),
            services: Arc::clone(&services),
            config: Arc::clone(&config),
            status: Arc::clone(&status),
            ready: ready_tx,
            status_writer: None,
        };
        let task = tokio::spawn(sync.run(client, options, Arc::clone(&counters))).abort_handle();
        KubeSource { services, config, ready, status, counters, task }
    }

    /// Resolves once every watch has listed once.
    pub async fn ready(&self) {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|r| *r).await;
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    pub fn status(&self) -> Status {
        let mut status = lock(&self.status).clone();
        status.lists_total = self.counters.lists.load(Ordering::Relaxed);
        status.watch_errors_total = self.counters.errors.load(Ordering::Relaxed);
        status.events_total = self.counters.events.load(Ordering::Relaxed);
        status
    }
}

impl ServiceRegistry for KubeSource {
    fn name(&self) -> &str {
        "kubernetes"
    }

    fn snapshot(&self) -> Arc<RegistrySnapshot> {
        self.services.snapshot()
    }

    fn watch(&self) -> BoxStream<'static, RegistryEvent> {
        self.services.watch()
    }
}

impl ConfigStore for KubeSource {
    fn snapshot(&self) -> Arc<ConfigSnapshot> {
        self.config.snapshot()
    }

    fn watch(&self) -> BoxStream<'static, ConfigEvent> {
        self.config.watch()
    }
}

/// One event of any watch.
#[allow(clippy::large_enum_variant)] // one at a time, moved once
enum Update {
    Services(Change<(ObjectName, Option<ServiceRecord>)>),
    Slices(Change<(ObjectName, Option<SliceRecord>)>),
    Pods(Change<(ObjectName, PodRecord)>),
    Nodes(Change<(String, NodeRecord)>),
    Namespaces(Change<(String, Labels)>),
    Config(Kind, Change<(ResourceKey, Result<Resource, Invalid>)>),
}

impl Update {
    /// Which watch it came from, to know when all have listed.
    fn source(&self) -> String {
        match self {
            Update::Services(_) => "services".into(),
            Update::Slices(_) => "endpointslices".into(),
            Update::Pods(_) => "pods".into(),
            Update::Nodes(_) => "nodes".into(),
            Update::Namespaces(_) => "namespaces".into(),
            Update::Config(kind, _) => kind.name().into(),
        }
    }

    fn is_reset(&self) -> bool {
        matches!(
            self,
            Update::Services(Change::Reset(_))
                | Update::Slices(Change::Reset(_))
                | Update::Pods(Change::Reset(_))
                | Update::Nodes(Change::Reset(_))
                | Update::Namespaces(Change::Reset(_))
                | Update::Config(_, Change::Reset(_))
        )
    }
}

/// The task's state: the cluster, the Istio resources, and where they are
/// published.
struct Sync {
    cluster: ClusterState,
    /// The last good version of every Istio object, selected or not.
    resources: BTreeMap<ResourceKey, Arc<Resource>>,
    invalid: BTreeMap<ResourceKey, Invalid>,
    invalid_total: u64,
    /// Services of the ServiceEntries, by hostname.
    entry_services: BTreeMap<String, ServiceState>,
    services: Arc<Publisher<String, ServiceState>>,
    config: Arc<Publisher<ResourceKey, Arc<Resource>>>,
    status: Arc<Mutex<Status>>,
    ready: signal::Sender<bool>,
    /// Where to write objects' status, when asked to.
    status_writer: Option<(Client, BTreeMap<Kind, ApiResource>)>,
}

/// Backoff for what kube-rs does not retry itself (discovery).
async fn retry_delay(attempt: u32) {
    let base = Duration::from_millis(250 * 2u64.saturating_pow(attempt.min(7))).min(Duration::from_secs(30));
    // Up to half again, at random, so restarted control planes spread out.
    let jitter = base.mul_f64(0.5 * fastrand::f64());
    tokio::time::sleep(base + jitter).await;
}

/// Every watch, named by what it watches (see [`Update::source`]).
fn watches(
    client: &Client,
    options: &KubeOptions,
    crds: Vec<(Kind, ApiResource)>,
    counters: &Arc<WatchCounters>,
) -> Vec<(String, BoxStream<'static, Update>)> {
    let config = watcher::Config::default();
    let domain = options.cluster_domain.clone();
    let counters = || Arc::clone(counters);
    let mut all = vec![
        (
            "services".to_string(),
            changes(Api::<Service>::all(client.clone()), config.clone(), "services", counters(), move |s| {
                (object_name(&s.metadata), ServiceRecord::from_kube(&s, &domain))
            })
            .map(Update::Services)
            .boxed(),
        ),
        (
            "endpointslices".to_string(),
            changes(Api::<EndpointSlice>::all(client.clone()), config.clone(), "endpointslices", counters(), |s| {
                (object_name(&s.metadata), SliceRecord::from_kube(&s))
            })
            .map(Update::Slices)
            .boxed(),
        ),
        (
            "pods".to_string(),
            changes(Api::<Pod>::all(client.clone()), config.clone(), "pods", counters(), |p| {
                (object_name(&p.metadata), PodRecord::from_kube(&p))
            })
            .map(Update::Pods)
            .boxed(),
        ),
        (
            "nodes".to_string(),
            changes(Api::<Node>::all(client.clone()), config.clone(), "nodes", counters(), |n| {
                (n.metadata.name.clone().unwrap_or_default(), NodeRecord::from_kube(&n))
            })
            .map(Update::Nodes)
            .boxed(),
        ),
    ];
    if !options.discovery_selectors.is_empty() {
        all.push((
            "namespaces".to_string(),
            changes(Api::<Namespace>::all(client.clone()), config.clone(), "namespaces", counters(), |n| {
                (n.metadata.name.clone().unwrap_or_default(), n.metadata.labels.unwrap_or_default())
            })
            .map(Update::Namespaces)
            .boxed(),
        ));
    }
    for (kind, api_resource) in crds {
        let api = Api::<DynamicObject>::all_with(client.clone(), &api_resource);
        let watch = changes(api, config.clone(), kind.name(), counters(), move |o| {
            let (namespace, name) = object_name(&o.metadata);
            (ResourceKey { kind, namespace, name }, crds::resource_of(kind, &api_resource, o))
        });
        all.push((kind.name().to_string(), watch.map(move |c| Update::Config(kind, c)).boxed()));
    }
    all
}

/// Which Istio resources an event may have changed.
#[derive(Debug, PartialEq)]
enum ConfigTouched {
    Nothing,
    One(ResourceKey),
    /// A relist, or a namespace that came into or went out of view.
    All,
}

/// What one event asks to publish again.
struct Touches {
    services: Touched,
    config: ConfigTouched,
}

impl Sync {
    async fn run(mut self, client: Client, options: KubeOptions, counters: Arc<WatchCounters>) {
        let mut crds = Vec::new();
        if options.istio_config {
            let mut attempt = 0;
            crds = loop {
                match crds::served(&client).await {
                    Ok(served) => break served,
                    Err(e) => {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(target: "adapter_k8s", error = %e, "API discovery failed; retrying");
                        retry_delay(attempt).await;
                        attempt += 1;
                    }
                }
            };
        }
        if options.write_status {
            self.status_writer = Some((client.clone(), crds.iter().cloned().collect()));
        }
        let streams = watches(&client, &options, crds, &counters);
        let mut pending: BTreeSet<String> = streams.iter().map(|(name, _)| name.clone()).collect();
        let mut updates = stream::select_all(streams.into_iter().map(|(_, s)| s));
        let mut synced = false;
        while let Some(update) = updates.next().await {
            if !synced && update.is_reset() {
                pending.remove(&update.source());
            }
            let touches = self.apply(update);
            if !synced {
                if !pending.is_empty() {
                    continue;
                }
                synced = true;
                self.publish_services(Touched::Everything);
                self.publish_config(ConfigTouched::All);
                self.update_status(true);
                let _ = self.ready.send(true);
                tracing::info!(target: "adapter_k8s", services = self.services.snapshot().len(),
                    resources = self.config.snapshot().len(), "initial sync complete");
                continue;
            }
            self.publish_services(touches.services);
            self.publish_config(touches.config);
            self.update_status(true);
        }
    }

    /// Apply one event; say which services and which config keys (`None`:
    /// all of them) to publish again.
    fn apply(&mut self, update: Update) -> Touches {
        let cluster = &mut self.cluster;
        let touched = match update {
            Update::Services(change) => match change {
                Change::Reset(all) => {
                    cluster.reset_services(all.into_iter().filter_map(|(k, r)| Some((k, r?))).collect())
                }
                Change::Apply((name, record)) => cluster.apply_service(name, record),
                Change::Delete((name, _)) => cluster.apply_service(name, None),
            },
            Update::Slices(change) => match change {
                Change::Reset(all) => {
                    cluster.reset_slices(all.into_iter().filter_map(|(k, r)| Some((k, r?))).collect())
                }
                Change::Apply((name, record)) => cluster.apply_slice(name, record),
                Change::Delete((name, _)) => cluster.apply_slice(name, None),
            },
            Update::Pods(change) => {
                let touched = match change {
                    Change::Reset(all) => cluster.reset_pods(all),
                    Change::Apply((name, record)) => cluster.apply_pod(name, Some(record)),
                    Change::Delete((name, _)) => cluster.apply_pod(name, None),
                };
                // Pods can be ServiceEntry endpoints too.
                if self.entries_select_pods() {
                    self.compute_entry_services();
                    return Touches { services: Touched::Everything, config: ConfigTouched::Nothing };
                }
                touched
            }
            Update::Nodes(change) => match change {
                Change::Reset(all) => cluster.reset_nodes(all),
                Change::Apply((name, record)) => cluster.apply_node(name, Some(record)),
                Change::Delete((name, _)) => cluster.apply_node(name, None),
            },
            Update::Namespaces(change) => {
                let touched = match change {
                    Change::Reset(all) => cluster.reset_namespaces(all),
                    Change::Apply((name, labels)) => cluster.apply_namespace(name, Some(labels)),
                    Change::Delete((name, _)) => cluster.apply_namespace(name, None),
                };
                // Which namespaces are seen changes config too.
                let config = if touched == Touched::Nothing { ConfigTouched::Nothing } else { ConfigTouched::All };
                return Touches { services: touched, config };
            }
            Update::Config(kind, change) => return self.apply_config(kind, change),
        };
        Touches { services: touched, config: ConfigTouched::Nothing }
    }

    fn apply_config(&mut self, kind: Kind, change: Change<(ResourceKey, Result<Resource, Invalid>)>) -> Touches {
        let keys = match change {
            Change::Reset(all) => {
                let listed: BTreeSet<ResourceKey> = all.iter().map(|(k, _)| k.clone()).collect();
                self.resources.retain(|k, _| k.kind != kind || listed.contains(k));
                self.invalid.retain(|k, _| k.kind != kind || listed.contains(k));
                for (key, decoded) in all {
                    self.take(key, decoded);
                }
                ConfigTouched::All
            }
            Change::Apply((key, decoded)) => {
                self.take(key.clone(), decoded);
                ConfigTouched::One(key)
            }
            Change::Delete((key, _)) => {
                self.resources.remove(&key);
                self.invalid.remove(&key);
                ConfigTouched::One(key)
            }
        };
        let touched = if matches!(kind, Kind::ServiceEntry | Kind::WorkloadEntry) {
            self.compute_entry_services();
            Touched::Everything
        } else {
            Touched::Nothing
        };
        Touches { services: touched, config: keys }
    }

    /// Whether some ServiceEntry selects workloads (and so pods).
    fn entries_select_pods(&self) -> bool {
        self.resources.values().any(|r| matches!(&r.spec, Spec::ServiceEntry(se) if se.workload_selector.is_some()))
    }

    /// The ServiceEntries' services, their selectors applied to
    /// WorkloadEntries and to the ready pods of their namespace.
    fn compute_entry_services(&mut self) {
        let entries: Vec<&Resource> = self
            .resources
            .values()
            .filter(|r| matches!(r.spec, Spec::ServiceEntry(_) | Spec::WorkloadEntry(_)))
            .filter(|r| self.cluster.selects(&r.meta.namespace))
            .map(Arc::as_ref)
            .collect();
        let selecting: BTreeSet<&str> = entries
            .iter()
            .filter(|r| matches!(&r.spec, Spec::ServiceEntry(se) if se.workload_selector.is_some()))
            .map(|r| r.meta.namespace.as_str())
            .collect();
        let pods: Vec<(&str, &str, WorkloadEntry)> = selecting
            .iter()
            .flat_map(|ns| self.cluster.pods_in(ns).map(move |p| (*ns, p)))
            .filter_map(|(ns, p)| {
                let entry = WorkloadEntry {
                    address: Some(p.address.clone()?),
                    labels: p.labels.as_ref().clone(),
                    service_account: p.service_account.clone(),
                    locality: p.locality.as_ref().map(ToString::to_string),
                    ..WorkloadEntry::default()
                };
                Some((ns, p.workload.as_str(), entry))
            })
            .collect();
        let platform: Vec<NamespacedWorkload<'_>> =
            pods.iter().map(|(namespace, workload, entry)| NamespacedWorkload { namespace, workload, entry }).collect();
        self.entry_services =
            services_of_all(entries, &platform).into_iter().map(|s| (s.service.hostname.clone(), s)).collect();
    }

    /// Keep a valid object; report an invalid one and keep serving its
    /// last good version.
    fn take(&mut self, key: ResourceKey, decoded: Result<Resource, Invalid>) {
        match decoded {
            Ok(resource) => {
                if self.invalid.remove(&key).is_some() {
                    self.write_status(&key, None);
                }
                self.resources.insert(key, Arc::new(resource));
            }
            Err(invalid) => {
                if self.invalid.get(&key) != Some(&invalid) {
                    self.write_status(&key, Some(&invalid));
                    self.invalid_total += 1;
                    tracing::warn!(target: "adapter_k8s", "{invalid}; skipped{}",
                        if self.resources.contains_key(&key) { ", the last good version still applies" } else { "" });
                }
                self.invalid.insert(key, invalid);
            }
        }
    }

    /// Say on the object what is wrong with it (or that nothing is), when
    /// asked to; only on a change, so the write's own event ends there.
    fn write_status(&self, key: &ResourceKey, invalid: Option<&Invalid>) {
        let Some((client, apis)) = &self.status_writer else { return };
        let Some(api) = apis.get(&key.kind) else { return };
        let (client, api, key, invalid) = (client.clone(), api.clone(), key.clone(), invalid.cloned());
        tokio::spawn(async move {
            if let Err(e) = crds::write_status(&client, &api, &key, invalid.as_ref()).await {
                tracing::warn!(target: "adapter_k8s", object = %key, error = %e, "could not write the status");
            }
        });
    }

    /// A Kubernetes service merged with ServiceEntries of the same host.
    fn merged(&self, hostname: &str, kube: Option<ServiceState>) -> Option<ServiceState> {
        match (kube, self.entry_services.get(hostname)) {
            (Some(kube), Some(entry)) => Some(merge_states(&[&kube, entry])),
            (kube, entry) => kube.or_else(|| entry.cloned()),
        }
    }

    fn publish_services(&self, touched: Touched) {
        match touched {
            Touched::Nothing => {}
            Touched::Services(names) => {
                for name in names {
                    let hostname = self.cluster.hostname(&name);
                    match self.merged(&hostname, self.cluster.state_of(&name)) {
                        Some(state) => self.services.upsert(hostname, state),
                        None => self.services.delete(&hostname),
                    }
                }
            }
            Touched::Everything => {
                let mut all: KeyedMap<String, ServiceState> = self.entry_services.clone();
                for (hostname, state) in self.cluster.states() {
                    if let Some(merged) = self.merged(&hostname, Some(state)) {
                        all.insert(hostname, merged);
                    }
                }
                self.services.replace_all(all);
            }
        }
    }

    fn publish_config(&self, touched: ConfigTouched) {
        let visible = |key: &ResourceKey| self.cluster.selects(&key.namespace);
        match touched {
            ConfigTouched::Nothing => {}
            ConfigTouched::All => {
                let all = self.resources.iter().filter(|(k, _)| visible(k)).map(|(k, r)| (k.clone(), Arc::clone(r)));
                self.config.replace_all(all.collect());
            }
            ConfigTouched::One(key) => match self.resources.get(&key).filter(|_| visible(&key)) {
                Some(r) => self.config.upsert(key, Arc::clone(r)),
                None => self.config.delete(&key),
            },
        }
    }

    fn update_status(&self, synced: bool) {
        let (services, endpoints, pods) = self.cluster.counts();
        let mut status = lock(&self.status);
        status.synced = synced;
        status.services = services;
        status.endpoints = endpoints;
        status.pods = pods;
        status.resources = self.resources.len();
        status.invalid = self.invalid.values().cloned().collect();
        status.invalid_total = self.invalid_total;
    }
}
