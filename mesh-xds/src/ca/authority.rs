//! The signing key and certificates of the mesh's CA, kept in a directory
//! in Istio's `cacerts` layout, and workload certificates signed as
//! istiod signs them.
//!
//! The directory holds `ca-cert.pem` (the signing certificate),
//! `ca-key.pem` (its key), `cert-chain.pem` (the signing certificate's
//! chain up to the root, may be empty) and `root-cert.pem` (the roots
//! workloads trust; two during a root rotation). A user's own root and
//! intermediate go there as Istio's plug-in CA docs describe; an empty
//! or missing directory gets a self-signed root on first start, written
//! there and kept, so restarts keep the mesh's trust.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use mesh_core::certificate::{CertificateInfo, WorkloadCertificate};
use mesh_core::identity::SpiffeId;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The `cacerts` file names.
pub const CA_CERT: &str = "ca-cert.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const CERT_CHAIN: &str = "cert-chain.pem";
pub const ROOT_CERT: &str = "root-cert.pem";

/// Istio backdates certificates this much, for clocks that run behind
/// the CA's.
const CLOCK_SKEW_GRACE: Duration = Duration::from_secs(120);

/// A self-signed root lives ten years, as Istio's does.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// How long workload certificates live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetimes {
    /// When the CSR asks for none (Istio's `DEFAULT_WORKLOAD_CERT_TTL`, 24 h).
    pub default: Duration,
    /// The longest a CSR may ask for (Istio's `MAX_WORKLOAD_CERT_TTL`, 90 days).
    pub max: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes { default: Duration::from_secs(24 * 3600), max: Duration::from_secs(90 * 24 * 3600) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{dir}: holds {present} but not {missing}: a cacerts directory needs ca-cert.pem, ca-key.pem, cert-chain.pem and root-cert.pem")]
    Partial { dir: PathBuf, present: String, missing: String },
    #[error("{key}: the key does not match the certificate in {cert}")]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("{cert}: {reason}")]
    Chain { cert: PathBuf, reason: String },
    #[error("making the self-signed root: {0}")]
    Generate(rcgen::Error),
}

/// Why a CSR was not signed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    #[error("the CSR is not a valid PKCS#10 request: {0}")]
    BadCsr(String),
    #[error("the CSR asks for {requested}, but the caller proved only {proven}")]
    NotProven { requested: String, proven: String },
    #[error("the caller proved no identity")]
    NoIdentity,
    #[error("requested lifetime {requested:?} is greater than the max allowed {max:?}")]
    TtlTooLong { requested: Duration, max: Duration },
    #[error("the signing certificate expired at {0:?}")]
    SignerExpired(SystemTime),
    #[error("signing failed: {0}")]
    Signing(String),
}

/// A signed workload certificate as Istio's CA answers: the leaf, then
/// each certificate of the signer's chain, then the root bundle as one
/// text (two roots during a rotation), last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    pub cert_chain: Vec<String>,
}

/// The mesh's certificate authority.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    signer: CertificateInfo,
    /// `cert-chain.pem`, one PEM text per certificate.
    chain: Vec<String>,
    root_pem: String,
    lifetimes: Lifetimes,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority").field("signer", &self.signer).finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// The CA kept in `dir`: loaded when the directory holds the
    /// `cacerts` files, a new self-signed root for `trust_domain` written
    /// there when it holds none of them.
    pub fn load_or_create(
        dir: &Path,
        trust_domain: &str,
        lifetimes: Lifetimes,
    ) -> Result<CertificateAuthority, CaError> {
        let files = [CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT];
        let present: Vec<&str> = files.iter().copied().filter(|f| dir.join(f).exists()).collect();
        if present.is_empty() {
            write_self_signed_root(dir, trust_domain)?;
        } else if present.len() < files.len() {
            let missing: Vec<&str> = files.iter().copied().filter(|f| !present.contains(f)).collect();
            return Err(CaError::Partial { dir: dir.into(), present: present.join(", "), missing: missing.join(", ") });
        }
        CertificateAuthority::load(dir, lifetimes)
    }

    /// The CA in a `cacerts` directory, checked: the key matches
    /// `ca-cert.pem`, which is a CA, valid now, and signed through
    /// `cert-chain.pem` by a certificate in `root-cert.pem`.
    pub fn load(dir: &Path, lifetimes: Lifetimes) -> Result<CertificateAuthority, CaError> {
        let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
        let signer_der = first_certificate(&cert_path)?;
        let signer = CertificateInfo::from_der(&signer_der).map_err(|e| file_error(&cert_path, e))?;
        let key_pem = read(&key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| file_error(&key_path, e))?;
        let (_, parsed) = X509Certificate::from_der(&signer_der).map_err(|e| file_error(&cert_path, e))?;
        if parsed.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice() {
            return Err(CaError::KeyMismatch { key: key_path, cert: cert_path });
        }
        let chain_error = |reason: String| CaError::Chain { cert: cert_path.clone(), reason };
        if !signer.is_ca {
            return Err(chain_error("not a CA certificate (basicConstraints CA:TRUE is missing)".into()));
        }
        if !signer.valid_at(SystemTime::now()) {
            return Err(chain_error(format!(
                "not valid now (valid {:?} to {:?})",
                signer.not_before, signer.not_after
            )));
        }
        let chain_path = dir.join(CERT_CHAIN);
        let chain_ders = certificates(&chain_path, &read(&chain_path)?)?;
        let root_path = dir.join(ROOT_CERT);
        let root_pem = read(&root_path)?;
        let roots = certificates(&root_path, &root_pem)?;
        if roots.is_empty() {
            return Err(file_error(&root_path, "no certificate in the file"));
        }
        verify_chain(&signer_der, &chain_ders, &roots).map_err(chain_error)?;
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(signer_der.as_slice()), key)
            .map_err(|e| file_error(&cert_path, e))?;
        let chain = chain_ders.iter().map(|der| pem_certificate(der)).collect();
        Ok(CertificateAuthority { issuer, signer, chain, root_pem, lifetimes })
    }

    /// The roots workloads should trust, as one PEM text.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The signing certificate.
    pub fn signer(&self) -> &CertificateInfo {
        &self.signer
    }

    /// Signs the public key of `csr_pem` for `proven`, the identities the
    /// caller proved. The certificate names exactly those: the CSR's
    /// subject and extensions are not copied, and a CSR that asks for a
    /// SPIFFE ID the caller did not prove is refused.
    pub fn sign(&self, csr_pem: &str, proven: &[SpiffeId], requested_ttl: Duration) -> Result<Issued, SignError> {
        if proven.is_empty() {
            return Err(SignError::NoIdentity);
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| SignError::BadCsr(e.to_string()))?;
        for san in &csr.params.subject_alt_names {
            if let SanType::URI(uri) = san {
                if !proven.iter().any(|id| id.to_string() == uri.as_str()) {
                    let proven = proven.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
                    return Err(SignError::NotProven { requested: uri.to_string(), proven });
                }
            }
        }
        let params = self.workload_params(proven, requested_ttl)?;
        let leaf = params.signed_by(&csr.public_key, &self.issuer).map_err(|e| SignError::Signing(e.to_string()))?;
        let mut cert_chain = vec![leaf.pem()];
        cert_chain.extend(self.chain.iter().cloned());
        cert_chain.push(self.root_pem.clone());
        Ok(Issued { cert_chain })
    }

    /// Istio's workload certificate: the SPIFFE URIs as the only SANs, an
    /// empty subject, digital signature and key encipherment for server
    /// and client auth, backdated for skew, never outliving the signer.
    fn workload_params(&self, ids: &[SpiffeId], requested_ttl: Duration) -> Result<CertificateParams, SignError> {
        let ttl = if requested_ttl.is_zero() { self.lifetimes.default } else { requested_ttl };
        if ttl > self.lifetimes.max {
            return Err(SignError::TtlTooLong { requested: ttl, max: self.lifetimes.max });
        }
        let now = SystemTime::now();
        if now >= self.signer.not_after {
            return Err(SignError::SignerExpired(self.signer.not_after));
        }
        let not_after = (now + ttl).min(self.signer.not_after);
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = ids
            .iter()
            .map(|id| id.to_string().try_into().map(SanType::URI))
            .collect::<Result<_, _>>()
            .map_err(|e: rcgen::Error| SignError::Signing(e.to_string()))?;
        params.not_before = (now - CLOCK_SKEW_GRACE).into();
        params.not_after = not_after.into();
        params.serial_number = Some(random_serial());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }

    /// A workload certificate with a new key made here, for local use
    /// (`meshctl ca issue`, file-mounted certificates): what a CSR from
    /// that workload would get.
    pub fn issue_workload(&self, id: &SpiffeId, ttl: Duration) -> Result<WorkloadCertificate, SignError> {
        let key = KeyPair::generate().map_err(|e| SignError::Signing(e.to_string()))?;
        let mut params = self.workload_params(std::slice::from_ref(id), ttl)?;
        params.distinguished_name = DistinguishedName::new();
        let leaf = params.signed_by(&key, &self.issuer).map_err(|e| SignError::Signing(e.to_string()))?;
        let chain = std::iter::once(leaf.pem()).chain(self.chain.iter().cloned()).collect::<String>();
        WorkloadCertificate::new(chain, key.serialize_pem(), self.root_pem.clone())
            .map_err(|e| SignError::Signing(e.to_string()))
    }

    /// A certificate for a server of the control plane itself (the CA's
    /// own gRPC port): DNS names, server auth, with its new key.
    pub fn issue_server_certificate(&self, dns_names: &[String]) -> Result<(Vec<String>, String), SignError> {
        let key = KeyPair::generate().map_err(|e| SignError::Signing(e.to_string()))?;
        let mut params = CertificateParams::new(dns_names.to_vec()).map_err(|e| SignError::Signing(e.to_string()))?;
        let now = SystemTime::now();
        params.distinguished_name = DistinguishedName::new();
        params.not_before = (now - CLOCK_SKEW_GRACE).into();
        params.not_after = (now + self.lifetimes.default).min(self.signer.not_after).into();
        params.serial_number = Some(random_serial());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).map_err(|e| SignError::Signing(e.to_string()))?;
        let mut chain = vec![cert.pem()];
        chain.extend(self.chain.iter().cloned());
        Ok((chain, key.serialize_pem()))
    }
}

/// A new self-signed root for `trust_domain`, written in the `cacerts`
/// layout: the root signs workloads itself, so `cert-chain.pem` is empty
/// and `root-cert.pem` is the root. The key is written owner-only.
pub fn write_self_signed_root(dir: &Path, trust_domain: &str) -> Result<(), CaError> {
    let key = KeyPair::generate().map_err(CaError::Generate)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::OrganizationName, trust_domain);
    let now = SystemTime::now();
    params.not_before = (now - CLOCK_SKEW_GRACE).into();
    params.not_after = (now + ROOT_LIFETIME).into();
    params.serial_number = Some(random_serial());
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let root = params.self_signed(&key).map_err(CaError::Generate)?;
    std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
    write_file(&dir.join(CA_KEY), &key.serialize_pem(), 0o600)?;
    write_file(&dir.join(CA_CERT), &root.pem(), 0o644)?;
    write_file(&dir.join(CERT_CHAIN), "", 0o644)?;
    write_file(&dir.join(ROOT_CERT), &root.pem(), 0o644)
}

/// Writes through a temporary file and a rename, so a reader never sees
/// half a key.
pub fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| f.write_all(contents.as_bytes()).and_then(|_| f.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, path));
    written.map_err(|e| file_error(path, e))
}

/// Each certificate must be signed by the next; the last by one of the
/// roots. A chain that repeats the signing certificate or ends with a
/// root (as many `cert-chain.pem` files do) is fine.
fn verify_chain(signer: &[u8], chain: &[Vec<u8>], roots: &[Vec<u8>]) -> Result<(), String> {
    let mut path = vec![parse(signer)?];
    for der in chain.iter().filter(|d| d.as_slice() != signer && !roots.contains(d)) {
        path.push(parse(der)?);
    }
    for pair in path.windows(2) {
        pair[0].verify_signature(Some(pair[1].public_key())).map_err(|_| {
            format!("`{}` is not signed by `{}` of cert-chain.pem", pair[0].subject(), pair[1].subject())
        })?;
    }
    let Some(top) = path.last() else { return Err("no certificate".into()) };
    let roots: Vec<X509Certificate> = roots.iter().map(|d| parse(d)).collect::<Result<_, _>>()?;
    if roots.iter().any(|root| top.verify_signature(Some(root.public_key())).is_ok()) {
        Ok(())
    } else {
        Err(format!("`{}` is not signed by any certificate in root-cert.pem", top.subject()))
    }
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    X509Certificate::from_der(der).map(|(_, c)| c).map_err(|e| e.to_string())
}

/// A positive 128-bit serial, random as RFC 5280 asks.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    fastrand::fill(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|e| file_error(path, e))
}

fn first_certificate(path: &Path) -> Result<Vec<u8>, CaError> {
    let all = certificates(path, &read(path)?)?;
    all.into_iter().next().ok_or_else(|| file_error(path, "no certificate in the file"))
}

fn certificates(path: &Path, pem_text: &str) -> Result<Vec<Vec<u8>>, CaError> {
    CertificateDer::pem_slice_iter(pem_text.as_bytes())
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(path, e))
}

fn pem_certificate(der: &[u8]) -> String {
    let lf = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der), lf)
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> CaError {
    CaError::File { path: path.into(), reason: e.to_string() }
}
