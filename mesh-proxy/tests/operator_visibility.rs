//! What an operator sees when the proxy cannot do what it was told: a
//! listener that cannot bind fails the start (or, running degraded, is
//! named by `/ready`), a bind error names its address, and a config that
//! does not compile is counted and shown while the last good one serves.

use std::time::Duration;

use futures_util::StreamExt;
use mesh_core::config::Resource;
use mesh_core::mesh::MeshSnapshot;
use mesh_core::registry::MemoryRegistry;
use mesh_core::store::MemoryConfigStore;
use mesh_core::translate::translate;
use mesh_core::{ConfigStore, ProxyConfig, ServiceRegistry};
use mesh_proxy::{default_gateway_identity, ConfigSource, ProxyBuilder, ProxyHandle};
use mesh_testkit::free_port;
use mesh_testkit::http::get;
use tokio::sync::mpsc::UnboundedSender;

/// A gateway config with one HTTP listener per port, each answering 200.
fn config(ports: &[u16]) -> ProxyConfig {
    let store = MemoryConfigStore::new();
    let servers: String = ports
        .iter()
        .map(|p| format!("  - port: {{number: {p}, name: http-{p}, protocol: HTTP}}\n    hosts: [\"*\"]\n"))
        .collect();
    let gateway = format!("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n{servers}");
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: ok, namespace: istio-system}\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - directResponse: {status: 200, body: {string: ok}}\n";
    store.upsert(Resource::from_yaml(&gateway).unwrap());
    store.upsert(Resource::from_yaml(vs).unwrap());
    let registry = MemoryRegistry::new("test");
    translate(&MeshSnapshot { config: store.snapshot(), services: registry.snapshot() }, &default_gateway_identity())
}

async fn start(degraded: bool, first: ProxyConfig) -> (ProxyHandle, UnboundedSender<ProxyConfig>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(first).unwrap();
    let configs = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).boxed();
    let proxy = ProxyBuilder::new(ConfigSource::Stream {
        identity: mesh_core::translate::ProxyIdentity::gateway("gw", "default", Default::default()),
        configs,
    })
    .admin("127.0.0.1:0".parse().unwrap())
    .allow_degraded(degraded)
    .start()
    .await
    .unwrap();
    (proxy, tx)
}

fn admin(proxy: &ProxyHandle, path: &str) -> mesh_testkit::http::Response {
    get(proxy.admin_address().unwrap().port(), path, &[])
}

/// Listeners bound on 127.0.0.1 (the config says 0.0.0.0): one on a port
/// taken, one whose address is no IP address.
fn troubled_config(busy: u16, good: u16) -> ProxyConfig {
    let mut cfg = config(&[busy, good, free_port()]);
    for l in &mut cfg.listeners {
        l.address = if l.port == busy || l.port == good { "127.0.0.1".into() } else { "not-an-ip".into() };
    }
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_cannot_bind_fails_the_start_naming_its_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    let good = free_port();
    let (proxy, _tx) = start(false, troubled_config(busy, good)).await;
    let failure = tokio::time::timeout(Duration::from_secs(10), proxy.failed()).await.expect("the start fails");
    assert!(failure.contains(&format!("127.0.0.1:{busy}")) && failure.contains("in use"), "{failure}");
    assert!(failure.contains("`not-an-ip` is not an IP address"), "{failure}");
    proxy.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_degraded_ready_names_the_listeners_down_and_stats_count_them() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    let good = free_port();
    let (proxy, tx) = start(true, troubled_config(busy, good)).await;
    let first = proxy.wait_for_version_change("", Duration::from_secs(10)).await.expect("the config applies");
    let served = tokio::task::spawn_blocking(move || get(good, "/", &[]).body).await.unwrap();
    assert_eq!(served, "ok", "the listener that bound serves");
    let ready = admin(&proxy, "/ready");
    assert_eq!(ready.status, 200);
    assert!(
        ready.body.starts_with("DEGRADED\n") && ready.body.contains(&format!("127.0.0.1:{busy}")),
        "{}",
        ready.body
    );
    assert!(ready.body.contains("not-an-ip"), "{}", ready.body);
    let stats = admin(&proxy, "/stats").body;
    assert!(stats.contains("listener_manager.listener_create_failure: 2"), "{stats}");
    assert!(stats.contains("listener_manager.listeners_down: 2"), "{stats}");
    let prometheus = admin(&proxy, "/stats/prometheus").body;
    assert!(prometheus.contains("mesh_listener_bind_failures_total 2"), "{prometheus}");

    // The port freed and the bad address gone, the next config binds all.
    drop(taken);
    tx.send(on_loopback(config(&[busy, good]))).unwrap();
    proxy.wait_for_version_change(&first, Duration::from_secs(10)).await.expect("the next config applies");
    assert_eq!(admin(&proxy, "/ready").body, "LIVE\n");
    assert!(admin(&proxy, "/stats").body.contains("listener_manager.listeners_down: 0"));
    proxy.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_admin_port_is_an_error_that_names_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let configs = futures_util::stream::pending().boxed();
    let started = ProxyBuilder::new(ConfigSource::Stream {
        identity: mesh_core::translate::ProxyIdentity::gateway("gw", "default", Default::default()),
        configs,
    })
    .admin(addr)
    .start()
    .await;
    let error = started.err().expect("the admin port is taken").to_string();
    assert!(error.contains(&format!("admin address {addr}")), "{error}");
}

fn on_loopback(mut cfg: ProxyConfig) -> ProxyConfig {
    for l in &mut cfg.listeners {
        l.address = "127.0.0.1".into();
    }
    cfg
}
