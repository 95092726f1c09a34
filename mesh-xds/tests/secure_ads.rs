//! ADS on the secure port over real gRPC and TLS on 127.0.0.1: a stream
//! that proves an identity gets that identity's secrets over SDS (and the
//! gateway credentials of its namespace its config refers to); a wrong
//! token, a node claiming another namespace, an oversized or garbled
//! message, a flood of requests are each refused with their gRPC status
//! and counted, and the server keeps serving.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use http_body_util::{BodyExt, Full};
use mesh_core::certificate::CertificateInfo;
use mesh_core::credentials::{Credential, MemoryCredentials};
use mesh_core::translate::ProxyIdentity;
use mesh_xds::ca::authn::{Authenticator, BootstrapTokens};
use mesh_xds::ca::authority::{CertificateAuthority, Lifetimes};
use mesh_xds::ca::server::tls_config;
use mesh_xds::cache::{Snapshot, SnapshotCache};
use mesh_xds::generator::Generator;
use mesh_xds::node::{self, node_for};
use mesh_xds::resources::SECRET;
use mesh_xds::sds::{SecretIssuer, SecretRef, ROOT_SECRET, WORKLOAD_SECRET};
use mesh_xds::server::{AdsServer, AdsStats, StreamSecurity};
use mesh_xds::status::SyncStatus;
use prost::Message;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

const SOTW: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const SERVER_NAME: &str = "istiod.istio-system.svc";
const TOKEN: &str = "reviews-token-0123456789";

struct Running {
    addr: std::net::SocketAddr,
    /// Follows the node's key, so the snapshot set by hand outlives the
    /// streams (the cache drops keys nobody follows; there is no mesh here
    /// to build them again).
    _key: tokio::sync::watch::Receiver<Option<Arc<Snapshot>>>,
    root_pem: String,
    stats: Arc<AdsStats>,
    _dir: tempfile::TempDir,
}

async fn serve() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(CertificateAuthority::load_or_create(dir.path(), "cluster.local", Lifetimes::default()).unwrap());
    let tokens = BootstrapTokens::parse(&format!("spiffe://cluster.local/ns/default/sa/reviews {TOKEN}\n")).unwrap();
    let authenticators: Arc<[Arc<dyn Authenticator>]> = vec![Arc::new(tokens) as Arc<dyn Authenticator>].into();
    let cache = Arc::new(SnapshotCache::new());
    // The node's (empty) config is there; secrets are added per stream.
    let node = node::NodeInfo { has_certificate: true, ..node::parse(Some(&node_for(&reviews("default")))).unwrap() };
    let credentials = [SecretRef::Certificate("web".into()), SecretRef::Roots("web".into())];
    cache.set(&node.key(), Snapshot { credentials: Arc::new(credentials.into()), ..Snapshot::default() });
    let key = cache.watch(&node.key());
    let security = StreamSecurity {
        authenticators,
        secrets: SecretIssuer::new(ca.clone(), Duration::from_secs(3600)),
        credentials: Some(gateway_credentials()),
    };
    // 1 MiB rather than the default 4: the limit is the server's to set.
    let ads = AdsServer::new(Generator::new(cache), Arc::new(SyncStatus::default()))
        .with_security(security)
        .with_max_message(1 << 20);
    let stats = ads.stats().clone();
    let tls = tls_config(ca.clone(), vec![SERVER_NAME.into()]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(ads.serve_tls(listener, tls, std::future::pending()));
    Running { addr, _key: key, root_pem: ca.root_pem().to_string(), stats, _dir: dir }
}

/// `web` in namespaces default and payments, and `other` in default.
fn gateway_credentials() -> Arc<MemoryCredentials> {
    let source = MemoryCredentials::default();
    for (namespace, name) in [("default", "web"), ("payments", "web"), ("default", "other")] {
        let credential = Credential {
            certificate_chain: format!("{namespace}/{name} chain"),
            private_key: format!("{namespace}/{name} key"),
            ca_certificates: Some(format!("{namespace}/{name} ca")),
        };
        source.put(namespace, name, credential);
    }
    Arc::new(source)
}

fn reviews(namespace: &str) -> ProxyIdentity {
    ProxyIdentity::sidecar("reviews-v1", namespace, Default::default())
}

fn secrets_request(namespace: &str) -> Bytes {
    named_secrets_request(namespace, &[WORKLOAD_SECRET, ROOT_SECRET])
}

fn named_secrets_request(namespace: &str, names: &[&str]) -> Bytes {
    let request = DiscoveryRequest {
        node: Some(node_for(&reviews(namespace))),
        type_url: SECRET.into(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    };
    framed(&request.encode_to_vec(), None)
}

/// One gRPC frame of `message`; `claimed` overrides the length it states.
fn framed(message: &[u8], claimed: Option<u32>) -> Bytes {
    let mut out = vec![0];
    out.extend_from_slice(&claimed.unwrap_or(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out.into()
}

/// Opens a stream over TLS, sends `body` and half-closes: the responses,
/// and the call's gRPC status.
async fn call(running: &Running, token: Option<&str>, body: Bytes) -> (Vec<DiscoveryResponse>, u32) {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(running.root_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(SERVER_NAME).unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut req = http::Request::post(format!("https://{SERVER_NAME}{SOTW}"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers");
    if let Some(token) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = sender.send_request(req.body(Full::new(body)).unwrap()).await.unwrap();
    let headers = response.headers().clone();
    let collected = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .expect("the call ended in 10 s")
        .unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let code = trailers
        .get("grpc-status")
        .or_else(|| headers.get("grpc-status"))
        .map(|v| v.to_str().unwrap().parse().unwrap());
    let mut data = collected.to_bytes();
    let mut responses = Vec::new();
    while data.len() >= 5 {
        let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        data.advance(5);
        responses.push(DiscoveryResponse::decode(data.split_to(len)).unwrap());
    }
    (responses, code.unwrap_or(2))
}

fn leaf_of(response: &DiscoveryResponse) -> CertificateInfo {
    let workload = response
        .resources
        .iter()
        .map(|any| Secret::decode(any.value.as_slice()).unwrap())
        .find(|s| s.name == WORKLOAD_SECRET)
        .expect("the workload secret");
    let Some(secret::Type::TlsCertificate(tls)) = workload.r#type else { panic!("not a certificate") };
    let Some(envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineBytes(pem)) =
        tls.certificate_chain.and_then(|c| c.specifier)
    else {
        panic!("not inline")
    };
    CertificateInfo::from_der(&CertificateDer::from_pem_slice(&pem).unwrap()).unwrap()
}

#[tokio::test]
async fn a_proven_stream_gets_its_secrets_and_bad_streams_are_refused_and_counted() {
    let running = serve().await;

    let (responses, code) = call(&running, Some(TOKEN), secrets_request("default")).await;
    assert_eq!(code, 0);
    let names: Vec<String> =
        responses[0].resources.iter().map(|any| Secret::decode(any.value.as_slice()).unwrap().name).collect();
    assert_eq!(names, [ROOT_SECRET, WORKLOAD_SECRET]);
    assert_eq!(
        leaf_of(&responses[0]).spiffe_ids(),
        vec!["spiffe://cluster.local/ns/default/sa/reviews".parse().unwrap()]
    );

    let refusals: [(Option<&str>, Bytes, u32); 5] = [
        (None, secrets_request("default"), 16),
        (Some("not-a-known-token"), secrets_request("default"), 16),
        (Some(TOKEN), secrets_request("payments"), 7),
        (Some(TOKEN), framed(b"", Some(2 << 20)), 8),
        (Some(TOKEN), framed(&[0xff; 16], None), 3),
    ];
    for (token, body, expected) in refusals {
        let (responses, code) = call(&running, token, body).await;
        assert_eq!((code, responses.len()), (expected, 0), "token {token:?}");
    }
    let stats = &running.stats;
    let count = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    assert_eq!([count(&stats.unauthenticated), count(&stats.identity_mismatch), count(&stats.bad_messages)], [2, 1, 2]);

    // The server serves on.
    let (responses, code) = call(&running, Some(TOKEN), secrets_request("default")).await;
    assert_eq!((code, responses.len()), (0, 1));
}

/// Gateway credentials: those the node's config refers to, from the
/// namespace it proved; never another credential, or another namespace's.
#[tokio::test]
async fn credentials_of_the_proven_namespace_only_and_only_those_referred_to() {
    let running = serve().await;
    let asked = ["kubernetes://web", "kubernetes://web-cacert", "kubernetes://other", WORKLOAD_SECRET];
    let (responses, code) = call(&running, Some(TOKEN), named_secrets_request("default", &asked)).await;
    assert_eq!(code, 0);
    let secrets: Vec<Secret> =
        responses[0].resources.iter().map(|any| Secret::decode(any.value.as_slice()).unwrap()).collect();
    let names: Vec<&str> = secrets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, [WORKLOAD_SECRET, "kubernetes://web", "kubernetes://web-cacert"], "`other` is not referred to");
    let pem = |s: &Secret| match &s.r#type {
        Some(secret::Type::TlsCertificate(t)) => t.certificate_chain.clone(),
        Some(secret::Type::ValidationContext(v)) => v.trusted_ca.clone(),
        _ => None,
    };
    let text = |s: &Secret| match pem(s).and_then(|d| d.specifier) {
        Some(envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineBytes(b)) => {
            String::from_utf8(b).unwrap()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(text(&secrets[1]), "default/web chain", "the proven namespace's credential, not payments'");
    assert_eq!(text(&secrets[2]), "default/web ca");
}

/// A stream that sends requests far faster than any proxy would is cut
/// with RESOURCE_EXHAUSTED and counted; the server serves on.
#[tokio::test]
async fn a_stream_that_floods_requests_is_cut_and_counted() {
    let running = serve().await;
    let mut body = secrets_request("default").to_vec();
    let ack = DiscoveryRequest { type_url: SECRET.into(), response_nonce: "1".into(), ..Default::default() };
    let ack = framed(&ack.encode_to_vec(), None);
    for _ in 0..1500 {
        body.extend_from_slice(&ack);
    }
    let (_, code) = call(&running, Some(TOKEN), body.into()).await;
    assert_eq!(code, 8, "RESOURCE_EXHAUSTED");
    assert_eq!(running.stats.flooded.load(Ordering::Relaxed), 1);
    let (responses, code) = call(&running, Some(TOKEN), secrets_request("default")).await;
    assert_eq!((code, responses.len()), (0, 1));
}
