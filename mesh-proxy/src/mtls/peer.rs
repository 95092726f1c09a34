//! Who is on the other end of an mTLS connection, as the request path uses
//! it: the principal authorization matches (`source.principal`,
//! `source.namespace`), the metrics' `source_principal`, and the
//! `x-forwarded-client-cert` element Envoy writes for the app in Istio.

use std::hash::BuildHasher;
use std::sync::Arc;

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
        PeerIdentity::with_digest(leaf, &digest(leaf), local)
    }

    fn with_digest(leaf: &CertificateDer<'_>, digest: &[u8; 32], local: Option<&SpiffeId>) -> Option<PeerIdentity> {
        let info = CertificateInfo::from_der(leaf).ok()?;
        let id = info.spiffe_ids().into_iter().next()?;
        let principal = id.principal();
        let key = rustc_hash::FxBuildHasher.hash_one(&principal).max(1);
        Some(PeerIdentity { principal, uri: id.to_string(), xfcc: xfcc_element(digest, &info, local), key, id })
    }
}

/// SHA-256 of a certificate's DER: `x-forwarded-client-cert`'s `Hash`, and
/// the key of [`Peers`].
fn digest(leaf: &CertificateDer<'_>) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf.as_ref());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Peers already seen, by their certificate's digest: a peer that
/// reconnects (a resumed session, a new pooled connection) costs a hash,
/// not a certificate parse. Bounded; emptied when full and when the local
/// certificate changes.
#[derive(Debug, Default)]
pub struct Peers {
    known: std::sync::Mutex<std::collections::HashMap<[u8; 32], Arc<PeerIdentity>>>,
}

/// Distinct peer certificates kept (a certificate lives a day: a mesh's
/// clients of one workload fit).
const PEERS_KEPT: usize = 4096;

impl Peers {
    /// The identity of the peer whose leaf certificate is `leaf`.
    pub fn get(&self, leaf: &CertificateDer<'_>, local: Option<&SpiffeId>) -> Option<Arc<PeerIdentity>> {
        let digest = digest(leaf);
        let mut known = self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(peer) = known.get(&digest) {
            return Some(Arc::clone(peer));
        }
        let peer = Arc::new(PeerIdentity::with_digest(leaf, &digest, local)?);
        if known.len() >= PEERS_KEPT {
            known.clear();
        }
        known.insert(digest, Arc::clone(&peer));
        Some(peer)
    }

    pub fn clear(&self) {
        self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    }
}

/// Envoy's `By=<local URI>;Hash=<SHA-256 of the peer's DER, hex>;Subject="<subject>";URI=<peer URI>`
/// (then `DNS=` per DNS name), as Istio's inbound listeners set it.
fn xfcc_element(digest: &[u8; 32], info: &CertificateInfo, local: Option<&SpiffeId>) -> String {
    let hash: String = digest.iter().map(|b| format!("{b:02x}")).collect();
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
