//! From files to one consistent catalog: config resources and the service
//! registry, with every problem located.
//!
//! # What is applied when something is wrong
//!
//! Valid resources are applied and invalid ones reported, as Istio does;
//! and beyond Istio, a bad edit never takes away what was serving:
//!
//! 1. A file that cannot be read (unreadable, over the size limit, a NUL
//!    byte, not UTF-8) or that has a YAML syntax error in any document is
//!    not applied at all; its last good version, if it had one, keeps
//!    serving. (A syntax error usually means an edit in progress.)
//! 2. A resource that parses but does not decode or validate is left out;
//!    if the same file held a good version of it (same kind, namespace and
//!    name) before, that version keeps serving.
//! 3. A resource defined twice is taken from the first place (files in
//!    path order, documents in file order); the second is an error.
//! 4. A file that is deleted takes its resources with it.
//!
//! Kinds the mesh does not read are skipped with one warning per kind. As
//! `istioctl validate` does, an unknown field in an Istio kind is an error
//! (the resource is not applied; [`LoaderOptions::allow_unknown_fields`]
//! makes it a warning and applies the resource without it), and so is a
//! kind Istio does not have in an Istio API group (`VirtualServce`).
//! Problems point at the line of their field.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mesh_core::config::{self, ConfigError, Decoded, Resource, ResourceKey, Spec};
use mesh_core::model::{Labels, ServiceState};
use mesh_core::registry::{merge_states, RegistrySnapshot};
use mesh_core::service_entry::{services_of, NamespacedWorkload};
use mesh_core::store::ConfigSnapshot;

use crate::documents;
use crate::files;
use crate::kube::{self, Deployment, EndpointSlice, KubeService, Pod};
use crate::problem::{Location, Problem, Severity};

/// One object the mesh reads.
#[derive(Debug)]
pub enum Object {
    Istio(Arc<Resource>),
    Service(KubeService),
    EndpointSlice(EndpointSlice),
    Pod(Pod),
    Deployment(Deployment),
}

impl Object {
    /// Does the registry read it (so a change to it means rebuilding the
    /// registry)?
    fn feeds_registry(&self) -> bool {
        match self {
            Object::Istio(r) => matches!(r.spec, Spec::ServiceEntry(_) | Spec::WorkloadEntry(_)),
            Object::Service(_) | Object::EndpointSlice(_) | Object::Pod(_) | Object::Deployment(_) => true,
        }
    }
}

/// Kind, namespace and name: what makes two objects the same object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

#[derive(Clone, Debug)]
struct Parsed {
    location: Location,
    key: ObjectKey,
    object: Arc<Object>,
}

/// A file as last parsed, reused while its content does not change.
#[derive(Clone, Debug)]
struct CachedFile {
    fingerprint: Option<files::Fingerprint>,
    hash: u64,
    objects: Vec<Parsed>,
    problems: Vec<Problem>,
    /// `apiVersion kind` of objects skipped, with where each was first seen.
    skipped_kinds: Vec<(String, Location)>,
}

/// A workload the files declare (a Pod, a Deployment's pods, a
/// WorkloadEntry, an endpoint): what selectors can match.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Workload {
    pub namespace: String,
    pub labels: Labels,
}

/// Everything one load produced.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub config: ConfigSnapshot,
    pub services: RegistrySnapshot,
    pub problems: Vec<Problem>,
    /// Where each Istio resource was read from.
    pub origins: BTreeMap<ResourceKey, Location>,
    pub workloads: BTreeSet<Workload>,
    pub files: usize,
}

impl Catalog {
    pub fn errors(&self) -> usize {
        self.problems.iter().filter(|p| p.severity == Severity::Error).count()
    }
}

#[derive(Clone, Debug)]
pub struct LoaderOptions {
    /// The namespace of resources that name none.
    pub default_namespace: String,
    /// Larger files are refused.
    pub max_file_bytes: u64,
    /// Apply Istio resources with fields the mesh does not know (warned
    /// about) instead of rejecting them.
    pub allow_unknown_fields: bool,
}

impl Default for LoaderOptions {
    fn default() -> Self {
        LoaderOptions {
            default_namespace: "default".into(),
            max_file_bytes: 16 * 1024 * 1024,
            allow_unknown_fields: false,
        }
    }
}

/// Reads the file set, keeping what it needs to apply the rules above
/// across reloads.
pub struct Loader {
    roots: Vec<PathBuf>,
    options: LoaderOptions,
    files: BTreeMap<PathBuf, CachedFile>,
    registry: Option<CachedRegistry>,
}

/// The registry of the last load, and the content hashes of the files it
/// was built from: reused while those files do not change.
struct CachedRegistry {
    sources: Vec<(PathBuf, u64)>,
    services: RegistrySnapshot,
    workloads: BTreeSet<Workload>,
}

impl Loader {
    pub fn new(roots: Vec<PathBuf>, options: LoaderOptions) -> Loader {
        Loader { roots, options, files: BTreeMap::new(), registry: None }
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Read everything under the roots (parsing only files whose content
    /// changed) and build the catalog.
    pub fn load(&mut self) -> Catalog {
        let (paths, mut problems) = files::discover(&self.roots);
        let mut files = BTreeMap::new();
        for (path, fingerprint) in paths {
            let previous = self.files.remove(&path);
            if let Some(p) = previous.as_ref().filter(|p| p.fingerprint.is_some() && p.fingerprint == fingerprint) {
                files.insert(path, p.clone());
                continue;
            }
            let cached = match files::read(&path, self.options.max_file_bytes).text {
                Err(problem) => {
                    problems.push(keeps_serving(problem, previous.is_some()));
                    match previous {
                        Some(p) => p,
                        None => continue,
                    }
                }
                Ok(text) => {
                    let hash = xxhash_rust::xxh64::xxh64(text.as_bytes(), 0);
                    let mut cached = match previous {
                        Some(p) if p.hash == hash => p,
                        previous => parse_file(&path, &text, hash, previous.as_ref(), &self.options),
                    };
                    cached.fingerprint = fingerprint.filter(files::Fingerprint::is_settled);
                    cached
                }
            };
            files.insert(path, cached);
        }
        self.files = files;
        let sources: Vec<(PathBuf, u64)> = self
            .files
            .iter()
            .filter(|(_, f)| f.objects.iter().any(|p| p.object.feeds_registry()))
            .map(|(p, f)| (p.clone(), f.hash))
            .collect();
        let reuse =
            self.registry.as_ref().filter(|r| r.sources == sources).map(|r| (r.services.clone(), r.workloads.clone()));
        let catalog = assemble(&self.files, problems, reuse);
        self.registry =
            Some(CachedRegistry { sources, services: catalog.services.clone(), workloads: catalog.workloads.clone() });
        catalog
    }
}

fn keeps_serving(mut p: Problem, had_previous: bool) -> Problem {
    if had_previous {
        p.message.push_str("; the last good version keeps serving");
    }
    p
}

fn parse_file(
    path: &Path,
    text: &str,
    hash: u64,
    previous: Option<&CachedFile>,
    options: &LoaderOptions,
) -> CachedFile {
    let (raws, syntax_problems) = documents::objects(path, text);
    if !syntax_problems.is_empty() {
        // Rule 1: a syntax error anywhere holds the whole file back.
        let problems = syntax_problems.into_iter().map(|p| keeps_serving(p, previous.is_some())).collect();
        return match previous {
            Some(prev) => CachedFile { hash, problems, ..prev.clone() },
            None => CachedFile { fingerprint: None, hash, objects: vec![], problems, skipped_kinds: vec![] },
        };
    }
    let mut out = CachedFile { fingerprint: None, hash, objects: vec![], problems: vec![], skipped_kinds: vec![] };
    for raw in raws {
        // Each document's tree is handed over, not copied, and gone once
        // decoded: the load's peak is then one tree, not two.
        match decode_object(raw.value, &raw.location, options) {
            Decode::Object(key, object, warnings) => {
                out.problems.extend(warnings.into_iter().map(|p| at_field_line(p, text)));
                out.objects.push(Parsed { location: raw.location, key, object });
            }
            Decode::Skipped(kind) => out.skipped_kinds.push((kind, raw.location)),
            Decode::Invalid(key, problems) => {
                // Rule 2: the file's last good version of this object stays.
                let kept = key.as_ref().and_then(|k| previous?.objects.iter().find(|p| &p.key == k));
                out.problems
                    .extend(problems.into_iter().map(|p| keeps_serving(at_field_line(p, text), kept.is_some())));
                if let Some(k) = kept {
                    out.objects.push(Parsed { location: raw.location, ..k.clone() });
                }
            }
        }
    }
    out
}

enum Decode {
    Object(ObjectKey, Arc<Object>, Vec<Problem>),
    /// A kind the mesh does not read: `apiVersion kind`.
    Skipped(String),
    Invalid(Option<ObjectKey>, Vec<Problem>),
}

fn decode_object(value: serde_json::Value, location: &Location, options: &LoaderOptions) -> Decode {
    let loc = || Some(location.clone());
    let text = |field: &str| value.get(field).and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let (api_version, kind) = (text("apiVersion"), text("kind"));
    if api_version.is_empty() || kind.is_empty() {
        let missing = if api_version.is_empty() { "apiVersion" } else { "kind" };
        return Decode::Invalid(None, vec![Problem::error(loc(), format!("`{missing}` is required")).field(missing)]);
    }
    let meta = value.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(|n| n.as_str()).unwrap_or_default().to_string();
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(|n| n.as_str())
        .unwrap_or(&options.default_namespace)
        .to_string();
    let key = ObjectKey { kind: kind.clone(), namespace, name };
    if config::Kind::from_type(&api_version, &kind).is_some() {
        return decode_istio(value, key, location, options);
    }
    if let Some(known) = istio_kinds_of(&api_version).filter(|known| !known.contains(&kind.as_str())) {
        let message = format!("`{kind}` is no kind of {api_version} (a typo? it has {})", known.join(", "));
        return Decode::Invalid(
            Some(key.clone()),
            vec![Problem::error(loc(), message).resource(key.to_string()).field("kind")],
        );
    }
    fn typed<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, (String, String)> {
        serde_path_to_error::deserialize(value).map_err(|e| (e.path().to_string(), e.into_inner().to_string()))
    }
    let object = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Service") => typed(value).map(Object::Service),
        ("discovery.k8s.io/v1", "EndpointSlice") => typed(value).map(Object::EndpointSlice),
        ("v1", "Pod") => typed(value).map(Object::Pod),
        ("apps/v1", "Deployment") => typed(value).map(Object::Deployment),
        _ => return Decode::Skipped(format!("{api_version} {kind}")),
    };
    match object {
        Ok(_) if key.name.is_empty() => {
            Decode::Invalid(None, vec![Problem::error(loc(), "is required").field("metadata.name")])
        }
        Ok(o) => Decode::Object(key, Arc::new(o), vec![]),
        Err((path, reason)) => Decode::Invalid(
            Some(key.clone()),
            vec![Problem::error(loc(), reason).resource(key.to_string()).field(path)],
        ),
    }
}

/// An Istio kind the mesh reads: decoded and validated; unknown fields are
/// errors unless allowed.
fn decode_istio(value: serde_json::Value, key: ObjectKey, location: &Location, options: &LoaderOptions) -> Decode {
    let loc = || Some(location.clone());
    match config::decode(value, &options.default_namespace) {
        Ok(Decoded::Istio { resource, unknown_fields })
            if options.allow_unknown_fields || unknown_fields.is_empty() =>
        {
            let warnings = unknown_fields
                .into_iter()
                .map(|f| Problem::warning(loc(), "unknown field, ignored (a typo?)").resource(key.to_string()).field(f))
                .collect();
            Decode::Object(key, Arc::new(Object::Istio(Arc::new(resource))), warnings)
        }
        Ok(Decoded::Istio { unknown_fields, .. }) => {
            let problems = unknown_fields
                .into_iter()
                .map(|f| {
                    Problem::error(loc(), "unknown field (a typo?); the resource is not applied")
                        .resource(key.to_string())
                        .field(f)
                })
                .collect();
            Decode::Invalid(Some(key), problems)
        }
        Ok(Decoded::Other { api_version, kind, .. }) => Decode::Skipped(format!("{api_version} {kind}")),
        Err(ConfigError::Invalid(errors)) => Decode::Invalid(
            Some(key),
            errors
                .into_iter()
                .map(|e| Problem::error(loc(), e.reason).resource(e.resource.to_string()).field(e.field))
                .collect(),
        ),
        Err(ConfigError::Schema { path, reason, .. }) if key.name.is_empty() => {
            Decode::Invalid(None, vec![Problem::error(loc(), reason).field(path)])
        }
        Err(ConfigError::Schema { path, reason, .. }) => Decode::Invalid(
            Some(key.clone()),
            vec![Problem::error(loc(), reason).resource(key.to_string()).field(path)],
        ),
        Err(e) => {
            Decode::Invalid(Some(key.clone()), vec![Problem::error(loc(), e.to_string()).resource(key.to_string())])
        }
    }
}

/// Istio's kinds in an Istio API group (`networking.istio.io/v1`), read
/// by the mesh or not; `None` for any other group.
fn istio_kinds_of(api_version: &str) -> Option<&'static [&'static str]> {
    let group = api_version.split('/').next().unwrap_or_default();
    Some(match group {
        "networking.istio.io" => &[
            "DestinationRule",
            "EnvoyFilter",
            "Gateway",
            "ProxyConfig",
            "ServiceEntry",
            "Sidecar",
            "VirtualService",
            "WorkloadEntry",
            "WorkloadGroup",
        ],
        "security.istio.io" => &["AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication"],
        "telemetry.istio.io" => &["Telemetry"],
        "extensions.istio.io" => &["WasmPlugin"],
        _ => return None,
    })
}

/// Point a problem at its field's line, when it names a field found in its
/// document.
fn at_field_line(mut problem: Problem, text: &str) -> Problem {
    let (Some(location), Some(field)) = (problem.location.as_mut(), problem.field.as_deref()) else { return problem };
    let path = match location.item {
        Some(i) => format!("items[{i}].{field}"),
        None => field.to_string(),
    };
    if let Some(line) = documents::field_line(text, location.document, &path) {
        location.line = line;
    }
    problem
}

/// Build the catalog; `registry` is the previous registry and workloads
/// when none of their source files changed.
fn assemble(
    files: &BTreeMap<PathBuf, CachedFile>,
    mut problems: Vec<Problem>,
    registry: Option<(RegistrySnapshot, BTreeSet<Workload>)>,
) -> Catalog {
    let mut catalog = Catalog { files: files.len(), ..Catalog::default() };
    let mut first_seen: BTreeMap<&ObjectKey, &Location> = BTreeMap::new();
    let mut skipped: BTreeMap<&str, &Location> = BTreeMap::new();
    let mut k8s_services = Vec::new();
    let mut slices: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    let mut pods: BTreeMap<(String, String), &Pod> = BTreeMap::new();
    let mut resources = Vec::new();
    for file in files.values() {
        problems.extend(file.problems.iter().cloned());
        for (kind, location) in &file.skipped_kinds {
            skipped.entry(kind.as_str()).or_insert(location);
        }
        for parsed in &file.objects {
            if let Some(first) = first_seen.get(&parsed.key) {
                problems.push(
                    Problem::error(
                        Some(parsed.location.clone()),
                        format!("defined twice; the first definition, at {first}, is used"),
                    )
                    .resource(parsed.key.to_string()),
                );
                continue;
            }
            first_seen.insert(&parsed.key, &parsed.location);
            let ns = parsed.key.namespace.clone();
            match &*parsed.object {
                Object::Istio(r) => resources.push((r, &parsed.location)),
                Object::Service(s) => k8s_services.push((ns, s)),
                Object::EndpointSlice(s) => {
                    if let Some(svc) = s.service_name() {
                        slices.entry((ns, svc.to_string())).or_default().push(s);
                    }
                }
                Object::Pod(p) => {
                    catalog.workloads.insert(Workload { namespace: ns.clone(), labels: p.metadata.labels.clone() });
                    pods.insert((ns, parsed.key.name.clone()), p);
                }
                Object::Deployment(d) => {
                    catalog
                        .workloads
                        .insert(Workload { namespace: ns, labels: d.spec.template.metadata.labels.clone() });
                }
            }
        }
    }
    for (kind, location) in skipped {
        problems.push(Problem::warning(
            Some(location.clone()),
            format!("`{kind}` is not a kind the mesh reads; skipped (this warning is given once per kind)"),
        ));
    }

    match registry {
        Some((services, workloads)) => {
            catalog.services = services;
            catalog.workloads = workloads;
        }
        None => build_registry(&mut catalog, &k8s_services, &slices, &pods, &resources),
    }
    for (r, location) in resources {
        catalog.origins.insert(r.key(), location.clone());
        catalog.config.insert(r.key(), Arc::clone(r));
    }
    problems.sort_by(|a, b| {
        (a.file(), a.location.as_ref().map(|l| (l.line, l.item)))
            .cmp(&(b.file(), b.location.as_ref().map(|l| (l.line, l.item))))
    });
    catalog.problems = problems;
    catalog
}

/// The registry: Kubernetes services first, then ServiceEntries; the views
/// of one hostname merge as the aggregate registry merges them.
fn build_registry(
    catalog: &mut Catalog,
    k8s_services: &[(String, &KubeService)],
    slices: &BTreeMap<(String, String), Vec<&EndpointSlice>>,
    pods: &BTreeMap<(String, String), &Pod>,
    resources: &[(&Arc<Resource>, &Location)],
) {
    // Kubernetes services first, then ServiceEntries; one
    // hostname's views merge as the aggregate registry merges them.
    let mut views: BTreeMap<String, Vec<ServiceState>> = BTreeMap::new();
    let all_pods: Vec<&Pod> = pods.values().copied().collect();
    for (ns, svc) in k8s_services {
        let service = kube::service(svc, ns);
        let endpoints = match (slices.get(&(ns.clone(), svc.metadata.name.clone())), svc.spec.external_name.as_ref()) {
            (_, Some(external)) if service.mesh_external => vec![mesh_core::model::Endpoint::new(external.clone())],
            (Some(s), _) => kube::endpoints_from_slices(s, pods, ns),
            (None, _) => {
                let in_ns: Vec<&Pod> = all_pods
                    .iter()
                    .copied()
                    .filter(|p| p.metadata.namespace.as_deref().unwrap_or("default") == ns)
                    .collect();
                kube::endpoints_from_pods(svc, &in_ns)
            }
        };
        views
            .entry(service.hostname.clone())
            .or_default()
            .push(ServiceState { service: Arc::new(service), endpoints: endpoints.into() });
    }
    let workloads: Vec<NamespacedWorkload<'_>> = resources
        .iter()
        .filter_map(|(r, _)| match &r.spec {
            Spec::WorkloadEntry(entry) => Some(NamespacedWorkload {
                namespace: &r.meta.namespace,
                workload: mesh_core::service_entry::entry_workload_name(r, entry),
                entry,
            }),
            _ => None,
        })
        .collect();
    for (r, _) in resources {
        match &r.spec {
            Spec::ServiceEntry(se) => {
                for (service, endpoints) in services_of(se, &r.meta.namespace, &workloads) {
                    views
                        .entry(service.hostname.clone())
                        .or_default()
                        .push(ServiceState { service: Arc::new(service), endpoints: endpoints.into() });
                }
                for e in &se.endpoints {
                    catalog
                        .workloads
                        .insert(Workload { namespace: r.meta.namespace.clone(), labels: e.labels.clone() });
                }
            }
            Spec::WorkloadEntry(w) => {
                catalog.workloads.insert(Workload { namespace: r.meta.namespace.clone(), labels: w.labels.clone() });
            }
            _ => {}
        }
    }
    for (host, states) in views {
        let refs: Vec<&ServiceState> = states.iter().collect();
        let merged = merge_states(&refs);
        for e in merged.endpoints.iter().filter(|e| !e.labels.is_empty()) {
            catalog
                .workloads
                .insert(Workload { namespace: merged.service.namespace.clone(), labels: e.labels.clone() });
        }
        catalog.services.insert(host, merged);
    }
}
