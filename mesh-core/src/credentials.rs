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

    /// Only the CA of credential `name` (SIMPLE origination needs no
    /// certificate of its own, so its Secret may hold just `ca.crt`).
    fn ca_certificates(&self, namespace: &str, name: &str) -> Option<String> {
        self.credential(namespace, name)?.ca_certificates
    }

    /// Moves whenever any credential changes: a proxy rereads the ones it
    /// uses when it does.
    fn version(&self) -> u64;

    /// The version, as a channel that wakes its receivers when it moves
    /// (a control plane pushes credentials over SDS when they change).
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64>;
}

/// Credentials held in memory: for an embedder that gets them from
/// elsewhere, and for tests.
pub struct MemoryCredentials {
    by_name: std::sync::RwLock<std::collections::BTreeMap<(String, String), Credential>>,
    version: tokio::sync::watch::Sender<u64>,
}

impl Default for MemoryCredentials {
    fn default() -> Self {
        MemoryCredentials { by_name: Default::default(), version: tokio::sync::watch::channel(0).0 }
    }
}

impl MemoryCredentials {
    /// Adds or replaces credential `name` of `namespace`.
    pub fn put(&self, namespace: &str, name: &str, credential: Credential) {
        let mut map = self.by_name.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.insert((namespace.to_string(), name.to_string()), credential);
        drop(map);
        self.version.send_modify(|v| *v += 1);
    }

    /// Removes credential `name` of `namespace`.
    pub fn remove(&self, namespace: &str, name: &str) {
        let mut map = self.by_name.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.remove(&(namespace.to_string(), name.to_string()));
        drop(map);
        self.version.send_modify(|v| *v += 1);
    }
}

impl CredentialSource for MemoryCredentials {
    fn credential(&self, namespace: &str, name: &str) -> Option<Credential> {
        let map = self.by_name.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(&(namespace.to_string(), name.to_string())).cloned()
    }

    fn version(&self) -> u64 {
        *self.version.borrow()
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }
}
