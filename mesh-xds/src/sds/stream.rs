//! One authenticated stream's secrets: its identity's (`default`,
//! `ROOTCA`) and the credentials its resources refer to, read in the
//! namespace it proved. Merged into every snapshot the stream is sent,
//! and again when either changes.

use std::collections::BTreeSet;
use std::sync::Arc;

use mesh_core::credentials::CredentialSource;
use mesh_core::identity::SpiffeId;
use tokio::sync::watch;

use super::credentials::{self, SecretRef};
use super::IdentitySecrets;
use crate::cache::Snapshot;
use crate::resources::{version_of, TypeMap, SECRET};

pub struct StreamSecrets {
    identity: Arc<IdentitySecrets>,
    identity_updates: watch::Receiver<Arc<TypeMap>>,
    credentials: Option<(Arc<dyn CredentialSource>, watch::Receiver<u64>)>,
    /// The last merge, kept while neither the secrets nor the snapshot's
    /// references change.
    merged: Option<Merged>,
    /// What was last logged as missing.
    reported_missing: Vec<String>,
}

struct Merged {
    refs: Arc<BTreeSet<SecretRef>>,
    secrets: Arc<TypeMap>,
    missing: Vec<String>,
}

impl StreamSecrets {
    /// `identity`'s secrets, and credentials from `source` (none without).
    pub fn new(identity: Arc<IdentitySecrets>, source: Option<Arc<dyn CredentialSource>>) -> StreamSecrets {
        let identity_updates = identity.watch();
        let credentials = source.map(|s| {
            let updates = s.subscribe();
            (s, updates)
        });
        StreamSecrets { identity, identity_updates, credentials, merged: None, reported_missing: Vec::new() }
    }

    pub fn identity(&self) -> &SpiffeId {
        &self.identity.id
    }

    /// `snapshot` with this stream's secrets added (the shared maps of
    /// the other types are not copied). A credential that cannot be found
    /// is named in the snapshot's `unsupported`, and logged when that
    /// changes.
    pub fn merge(&mut self, node: &str, snapshot: &Snapshot) -> Arc<Snapshot> {
        let merged = match self.merged.take() {
            Some(m) if *m.refs == *snapshot.credentials => m,
            _ => self.resolve(&snapshot.credentials),
        };
        if merged.missing != self.reported_missing {
            if !merged.missing.is_empty() {
                tracing::warn!(node, missing = ?merged.missing, "credentials this node's config refers to are not there: their TLS cannot handshake until they are");
            }
            self.reported_missing = merged.missing.clone();
        }
        let mut out = snapshot.clone();
        out.config_version = format!("{}+{}", out.config_version, version_of(merged.secrets.values().map(|r| &**r)));
        out.resources.types.insert(SECRET.to_string(), merged.secrets.clone());
        if !merged.missing.is_empty() {
            out.unsupported = Arc::new(out.unsupported.iter().chain(&merged.missing).cloned().collect());
        }
        self.merged = Some(merged);
        Arc::new(out)
    }

    fn resolve(&mut self, refs: &Arc<BTreeSet<SecretRef>>) -> Merged {
        let mut secrets = (**self.identity_updates.borrow_and_update()).clone();
        let missing = match &mut self.credentials {
            _ if refs.is_empty() => Vec::new(),
            Some((source, updates)) => {
                updates.borrow_and_update();
                let namespace = self.identity.id.namespace();
                let (found, missing) = credentials::resolve(source.as_ref(), namespace, refs);
                secrets.extend(found);
                missing
            }
            None => refs
                .iter()
                .map(|r| format!("secret {}: this control plane reads no credentials (no Kubernetes)", r.sds_name()))
                .collect(),
        };
        Merged { refs: refs.clone(), secrets: Arc::new(secrets), missing }
    }

    /// Waits until the secrets change (the identity's are renewed, or a
    /// credential moves); `false` once they never will again. A stream
    /// whose config refers to no credential is not woken by Secrets.
    pub async fn changed(&mut self) -> bool {
        let uses_credentials = self.merged.as_ref().is_some_and(|m| !m.refs.is_empty());
        let StreamSecrets { identity_updates, credentials, .. } = self;
        let credentials = async {
            let alive = match credentials {
                Some((_, updates)) if uses_credentials => updates.changed().await.is_ok(),
                _ => false,
            };
            if !alive {
                // No source, none used, or it is gone: only renewals remain.
                std::future::pending::<()>().await;
            }
        };
        let changed = tokio::select! {
            renewed = identity_updates.changed() => renewed.is_ok(),
            () = credentials => true,
        };
        self.merged = None;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::authority::{CertificateAuthority, Lifetimes};
    use crate::sds::SecretIssuer;
    use mesh_core::credentials::{Credential, MemoryCredentials};
    use std::time::Duration;

    fn credential(chain: &str) -> Credential {
        Credential { certificate_chain: chain.into(), private_key: "KEY".into(), ca_certificates: None }
    }

    #[tokio::test]
    async fn a_credential_that_moves_is_merged_again_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path(), "cluster.local", Lifetimes::default()).unwrap();
        let issuer = SecretIssuer::new(Arc::new(ca), Duration::from_secs(3600));
        let id: SpiffeId = "spiffe://cluster.local/ns/istio-system/sa/gateway".parse().unwrap();
        let source = Arc::new(MemoryCredentials::default());
        source.put("istio-system", "web", credential("one"));
        let mut stream = StreamSecrets::new(issuer.secrets_for(&id).unwrap(), Some(source.clone()));
        let refs = [SecretRef::Certificate("web".into()), SecretRef::Roots("web".into())];
        let snapshot = Snapshot { credentials: Arc::new(refs.into()), ..Snapshot::default() };

        let first = stream.merge("gw", &snapshot);
        let names: Vec<&String> = first.resources.of_type(SECRET).unwrap().keys().collect();
        assert_eq!(names, ["ROOTCA", "default", "kubernetes://web"]);
        assert_eq!(
            *first.unsupported,
            ["secret kubernetes://web-cacert: no ca.crt in Secret web or web-cacert in namespace istio-system"]
        );

        source.put("istio-system", "web", credential("two"));
        let woke = tokio::time::timeout(Duration::from_secs(5), stream.changed()).await;
        assert_eq!(woke.ok(), Some(true), "a credential change wakes the stream");
        let second = stream.merge("gw", &snapshot);

        // A stream of the same identity whose config uses no credential is
        // not woken by Secrets.
        let mut plain = StreamSecrets::new(issuer.secrets_for(&id).unwrap(), Some(source.clone()));
        plain.merge("sidecar", &Snapshot::default());
        source.put("istio-system", "web", credential("three"));
        let woke = tokio::time::timeout(Duration::from_millis(200), plain.changed()).await;
        assert!(woke.is_err(), "woken by a Secret it does not use");
        assert_ne!(first.config_version, second.config_version);
        let web = |s: &Snapshot| s.resources.get(SECRET, "kubernetes://web").unwrap().version.clone();
        assert_ne!(web(&first), web(&second), "the new certificate is sent");
    }
}
