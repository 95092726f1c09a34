//! Helpers shared by the integration tests: the repository's Istio-format
//! fixtures and a registry shaped like `bookinfo/kubernetes.yaml` there.

#![allow(dead_code)]

use std::sync::Arc;

use mesh_core::config::{self, Decoded, Resource};
use mesh_core::mesh::MeshSnapshot;
use mesh_core::model::{Endpoint, Labels, Protocol, Resolution, Service, ServicePort};
use mesh_core::registry::MemoryRegistry;
use mesh_core::store::MemoryConfigStore;
use mesh_core::translate::{translate, ProxyIdentity};
use mesh_core::{ConfigStore, ProxyConfig, ServiceRegistry};

/// The Istio resources of a fixture file, decoded and validated.
pub fn load(path: &str) -> Vec<Resource> {
    let text = mesh_testkit::fixtures::read(path);
    config::parse_documents(&text)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .into_iter()
        .filter_map(|doc| match config::decode(doc, "default").unwrap_or_else(|e| panic!("{path}: {e}")) {
            Decoded::Istio { resource, .. } => Some(resource),
            Decoded::Other { .. } => None,
        })
        .collect()
}

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn service(name: &str) -> Service {
    Service {
        hostname: format!("{name}.default.svc.cluster.local"),
        namespace: "default".into(),
        ports: vec![ServicePort { name: "http".into(), port: 9080, protocol: Protocol::Http, target_port: Some(9080) }],
        labels: labels(&[("app", name), ("service", name)]),
        addresses: vec![],
        resolution: Resolution::Static,
        mesh_external: false,
        subject_alt_names: Vec::new(),
    }
}

fn endpoint(ip: &str, app: &str, version: &str) -> Endpoint {
    let mut e = Endpoint::new(ip);
    e.labels = labels(&[("app", app), ("version", version)]);
    e
}

/// The bookinfo services, each version one endpoint.
pub fn bookinfo_registry() -> Arc<MemoryRegistry> {
    let r = Arc::new(MemoryRegistry::new("bookinfo"));
    r.upsert(service("details"), vec![endpoint("10.1.0.1", "details", "v1")]);
    r.upsert(service("ratings"), vec![endpoint("10.2.0.1", "ratings", "v1")]);
    r.upsert(
        service("reviews"),
        vec![
            endpoint("10.3.0.1", "reviews", "v1"),
            endpoint("10.3.0.2", "reviews", "v2"),
            endpoint("10.3.0.3", "reviews", "v3"),
        ],
    );
    r.upsert(service("productpage"), vec![endpoint("10.4.0.1", "productpage", "v1")]);
    r
}

/// Translate for the productpage sidecar with these sample files loaded.
pub fn productpage_config(files: &[&str]) -> ProxyConfig {
    let store = MemoryConfigStore::new();
    for f in files {
        for r in load(f) {
            store.upsert(r);
        }
    }
    let registry = bookinfo_registry();
    let mesh = MeshSnapshot { config: store.snapshot(), services: registry.snapshot() };
    translate(
        &mesh,
        &ProxyIdentity::sidecar("productpage-v1", "default", labels(&[("app", "productpage"), ("version", "v1")])),
    )
}
