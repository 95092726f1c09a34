//! The library with a stream of ready-made `ProxyConfig`s (what an xDS
//! client or your own code produces), against a real backend process.

use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use mesh_core::config::Resource;
use mesh_core::mesh::MeshSnapshot;
use mesh_core::model::{Endpoint, Service};
use mesh_core::registry::MemoryRegistry;
use mesh_core::store::MemoryConfigStore;
use mesh_core::translate::translate;
use mesh_core::{ConfigStore, ServiceRegistry};
use mesh_proxy::{default_gateway_identity, ConfigSource, ProxyBuilder};
use mesh_testkit::free_port;
use mesh_testkit::process::announced;

fn get(port: u16, path: &str) -> String {
    mesh_testkit::http::raw_port(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap_or_default()
}

fn config(gateway_port: u16, backend_port: u16, routes: &str) -> mesh_core::ProxyConfig {
    let store = MemoryConfigStore::new();
    let gateway = format!("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: {gateway_port}, name: http, protocol: HTTP}}\n    hosts: [\"*\"]\n");
    let vs = format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: app, namespace: default}}\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n{routes}");
    store.upsert(Resource::from_yaml(&gateway).unwrap());
    store.upsert(Resource::from_yaml(&vs).unwrap());
    let registry = MemoryRegistry::new("code");
    let mut endpoint = Endpoint::new("127.0.0.1");
    endpoint.ports.insert("http".into(), backend_port);
    registry.upsert(Service::http("app.default.svc.cluster.local", "default", 80), vec![endpoint]);
    translate(&MeshSnapshot { config: store.snapshot(), services: registry.snapshot() }, &default_gateway_identity())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_a_stream_of_proxy_configs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hello from python\n").unwrap();
    let mut python = Command::new("python3");
    python
        .args(["-u", "-c", "import http.server, sys\nh = http.server.ThreadingHTTPServer(('127.0.0.1', 0), http.server.SimpleHTTPRequestHandler)\nprint(h.server_address[1], flush=True)\nh.serve_forever()\n"])
        .current_dir(dir.path())
        .stderr(Stdio::null());
    let (_backend, line) = announced(python, "");
    let backend_port: u16 = line.parse().expect("the backend's port");
    let port = free_port();

    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(config(port, backend_port, "  - route:\n    - destination: {host: app}\n")).unwrap();
    let configs = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).boxed();
    let proxy = ProxyBuilder::new(ConfigSource::Stream {
        identity: mesh_core::translate::ProxyIdentity::gateway("custom", "default", Default::default()),
        configs,
    })
    .bind_ip("127.0.0.1".parse().unwrap())
    .start()
    .await
    .unwrap();
    let first = proxy.wait_for_version_change("", Duration::from_secs(10)).await.expect("the first config applies");
    let answer = tokio::task::spawn_blocking(move || get(port, "/hello.txt")).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello from python\n"), "{answer}");

    // The next config in the stream replaces it.
    tx.send(config(port, backend_port, "  - directResponse: {status: 418, body: {string: teapot}}\n")).unwrap();
    let second =
        proxy.wait_for_version_change(&first, Duration::from_secs(10)).await.expect("the second config applies");
    assert_ne!(first, second);
    let answer = tokio::task::spawn_blocking(move || get(port, "/hello.txt")).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 418") && answer.ends_with("teapot"), "{answer}");
    assert_eq!(proxy.config().version, second);
    proxy.drain().await;
}
