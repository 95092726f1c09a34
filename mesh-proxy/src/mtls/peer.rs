//! Who is on the other end of an mTLS connection, as the request path uses
//! it: the principal authorization matches (`source.principal`,
//! `source.namespace`), the metrics' `source_principal`, and the
//! `x-forwarded-client-cert` element Envoy writes for the app in Istio.

use std::hash::BuildHasher;

use mesh_core::certificate::CertificateInfo;
use mesh_core::identity::SpiffeId;
use rustls::pki_types::CertificateDer;

/// A verified peer of an inbound mTLS connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    pub id: SpiffeId,
    /// `cluster.local/ns/foo/sa/sleep`.
    pub principal: String,
    /// `spiffe://cluster.local/ns/foo/sa/sleep`.
    pub uri: String,
    /// The element this connection adds to `x-forwarded-client-cert`.
    pub xfcc: String,
    /// The principal hashed, never 0: metrics tell peers apart by it
    /// without hashing a string per request.
    pub key: u64,
}

impl PeerIdentity {
    /// The peer of a verified connection: its leaf certificate, and the
    /// local identity (`By=`). `None` when the leaf has no SPIFFE ID (the
    /// verifier has refused such peers already).
    pub fn from_leaf(leaf: &CertificateDer<'_>, local: Option<&SpiffeId>) -> Option<PeerIdentity> {
        let info = CertificateInfo::from_der(leaf).ok()?;
        let id = info.spiffe_ids().into_iter().next()?;
        let principal = id.principal();
        let key = rustc_hash::FxBuildHasher.hash_one(&principal).max(1);
        Some(PeerIdentity { principal, uri: id.to_string(), xfcc: xfcc_element(leaf, &info, local), key, id })
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
