//! TLS credentials by name, as a Gateway's `credentialName` names them: a
//! certificate chain, its key, and the CA that client certificates must
//! chain to (for `MUTUAL`). A platform keeps them (Kubernetes Secrets in
//! adapter-k8s); the proxy asks by namespace and name and rereads when
//! the version moves.

/// One credential, as PEM texts.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub certificate_chain: String,
    pub private_key: String,
    /// For MUTUAL: the CA client certificates must chain to (a Secret's
    /// `ca.crt`, or Istio's `<name>-cacert` Secret).
    pub ca_certificates: Option<String>,
}

impl std::fmt::Debug for Credential {
    // Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential").field("ca", &self.ca_certificates.is_some()).finish_non_exhaustive()
    }
}

/// Where credentials come from.
pub trait CredentialSource: Send + Sync {
    /// The credential `name` in `namespace`, if there is one.
    fn credential(&self, namespace: &str, name: &str) -> Option<Credential>;

    /// Moves whenever any credential changes: a proxy rereads the ones it
    /// uses when it does.
    fn version(&self) -> u64;
}
