//! Istio mutual TLS in the data plane: the workload's identity (its
//! certificate, key and the mesh's roots, from a CA client, SDS or files),
//! turned into rustls configs built once and reading the current
//! certificate on every handshake, so a renewed certificate serves new
//! connections while existing ones finish, and a root rotation takes a
//! bundle of both roots.
//!
//! | module | what it holds |
//! |---|---|
//! | [`verify`] | peer certificates: webpki chain, then the SPIFFE ID (trust domain, expected identities) |
//! | [`peer`] | the identity of a connection's peer, and the `x-forwarded-client-cert` element Envoy writes |
//! | [`sessions`] | TLS 1.3 session tickets per destination, enough for a pool's bursts |
//! | [`files`] | certificates mounted as files (Istio's `cert-chain.pem`, `key.pem`, `root-cert.pem`), reloaded on change |

pub mod files;
pub mod peer;
pub mod sessions;
pub mod verify;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwapOption;
use mesh_core::certificate::WorkloadCertificate;
use mesh_core::identity::{SpiffeId, TrustDomains};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, SignatureScheme};
use serde::Serialize;
use tokio::sync::watch;

/// Why a certificate could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MtlsError {
    #[error("{0}")]
    Material(String),
}

/// What mTLS has done, for `/stats` and Prometheus.
#[derive(Debug, Default)]
pub struct MtlsStats {
    /// Peer certificates refused (expired, wrong CA, wrong identity, ...).
    pub peer_rejections: AtomicU64,
    /// Inbound TLS handshakes that failed for any reason (no client
    /// certificate, not TLS, a refused certificate).
    pub inbound_handshake_failures: AtomicU64,
    /// Certificates received that could not be used (the last good one
    /// kept serving).
    pub certificate_errors: AtomicU64,
    /// The newest refusal, for the admin page.
    pub last_rejection: Mutex<Option<String>>,
}

impl MtlsStats {
    fn record_rejection(&self, reason: &str) {
        self.peer_rejections.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(reason, "peer certificate refused");
        *self.last_rejection.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason.to_string());
    }
}

/// A certificate made ready for rustls.
#[derive(Debug)]
struct Material {
    certificate: Arc<WorkloadCertificate>,
    key: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    client_verifier: Arc<dyn ClientCertVerifier>,
}

impl Material {
    fn new(certificate: Arc<WorkloadCertificate>) -> Result<Material, MtlsError> {
        let bad = |what: &str, e: &dyn std::fmt::Display| MtlsError::Material(format!("{what}: {e}"));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(certificate.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| bad("certificate chain", &e))?;
        let key = PrivateKeyDer::from_pem_slice(certificate.key_pem.as_bytes()).map_err(|e| bad("private key", &e))?;
        let key = CertifiedKey::from_der(chain, key, &provider).map_err(|e| bad("certificate and key", &e))?;
        let mut roots = RootCertStore::empty();
        for root in CertificateDer::pem_slice_iter(certificate.roots_pem.as_bytes()) {
            roots.add(root.map_err(|e| bad("roots", &e))?).map_err(|e| bad("roots", &e))?;
        }
        if roots.is_empty() {
            return Err(MtlsError::Material("roots: no certificate".into()));
        }
        let roots = Arc::new(roots);
        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider)
            .build()
            .map_err(|e| bad("roots", &e))?;
        Ok(Material { certificate, key: Arc::new(key), roots, client_verifier })
    }
}

/// What the configs share: the current material, the trust domains, and
/// counts.
#[derive(Debug)]
struct Shared {
    material: ArcSwapOption<Material>,
    trust_domains: TrustDomains,
    stats: MtlsStats,
    peers: peer::Peers,
    /// Session tickets of every outbound mTLS config.
    sessions: Arc<sessions::Sessions>,
}

/// The proxy's workload identity: cheap to clone, every clone sees the
/// same current certificate.
#[derive(Clone, Debug)]
pub struct WorkloadIdentity {
    shared: Arc<Shared>,
    /// One server config for every mTLS listener: it reads the current
    /// certificate and roots on each handshake.
    server: Arc<rustls::ServerConfig>,
}

impl WorkloadIdentity {
    /// An identity with no certificate yet; [`WorkloadIdentity::install`]
    /// or [`WorkloadIdentity::follow`] gives it one.
    pub fn new(trust_domains: TrustDomains) -> WorkloadIdentity {
        let shared = Arc::new(Shared {
            material: ArcSwapOption::empty(),
            trust_domains,
            stats: MtlsStats::default(),
            peers: peer::Peers::default(),
            sessions: Arc::default(),
        });
        let mut server = rustls::ServerConfig::builder_with_provider(mesh_provider())
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.with_client_cert_verifier(Arc::new(verify::ClientIdentityVerifier { shared: shared.clone() }))
                    .with_cert_resolver(Arc::new(CurrentKey(shared.clone())))
            })
            .unwrap_or_else(|_| unreachable_versions());
        // Stateless tickets: a session resumes on any connection for as
        // long as its ticket lives, not while a 256-entry cache keeps it.
        if let Ok(ticketer) = rustls::crypto::aws_lc_rs::Ticketer::new() {
            server.ticketer = ticketer;
        }
        server.alpn_protocols =
            ["h2", "http/1.1", "istio-peer-exchange", "istio"].iter().map(|p| p.as_bytes().to_vec()).collect();
        WorkloadIdentity { shared, server: Arc::new(server) }
    }

    /// Uses `certificate` from now on, for new connections; on error the
    /// current one stays.
    pub fn install(&self, certificate: Arc<WorkloadCertificate>) -> Result<(), MtlsError> {
        match Material::new(certificate) {
            Ok(material) => {
                tracing::info!(
                    uris = ?material.certificate.leaf.uris,
                    serial = %material.certificate.leaf.serial,
                    "workload certificate in use"
                );
                self.shared.material.store(Some(Arc::new(material)));
                // Peers' `x-forwarded-client-cert` names this certificate's ID.
                self.shared.peers.clear();
                Ok(())
            }
            Err(e) => {
                self.shared.stats.certificate_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "workload certificate refused; the last good one keeps serving");
                Err(e)
            }
        }
    }

    /// Installs every certificate `certificates` publishes, in a task that
    /// ends with the channel.
    pub fn follow(&self, mut certificates: watch::Receiver<Option<Arc<WorkloadCertificate>>>) {
        let identity = self.clone();
        tokio::spawn(async move {
            loop {
                let current = certificates.borrow_and_update().clone();
                if let Some(certificate) = current {
                    let _ = identity.install(certificate);
                }
                if certificates.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// The certificate in use.
    pub fn certificate(&self) -> Option<Arc<WorkloadCertificate>> {
        self.shared.material.load().as_ref().map(|m| m.certificate.clone())
    }

    /// This proxy's own SPIFFE ID, once it has a certificate.
    pub fn spiffe_id(&self) -> Option<SpiffeId> {
        self.certificate()?.leaf.spiffe_ids().into_iter().next()
    }

    pub fn trust_domains(&self) -> &TrustDomains {
        &self.shared.trust_domains
    }

    pub fn stats(&self) -> &MtlsStats {
        &self.shared.stats
    }

    /// The identity of a verified peer, by its leaf certificate (`By=` in
    /// its `x-forwarded-client-cert` element: `local`).
    pub fn peer(&self, leaf: &rustls::pki_types::CertificateDer<'_>, local: bool) -> Option<Arc<peer::PeerIdentity>> {
        let id = if local { self.spiffe_id() } else { None };
        self.shared.peers.get(leaf, id.as_ref())
    }

    /// The inbound mTLS config: client certificates required.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }

    /// An outbound mTLS config for `cluster`, whose servers must be one of
    /// `expected` (SPIFFE IDs; empty: any of the trust domains), offering
    /// `alpn`.
    pub fn client_config(&self, cluster: &str, expected: &[String], alpn: &[String]) -> Arc<rustls::ClientConfig> {
        let verifier = verify::ServerIdentityVerifier {
            shared: self.shared.clone(),
            expected: expected.to_vec(),
            cluster: cluster.to_string(),
        };
        let mut config = rustls::ClientConfig::builder_with_provider(mesh_provider())
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.dangerous()
                    .with_custom_certificate_verifier(Arc::new(verifier))
                    .with_client_cert_resolver(Arc::new(CurrentKey(self.shared.clone())))
            })
            .unwrap_or_else(|_| unreachable_versions());
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        config.resumption = rustls::client::Resumption::store(self.shared.sessions.clone());
        Arc::new(config)
    }
}

/// The crypto for Istio mTLS, as Istio sets Envoy up: key exchange X25519
/// then P-256 (rustls's default leads with the X25519MLKEM768 hybrid,
/// which Istio offers only when `meshConfig.tlsDefaults.ecdhCurves` asks
/// for it), and AES-128-GCM-SHA256 first among TLS 1.3 suites, as
/// BoringSSL orders them on CPUs with AES instructions (SHA-384's
/// HKDF has no SHA instructions to run on: it took 12% of a handshake).
fn mesh_provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::aws_lc_rs::{cipher_suite, default_provider, kx_group};
    let mut provider = default_provider();
    provider.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1];
    let first = cipher_suite::TLS13_AES_128_GCM_SHA256;
    provider.cipher_suites.retain(|s| s.suite() != first.suite());
    provider.cipher_suites.insert(0, first);
    Arc::new(provider)
}

/// aws-lc-rs supports rustls's default protocol versions: this is never
/// reached.
fn unreachable_versions() -> ! {
    panic!("the aws-lc-rs provider supports TLS 1.2 and 1.3")
}

/// The current certificate, for either side of a handshake.
#[derive(Debug)]
struct CurrentKey(Arc<Shared>);

impl ResolvesServerCert for CurrentKey {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.material.load().as_ref().map(|m| m.key.clone())
    }
}

impl ResolvesClientCert for CurrentKey {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.material.load().as_ref().map(|m| m.key.clone())
    }

    fn has_certs(&self) -> bool {
        self.0.material.load().is_some()
    }
}

/// The certificate in use as `/certs` shows it: never the key.
#[derive(Clone, Debug, Serialize)]
pub struct CertificateView {
    pub uris: Vec<String>,
    pub serial: String,
    pub not_before_unix: u64,
    pub not_after_unix: u64,
    pub issuer: String,
    pub roots: usize,
}

impl WorkloadIdentity {
    pub fn view(&self) -> Option<CertificateView> {
        let material = self.shared.material.load_full()?;
        let leaf = &material.certificate.leaf;
        let unix = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        Some(CertificateView {
            uris: leaf.uris.clone(),
            serial: leaf.serial.clone(),
            not_before_unix: unix(leaf.not_before),
            not_after_unix: unix(leaf.not_after),
            issuer: leaf.issuer.clone(),
            roots: material.roots.len(),
        })
    }
}
