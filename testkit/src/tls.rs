//! TLS for tests: a small CA that signs server and client certificates,
//! and client configs that accept any server certificate (the test
//! compares serials or watches the server refuse), with or without a
//! client certificate.

use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Accepts any server certificate; signatures are still checked.
#[derive(Debug)]
pub struct AnyServerCertificate;

fn algorithms() -> rustls::crypto::WebPkiSupportedAlgorithms {
    rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms
}

impl ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// A client config that takes any server and shows no certificate.
pub fn any_server_client() -> Arc<rustls::ClientConfig> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCertificate))
        .with_no_client_auth();
    Arc::new(config)
}

/// Takes any server and shows `cert_pem` (with `key_pem`).
pub fn any_server_client_with(cert_pem: &str, key_pem: &str) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>().expect("a PEM chain");
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("a PEM key");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCertificate))
        .with_client_auth_cert(chain, key)
        .expect("a usable client certificate");
    Arc::new(config)
}

/// A CA that signs server and client certificates.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA's own certificate.
    pub pem: String,
}

impl TestCa {
    /// A new self-signed root named `name`.
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("a key");
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key).expect("a root");
        TestCa { issuer: Issuer::new(params, key), pem: cert.pem() }
    }

    /// A certificate for DNS name `name`, and its key, as PEM.
    pub fn issue_pem(&self, name: &str) -> (String, String) {
        let key = KeyPair::generate().expect("a key");
        let params = CertificateParams::new(vec![name.to_string()]).expect("params");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        (cert.pem(), key.serialize_pem())
    }

    /// `name`'s certificate and key, written as `<stem>.pem` and
    /// `<stem>.key` in `dir`: their paths.
    pub fn issue(&self, dir: &Path, stem: &str, name: &str) -> (String, String) {
        let (cert, key) = self.issue_pem(name);
        let (cert_path, key_path) = (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key")));
        std::fs::write(&cert_path, cert).expect("written");
        std::fs::write(&key_path, key).expect("written");
        (cert_path.to_string_lossy().into_owned(), key_path.to_string_lossy().into_owned())
    }

    /// The CA's certificate, written as `<stem>.pem` in `dir`: its path.
    pub fn write(&self, dir: &Path, stem: &str) -> String {
        let path = dir.join(format!("{stem}.pem"));
        std::fs::write(&path, &self.pem).expect("written");
        path.to_string_lossy().into_owned()
    }
}
