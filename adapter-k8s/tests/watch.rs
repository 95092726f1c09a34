//! The adapter through kube-rs's real client and watcher against the fake
//! API server (a child process): bookinfo's manifests as Services, Pods
//! and EndpointSlices; scaling, readiness, CRD edits, invalid objects,
//! relists after 410, restarts, outages and discovery selectors.

mod support;

use std::collections::BTreeMap;

use adapter_k8s::{KubeOptions, KubeSource, LabelSelector};
use mesh_core::config::{Kind, ResourceKey, Spec};
use mesh_core::model::Health;
use mesh_core::{ConfigStore, ServiceRegistry};
use serde_json::json;
use support::{eventually, yaml_documents, Cluster, FakeApi};

const REVIEWS: &str = "reviews.default.svc.cluster.local";

/// Endpoint address -> `version` label of a service, as the registry has it.
fn versions(source: &KubeSource, host: &str) -> Option<BTreeMap<String, String>> {
    let snapshot = ServiceRegistry::snapshot(source);
    let state = snapshot.get(host)?;
    Some(
        state
            .endpoints
            .iter()
            .map(|e| (e.address.clone(), e.labels.get("version").cloned().unwrap_or_default()))
            .collect(),
    )
}

async fn started(fake: &FakeApi, options: KubeOptions) -> KubeSource {
    support::logs();
    let source = KubeSource::start(fake.client(), options);
    tokio::time::timeout(std::time::Duration::from_secs(20), source.ready()).await.expect("initial sync");
    source
}

fn reviews_rule(v1_weight: u32) -> serde_json::Value {
    json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {"hosts": ["reviews"], "http": [{"route": [
            {"destination": {"host": "reviews", "subset": "v1"}, "weight": v1_weight},
            {"destination": {"host": "reviews", "subset": "v3"}, "weight": 100 - v1_weight}]}]}
    })
}

/// The status of a VirtualService once its `Reconciled` condition is `want`.
async fn wait_status(cluster: &Cluster, name: &str, want: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = cluster.istio_status("virtualservices", "default", name).await;
        if status["conditions"][0]["status"] == want {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "{name}: no Reconciled={want} in {status}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn v1_weight(source: &KubeSource) -> Option<u32> {
    let key = ResourceKey { kind: Kind::VirtualService, namespace: "default".into(), name: "reviews".into() };
    let r = ConfigStore::get(source, &key)?;
    let Spec::VirtualService(vs) = &r.spec else { return None };
    vs.http.first()?.route.first()?.weight.map(|w| w as u32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookinfo_scaling_readiness_and_watch_timeouts() {
    // Watches the server closes every second, as a short min-request-timeout.
    let fake = FakeApi::start(&["--max-watch-seconds", "1", "--bookmark-ms", "300"]);
    let cluster = Cluster { client: fake.client() };
    let deployments = cluster.bookinfo("default").await;
    for doc in yaml_documents("bookinfo/subsets.yaml") {
        cluster.apply_istio("default", doc, "v1").await.expect("destination rules");
    }
    let source = started(&fake, KubeOptions::default()).await;

    let snapshot = ServiceRegistry::snapshot(&source);
    let hosts: Vec<&str> = snapshot.keys().map(String::as_str).collect();
    assert_eq!(
        hosts,
        [
            "details.default.svc.cluster.local",
            "productpage.default.svc.cluster.local",
            "ratings.default.svc.cluster.local",
            REVIEWS
        ]
    );
    let reviews = &snapshot[REVIEWS];
    assert_eq!(reviews.service.ports[0].port, 9080);
    assert_eq!(reviews.endpoints.len(), 3);
    for e in reviews.endpoints.iter() {
        assert_eq!(e.service_account.as_deref(), Some("bookinfo-reviews"));
        assert_eq!(e.locality.zone, "zone-a");
        assert_eq!(e.port_for(&reviews.service.ports[0]), 9080);
    }
    let mut seen: Vec<String> = versions(&source, REVIEWS).unwrap().into_values().collect();
    seen.sort();
    assert_eq!(seen, ["v1", "v2", "v3"]);
    assert_eq!(ConfigStore::list(&source, Kind::DestinationRule).len(), 4);

    // A ServiceEntry's workloadSelector picks the ready pods too.
    let entry = json!({
        "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": {"name": "reviews-internal", "namespace": "default"},
        "spec": {"hosts": ["reviews.mesh.internal"], "location": "MESH_INTERNAL", "resolution": "STATIC",
                 "ports": [{"number": 9080, "name": "http", "protocol": "HTTP"}],
                 "workloadSelector": {"labels": {"app": "reviews"}}}
    });
    cluster.apply_istio("default", entry, "v1").await.expect("service entry");
    let selected = eventually(10, "pods selected by the ServiceEntry", || {
        versions(&source, "reviews.mesh.internal").filter(|v| v.len() == 3)
    })
    .await;
    assert_eq!(selected.values().collect::<std::collections::BTreeSet<_>>().len(), 3, "{selected:?}");
    cluster.set_ready("default", "reviews-v1-0", false).await;
    eventually(10, "a not-ready pod leaves the ServiceEntry", || {
        versions(&source, "reviews.mesh.internal").filter(|v| v.len() == 2)
    })
    .await;
    cluster.set_ready("default", "reviews-v1-0", true).await;
    cluster.sync_slice("default", "reviews").await;

    // Scale reviews-v2 up to 3 replicas, once the server has closed every
    // watch at least twice (1 s timeouts) and the adapter has come back.
    let first_round = fake.watches_served().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while fake.watches_served().await < 3 * first_round {
        assert!(std::time::Instant::now() < deadline, "the watches did not come back after the server closed them");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let v2 = deployments.iter().find(|d| d["metadata"]["name"] == "reviews-v2").expect("reviews-v2");
    cluster.scale("default", v2, 3, "10.1.9").await;
    cluster.sync_slice("default", "reviews").await;
    eventually(10, "reviews-v2 scaled to 3", || {
        let v = versions(&source, REVIEWS)?;
        (v.values().filter(|v| *v == "v2").count() == 3).then_some(())
    })
    .await;
    // One pod turns not ready: it leaves the endpoint set.
    cluster.set_ready("default", "reviews-v2-1", false).await;
    cluster.sync_slice("default", "reviews").await;
    eventually(10, "not-ready pod left", || {
        let v = versions(&source, REVIEWS)?;
        (v.len() == 4 && !v.contains_key("10.1.9.2")).then_some(())
    })
    .await;
    // And comes back.
    cluster.set_ready("default", "reviews-v2-1", true).await;
    cluster.sync_slice("default", "reviews").await;
    eventually(10, "ready again", || versions(&source, REVIEWS).filter(|v| v.len() == 5)).await;
    // Scale down to 1.
    cluster.scale("default", v2, 1, "10.1.9").await;
    cluster.sync_slice("default", "reviews").await;
    let v = eventually(10, "scaled down", || versions(&source, REVIEWS).filter(|v| v.len() == 3)).await;
    assert_eq!(v.values().filter(|v| *v == "v2").count(), 1);
    // Every reviews pod gone: the slice is empty, and so is the service.
    for d in deployments.iter().filter(|d| d["metadata"]["name"].as_str().is_some_and(|n| n.starts_with("reviews"))) {
        cluster.scale("default", d, 0, "10.1.9").await;
    }
    cluster.sync_slice("default", "reviews").await;
    eventually(10, "no reviews endpoints", || versions(&source, REVIEWS).filter(|v| v.is_empty())).await;
    // A deleted Service leaves the registry.
    cluster.delete_service("default", "ratings").await;
    eventually(10, "ratings gone", || {
        (!ServiceRegistry::snapshot(&source).contains_key("ratings.default.svc.cluster.local")).then_some(())
    })
    .await;
    let status = source.status();
    assert!(status.synced);
    assert!(status.lists_total >= 9, "each watch listed once: {status:?}");
    assert_eq!(status.invalid_total, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_service_edits_and_invalid_objects() {
    let fake = FakeApi::start(&[]);
    let cluster = Cluster { client: fake.client() };
    cluster.apply_istio("default", reviews_rule(90), "v1").await.expect("vs");
    // An object that would never pass Istio's webhook: skipped and named.
    let mut bad = reviews_rule(50);
    bad["metadata"]["name"] = json!("broken");
    bad["spec"]["http"][0]["route"][0]["weight"] = json!("heavy");
    cluster.apply_istio("default", bad, "v1").await.expect("stored by the API server");
    let source = started(&fake, KubeOptions { write_status: true, ..KubeOptions::default() }).await;

    assert_eq!(v1_weight(&source), Some(90));
    let status = source.status();
    assert_eq!(status.invalid.len(), 1, "{status:?}");
    let invalid = &status.invalid[0];
    assert_eq!((invalid.kind, invalid.name.as_str()), (Kind::VirtualService, "broken"));
    assert!(invalid.error.contains("spec.http[0].route[0].weight"), "{}", invalid.error);
    assert_eq!(ConfigStore::list(&source, Kind::VirtualService).len(), 1);
    // Written back on the object, as istiod does with status enabled.
    let written = wait_status(&cluster, "broken", "False").await;
    assert!(written["conditions"][0]["message"].as_str().unwrap_or("").contains("weight"), "{written}");
    assert_eq!(written["validationMessages"][0]["type"]["code"], "IST0106");

    // An edit flows through.
    let mut events = ConfigStore::watch(&source);
    use futures_util::StreamExt;
    let _reset = events.next().await;
    cluster.apply_istio("default", reviews_rule(10), "v1").await.expect("edit");
    eventually(10, "edit applied", || (v1_weight(&source) == Some(10)).then_some(())).await;
    let event = tokio::time::timeout(std::time::Duration::from_secs(5), events.next()).await.expect("event");
    assert!(matches!(event, Some(mesh_core::keyed::KeyedEvent::Upsert(k, _)) if k.name == "reviews"));

    // An edit that breaks it: reported, and the last good version stays.
    let mut broken = reviews_rule(10);
    broken["spec"]["http"][0]["route"][0]["destination"] = json!({"subset": "v1"});
    cluster.apply_istio("default", broken, "v1").await.expect("stored");
    let status =
        eventually(10, "second invalid object", || Some(source.status()).filter(|s| s.invalid.len() == 2)).await;
    assert!(status.invalid.iter().any(|i| i.name == "reviews" && i.error.contains("host")), "{status:?}");
    assert_eq!(v1_weight(&source), Some(10));
    assert_eq!(status.invalid_total, 2);

    assert_eq!(wait_status(&cluster, "reviews", "False").await["validationMessages"][0]["level"], "ERROR");

    // Fixed again: the report goes away, on the object too.
    cluster.apply_istio("default", reviews_rule(30), "v1").await.expect("fixed");
    eventually(10, "fixed", || (v1_weight(&source) == Some(30) && source.status().invalid.len() == 1).then_some(()))
        .await;
    let cleared = wait_status(&cluster, "reviews", "True").await;
    assert!(cleared.get("validationMessages").is_none(), "{cleared}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relist_after_410_is_a_correct_reset() {
    let fake = FakeApi::start(&["--bookmark-ms", "100000"]);
    let cluster = Cluster { client: fake.client() };
    let deployments = cluster.bookinfo("default").await;
    let source = started(&fake, KubeOptions::default()).await;
    let lists_before = source.status().lists_total;

    // The watches go away; meanwhile the world changes and the history
    // that would have told the adapter is compacted.
    fake.control("pause-watches").await;
    let v3 = deployments.iter().find(|d| d["metadata"]["name"] == "reviews-v3").expect("reviews-v3");
    cluster.scale("default", v3, 0, "10.1.6").await;
    cluster.sync_slice("default", "reviews").await;
    cluster.delete_service("default", "details").await;
    cluster
        .apply_service("default", json!({"metadata": {"name": "payments", "namespace": "default"},
                                        "spec": {"clusterIP": "10.96.0.99", "ports": [{"name": "grpc", "port": 7070}]}}))
        .await;
    fake.control("compact").await;
    fake.control("resume-watches").await;

    let snapshot = eventually(30, "relist after 410", || {
        let s = ServiceRegistry::snapshot(&source);
        (s.contains_key("payments.default.svc.cluster.local")
            && !s.contains_key("details.default.svc.cluster.local")
            && s.get(REVIEWS).is_some_and(|r| r.endpoints.len() == 2))
        .then_some(s)
    })
    .await;
    let mut seen: Vec<&str> = snapshot[REVIEWS].endpoints.iter().map(|e| e.labels["version"].as_str()).collect();
    seen.sort();
    assert_eq!(seen, ["v1", "v2"]);
    let status = source.status();
    assert!(status.lists_total > lists_before, "relisted: {status:?}");
    assert!(status.watch_errors_total > 0, "the refused watches and the 410 were seen: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_restart_restored_from_backup() {
    let fake = FakeApi::start(&[]);
    let cluster = Cluster { client: fake.client() };
    cluster.bookinfo("default").await;
    cluster.apply_istio("default", reviews_rule(90), "v1").await.expect("vs");
    let source = started(&fake, KubeOptions::default()).await;
    assert_eq!(ServiceRegistry::snapshot(&source).len(), 4);

    // A new server on the same address whose versions start far ahead:
    // the adapter's resourceVersions are gone (410), so it relists what
    // the new server holds.
    let fake = fake.restart(&["--rv-start", "1000000"]);
    let cluster = Cluster { client: fake.client() };
    let docs = yaml_documents("bookinfo/kubernetes.yaml");
    let reviews_v1 = docs.iter().find(|d| d["metadata"]["name"] == "reviews-v1").expect("reviews-v1");
    let reviews = docs.iter().find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "reviews").expect("svc");
    cluster.scale("default", reviews_v1, 2, "10.2.0").await;
    cluster.apply_service("default", reviews.clone()).await;
    cluster.sync_slice("default", "reviews").await;
    cluster.apply_istio("default", reviews_rule(60), "v1").await.expect("vs");

    eventually(30, "state of the restored server", || {
        let s = ServiceRegistry::snapshot(&source);
        (s.len() == 1 && s.get(REVIEWS).is_some_and(|r| r.endpoints.len() == 2) && v1_weight(&source) == Some(60))
            .then_some(())
    })
    .await;
    assert!(source.status().watch_errors_total > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_selectors_and_older_crd_versions() {
    // A cluster with only v1alpha3 networking and no security CRDs.
    let fake = FakeApi::start(&["--istio-versions", "v1alpha3"]);
    let cluster = Cluster { client: fake.client() };
    cluster.namespace("default", &[("istio-discovery", "enabled")]).await;
    cluster.namespace("legacy", &[]).await;
    cluster.bookinfo("default").await;
    cluster
        .apply_service(
            "legacy",
            json!({"metadata": {"name": "old", "namespace": "legacy"},
                                       "spec": {"clusterIP": "10.96.1.1", "ports": [{"name": "http", "port": 80}]}}),
        )
        .await;
    let mut legacy_rule = reviews_rule(70);
    legacy_rule["metadata"]["namespace"] = json!("legacy");
    cluster.apply_istio("legacy", legacy_rule, "v1alpha3").await.expect("legacy vs");
    cluster.apply_istio("default", reviews_rule(80), "v1alpha3").await.expect("vs");
    let options = KubeOptions {
        discovery_selectors: vec![LabelSelector::parse("istio-discovery=enabled").unwrap()],
        ..KubeOptions::default()
    };
    let source = started(&fake, options).await;
    assert_eq!(v1_weight(&source), Some(80), "read at v1alpha3");
    assert_eq!(ConfigStore::list(&source, Kind::VirtualService).len(), 1);
    assert!(!ServiceRegistry::snapshot(&source).contains_key("old.legacy.svc.cluster.local"));
    assert_eq!(ServiceRegistry::snapshot(&source).len(), 4);

    // The namespace joins the mesh: its services and config appear.
    cluster.namespace("legacy", &[("istio-discovery", "enabled")]).await;
    eventually(10, "legacy selected", || {
        (ServiceRegistry::snapshot(&source).contains_key("old.legacy.svc.cluster.local")
            && ConfigStore::list(&source, Kind::VirtualService).len() == 2)
            .then_some(())
    })
    .await;
    // And leaves.
    cluster.namespace("legacy", &[]).await;
    eventually(10, "legacy left", || {
        (!ServiceRegistry::snapshot(&source).contains_key("old.legacy.svc.cluster.local")
            && ConfigStore::list(&source, Kind::VirtualService).len() == 1)
            .then_some(())
    })
    .await;
    let endpoints = &ServiceRegistry::snapshot(&source)[REVIEWS].endpoints;
    assert!(endpoints.iter().all(|e| e.health == Health::Healthy));
}
