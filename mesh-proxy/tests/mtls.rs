//! Istio mTLS between two proxies, with certificates from the mesh's own
//! CA (mesh-xds): a front gateway originates ISTIO_MUTUAL (explicit, or
//! auto mTLS by the endpoint's tlsMode label) to a back gateway whose
//! server is `tls.mode: ISTIO_MUTUAL`; the back one checks the client's
//! SPIFFE ID against an AuthorizationPolicy and hands it to the app in
//! `x-forwarded-client-cert`. Secure naming, a foreign CA, a proxy with
//! no certificate and a plaintext client are refused.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mesh_core::certificate::WorkloadCertificate;
use mesh_core::config::Resource;
use mesh_core::identity::{SpiffeId, TrustDomains};
use mesh_core::model::{Endpoint, Service};
use mesh_core::registry::MemoryRegistry;
use mesh_core::store::MemoryConfigStore;
use mesh_proxy::mtls::WorkloadIdentity;
use mesh_proxy::{default_gateway_identity, ConfigSource, ProxyBuilder, ProxyHandle};
use mesh_testkit::http::{parse, raw_port, Response};
use mesh_testkit::peers::recording_upstream;
use mesh_testkit::{free_port, wait_until, Proc};
use mesh_xds::ca::authority::{CertificateAuthority, Lifetimes};
use serde_json::Value;

const SLEEP: &str = "spiffe://cluster.local/ns/foo/sa/sleep";
const BACKEND: &str = "spiffe://cluster.local/ns/istio-system/sa/backend";

/// A key and certificate for `id`, signed by `ca`.
fn issue(ca: &CertificateAuthority, id: &str) -> Arc<WorkloadCertificate> {
    let key = rcgen::KeyPair::generate().expect("a key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).and_then(|c| c.pem()).expect("a CSR");
    let id: SpiffeId = id.parse().expect("an ID");
    let issued = ca.sign(&csr, &[id], Duration::ZERO).expect("signed");
    let (root, chain) = issued.cert_chain.split_last().expect("a chain");
    Arc::new(WorkloadCertificate::new(chain.concat(), key.serialize_pem(), root.clone()).expect("a certificate"))
}

fn identity(certificate: Option<Arc<WorkloadCertificate>>) -> WorkloadIdentity {
    let identity = WorkloadIdentity::new(TrustDomains::default());
    if let Some(c) = certificate {
        identity.install(c).expect("usable");
    }
    identity
}

fn gateway_yaml(port: u16, tls: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: {port}, name: p, protocol: {proto}}}\n    hosts: [\"*\"]\n{tls}",
        proto = if tls.is_empty() { "HTTP" } else { "HTTPS" }
    )
}

fn route_yaml(host: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: r, namespace: istio-system}}\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - route: [{{destination: {{host: {host}}}}}]\n"
    )
}

fn start(
    runtime: &tokio::runtime::Runtime,
    docs: &[String],
    registry: MemoryRegistry,
    identity: WorkloadIdentity,
) -> ProxyHandle {
    let store = Arc::new(MemoryConfigStore::new());
    for doc in docs {
        store.upsert(Resource::from_yaml(doc).unwrap_or_else(|e| panic!("{e}\n{doc}")));
    }
    let builder = ProxyBuilder::new(ConfigSource::mesh(store, Arc::new(registry), default_gateway_identity()))
        .bind_ip("127.0.0.1".parse().expect("an IP"))
        .workload_identity(identity)
        .drain_timeout(Duration::from_millis(200))
        .admin("127.0.0.1:0".parse().expect("an address"));
    runtime.block_on(async {
        let proxy = builder.start().await.expect("started");
        proxy.wait_for_version_change("", Duration::from_secs(10)).await.expect("the config applies");
        proxy
    })
}

/// The back gateway: ISTIO_MUTUAL on `port`, to the recording upstream,
/// allowing only `allowed` principals.
struct Back {
    _upstream: Proc,
    proxy: ProxyHandle,
    port: u16,
}

fn start_back(runtime: &tokio::runtime::Runtime, certificate: Arc<WorkloadCertificate>, allowed: &str) -> Back {
    start_back_with(runtime, identity(Some(certificate)), Some(allowed))
}

/// The back gateway with `identity`, allowing `allowed` principals only
/// when given.
fn start_back_with(runtime: &tokio::runtime::Runtime, identity: WorkloadIdentity, allowed: Option<&str>) -> Back {
    let (upstream, upstream_port) = recording_upstream(None);
    let port = free_port();
    let registry = MemoryRegistry::new("back");
    let mut endpoint = Endpoint::new("127.0.0.1");
    endpoint.ports.insert("http".into(), upstream_port);
    registry.upsert(Service::http("app.default.svc.cluster.local", "default", 80), vec![endpoint]);
    let mut docs =
        vec![gateway_yaml(port, "    tls: {mode: ISTIO_MUTUAL}\n"), route_yaml("app.default.svc.cluster.local")];
    docs.extend(allowed.map(|allowed| format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: only, namespace: istio-system}}\nspec:\n  selector: {{matchLabels: {{istio: ingressgateway}}}}\n  action: ALLOW\n  rules: [{{from: [{{source: {{principals: [\"{allowed}\"]}}}}]}}]\n"
    )));
    Back { _upstream: upstream, proxy: start(runtime, &docs, registry, identity), port }
}

/// The front gateway: plain HTTP on its port, to `secure` (the back
/// gateway's port), with `extra` config (a DestinationRule); the endpoint
/// has a sidecar when `labeled`.
fn start_front(
    runtime: &tokio::runtime::Runtime,
    back_port: u16,
    extra: &[&str],
    labeled: bool,
    identity: WorkloadIdentity,
) -> (ProxyHandle, u16) {
    let port = free_port();
    let registry = MemoryRegistry::new("front");
    let mut endpoint = Endpoint::new("127.0.0.1");
    endpoint.ports.insert("http".into(), back_port);
    endpoint.service_account = Some("backend".into());
    if labeled {
        endpoint.labels.insert("security.istio.io/tlsMode".into(), "istio".into());
    }
    registry.upsert(Service::http("secure.istio-system.svc.cluster.local", "istio-system", 80), vec![endpoint]);
    let mut docs = vec![gateway_yaml(port, ""), route_yaml("secure.istio-system.svc.cluster.local")];
    docs.extend(extra.iter().map(|d| d.to_string()));
    (start(runtime, &docs, registry, identity), port)
}

fn get(port: u16) -> Response {
    let text = raw_port(
        port,
        b"GET /ip HTTP/1.1\r\nhost: app.example\r\nx-forwarded-client-cert: By=forged\r\nconnection: close\r\n\r\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    parse(&text).unwrap_or_else(|| panic!("no answer: {text:?}"))
}

fn admin(proxy: &ProxyHandle, path: &str) -> String {
    let address = proxy.admin_address().expect("an admin server");
    mesh_testkit::http::get(address.port(), path, &[]).body
}

fn xfcc(r: &Response) -> Vec<String> {
    mesh_testkit::peers::recorded_header(&r.body, "x-forwarded-client-cert")
}

const ISTIO_MUTUAL: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: secure, namespace: istio-system}\nspec:\n  host: secure.istio-system.svc.cluster.local\n  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}\n";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime")
}

#[test]
fn istio_mutual_carries_the_client_identity_to_authorization_and_the_app() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let ca = CertificateAuthority::load_or_create(dir.path(), "cluster.local", Lifetimes::default()).expect("a CA");
    let rt = runtime();
    let back = start_back(&rt, issue(&ca, BACKEND), "cluster.local/ns/foo/sa/sleep");

    // Explicit ISTIO_MUTUAL, and auto mTLS by the endpoint's label.
    for (extra, labeled) in [(vec![ISTIO_MUTUAL], false), (vec![], true)] {
        let (front, port) = start_front(&rt, back.port, &extra, labeled, identity(Some(issue(&ca, SLEEP))));
        let r = get(port);
        assert_eq!(r.status, 200, "{}", r.body);
        let xfcc = xfcc(&r);
        assert_eq!(xfcc.len(), 1, "{xfcc:?}");
        assert!(xfcc[0].contains(&format!("URI={SLEEP}")), "the client's identity, not the forged one: {xfcc:?}");
        assert!(!xfcc[0].contains("forged"));
        rt.block_on(front.drain());
    }

    // The back gateway shows its certificate, never its key.
    let certs: Value = serde_json::from_str(&admin(&back.proxy, "/certs")).expect("JSON");
    assert_eq!(certs["certificates"][0]["uris"][0], BACKEND, "{certs}");
    assert!(certs["certificates"][0]["serial"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(!certs.to_string().contains("PRIVATE KEY"));
    let dump = admin(&back.proxy, "/config_dump");
    assert!(dump.contains(BACKEND) && !dump.contains("PRIVATE KEY"), "config_dump shows the certificate, not the key");

    // Another identity of the mesh: mTLS works, authorization says no.
    let (front, port) = start_front(
        &rt,
        back.port,
        &[ISTIO_MUTUAL],
        false,
        identity(Some(issue(&ca, "spiffe://cluster.local/ns/bar/sa/other"))),
    );
    let r = get(port);
    assert_eq!((r.status, r.body.as_str()), (403, "RBAC: access denied"));
    rt.block_on(front.drain());
    rt.block_on(back.proxy.drain());
}

#[test]
fn what_cannot_be_verified_is_refused_never_sent_in_plaintext() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let ca = CertificateAuthority::load_or_create(dir.path(), "cluster.local", Lifetimes::default()).expect("a CA");
    let rt = runtime();
    let back = start_back(&rt, issue(&ca, BACKEND), "cluster.local/ns/foo/sa/sleep");

    // Secure naming: the DestinationRule expects another identity.
    let named = format!("{ISTIO_MUTUAL}  \n");
    let named = named.replace(
        "{tls: {mode: ISTIO_MUTUAL}}",
        "{tls: {mode: ISTIO_MUTUAL, subjectAltNames: [\"spiffe://cluster.local/ns/x/sa/y\"]}}",
    );
    let client = identity(Some(issue(&ca, SLEEP)));
    let (front, port) = start_front(&rt, back.port, &[&named], false, client.clone());
    let r = get(port);
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(client.stats().peer_rejections.load(Ordering::Relaxed) >= 1);
    let reason = client.stats().last_rejection.lock().map(|r| r.clone()).unwrap_or_default().unwrap_or_default();
    assert!(
        reason.contains(&format!("server identity {BACKEND} is not one of spiffe://cluster.local/ns/x/sa/y")),
        "{reason}"
    );
    rt.block_on(front.drain());

    // A client certificate from another CA.
    let other_dir = tempfile::tempdir().expect("a temp dir");
    let other =
        CertificateAuthority::load_or_create(other_dir.path(), "cluster.local", Lifetimes::default()).expect("a CA");
    let (front, port) = start_front(&rt, back.port, &[ISTIO_MUTUAL], false, identity(Some(issue(&other, SLEEP))));
    assert_eq!(get(port).status, 503);
    rt.block_on(front.drain());

    // No certificate here: explicit ISTIO_MUTUAL fails closed.
    let (front, port) = start_front(&rt, back.port, &[ISTIO_MUTUAL], false, identity(None));
    assert_eq!(get(port).status, 503);
    rt.block_on(front.drain());

    // A plaintext client on the ISTIO_MUTUAL port gets no answer.
    let text = raw_port(back.port, b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap_or_default();
    assert!(!text.starts_with("HTTP/1.1 200"), "{text:?}");
    rt.block_on(back.proxy.drain());
}

fn write_files(dir: &std::path::Path, certificate: &WorkloadCertificate) {
    for (name, text) in [
        ("cert-chain.pem", &certificate.chain_pem),
        ("key.pem", &certificate.key_pem),
        ("root-cert.pem", &certificate.roots_pem),
    ] {
        std::fs::write(dir.join(name), text).expect("written");
    }
}

fn serial(proxy: &ProxyHandle) -> String {
    let certs: Value = serde_json::from_str(&admin(proxy, "/certs")).expect("JSON");
    certs["certificates"][0]["serial"].as_str().unwrap_or_default().to_string()
}

#[test]
fn file_certificates_rotate_keep_the_last_good_one_and_accept_two_roots() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let ca = CertificateAuthority::load_or_create(&dir.path().join("ca"), "cluster.local", Lifetimes::default())
        .expect("a CA");
    let rt = runtime();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).expect("a dir");
    let first = issue(&ca, BACKEND);
    write_files(&certs, &first);
    let back_identity = identity(None);
    rt.block_on(async {
        mesh_proxy::mtls::files::follow(&back_identity, certs.clone(), Duration::from_millis(50)).expect("loaded")
    });
    assert!(back_identity.certificate().is_some(), "the files' certificate");

    // The back gateway, on the files.
    let Back { _upstream: upstream, proxy: back, port } = start_back_with(&rt, back_identity.clone(), None);
    let (front, front_port) = start_front(&rt, port, &[ISTIO_MUTUAL], false, identity(Some(issue(&ca, SLEEP))));
    assert_eq!(get(front_port).status, 200);
    assert_eq!(serial(&back), first.leaf.serial);

    // A renewed certificate is picked up without a restart.
    let second = issue(&ca, BACKEND);
    write_files(&certs, &second);
    mesh_testkit::wait_until(Duration::from_secs(5), || serial(&back) == second.leaf.serial);
    assert_eq!(serial(&back), second.leaf.serial, "the renewed certificate serves new connections");
    assert_eq!(get(front_port).status, 200);

    // A broken file is refused; the last good certificate keeps serving.
    std::fs::write(certs.join("cert-chain.pem"), "-----BEGIN CERTIFICATE-----\ngarbage\n").expect("written");
    mesh_testkit::wait_until(Duration::from_secs(5), || {
        back_identity.stats().certificate_errors.load(Ordering::Relaxed) > 0
    });
    assert!(back_identity.stats().certificate_errors.load(Ordering::Relaxed) > 0);
    assert_eq!(serial(&back), second.leaf.serial);
    assert_eq!(get(front_port).status, 200);
    rt.block_on(front.drain());

    // A root rotation: the back gateway moves to a new CA, both sides
    // trust both roots during the overlap.
    let new_ca =
        CertificateAuthority::load_or_create(&dir.path().join("new-ca"), "cluster.local", Lifetimes::default())
            .expect("a CA");
    let both = format!("{}{}", ca.root_pem(), new_ca.root_pem());
    let moved = issue(&new_ca, BACKEND);
    let moved =
        WorkloadCertificate::new(moved.chain_pem.clone(), moved.key_pem.clone(), both.clone()).expect("a certificate");
    write_files(&certs, &moved);
    mesh_testkit::wait_until(Duration::from_secs(5), || serial(&back) == moved.leaf.serial);
    let old = issue(&ca, SLEEP);
    let old = WorkloadCertificate::new(old.chain_pem.clone(), old.key_pem.clone(), both).expect("a certificate");
    let (front, front_port) = start_front(&rt, port, &[ISTIO_MUTUAL], false, identity(Some(Arc::new(old))));
    assert_eq!(get(front_port).status, 200, "an old-root client and a new-root server trust each other");
    rt.block_on(front.drain());
    // A client that trusts only the old root refuses the new server.
    let (front, front_port) = start_front(&rt, port, &[ISTIO_MUTUAL], false, identity(Some(issue(&ca, SLEEP))));
    assert_eq!(get(front_port).status, 503);
    rt.block_on(front.drain());
    rt.block_on(back.drain());
    drop(upstream);
}

/// A certificate for `id` from the CA in `dir`, valid from `from` to `to`
/// (seconds from now): what the CA would never issue.
fn issue_valid(dir: &std::path::Path, id: &str, from: i64, to: i64) -> Arc<WorkloadCertificate> {
    let ca_cert = std::fs::read_to_string(dir.join("ca-cert.pem")).expect("ca-cert.pem");
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca-key.pem")).expect("ca-key.pem")).expect("a key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_cert, ca_key).expect("an issuer");
    let key = rcgen::KeyPair::generate().expect("a key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![rcgen::SanType::URI(id.to_string().try_into().expect("a URI"))];
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = time_at(from).into();
    params.not_after = time_at(to).into();
    let cert = params.signed_by(&key, &issuer).expect("signed");
    let root = std::fs::read_to_string(dir.join("root-cert.pem")).expect("root-cert.pem");
    Arc::new(WorkloadCertificate::new(cert.pem(), key.serialize_pem(), root).expect("a certificate"))
}

fn time_at(seconds_from_now: i64) -> std::time::SystemTime {
    let now = std::time::SystemTime::now();
    let span = Duration::from_secs(seconds_from_now.unsigned_abs());
    if seconds_from_now >= 0 {
        now + span
    } else {
        now - span
    }
}

#[test]
fn expired_not_yet_valid_and_missing_certificates_are_refused_and_counted() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let ca = CertificateAuthority::load_or_create(dir.path(), "cluster.local", Lifetimes::default()).expect("a CA");
    let rt = runtime();

    // The server's certificate expired an hour ago; then one valid only
    // from tomorrow.
    for (from, to, why) in [(-7200, -3600, "expired"), (86_400, 172_800, "not valid yet")] {
        let back = start_back(&rt, issue_valid(dir.path(), BACKEND, from, to), "cluster.local/ns/foo/sa/sleep");
        let client = identity(Some(issue(&ca, SLEEP)));
        let (front, port) = start_front(&rt, back.port, &[ISTIO_MUTUAL], false, client.clone());
        assert_eq!(get(port).status, 503, "{why}");
        let reason = client.stats().last_rejection.lock().map(|r| r.clone()).unwrap_or_default().unwrap_or_default();
        assert!(reason.contains("the server's certificate"), "{why}: {reason}");
        rt.block_on(front.drain());
        rt.block_on(back.proxy.drain());
    }

    // An expired client certificate, and a TLS client with none.
    let back = start_back(&rt, issue(&ca, BACKEND), "cluster.local/ns/foo/sa/sleep");
    let (front, port) = start_front(
        &rt,
        back.port,
        &[ISTIO_MUTUAL],
        false,
        identity(Some(issue_valid(dir.path(), SLEEP, -7200, -3600))),
    );
    assert_eq!(get(port).status, 503);
    rt.block_on(front.drain());
    let before = admin(&back.proxy, "/stats");
    // Any server: the test is about the server's checks.
    let config = mesh_testkit::tls::any_server_client();
    let refused = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", back.port)).await.expect("connected");
        let name = rustls::pki_types::ServerName::try_from("backend").expect("a name");
        let mut tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tls.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await?;
        let mut buf = [0u8; 64];
        let n = tls.read(&mut buf).await?;
        Ok::<usize, std::io::Error>(n)
    });
    assert!(!matches!(refused, Ok(n) if n > 0), "no answer without a client certificate: {refused:?}");
    let counted = |stats: &str| stats.lines().find(|l| l.starts_with("http.downstream_cx_error: ")).map(str::to_string);
    assert!(
        wait_until(Duration::from_secs(5), || counted(&admin(&back.proxy, "/stats")) != counted(&before)),
        "counted in /stats"
    );
    rt.block_on(back.proxy.drain());
}

#[test]
fn a_peer_from_another_trust_domain_is_refused_unless_it_is_an_alias() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let ca = CertificateAuthority::load_or_create(dir.path(), "cluster.local", Lifetimes::default()).expect("a CA");
    let rt = runtime();
    let foreign = "spiffe://other.td/ns/foo/sa/sleep";
    for (aliases, status) in [(vec![], 503), (vec!["other.td".to_string()], 200)] {
        let back_identity =
            WorkloadIdentity::new(TrustDomains { own: "cluster.local".into(), aliases: aliases.clone() });
        back_identity.install(issue(&ca, BACKEND)).expect("usable");
        let Back { _upstream: upstream, proxy: back, port } = start_back_with(&rt, back_identity.clone(), None);
        let (front, front_port) = start_front(&rt, port, &[ISTIO_MUTUAL], false, identity(Some(issue(&ca, foreign))));
        assert_eq!(get(front_port).status, status, "aliases {aliases:?}");
        if aliases.is_empty() {
            let reason = back_identity.stats().last_rejection.lock().map(|r| r.clone()).unwrap_or_default();
            assert!(
                reason.as_deref().is_some_and(|r| r
                    .contains("peer identity spiffe://other.td/ns/foo/sa/sleep is not of trust domain cluster.local")),
                "{reason:?}"
            );
        }
        rt.block_on(front.drain());
        rt.block_on(back.drain());
        drop(upstream);
    }
}
