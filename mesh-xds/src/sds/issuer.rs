//! The workload certificates of the identities that have streams: issued
//! by the CA for the identity a stream proved ([`crate::server`]
//! authenticates it), never for what the node claims. The streams of one
//! identity share one certificate; it is issued again at half its life
//! and pushed to every such stream. Secrets are not part of the per-key
//! [`crate::cache`]: keys are shared across identities.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use mesh_core::certificate::WorkloadCertificate;
use mesh_core::identity::SpiffeId;
use tokio::sync::watch;

use crate::ca::authority::{CertificateAuthority, SignError};
use crate::resources::TypeMap;

use super::{certificate_secret, roots_secret, ROOT_SECRET, WORKLOAD_SECRET};

/// A failed issuance is tried again after this long.
const RETRY: Duration = Duration::from_secs(5);

/// Issues and renews the secrets of each identity that has a stream.
pub struct SecretIssuer {
    ca: Arc<CertificateAuthority>,
    ttl: Duration,
    by_identity: Mutex<HashMap<SpiffeId, Weak<IdentitySecrets>>>,
}

/// One identity's secrets, kept current while a stream holds this.
pub struct IdentitySecrets {
    pub id: SpiffeId,
    current: watch::Receiver<Arc<TypeMap>>,
    renewal: tokio::task::JoinHandle<()>,
}

impl Drop for IdentitySecrets {
    fn drop(&mut self) {
        self.renewal.abort();
    }
}

impl IdentitySecrets {
    /// The secrets now, and a way to wait for the next ones.
    pub fn watch(&self) -> watch::Receiver<Arc<TypeMap>> {
        self.current.clone()
    }
}

impl SecretIssuer {
    /// Workload certificates of `ttl` (the CA caps it), from `ca`.
    pub fn new(ca: Arc<CertificateAuthority>, ttl: Duration) -> Arc<SecretIssuer> {
        Arc::new(SecretIssuer { ca, ttl, by_identity: Mutex::default() })
    }

    /// `id`'s secrets: shared with the other streams of `id`, or issued now.
    pub fn secrets_for(self: &Arc<Self>, id: &SpiffeId) -> Result<Arc<IdentitySecrets>, SignError> {
        if let Some(live) = self.live(id) {
            return Ok(live);
        }
        // Signed without the lock, so streams of other identities go on.
        let (secrets, renew_at) = self.issue(id)?;
        let mut by_identity = self.by_identity.lock().unwrap_or_else(|e| e.into_inner());
        // Another stream of `id` may have been first: share its secrets.
        if let Some(live) = by_identity.get(id).and_then(Weak::upgrade) {
            return Ok(live);
        }
        let (tx, current) = watch::channel(secrets);
        let renewal = tokio::spawn(Arc::clone(self).renew(id.clone(), tx, renew_at));
        let live = Arc::new(IdentitySecrets { id: id.clone(), current, renewal });
        by_identity.retain(|_, w| w.strong_count() > 0);
        by_identity.insert(id.clone(), Arc::downgrade(&live));
        Ok(live)
    }

    fn live(&self, id: &SpiffeId) -> Option<Arc<IdentitySecrets>> {
        let by_identity = self.by_identity.lock().unwrap_or_else(|e| e.into_inner());
        by_identity.get(id).and_then(Weak::upgrade)
    }

    /// How many identities have secrets now.
    pub fn identities(&self) -> usize {
        self.by_identity.lock().unwrap_or_else(|e| e.into_inner()).values().filter(|w| w.strong_count() > 0).count()
    }

    /// New secrets for `id`, and when to renew them (half their life).
    fn issue(&self, id: &SpiffeId) -> Result<(Arc<TypeMap>, SystemTime), SignError> {
        let cert = self.ca.issue_workload(id, self.ttl)?;
        let now = SystemTime::now();
        let renew_at = now + cert.leaf.remaining(now) / 2;
        Ok((Arc::new(secret_resources(&cert)), renew_at))
    }

    async fn renew(self: Arc<Self>, id: SpiffeId, tx: watch::Sender<Arc<TypeMap>>, mut renew_at: SystemTime) {
        loop {
            let wait = renew_at.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::sleep(wait).await;
            match self.issue(&id) {
                Ok((secrets, next)) => {
                    tracing::info!(identity = %id, "workload certificate renewed for SDS");
                    tx.send_replace(secrets);
                    renew_at = next;
                }
                Err(e) => {
                    tracing::warn!(identity = %id, error = %e, "workload certificate renewal failed; retrying");
                    renew_at = SystemTime::now() + RETRY;
                }
            }
        }
    }
}

/// `default` and `ROOTCA` as SDS resources, the PEM inline.
pub fn secret_resources(cert: &WorkloadCertificate) -> TypeMap {
    [certificate_secret(WORKLOAD_SECRET, &cert.chain_pem, &cert.key_pem), roots_secret(ROOT_SECRET, &cert.roots_pem)]
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::authority::Lifetimes;
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret::Type as SecretType, Secret};
    use prost::Message;

    fn issuer(ttl: Duration) -> (tempfile::TempDir, Arc<SecretIssuer>) {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path(), "cluster.local", Lifetimes::default()).unwrap();
        (dir, SecretIssuer::new(Arc::new(ca), ttl))
    }

    fn leaf_of(secrets: &TypeMap) -> mesh_core::certificate::CertificateInfo {
        let secret = Secret::decode(secrets[WORKLOAD_SECRET].value()).unwrap();
        let Some(SecretType::TlsCertificate(tls)) = secret.r#type else { panic!("not a certificate") };
        let Some(Specifier::InlineBytes(pem)) = tls.certificate_chain.unwrap().specifier else { panic!("not inline") };
        let pem = String::from_utf8(pem).unwrap();
        let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        mesh_core::certificate::CertificateInfo::from_der(&der).unwrap()
    }

    use rustls_pki_types::pem::PemObject;

    #[tokio::test]
    async fn one_certificate_per_identity_for_its_spiffe_id() {
        let (_dir, issuer) = issuer(Duration::from_secs(3600));
        let reviews: SpiffeId = "spiffe://cluster.local/ns/default/sa/reviews".parse().unwrap();
        let ratings: SpiffeId = "spiffe://cluster.local/ns/default/sa/ratings".parse().unwrap();
        let a = issuer.secrets_for(&reviews).unwrap();
        let b = issuer.secrets_for(&reviews).unwrap();
        let c = issuer.secrets_for(&ratings).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "streams of one identity share its secrets");
        let (sa, sc) = (a.watch().borrow().clone(), c.watch().borrow().clone());
        assert_eq!(sa.keys().collect::<Vec<_>>(), [ROOT_SECRET, WORKLOAD_SECRET]);
        assert_eq!(leaf_of(&sa).spiffe_ids(), vec![reviews.clone()]);
        assert_eq!(leaf_of(&sc).spiffe_ids(), vec![ratings]);
        assert_eq!(issuer.identities(), 2);
        drop((a, b));
        assert_eq!(issuer.identities(), 1, "an identity without streams is let go");
    }

    #[tokio::test]
    async fn renewed_at_half_life_and_pushed() {
        let (_dir, issuer) = issuer(Duration::from_secs(4));
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/reviews".parse().unwrap();
        let secrets = issuer.secrets_for(&id).unwrap();
        let mut rx = secrets.watch();
        let first = leaf_of(&rx.borrow_and_update());
        tokio::time::timeout(Duration::from_secs(20), rx.changed()).await.expect("renewed in time").unwrap();
        let second = leaf_of(&rx.borrow());
        assert_ne!(first.serial, second.serial);
        assert_eq!(second.spiffe_ids(), vec![id]);
    }
}
