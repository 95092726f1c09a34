//! The ADS client against the ADS server over real gRPC on 127.0.0.1:
//! subscribe and ACK, NACK a resource it cannot use and keep the last good
//! config, and reconnect after the server goes away.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as EnvoyCluster;
use futures_util::StreamExt;
use mesh_core::config::{self, Decoded};
use mesh_core::mesh::MeshSnapshot;
use mesh_core::model::{Endpoint, Service};
use mesh_core::registry::MemoryRegistry;
use mesh_core::store::MemoryConfigStore;
use mesh_core::translate::ProxyIdentity;
use mesh_core::{ConfigStore, ProxyConfig, ServiceRegistry};
use mesh_xds::cache::{Snapshot, SnapshotCache, TypeChange};
use mesh_xds::client::{self, ClientOptions, ClientStatus};
use mesh_xds::generator::{build, Generator};
use mesh_xds::node::{self, node_for};
use mesh_xds::resources::{Resource, CLUSTER, ENDPOINT};
use mesh_xds::server::AdsServer;
use mesh_xds::status::SyncStatus;

const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend, namespace: default}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route:
    - destination: {host: backend}
"#;

/// The gateway's snapshot with the backend at `address`.
fn snapshot(identity: &ProxyIdentity, address: &str) -> Snapshot {
    let store = MemoryConfigStore::new();
    for doc in config::parse_documents(CONFIG).unwrap() {
        if let Decoded::Istio { resource, .. } = config::decode(doc, "default").unwrap() {
            store.upsert(resource);
        }
    }
    let registry = MemoryRegistry::new("test");
    registry.upsert(Service::http("backend.default.svc.cluster.local", "default", 80), vec![Endpoint::new(address)]);
    registry.upsert(Service::http("other.default.svc.cluster.local", "default", 80), vec![Endpoint::new("10.9.9.9")]);
    let mesh = MeshSnapshot { config: store.snapshot(), services: registry.snapshot() };
    let info = node::parse(Some(&node_for(identity))).unwrap();
    build(&mesh, &info, &Default::default()).1
}

/// An ADS server on its own runtime, so dropping it closes every stream.
struct Server {
    runtime: Option<tokio::runtime::Runtime>,
    cache: Arc<SnapshotCache>,
    status: Arc<SyncStatus>,
}

impl Server {
    fn start(listener: std::net::TcpListener) -> Server {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let cache = Arc::new(SnapshotCache::new());
        let status = Arc::new(SyncStatus::default());
        let ads = AdsServer::new(Generator::new(cache.clone()), status.clone());
        runtime.spawn(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            ads.serve(listener, std::future::pending()).await.unwrap();
        });
        Server { runtime: Some(runtime), cache, status }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Poll `cond` until it holds; fail after 10 s.
async fn until(what: &str, cond: impl Fn() -> bool) {
    mesh_testkit::eventually(10, what, || cond().then_some(())).await
}

async fn wait_for(status: &std::sync::Mutex<ClientStatus>, what: &str, cond: impl Fn(&ClientStatus) -> bool) {
    until(what, || cond(&status.lock().unwrap())).await;
}

fn endpoint_of(cfg: &ProxyConfig) -> String {
    let la = cfg.load_assignment("outbound|80||backend.default.svc.cluster.local").expect("the backend's endpoints");
    la.endpoints[0].address.clone()
}

/// A server on an ephemeral port and the test gateway's identity and
/// cache key.
fn server_and_gateway() -> (Server, std::net::SocketAddr, ProxyIdentity, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::start(listener);
    let identity =
        ProxyIdentity::gateway("gw-1", "default", [("istio".to_string(), "ingressgateway".to_string())].into());
    let key = node::parse(Some(&node_for(&identity))).unwrap().key();
    (server, addr, identity, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_ack_nack_and_reconnect() {
    let (server, addr, identity, key) = server_and_gateway();
    let good = snapshot(&identity, "10.0.0.1");
    server.cache.set(&key, good.clone());

    let mut options = ClientOptions::new(format!("http://{addr}"), node_for(&identity), identity.kind);
    options.backoff_min = Duration::from_millis(50);
    options.backoff_max = Duration::from_millis(200);
    let mut xds = client::start(options);
    let first =
        tokio::time::timeout(Duration::from_secs(10), xds.configs.next()).await.expect("a config in 10 s").unwrap();
    assert_eq!(first.listeners[0].name, "0.0.0.0_8080");
    assert_eq!(endpoint_of(&first), "10.0.0.1");
    wait_for(&xds.status, "ACKs for CDS, EDS, LDS, RDS", |s| s.versions.len() == 4 && s.nacks == 0).await;

    // A cluster mesh-proxy cannot use: NACKed with its name and field, and
    // the config in use stays.
    let mut bad = good.clone();
    let cluster = EnvoyCluster { name: "bad".into(), lb_policy: 99, ..Default::default() };
    bad.resources.insert(CLUSTER, Resource::new("bad".into(), &cluster));
    server.cache.set(&key, bad);
    wait_for(&xds.status, "a NACK", |s| s.nacks == 1).await;
    let status = xds.status.lock().unwrap().clone();
    assert!(status.last_nack.as_deref().unwrap_or("").contains("Cluster \"bad\": lb_policy"), "{status:?}");
    assert_eq!(status.configs_emitted, 1, "nothing new may be applied");
    until("the server sees the NACK", || server.status.totals().nacks > 0).await;
    let nodes = server.status.nodes();
    assert_eq!(nodes[0].types["CDS"].nacks, 1);
    assert!(nodes[0].types["CDS"].last_nack.as_ref().unwrap().message.contains("lb_policy"));

    // The server goes away and comes back on the same port with new
    // endpoints: the client reconnects and applies them.
    drop(server);
    wait_for(&xds.status, "the disconnect", |s| !s.connected).await;
    // The old runtime lets its listener go in the background.
    let listener = mesh_testkit::eventually(10, "the port free again", || std::net::TcpListener::bind(addr).ok()).await;
    let server = Server::start(listener);
    server.cache.set(&key, snapshot(&identity, "10.0.0.2"));
    let next = tokio::time::timeout(Duration::from_secs(10), xds.configs.next())
        .await
        .expect("a config after reconnecting")
        .unwrap();
    assert_eq!(endpoint_of(&next), "10.0.0.2");
    assert!(xds.status.lock().unwrap().connects >= 2);
}

/// The server sends only the endpoints that changed (SotW allows it for
/// resources asked for by name): the client merges them into what it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_endpoint_pushes_are_merged() {
    let (server, addr, identity, key) = server_and_gateway();
    let before = snapshot(&identity, "10.0.0.1");
    server.cache.set(&key, before.clone());
    let mut xds = client::start(ClientOptions::new(format!("http://{addr}"), node_for(&identity), identity.kind));
    let first = tokio::time::timeout(Duration::from_secs(10), xds.configs.next()).await.expect("a config").unwrap();
    assert_eq!(endpoint_of(&first), "10.0.0.1");

    let backend = "outbound|80||backend.default.svc.cluster.local";
    let mut after = snapshot(&identity, "10.0.0.2");
    let from = before.resources.of_type(ENDPOINT).expect("endpoints").clone();
    after.changes.insert(ENDPOINT.to_string(), TypeChange { from, names: [backend.to_string()].into() });
    server.cache.set(&key, after);
    let next = tokio::time::timeout(Duration::from_secs(10), xds.configs.next()).await.expect("a config").unwrap();
    assert_eq!(endpoint_of(&next), "10.0.0.2");
    let other = next.load_assignment("outbound|80||other.default.svc.cluster.local").expect("kept");
    assert_eq!(other.endpoints[0].address, "10.9.9.9");
    let eds = &server.status.nodes()[0].types["EDS"];
    assert_eq!(eds.pushes, 2, "{eds:?}");
}

/// A stream whose first request has no node is refused with a status
/// that says why; an unknown method gets UNIMPLEMENTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_grpc_statuses() {
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let _server = Server::start(listener);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut ads = AggregatedDiscoveryServiceClient::new(channel.clone());
    let first = DiscoveryRequest { type_url: CLUSTER.into(), ..Default::default() };
    let outcome = async {
        let mut responses = ads.stream_aggregated_resources(futures_util::stream::iter([first])).await?.into_inner();
        responses.message().await
    };
    let status = tokio::time::timeout(Duration::from_secs(10), outcome).await.expect("an answer").unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("must carry a node"), "{status:?}");

    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/envoy.service.discovery.v3.AggregatedDiscoveryService/Nope");
    let codec = tonic_prost::ProstCodec::<DiscoveryRequest, DiscoveryRequest>::default();
    let status = grpc.unary(tonic::Request::new(DiscoveryRequest::default()), path, codec).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
}
