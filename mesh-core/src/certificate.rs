//! What an X.509 certificate says about a workload: its SPIFFE IDs (URI
//! SANs), serial, validity and whether it may sign. Read, never verified:
//! chains are checked by webpki (rustls), and the SPIFFE URI SAN here,
//! because webpki does not check URI names.
//!
//! Behind the `x509` feature: a proxy that only routes compiles no
//! certificate parser.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::pem::PemObject;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::SpiffeId;

/// A certificate as the mesh reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    /// Every URI SAN, as written (SPIFFE or not).
    pub uris: Vec<String>,
    pub dns_names: Vec<String>,
    /// The serial number in hex, as `openssl x509 -serial` prints it.
    pub serial: String,
    pub subject: String,
    pub issuer: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub is_ca: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not an X.509 certificate: {0}")]
pub struct NotACertificate(String);

impl CertificateInfo {
    /// Reads a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<CertificateInfo, NotACertificate> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| NotACertificate(e.to_string()))?;
        let mut uris = Vec::new();
        let mut dns_names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(uri) => uris.push(uri.to_string()),
                    GeneralName::DNSName(dns) => dns_names.push(dns.to_string()),
                    _ => {}
                }
            }
        }
        let validity = cert.validity();
        Ok(CertificateInfo {
            uris,
            dns_names,
            serial: cert.raw_serial_as_string().replace(':', ""),
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            not_before: system_time(validity.not_before.timestamp()),
            not_after: system_time(validity.not_after.timestamp()),
            is_ca: cert.is_ca(),
        })
    }

    /// The SPIFFE IDs among the URI SANs; other URIs are skipped.
    pub fn spiffe_ids(&self) -> Vec<SpiffeId> {
        self.uris.iter().filter_map(|u| u.parse().ok()).collect()
    }

    /// Is `at` within the validity period?
    pub fn valid_at(&self, at: SystemTime) -> bool {
        self.not_before <= at && at <= self.not_after
    }

    /// The time left until `not_after`, zero once past it.
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.not_after.duration_since(now).unwrap_or_default()
    }

    /// `not_after` as seconds since the Unix epoch.
    pub fn not_after_unix(&self) -> u64 {
        self.not_after.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }
}

fn system_time(unix_seconds: i64) -> SystemTime {
    match u64::try_from(unix_seconds) {
        Ok(s) => UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => UNIX_EPOCH - Duration::from_secs(unix_seconds.unsigned_abs()),
    }
}

/// A workload's key and certificate with the roots it trusts, as PEM
/// texts: what a CA answers, what SDS sends, what files hold. The data
/// plane builds its TLS configs from it.
#[derive(Clone, PartialEq, Eq)]
pub struct WorkloadCertificate {
    /// The leaf first, then its chain up to (not including) the root.
    pub chain_pem: String,
    pub key_pem: String,
    /// The roots peers' certificates must chain to; two during a root
    /// rotation.
    pub roots_pem: String,
    /// The leaf, read.
    pub leaf: CertificateInfo,
}

impl std::fmt::Debug for WorkloadCertificate {
    // Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCertificate").field("leaf", &self.leaf).finish_non_exhaustive()
    }
}

impl WorkloadCertificate {
    /// Reads the leaf of `chain_pem`; the key and roots are checked when
    /// a TLS config is built from them.
    pub fn new(chain_pem: String, key_pem: String, roots_pem: String) -> Result<WorkloadCertificate, NotACertificate> {
        let leaf_der = rustls_pki_types::CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .next()
            .ok_or_else(|| NotACertificate("no certificate in the chain".into()))?
            .map_err(|e| NotACertificate(e.to_string()))?;
        let leaf = CertificateInfo::from_der(&leaf_der)?;
        Ok(WorkloadCertificate { chain_pem, key_pem, roots_pem, leaf })
    }
}
