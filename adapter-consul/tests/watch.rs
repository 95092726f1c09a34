//! The adapter against the fake Consul agent (a child process) over real
//! HTTP: registrations, health, index resets, the agent going away, 500s
//! and dropped connections, services leaving the catalog, ACL tokens and
//! TLS, and Istio config in KV.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use adapter_consul::api::{AgentOptions, ConsulClient};
use adapter_consul::{ConsulKvStore, ConsulRegistry, RegistryOptions, WatchOptions};
use mesh_core::config::{Kind, ResourceKey, Spec};
use mesh_core::model::Health;
use mesh_core::{ConfigStore, ServiceRegistry};
use support::{eventually, FakeConsul};

const REVIEWS: &str = "reviews.service.consul";

/// Long enough that a change seen quickly was seen by a blocking query
/// returning on the change, not on the wait expiring.
const WAIT: Duration = Duration::from_secs(60);

fn options(addr: &str) -> AgentOptions {
    let mut options = AgentOptions::new(addr);
    options.wait = WAIT;
    options
}

fn watch_options() -> WatchOptions {
    WatchOptions {
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..WatchOptions::default()
    }
}

fn registry_options() -> RegistryOptions {
    RegistryOptions { watch: watch_options(), ..RegistryOptions::default() }
}

async fn started(agent: AgentOptions) -> ConsulRegistry {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let registry = ConsulRegistry::start(ConsulClient::new(&agent).expect("client"), registry_options());
    tokio::time::timeout(Duration::from_secs(20), registry.ready()).await.expect("initial sync");
    registry
}

/// Endpoint address -> (version label, health).
fn endpoints(registry: &ConsulRegistry, host: &str) -> Option<BTreeMap<String, (String, Health)>> {
    let snapshot = registry.snapshot();
    Some(
        snapshot
            .get(host)?
            .endpoints
            .iter()
            .map(|e| (e.address.clone(), (e.labels.get("version").cloned().unwrap_or_default(), e.health)))
            .collect(),
    )
}

fn bookinfo_reviews(consul: &FakeConsul) {
    consul.register("reviews", "reviews-v1", "10.0.0.1", &["version=v1"], "passing");
    consul.register("reviews", "reviews-v2", "10.0.0.2", &["version=v2"], "passing");
    consul.register("ratings", "ratings-v1", "10.0.1.1", &["version=v1"], "passing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_health_and_catalog_changes() {
    let consul = FakeConsul::start(&[]);
    bookinfo_reviews(&consul);
    let registry = started(options(&consul.addr)).await;
    let snapshot = registry.snapshot();
    assert_eq!(snapshot.keys().collect::<Vec<_>>(), ["ratings.service.consul", REVIEWS]);
    let reviews = &snapshot[REVIEWS];
    assert_eq!(reviews.service.ports[0].port, 9080);
    assert_eq!(reviews.service.ports[0].protocol, mesh_core::model::Protocol::Http);
    assert_eq!(reviews.endpoints[0].locality.region, "dc1");
    assert_eq!(reviews.endpoints[0].locality.zone, "zone-a");
    assert_eq!(reviews.endpoints[0].weight, 10);

    // A new instance shows within one blocking round (the wait is 60 s).
    consul.register("reviews", "reviews-v3", "10.0.0.3", &["version=v3"], "passing");
    eventually(10, "v3 registered", || endpoints(&registry, REVIEWS).filter(|e| e.len() == 3)).await;
    // A check turning critical removes the instance; passing brings it back.
    consul.set_check("reviews-v2", "service:reviews-v2", "critical");
    eventually(10, "v2 critical", || endpoints(&registry, REVIEWS).filter(|e| !e.contains_key("10.0.0.2"))).await;
    consul.set_check("reviews-v2", "service:reviews-v2", "passing");
    eventually(10, "v2 passing", || endpoints(&registry, REVIEWS).filter(|e| e.contains_key("10.0.0.2"))).await;
    // Warning still serves, at the warning weight.
    consul.set_check("reviews-v2", "service:reviews-v2", "warning");
    eventually(10, "v2 warning weight", || {
        registry.snapshot()[REVIEWS]
            .endpoints
            .iter()
            .find(|e| e.address == "10.0.0.2")
            .filter(|e| e.weight == 1)
            .map(|_| ())
    })
    .await;
    // Node maintenance drains.
    consul.set_check("reviews-v1", "_node_maintenance", "critical");
    eventually(10, "v1 draining", || {
        endpoints(&registry, REVIEWS).filter(|e| e.get("10.0.0.1").is_some_and(|(_, h)| *h == Health::Draining))
    })
    .await;
    // Deregistered: gone.
    consul.deregister("reviews-v3");
    eventually(10, "v3 deregistered", || endpoints(&registry, REVIEWS).filter(|e| e.len() == 2)).await;
    // A service removed from the catalog leaves the registry, and its watch ends.
    consul.deregister("ratings-v1");
    eventually(10, "ratings gone", || (!registry.snapshot().contains_key("ratings.service.consul")).then_some(()))
        .await;
    let before = consul.stats()["requests"]["health"].as_u64().unwrap_or(0);
    // New services get watches.
    consul.register("details", "details-v1", "10.0.2.1", &[], "passing");
    eventually(10, "details", || registry.snapshot().get("details.service.consul").map(|_| ())).await;

    // Idle, the watches block: over a second, no more than one request per
    // watch (two services and the catalog) beyond those the last changes caused.
    let idle_start = registry.status().requests_total;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = registry.status().requests_total - idle_start;
    assert!(idle <= 3, "{idle} requests in an idle second");
    let after = consul.stats()["requests"]["health"].as_u64().unwrap_or(0);
    assert!(after - before <= 4, "health queries after ratings left: {}", after - before);
    assert_eq!(registry.status().errors_total, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_reset_and_agent_failures() {
    let consul = FakeConsul::start(&[]);
    bookinfo_reviews(&consul);
    let registry = started(options(&consul.addr)).await;

    // A snapshot restore moves every index backwards: the watches start over.
    consul.control("restore?index=2");
    consul.register("reviews", "reviews-v3", "10.0.0.3", &["version=v3"], "passing");
    eventually(10, "v3 after the reset", || endpoints(&registry, REVIEWS).filter(|e| e.len() == 3)).await;
    assert!(registry.status().index_resets_total > 0, "{:?}", registry.status());

    // 500s and dropped connections: retried with backoff, nothing lost.
    consul.control("fail?count=5");
    consul.control("drop");
    consul.register("reviews", "reviews-v4", "10.0.0.4", &["version=v4"], "passing");
    eventually(10, "v4 after failures", || endpoints(&registry, REVIEWS).filter(|e| e.len() == 4)).await;
    assert!(registry.status().errors_total >= 1);

    // The agent goes away: what is known keeps being served.
    let addr = consul.stop();
    eventually(10, "errors while away", || (registry.status().errors_total >= 3).then_some(())).await;
    assert_eq!(endpoints(&registry, REVIEWS).map(|e| e.len()), Some(4));
    // It comes back empty and is filled again: its indexes are lower
    // than the watches' (a reset), and the new state is taken whole.
    let consul = FakeConsul::restart(&addr, &[]);
    consul.register("reviews", "reviews-v9", "10.0.0.9", &["version=v9"], "passing");
    let e = eventually(20, "the new agent's state", || {
        endpoints(&registry, REVIEWS)
            .filter(|e| e.len() == 1 && !registry.snapshot().contains_key("ratings.service.consul"))
    })
    .await;
    assert_eq!(e["10.0.0.9"].0, "v9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_token_and_tls() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_file, key_file) = (dir.path().join("agent.pem"), dir.path().join("agent-key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    let consul = FakeConsul::start(&[
        "--acl-token",
        "s3cret",
        "--tls-cert",
        &cert_file.to_string_lossy(),
        "--tls-key",
        &key_file.to_string_lossy(),
    ]);
    let port = consul.addr.rsplit(':').next().unwrap().to_string();
    let url = format!("https://localhost:{port}");

    // No token: refused, reported, retried.
    let mut agent = options(&url);
    agent.ca_file = Some(cert_file.clone());
    let refused = ConsulRegistry::start(ConsulClient::new(&agent).unwrap(), registry_options());
    eventually(10, "a 403", || refused.status().last_error.filter(|e| e.contains("403"))).await;
    assert!(!refused.is_ready());
    drop(refused);

    // The token, over TLS to the agent's certificate.
    agent.token = Some("s3cret".into());
    let registry = started(agent.clone()).await;
    assert!(registry.snapshot().is_empty());

    // Without the CA the agent's certificate is not trusted.
    agent.ca_file = None;
    let untrusted = ConsulRegistry::start(ConsulClient::new(&agent).unwrap(), registry_options());
    eventually(10, "a TLS failure", || untrusted.status().last_error.filter(|e| !e.contains("403"))).await;
    assert!(!untrusted.is_ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_config_from_kv() {
    let consul = FakeConsul::start(&[]);
    let rule = |weight: u32| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  hosts: [reviews.service.consul]\n  http:\n  - route:\n    - destination: {{host: reviews.service.consul, subset: v1}}\n      weight: {weight}\n    - destination: {{host: reviews.service.consul, subset: v2}}\n      weight: {}\n",
            100 - weight
        )
    };
    consul.kv_put("mesh/config/reviews.yaml", &rule(90));
    consul.kv_put("other/ignored.yaml", &rule(10));
    let store =
        ConsulKvStore::start(ConsulClient::new(&options(&consul.addr)).unwrap(), "mesh/config/", watch_options());
    tokio::time::timeout(Duration::from_secs(10), store.ready()).await.expect("kv sync");
    let key = ResourceKey { kind: Kind::VirtualService, namespace: "default".into(), name: "reviews".into() };
    let weight = |store: &ConsulKvStore| {
        let r = store.get(&key)?;
        let Spec::VirtualService(vs) = &r.spec else { return None };
        vs.http[0].route[0].weight
    };
    assert_eq!(weight(&store), Some(90));

    consul.kv_put("mesh/config/reviews.yaml", &rule(60));
    eventually(10, "the edit", || (weight(&store) == Some(60)).then_some(())).await;
    // A broken edit: reported with key and field; the last good stays.
    consul.kv_put("mesh/config/reviews.yaml", &rule(60).replace("weight: 60", "weight: lots"));
    let problems = eventually(10, "a problem", || Some(store.status().problems).filter(|p| !p.is_empty())).await;
    assert!(problems[0].starts_with("mesh/config/reviews.yaml"), "{problems:?}");
    assert!(problems[0].contains("spec.http[0].route[0].weight"), "{problems:?}");
    assert_eq!(weight(&store), Some(60));
    // Deleted: gone.
    consul.kv_delete("mesh/config/reviews.yaml");
    eventually(10, "deleted", || store.snapshot().is_empty().then_some(())).await;
    assert!(store.status().problems.is_empty());
}
