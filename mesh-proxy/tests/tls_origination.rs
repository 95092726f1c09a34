//! DestinationRule TLS to services outside the mesh (`SIMPLE`, `MUTUAL`
//! from files) and gateway servers that require client certificates
//! (`MUTUAL`): a front gateway originates TLS to a back gateway that
//! terminates it. What cannot be verified is refused, never sent in
//! plaintext.

use std::sync::Arc;
use std::time::Duration;

use mesh_core::config::Resource;
use mesh_core::model::{Endpoint, Service};
use mesh_core::registry::MemoryRegistry;
use mesh_core::store::MemoryConfigStore;
use mesh_proxy::{default_gateway_identity, ConfigSource, ProxyBuilder, ProxyHandle};
use mesh_testkit::http::{parse, raw_port};
use mesh_testkit::peers::recording_upstream;
use mesh_testkit::tls::TestCa;
use mesh_testkit::{free_port, Proc};

fn start(rt: &tokio::runtime::Runtime, docs: &[String], registry: MemoryRegistry) -> ProxyHandle {
    let store = Arc::new(MemoryConfigStore::new());
    for doc in docs {
        store.upsert(Resource::from_yaml(doc).unwrap_or_else(|e| panic!("{e}\n{doc}")));
    }
    let builder = ProxyBuilder::new(ConfigSource::mesh(store, Arc::new(registry), default_gateway_identity()))
        .bind_ip("127.0.0.1".parse().expect("an IP"))
        .drain_timeout(Duration::from_millis(200))
        .admin("127.0.0.1:0".parse().expect("an address"));
    rt.block_on(async {
        let proxy = builder.start().await.expect("started");
        proxy.wait_for_version_change("", Duration::from_secs(10)).await.expect("the config applies");
        proxy
    })
}

fn gateway(port: u16, protocol: &str, tls: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: {port}, name: p, protocol: {protocol}}}\n    hosts: [\"*\"]\n{tls}")
}

fn route(host: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: r, namespace: istio-system}}\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - route: [{{destination: {{host: {host}}}}}]\n")
}

fn registry(host: &str, port: u16) -> MemoryRegistry {
    let registry = MemoryRegistry::new("r");
    let mut endpoint = Endpoint::new("127.0.0.1");
    endpoint.ports.insert("http".into(), port);
    registry.upsert(Service::http(host, "istio-system", 80), vec![endpoint]);
    registry
}

/// The back gateway terminating TLS with `tls` (a Gateway server's
/// `tls:` line), to the recording upstream.
fn back(rt: &tokio::runtime::Runtime, tls: &str) -> (ProxyHandle, u16, Proc) {
    let (upstream, upstream_port) = recording_upstream(None);
    let port = free_port();
    let docs = [gateway(port, "HTTPS", tls), route("app.istio-system.svc.cluster.local")];
    (start(rt, &docs, registry("app.istio-system.svc.cluster.local", upstream_port)), port, upstream)
}

/// The status through a front gateway whose DestinationRule to the back
/// gateway has `tls`.
fn through_front(rt: &tokio::runtime::Runtime, back_port: u16, tls: &str) -> u16 {
    let port = free_port();
    let dr = format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: ext, namespace: istio-system}}\nspec:\n  host: ext.istio-system.svc.cluster.local\n  trafficPolicy:\n    tls: {tls}\n");
    let docs = [gateway(port, "HTTP", ""), route("ext.istio-system.svc.cluster.local"), dr];
    let front = start(rt, &docs, registry("ext.istio-system.svc.cluster.local", back_port));
    let text = raw_port(port, b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap_or_default();
    let status = parse(&text).map_or(0, |r| r.status);
    rt.block_on(front.drain());
    status
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime")
}

#[test]
fn simple_tls_origination_verifies_the_server() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (ca, other) = (TestCa::new("servers"), TestCa::new("other"));
    let (cert, key) = ca.issue(dir.path(), "server", "secure.example");
    let (ca_file, other_file) = (ca.write(dir.path(), "ca"), other.write(dir.path(), "other"));
    let rt = runtime();
    let (back, port, _upstream) =
        back(&rt, &format!("    tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}\n"));
    let simple = |extra: &str| format!("{{mode: SIMPLE, caCertificates: {ca_file}, sni: secure.example{extra}}}");
    assert_eq!(through_front(&rt, port, &simple("")), 200);
    assert_eq!(through_front(&rt, port, &simple(", subjectAltNames: [secure.example]")), 200);
    assert_eq!(
        through_front(&rt, port, &simple(", subjectAltNames: [other.example]")),
        503,
        "the certificate is not for that name"
    );
    assert_eq!(
        through_front(&rt, port, &format!("{{mode: SIMPLE, caCertificates: {other_file}, sni: secure.example}}")),
        503,
        "another CA"
    );
    assert_eq!(through_front(&rt, port, "{mode: SIMPLE, sni: secure.example}"), 503, "no CA to verify with: refused");
    assert_eq!(
        through_front(&rt, port, &format!("{{mode: SIMPLE, caCertificates: {other_file}, insecureSkipVerify: true}}")),
        200,
        "the user said so"
    );
    assert_eq!(
        through_front(&rt, port, "{mode: SIMPLE, caCertificates: /nonexistent/ca.pem}"),
        503,
        "an unreadable file refuses, never plaintext"
    );
    rt.block_on(back.drain());
}

#[test]
fn mutual_gateways_require_a_client_certificate_and_mutual_origination_sends_one() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (servers, clients) = (TestCa::new("servers"), TestCa::new("clients"));
    let (cert, key) = servers.issue(dir.path(), "server", "secure.example");
    let (client_cert, client_key) = clients.issue(dir.path(), "client", "client.example");
    let (servers_file, clients_file) = (servers.write(dir.path(), "servers"), clients.write(dir.path(), "clients"));
    let rt = runtime();
    let (back, port, _upstream) = back(
        &rt,
        &format!(
            "    tls: {{mode: MUTUAL, serverCertificate: {cert}, privateKey: {key}, caCertificates: {clients_file}}}\n"
        ),
    );
    let mutual = format!("{{mode: MUTUAL, clientCertificate: {client_cert}, privateKey: {client_key}, caCertificates: {servers_file}, sni: secure.example}}");
    assert_eq!(through_front(&rt, port, &mutual), 200);
    let without = format!("{{mode: SIMPLE, caCertificates: {servers_file}, sni: secure.example}}");
    assert_eq!(through_front(&rt, port, &without), 503, "no client certificate");
    let (stranger_cert, stranger_key) = servers.issue(dir.path(), "stranger", "stranger.example");
    let stranger = format!("{{mode: MUTUAL, clientCertificate: {stranger_cert}, privateKey: {stranger_key}, caCertificates: {servers_file}, sni: secure.example}}");
    assert_eq!(through_front(&rt, port, &stranger), 503, "a client certificate of another CA");
    rt.block_on(back.drain());
}

#[test]
fn a_mutual_gateway_without_ca_certificates_does_not_start_as_simple() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let ca = TestCa::new("servers");
    let (cert, key) = ca.issue(dir.path(), "server", "secure.example");
    let rt = runtime();
    let port = free_port();
    let docs = [
        gateway(port, "HTTPS", &format!("    tls: {{mode: MUTUAL, serverCertificate: {cert}, privateKey: {key}}}\n")),
        route("app.istio-system.svc.cluster.local"),
    ];
    let store = Arc::new(MemoryConfigStore::new());
    for doc in &docs {
        store.upsert(Resource::from_yaml(doc).unwrap_or_else(|e| panic!("{e}\n{doc}")));
    }
    let builder = ProxyBuilder::new(ConfigSource::mesh(
        store,
        Arc::new(registry("app.istio-system.svc.cluster.local", 1)),
        default_gateway_identity(),
    ))
    .bind_ip("127.0.0.1".parse().expect("an IP"))
    .allow_degraded(true)
    .admin("127.0.0.1:0".parse().expect("an address"));
    let proxy = rt.block_on(async {
        let proxy = builder.start().await.expect("started");
        proxy.wait_for_version_change("", Duration::from_secs(10)).await.expect("the config applies");
        proxy
    });
    let admin = proxy.admin_address().expect("admin").port();
    let ready = mesh_testkit::http::get(admin, "/ready", &[]).body;
    assert!(ready.contains("TLS mode MUTUAL needs caCertificates"), "{ready}");
    assert!(raw_port(port, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").is_err(), "no listener, not a SIMPLE one");
    rt.block_on(proxy.drain());
}

/// The serial of the certificate a TLS server on `port` presents for
/// `name`, checked against `ca`; and the connection, still open.
async fn served_serial(port: u16, ca: &str) -> (String, tokio_rustls::client::TlsStream<tokio::net::TcpStream>) {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.expect("a certificate")).expect("a root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connected");
    let name = rustls::pki_types::ServerName::try_from("secure.example").expect("a name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("a handshake");
    let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).expect("a certificate").clone();
    (mesh_core::certificate::CertificateInfo::from_der(&leaf).expect("read").serial, tls)
}

async fn request_on(tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("written");
    let mut buf = vec![0u8; 4096];
    let n = tls.read(&mut buf).await.expect("read");
    String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_string()
}

#[test]
fn gateway_certificate_files_are_reloaded_without_dropping_connections() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let ca = TestCa::new("servers");
    let (cert, key) = ca.issue(dir.path(), "server", "secure.example");
    let rt = runtime();
    let (back, port, _upstream) =
        back(&rt, &format!("    tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}\n"));
    let admin = back.admin_address().expect("an admin server").port();
    rt.block_on(async {
        let (first, mut open) = served_serial(port, &ca.pem).await;
        assert!(request_on(&mut open).await.starts_with("HTTP/1.1 200"));
        // The same files, a new certificate in them.
        ca.issue(dir.path(), "server", "secure.example");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut now = first.clone();
        while now == first && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            now = served_serial(port, &ca.pem).await.0;
        }
        assert_ne!(now, first, "new connections get the new certificate");
        assert!(request_on(&mut open).await.starts_with("HTTP/1.1 200"), "the open connection goes on");
        // Broken files: refused and counted; the last good certificate
        // keeps serving.
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nbroken\n").expect("written");
        let metrics = || mesh_testkit::http::get(admin, "/stats/prometheus", &[]).body;
        let refused = || metrics().lines().any(|l| l.starts_with("mesh_certificate_reload_failures_total 1"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !refused() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(refused(), "{}", metrics());
        assert_eq!(served_serial(port, &ca.pem).await.0, now);
    });
    rt.block_on(back.drain());
}

#[test]
fn credential_name_certificates_come_from_the_credential_source_when_they_exist() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (servers, clients) = (TestCa::new("servers"), TestCa::new("clients"));
    let (cert, key) = servers.issue(dir.path(), "server", "secure.example");
    let (client_cert, client_key) = clients.issue(dir.path(), "client", "client.example");
    let servers_file = servers.write(dir.path(), "servers");
    let read = |p: &str| std::fs::read_to_string(p).expect("read");
    let rt = runtime();
    let (upstream, upstream_port) = recording_upstream(None);
    let port = free_port();
    let docs = [
        gateway(port, "HTTPS", "    tls: {mode: MUTUAL, credentialName: web-cert}\n"),
        route("app.istio-system.svc.cluster.local"),
    ];
    let store = Arc::new(MemoryConfigStore::new());
    for doc in &docs {
        store.upsert(Resource::from_yaml(doc).unwrap_or_else(|e| panic!("{e}\n{doc}")));
    }
    let secrets = Arc::new(mesh_core::credentials::MemoryCredentials::default());
    let builder = ProxyBuilder::new(ConfigSource::mesh(
        store,
        Arc::new(registry("app.istio-system.svc.cluster.local", upstream_port)),
        default_gateway_identity(),
    ))
    .bind_ip("127.0.0.1".parse().expect("an IP"))
    .credentials(secrets.clone());
    let proxy = rt.block_on(async {
        let proxy = builder.start().await.expect("started");
        proxy.wait_for_version_change("", Duration::from_secs(10)).await.expect("the config applies");
        proxy
    });
    // No Secret yet: the listener is up and refuses handshakes.
    let mutual = format!("{{mode: MUTUAL, clientCertificate: {client_cert}, privateKey: {client_key}, caCertificates: {servers_file}, sni: secure.example}}");
    assert_eq!(through_front(&rt, port, &mutual), 503);
    // The Secret arrives (the gateway's namespace, istio-system).
    secrets.put(
        "istio-system",
        "web-cert",
        mesh_core::credentials::Credential {
            certificate_chain: read(&cert),
            private_key: read(&key),
            ca_certificates: Some(clients.pem.clone()),
        },
    );
    assert!(mesh_testkit::wait_until(Duration::from_secs(10), || through_front(&rt, port, &mutual) == 200));
    let without = format!("{{mode: SIMPLE, caCertificates: {servers_file}, sni: secure.example}}");
    assert_eq!(
        through_front(&rt, port, &without),
        503,
        "MUTUAL from the Secret's ca.crt: a client certificate is required"
    );
    rt.block_on(proxy.drain());
    drop(upstream);
}
