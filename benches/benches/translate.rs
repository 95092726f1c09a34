//! Translation of a 1,000-service mesh (1,000 VirtualServices and
//! DestinationRules, 10,000 endpoints) for one sidecar.

use criterion::{criterion_group, criterion_main, Criterion};
use mesh_core::mesh::MeshSnapshot;
use mesh_core::registry::MemoryRegistry;
use mesh_core::store::MemoryConfigStore;
use mesh_core::translate::{translate, ProxyIdentity};
use mesh_core::{ConfigStore, ServiceRegistry};

fn translate_1000(c: &mut Criterion) {
    let (config, services) = benches::mesh(1000, 10);
    let store = MemoryConfigStore::new();
    store.replace_all(config);
    let registry = MemoryRegistry::new("bench");
    registry.replace_all(services);
    let mesh = MeshSnapshot { config: store.snapshot(), services: registry.snapshot() };
    let proxy = ProxyIdentity::sidecar("client", "default", Default::default());
    let mut group = c.benchmark_group("translate");
    group.sample_size(10);
    group.bench_function("sidecar/1000_services_10000_endpoints", |b| {
        b.iter(|| translate(&mesh, &proxy).clusters.len())
    });
    group.finish();
}

criterion_group!(benches, translate_1000);
criterion_main!(benches);
