//! Peer certificates checked as Istio's sidecars check them: the chain by
//! webpki against the mesh's current roots, then the SPIFFE URI SAN by us
//! (webpki checks DNS names, not URIs). Both verifiers read the roots
//! anew on each handshake, so a root rotation needs no new config.

use std::sync::Arc;

use mesh_core::certificate::CertificateInfo;
use mesh_core::identity::{SpiffeId, TrustDomains};
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DistinguishedName, Error};

use super::{MtlsStats, Shared};

pub(crate) fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms
}

/// The handshake signature checks, the same in every verifier here:
/// webpki's, with aws-lc-rs's algorithms.
macro_rules! webpki_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &$crate::mtls::verify::algorithms())
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &$crate::mtls::verify::algorithms())
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            $crate::mtls::verify::algorithms().supported_schemes()
        }
    };
}
pub(crate) use webpki_signatures;

/// The SPIFFE ID a verified peer certificate carries, if it is one of
/// `trust_domains`.
fn peer_id(end_entity: &CertificateDer<'_>, trust_domains: &TrustDomains) -> Result<SpiffeId, String> {
    let info = CertificateInfo::from_der(end_entity).map_err(|e| e.to_string())?;
    let ids = info.spiffe_ids();
    let Some(first) = ids.first() else {
        return Err(format!("the peer certificate (serial {}) has no SPIFFE ID", info.serial));
    };
    ids.iter()
        .find(|id| trust_domains.accepts(id))
        .cloned()
        .ok_or_else(|| format!("peer identity {first} is not of trust domain {}", trust_domains.own))
}

fn refuse(stats: &MtlsStats, reason: String) -> Error {
    stats.record_rejection(&reason);
    Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(Refused(reason)))))
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

/// The client side of outbound mTLS: the server must chain to the mesh's
/// roots and be one of the identities the destination runs as (secure
/// naming); with none known, any identity of the trust domains.
#[derive(Debug)]
pub struct ServerIdentityVerifier {
    pub(super) shared: Arc<Shared>,
    pub(super) expected: Vec<String>,
    pub(super) cluster: String,
}

impl ServerCertVerifier for ServerIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let stats = &self.shared.stats;
        let Some(material) = self.shared.material.load_full() else {
            return Err(refuse(stats, "no workload certificate and roots yet".into()));
        };
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &material.roots,
            intermediates,
            now,
            algorithms().all,
        )
        .map_err(|e| refuse(stats, format!("cluster {}: the server's certificate: {e}", self.cluster)))?;
        let id = peer_id(end_entity, &self.shared.trust_domains).map_err(|e| refuse(stats, e))?;
        if !self.expected.is_empty() && !self.expected.iter().any(|e| *e == id.to_string()) {
            let reason =
                format!("cluster {}: server identity {id} is not one of {}", self.cluster, self.expected.join(", "));
            return Err(refuse(stats, reason));
        }
        Ok(ServerCertVerified::assertion())
    }

    webpki_signatures!();
}

/// The server side of inbound mTLS: a client certificate is required, must
/// chain to the mesh's roots, and must carry a SPIFFE ID of the trust
/// domains.
#[derive(Debug)]
pub struct ClientIdentityVerifier {
    pub(super) shared: Arc<Shared>,
}

impl ClientCertVerifier for ClientIdentityVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let stats = &self.shared.stats;
        let Some(material) = self.shared.material.load_full() else {
            return Err(refuse(stats, "no workload certificate and roots yet".into()));
        };
        material
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|e| refuse(stats, format!("the client's certificate: {e}")))?;
        peer_id(end_entity, &self.shared.trust_domains).map_err(|e| refuse(stats, e))?;
        Ok(ClientCertVerified::assertion())
    }

    webpki_signatures!();
}
