//! Who is on the other end of an mTLS connection, as the request path uses
//! it: the principal authorization matches (`source.principal`,
//! `source.namespace`), the metrics' `source_principal`, and the
//! `x-forwarded-client-cert` element Envoy writes for the app in Istio.

use mesh_core::certificate::CertificateInfo;
use mesh_core::identity::SpiffeId;
use rustls::pki_types::CertificateDer;

/// A verified peer of an inbound mTLS connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    pub id: SpiffeId,
    /// `cluster.local/ns/foo/sa/sleep`.
    pub principal: String,
    /// The element this connection adds to `x-forwarded-client-cert`.
    pub xfcc: String,
}

impl PeerIdentity {
    /// The peer of a verified connection: its leaf certificate, and the
    /// local identity (`By=`). `None` when the leaf has no SPIFFE ID (the
    /// verifier has refused such peers already).
    pub fn from_leaf(leaf: &CertificateDer<'_>, local: Option<&SpiffeId>) -> Option<PeerIdentity> {
        let info = CertificateInfo::from_der(leaf).ok()?;
        let id = info.spiffe_ids().into_iter().next()?;
        Some(PeerIdentity { principal: id.principal(), xfcc: xfcc_element(leaf, &info, local), id })
    }
}

/// Envoy's `By=<local URI>;Hash=<SHA-256 of the peer's DER, hex>;Subject="<subject>";URI=<peer URI>`
/// (then `DNS=` per DNS name), as Istio's inbound listeners set it.
fn xfcc_element(leaf: &CertificateDer<'_>, info: &CertificateInfo, local: Option<&SpiffeId>) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf.as_ref());
    let hash: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let mut element = String::new();
    if let Some(local) = local {
        element.push_str(&format!("By={local};"));
    }
    element.push_str(&format!("Hash={hash};Subject=\"{}\"", info.subject.replace('"', "\\\"")));
    for uri in &info.uris {
        element.push_str(&format!(";URI={uri}"));
    }
    for dns in &info.dns_names {
        element.push_str(&format!(";DNS={dns}"));
    }
    element
}
