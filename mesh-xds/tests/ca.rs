//! The CA: its kept root, Istio's cacerts layout and its checks, the shape
//! of workload certificates, and CreateCertificate over TLS with the
//! caller's proof.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_core::certificate::CertificateInfo;
use mesh_core::identity::{SpiffeId, TrustDomains};
use mesh_xds::ca::authn::{Authenticator, BootstrapTokens, ClientCertificate};
use mesh_xds::ca::authority::{CaError, CertificateAuthority, Lifetimes, SignError};
use mesh_xds::ca::client::{request_certificate, CaClientError, CaClientOptions, Proof};
use mesh_xds::ca::server::{self, CaServer};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

fn id(text: &str) -> SpiffeId {
    text.parse().expect("a SPIFFE ID")
}

/// A CSR from a new key, asking for `uris`.
fn csr(uris: &[&str]) -> String {
    let key = KeyPair::generate().expect("a key");
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = uris.iter().map(|u| SanType::URI(u.to_string().try_into().expect("an URI"))).collect();
    params.serialize_request(&key).and_then(|c| c.pem()).expect("a CSR")
}

fn ders(pem: &str) -> Vec<Vec<u8>> {
    CertificateDer::pem_slice_iter(pem.as_bytes()).map(|c| c.expect("PEM").to_vec()).collect()
}

/// `child` is signed by `parent`'s key.
fn signed_by(child: &[u8], parent: &[u8]) -> bool {
    let (_, child) = X509Certificate::from_der(child).expect("a certificate");
    let (_, parent) = X509Certificate::from_der(parent).expect("a certificate");
    child.verify_signature(Some(parent.public_key())).is_ok()
}

#[test]
fn a_self_signed_root_is_made_once_and_kept() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let ca = CertificateAuthority::load_or_create(dir.path(), "cluster.local", Lifetimes::default()).expect("a CA");
    let root = ca.root_pem().to_string();
    assert!(ca.signer().is_ca);
    assert_eq!(ca.signer().subject, "O=cluster.local");
    let mode = std::fs::metadata(dir.path().join("ca-key.pem"))
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
    assert_eq!(mode.expect("the key file") & 0o777, 0o600, "the key is the owner's alone");
    let again = CertificateAuthority::load_or_create(dir.path(), "cluster.local", Lifetimes::default()).expect("a CA");
    assert_eq!(again.root_pem(), root, "a restart keeps the root, and with it the mesh's trust");
}

#[test]
fn workload_certificates_are_shaped_as_istio_issues_them() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let ca = CertificateAuthority::load_or_create(dir.path(), "cluster.local", Lifetimes::default()).expect("a CA");
    let sleep = id("spiffe://cluster.local/ns/foo/sa/sleep");
    // The CSR's subject and extensions are not copied: an empty CSR gets
    // the proven identity.
    let issued = ca.sign(&csr(&[]), std::slice::from_ref(&sleep), Duration::ZERO).expect("signed");
    assert_eq!(issued.cert_chain.len(), 2, "leaf, then the root");
    assert_eq!(issued.cert_chain[1], ca.root_pem());
    let leaf_der = &ders(&issued.cert_chain[0])[0];
    let root_der = &ders(ca.root_pem())[0];
    assert!(signed_by(leaf_der, root_der));
    let info = CertificateInfo::from_der(leaf_der).expect("the leaf");
    assert_eq!(info.uris, vec![sleep.to_string()], "the SPIFFE URI is the only URI SAN");
    assert!(info.dns_names.is_empty());
    assert_eq!(info.subject, "", "an empty subject");
    assert!(!info.is_ca);
    let now = SystemTime::now();
    let life = info.not_after.duration_since(now).expect("valid now");
    assert!(life > Duration::from_secs(24 * 3600 - 60) && life <= Duration::from_secs(24 * 3600), "24 h: {life:?}");
    let backdated = now.duration_since(info.not_before).expect("valid already");
    assert!(backdated >= Duration::from_secs(110), "backdated for clock skew: {backdated:?}");
    let (_, leaf) = X509Certificate::from_der(leaf_der).expect("a certificate");
    let eku = leaf.extended_key_usage().expect("EKU").expect("EKU present").value;
    assert!(eku.server_auth && eku.client_auth);
    let ku = leaf.key_usage().expect("KU").expect("KU present").value;
    assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
    let bc = leaf.basic_constraints().expect("BC").expect("BC present").value;
    assert!(!bc.ca);
    let other = ca.sign(&csr(&[]), std::slice::from_ref(&sleep), Duration::ZERO).expect("signed");
    let other = CertificateInfo::from_der(&ders(&other.cert_chain[0])[0]).expect("the leaf");
    assert_ne!(other.serial, info.serial, "serials are random");
}

#[test]
fn a_csr_gets_only_what_the_caller_proved() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let ca = CertificateAuthority::load_or_create(dir.path(), "cluster.local", Lifetimes::default()).expect("a CA");
    let sleep = id("spiffe://cluster.local/ns/foo/sa/sleep");
    let asked = csr(&["spiffe://cluster.local/ns/istio-system/sa/istiod"]);
    let refused = ca.sign(&asked, std::slice::from_ref(&sleep), Duration::ZERO).expect_err("not proven");
    assert_eq!(
        refused.to_string(),
        "the CSR asks for spiffe://cluster.local/ns/istio-system/sa/istiod, but the caller proved only spiffe://cluster.local/ns/foo/sa/sleep"
    );
    assert!(ca.sign(&csr(&[&sleep.to_string()]), std::slice::from_ref(&sleep), Duration::ZERO).is_ok());
    assert!(matches!(ca.sign("garbage", std::slice::from_ref(&sleep), Duration::ZERO), Err(SignError::BadCsr(_))));
    // A CSR whose signature does not hold proves no possession of the key.
    let good = csr(&[]);
    let mut der = pem::parse(&good).expect("PEM").into_contents();
    let last = der.len() - 1;
    der[last] ^= 1;
    let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
    assert!(matches!(ca.sign(&tampered, std::slice::from_ref(&sleep), Duration::ZERO), Err(SignError::BadCsr(_))));
    assert_eq!(ca.sign(&good, &[], Duration::ZERO), Err(SignError::NoIdentity));
    let year = Duration::from_secs(365 * 24 * 3600);
    assert!(matches!(ca.sign(&good, std::slice::from_ref(&sleep), year), Err(SignError::TtlTooLong { .. })));
    let hour = ca.sign(&good, std::slice::from_ref(&sleep), Duration::from_secs(3600)).expect("an hour");
    let hour = CertificateInfo::from_der(&ders(&hour.cert_chain[0])[0]).expect("the leaf");
    assert!(hour.remaining(SystemTime::now()) <= Duration::from_secs(3600));
}

/// A root and an intermediate in Istio's cacerts layout, the intermediate
/// living `intermediate_life`.
fn write_cacerts(dir: &Path, intermediate_life: Duration) -> (String, String) {
    let root_key = KeyPair::generate().expect("a key");
    let mut root = CertificateParams::default();
    root.distinguished_name.push(DnType::OrganizationName, "Acme root");
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root_cert = root.self_signed(&root_key).expect("a root");
    let issuer = rcgen::Issuer::new(root, root_key);
    let int_key = KeyPair::generate().expect("a key");
    let mut int = CertificateParams::default();
    int.distinguished_name.push(DnType::OrganizationName, "Acme intermediate");
    int.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    int.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    int.not_before = (SystemTime::now() - Duration::from_secs(60)).into();
    int.not_after = (SystemTime::now() + intermediate_life).into();
    let int_cert = int.signed_by(&int_key, &issuer).expect("an intermediate");
    std::fs::create_dir_all(dir).expect("the dir");
    std::fs::write(dir.join("ca-cert.pem"), int_cert.pem()).expect("written");
    std::fs::write(dir.join("ca-key.pem"), int_key.serialize_pem()).expect("written");
    std::fs::write(dir.join("cert-chain.pem"), format!("{}{}", int_cert.pem(), root_cert.pem())).expect("written");
    std::fs::write(dir.join("root-cert.pem"), root_cert.pem()).expect("written");
    (int_cert.pem(), root_cert.pem())
}

#[test]
fn a_plugged_in_intermediate_signs_and_never_is_outlived() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (intermediate, root) = write_cacerts(dir.path(), Duration::from_secs(3600));
    let ca = CertificateAuthority::load_or_create(dir.path(), "cluster.local", Lifetimes::default()).expect("a CA");
    let sleep = id("spiffe://cluster.local/ns/foo/sa/sleep");
    let issued = ca.sign(&csr(&[]), std::slice::from_ref(&sleep), Duration::ZERO).expect("signed");
    // Istio's answer: the leaf, cert-chain.pem one certificate at a time,
    // then root-cert.pem.
    assert_eq!(issued.cert_chain.len(), 4);
    assert_eq!(issued.cert_chain[1], intermediate);
    assert_eq!(issued.cert_chain[3], root);
    let leaf = &ders(&issued.cert_chain[0])[0];
    assert!(signed_by(leaf, &ders(&intermediate)[0]));
    let leaf = CertificateInfo::from_der(leaf).expect("the leaf");
    assert!(leaf.not_after <= ca.signer().not_after, "clamped to the intermediate's life");
    assert!(leaf.remaining(SystemTime::now()) < Duration::from_secs(3601));
}

#[test]
fn a_bad_cacerts_directory_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().expect("a temp dir");
    write_cacerts(dir.path(), Duration::from_secs(3600));
    let other = KeyPair::generate().expect("a key");
    std::fs::write(dir.path().join("ca-key.pem"), other.serialize_pem()).expect("written");
    let err =
        CertificateAuthority::load_or_create(dir.path(), "cluster.local", Lifetimes::default()).expect_err("mismatch");
    assert!(matches!(err, CaError::KeyMismatch { .. }));
    assert!(err.to_string().contains("ca-key.pem: the key does not match the certificate in"), "{err}");

    let dir = tempfile::tempdir().expect("a temp dir");
    write_cacerts(dir.path(), Duration::from_secs(3600));
    let (_, foreign_root) = write_cacerts(&dir.path().join("other"), Duration::from_secs(3600));
    std::fs::write(dir.path().join("root-cert.pem"), foreign_root).expect("written");
    std::fs::write(dir.path().join("cert-chain.pem"), "").expect("written");
    let err = CertificateAuthority::load(dir.path(), Lifetimes::default()).expect_err("not chained");
    assert!(err.to_string().contains("is not signed by any certificate in root-cert.pem"), "{err}");

    let dir = tempfile::tempdir().expect("a temp dir");
    write_cacerts(dir.path(), Duration::from_secs(3600));
    std::fs::remove_file(dir.path().join("root-cert.pem")).expect("removed");
    let err =
        CertificateAuthority::load_or_create(dir.path(), "cluster.local", Lifetimes::default()).expect_err("partial");
    assert!(err.to_string().contains("but not root-cert.pem"), "{err}");

    let dir = tempfile::tempdir().expect("a temp dir");
    write_cacerts(dir.path(), Duration::from_secs(3600));
    std::fs::write(dir.path().join("ca-cert.pem"), "not a certificate").expect("written");
    let err = CertificateAuthority::load(dir.path(), Lifetimes::default()).expect_err("garbage");
    assert!(err.to_string().contains("ca-cert.pem: no certificate in the file"), "{err}");
}

struct Running {
    address: String,
    roots: String,
    server: CaServer,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A CA serving on an ephemeral port, knowing one bootstrap token for
/// `sleep` in `foo`, and renewals by certificate.
async fn serve(dir: &Path) -> Running {
    let ca = Arc::new(CertificateAuthority::load_or_create(dir, "cluster.local", Lifetimes::default()).expect("a CA"));
    let tokens =
        BootstrapTokens::parse("spiffe://cluster.local/ns/foo/sa/sleep s3cret # sleep's token\n").expect("tokens");
    let authenticators: Vec<Arc<dyn Authenticator>> =
        vec![Arc::new(tokens), Arc::new(ClientCertificate { trust_domains: TrustDomains::default() })];
    let server = CaServer::new(ca.clone(), authenticators);
    let tls = server::tls_config(ca.clone(), vec!["istiod.istio-system.svc".into()]).expect("TLS");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let address = listener.local_addr().expect("an address").to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.clone().serve(listener, tls, async move {
        let _ = stopped.await;
    }));
    Running { address, roots: ca.root_pem().to_string(), server, stop: Some(stop) }
}

fn options(running: &Running, identity: &str, proof: Proof) -> CaClientOptions {
    CaClientOptions {
        address: running.address.clone(),
        server_name: "istiod.istio-system.svc".into(),
        ca_roots_pem: running.roots.clone(),
        identity: id(identity),
        proof,
        ttl: Duration::ZERO,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_certificate_signs_the_proven_identity_over_tls() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let ca = serve(dir.path()).await;
    let sleep = "spiffe://cluster.local/ns/foo/sa/sleep";
    let first = request_certificate(&options(&ca, sleep, Proof::Token("s3cret".into())), None).await.expect("issued");
    assert_eq!(first.leaf.uris, vec![sleep.to_string()]);
    assert_eq!(first.roots_pem, ca.roots);

    // Renewal proves the identity with the current certificate alone.
    let renewed =
        request_certificate(&options(&ca, sleep, Proof::CertificateOnly), Some(&first)).await.expect("renewed");
    assert_ne!(renewed.leaf.serial, first.leaf.serial);

    // A wrong token, no proof at all, and a proven caller asking for
    // another identity: each refused, naming why.
    let wrong =
        request_certificate(&options(&ca, sleep, Proof::Token("guess".into())), None).await.expect_err("refused");
    let CaClientError::Refused { code, message, .. } = &wrong else { panic!("{wrong}") };
    assert_eq!(*code, 16, "UNAUTHENTICATED");
    assert!(message.contains("bootstrap-token: the token is not a known bootstrap token"), "{message}");
    let none = request_certificate(&options(&ca, sleep, Proof::CertificateOnly), None).await.expect_err("refused");
    assert!(none.to_string().contains("it showed no token and no client certificate"), "{none}");
    let istiod = "spiffe://cluster.local/ns/istio-system/sa/istiod";
    let other =
        request_certificate(&options(&ca, istiod, Proof::Token("s3cret".into())), None).await.expect_err("refused");
    let CaClientError::Refused { code, message, .. } = &other else { panic!("{other}") };
    assert_eq!(*code, 7, "PERMISSION_DENIED");
    assert!(message.contains("asks for spiffe://cluster.local/ns/istio-system/sa/istiod"), "{message}");

    let stats = ca.server.stats();
    assert_eq!(stats.csr.load(Ordering::Relaxed), 5);
    assert_eq!(stats.issued.load(Ordering::Relaxed), 2);
    assert_eq!(stats.authn_failures.load(Ordering::Relaxed), 2);
    assert_eq!(stats.sign_errors.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_proves_nothing() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let ca = serve(dir.path()).await;
    let other_dir = tempfile::tempdir().expect("a temp dir");
    let other = serve(other_dir.path()).await;
    let sleep = "spiffe://cluster.local/ns/foo/sa/sleep";
    let foreign =
        request_certificate(&options(&other, sleep, Proof::Token("s3cret".into())), None).await.expect("issued");
    let err =
        request_certificate(&options(&ca, sleep, Proof::CertificateOnly), Some(&foreign)).await.expect_err("refused");
    // TLS 1.3 reports the client certificate's rejection after the
    // handshake: the call fails either way, and nothing is issued.
    assert!(matches!(err, CaClientError::Transport { .. }), "{err}");
    assert_eq!(ca.server.stats().issued.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_renews_at_half_life_proving_itself_with_its_certificate() {
    let dir = tempfile::tempdir().expect("a temp dir");
    // Four-second certificates: renewal comes in about two.
    let lifetimes = Lifetimes { default: Duration::from_secs(4), ..Lifetimes::default() };
    let ca = Arc::new(CertificateAuthority::load_or_create(dir.path(), "cluster.local", lifetimes).expect("a CA"));
    let authenticators: Vec<Arc<dyn Authenticator>> = vec![
        Arc::new(BootstrapTokens::parse("spiffe://cluster.local/ns/foo/sa/sleep s3cret\n").expect("tokens")),
        Arc::new(ClientCertificate { trust_domains: TrustDomains::default() }),
    ];
    let server = CaServer::new(ca.clone(), authenticators);
    let tls = server::tls_config(ca.clone(), vec!["istiod.istio-system.svc".into()]).expect("TLS");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let address = listener.local_addr().expect("an address").to_string();
    tokio::spawn(server.clone().serve(listener, tls, std::future::pending()));
    let mut options = CaClientOptions {
        address,
        server_name: "istiod.istio-system.svc".into(),
        ca_roots_pem: ca.root_pem().to_string(),
        identity: id("spiffe://cluster.local/ns/foo/sa/sleep"),
        proof: Proof::Token("s3cret".into()),
        ttl: Duration::ZERO,
    };
    let first = request_certificate(&options, None).await.expect("issued");
    // From now on only the certificate proves who it is.
    options.proof = Proof::CertificateOnly;
    let (tx, mut rx) = tokio::sync::watch::channel(Some(Arc::new(first.clone())));
    let keeping = tokio::spawn(mesh_xds::ca::client::keep_certificate(options, tx));
    let mut serials = vec![first.leaf.serial.clone()];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while serials.len() < 3 && tokio::time::Instant::now() < deadline {
        let _ = tokio::time::timeout_at(deadline, rx.changed()).await;
        if let Some(c) = rx.borrow_and_update().clone() {
            if serials.last() != Some(&c.leaf.serial) {
                serials.push(c.leaf.serial.clone());
            }
        }
    }
    keeping.abort();
    assert!(serials.len() >= 3, "renewed twice in 15 s: {serials:?}");
    assert_eq!(server.stats().authn_failures.load(Ordering::Relaxed), 0);
}
