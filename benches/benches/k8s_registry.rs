//! adapter-k8s at cluster scale: 5,000 Services in 50 namespaces, 50,000
//! endpoints (ten pods per service, one EndpointSlice each), decoded by
//! k8s-openapi as the watches decode them.
//!
//! - `initial_sync`: every object turned into the fields the adapter keeps,
//!   the cluster state built, every service's endpoints computed (what the
//!   first list of each watch does before anything is published);
//! - `pod_relabelled` / `slice_changed`: one event, and the one service it
//!   touches computed again;
//! - then, outside criterion, the memory the adapter state takes after the
//!   sync (goal: under 200 MB), counted by the global allocator.

use adapter_k8s::cluster::{ClusterState, Touched};
use adapter_k8s::objects::{object_name, PodRecord, ServiceRecord, SliceRecord};
use criterion::{criterion_group, criterion_main, Criterion};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use mesh_core::keyed::KeyedMap;
use mesh_core::model::ServiceState;
use serde_json::json;

#[global_allocator]
static ALLOCATOR: benches::alloc::Counting<std::alloc::System> = benches::alloc::Counting::new(std::alloc::System);

const NAMESPACES: usize = 50;
const SERVICES: usize = 5000;
const PODS_PER_SERVICE: usize = 10;

struct Objects {
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
    pods: Vec<Pod>,
}

fn decode<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
}

/// A cluster as the API server would list it, with the fields real objects
/// carry (managed fields, owner references, container specs) that the
/// adapter drops.
fn cluster() -> Objects {
    let mut objects = Objects { services: Vec::new(), slices: Vec::new(), pods: Vec::new() };
    for s in 0..SERVICES {
        let ns = format!("team-{}", s % NAMESPACES);
        let name = format!("svc-{s}");
        objects.services.push(decode(json!({
            "metadata": {"name": name, "namespace": ns, "labels": {"app": name},
                         "managedFields": [{"manager": "kubectl", "operation": "Update", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"clusterIP": format!("10.96.{}.{}", s / 250, s % 250), "selector": {"app": name},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080},
                               {"name": "grpc-api", "port": 7070, "targetPort": 7070}]}
        })));
        let mut endpoints = Vec::new();
        for p in 0..PODS_PER_SERVICE {
            let pod = format!("{name}-7d9c8b6f5-{p:05}");
            let ip = format!("10.{}.{}.{}", 1 + s / 6000, (s / 25) % 240, (s % 25) * 10 + p);
            objects.pods.push(decode(json!({
                "metadata": {"name": pod, "namespace": ns,
                             "labels": {"app": name, "version": format!("v{}", p % 3), "pod-template-hash": "7d9c8b6f5"},
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{name}-7d9c8b6f5"), "uid": "u"}]},
                "spec": {"serviceAccountName": name, "nodeName": format!("node-{}", s % 100),
                         "containers": [{"name": "app", "image": "registry.example/app:1.0",
                                         "ports": [{"name": "http", "containerPort": 8080}]}]},
                "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}
            })));
            endpoints.push(json!({
                "addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": format!("node-{}", s % 100), "zone": format!("zone-{}", s % 3),
                "targetRef": {"kind": "Pod", "name": pod, "namespace": ns}
            }));
        }
        objects.slices.push(decode(json!({
            "metadata": {"name": format!("{name}-abcde"), "namespace": ns,
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "endpoints": endpoints,
            "ports": [{"name": "http", "port": 8080}, {"name": "grpc-api", "port": 7070}]
        })));
    }
    objects
}

/// What the adapter does with the first list of every watch.
fn initial_sync(objects: &Objects) -> (ClusterState, KeyedMap<String, ServiceState>) {
    let mut state = ClusterState::new("cluster.local", Vec::new());
    state.reset_services(
        objects
            .services
            .iter()
            .filter_map(|s| Some((object_name(&s.metadata), ServiceRecord::from_kube(s, "cluster.local")?)))
            .collect(),
    );
    state.reset_pods(objects.pods.iter().map(|p| (object_name(&p.metadata), PodRecord::from_kube(p))).collect());
    state.reset_slices(
        objects.slices.iter().filter_map(|s| Some((object_name(&s.metadata), SliceRecord::from_kube(s)?))).collect(),
    );
    let published: KeyedMap<String, ServiceState> = state.states().collect();
    (state, published)
}

fn k8s_registry(c: &mut Criterion) {
    let objects = cluster();
    let (mut state, published) = initial_sync(&objects);
    let endpoints: usize = published.values().map(|s| s.endpoints.len()).sum();
    assert_eq!((published.len(), endpoints), (SERVICES, SERVICES * PODS_PER_SERVICE));

    let mut group = c.benchmark_group("k8s_registry");
    group.sample_size(10);
    group.bench_function("initial_sync/5000_services_50000_endpoints", |b| b.iter(|| initial_sync(&objects).1.len()));
    let mut pod = objects.pods[12_345].clone();
    let mut flip = 0u32;
    group.bench_function("pod_relabelled/recompute_its_service", |b| {
        b.iter(|| {
            flip += 1;
            pod.metadata.labels.get_or_insert_with(Default::default).insert("version".into(), format!("v{flip}"));
            let Touched::Services(names) =
                state.apply_pod(object_name(&pod.metadata), Some(PodRecord::from_kube(&pod)))
            else {
                panic!("the pod's service is touched")
            };
            names.iter().filter_map(|n| state.state_of(n)).count()
        })
    });
    let mut slice = objects.slices[2_500].clone();
    group.bench_function("slice_changed/recompute_its_service", |b| {
        b.iter(|| {
            flip += 1;
            slice.endpoints[0].conditions.get_or_insert_with(Default::default).ready = Some(flip.is_multiple_of(2));
            let Touched::Services(names) =
                state.apply_slice(object_name(&slice.metadata), SliceRecord::from_kube(&slice))
            else {
                panic!("the slice's service is touched")
            };
            names.iter().filter_map(|n| state.state_of(n)).count()
        })
    });
    group.finish();
    drop((state, published));

    // Memory: what stays after the sync (the state and what is published),
    // the objects themselves dropped as the watches drop them.
    let objects_bytes = ALLOCATOR.live_bytes();
    let kept = {
        let before = ALLOCATOR.live_bytes();
        ALLOCATOR.reset_peak();
        let kept = initial_sync(&objects);
        let after = ALLOCATOR.live_bytes();
        println!(
            "k8s_registry memory: adapter state after the sync {:.1} MB (goal: under 200 MB); peak during the sync {:.1} MB above the decoded objects ({:.1} MB)",
            (after - before) as f64 / 1e6,
            (ALLOCATOR.peak_bytes() - before) as f64 / 1e6,
            objects_bytes as f64 / 1e6,
        );
        kept
    };
    drop(kept);
}

criterion_group!(benches, k8s_registry);
criterion_main!(benches);
