//! Kubernetes Secrets as TLS credentials, as Istio's gateways read a
//! `credentialName`: `tls.crt` and `tls.key` (or Istio's older `cert` and
//! `key`), and for MUTUAL `ca.crt` (or `cacert`), or a separate
//! `<name>-cacert` Secret. Secrets without a certificate are not kept.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::watcher;
use mesh_core::credentials::{Credential, CredentialSource};

use crate::watch::{changes, Change, WatchCounters};

/// The certificate-holding Secrets of a cluster, followed by a watch.
pub struct SecretCredentials {
    by_name: RwLock<BTreeMap<(String, String), Fields>>,
    /// Moves on every change.
    version: tokio::sync::watch::Sender<u64>,
    pub counters: Arc<WatchCounters>,
    /// `true` once the first list is in.
    listed: tokio::sync::watch::Sender<bool>,
}

/// A Secret's PEM fields that matter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Fields {
    cert: Option<String>,
    key: Option<String>,
    ca: Option<String>,
}

impl Fields {
    fn of(secret: &Secret) -> Fields {
        let data = secret.data.as_ref();
        let text = |names: &[&str]| {
            names.iter().find_map(|n| data.and_then(|d| d.get(*n)).map(|b| String::from_utf8_lossy(&b.0).into_owned()))
        };
        Fields { cert: text(&["tls.crt", "cert"]), key: text(&["tls.key", "key"]), ca: text(&["ca.crt", "cacert"]) }
    }
}

impl SecretCredentials {
    /// Follows every Secret the client may list, in a task; `ready` once
    /// listed.
    pub fn start(client: kube::Client) -> Arc<SecretCredentials> {
        let store = Arc::new(SecretCredentials {
            by_name: RwLock::default(),
            version: tokio::sync::watch::channel(0).0,
            counters: Arc::default(),
            listed: tokio::sync::watch::channel(false).0,
        });
        let following = Arc::clone(&store);
        tokio::spawn(async move {
            let api = Api::<Secret>::all(client);
            let counters = Arc::clone(&following.counters);
            let mut stream = changes(api, watcher::Config::default(), "secrets", counters, |s: Secret| {
                let ns = s.metadata.namespace.clone().unwrap_or_default();
                let name = s.metadata.name.clone().unwrap_or_default();
                ((ns, name), Fields::of(&s))
            });
            while let Some(change) = stream.next().await {
                following.apply(change);
            }
        });
        store
    }

    fn apply(&self, change: Change<((String, String), Fields)>) {
        let mut map = self.by_name.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        match change {
            Change::Reset(all) => {
                *map = all.into_iter().filter(|(_, f)| f.cert.is_some() || f.ca.is_some()).collect();
                self.listed.send_replace(true);
            }
            Change::Apply((key, fields)) if fields.cert.is_some() || fields.ca.is_some() => {
                map.insert(key, fields);
            }
            Change::Apply((key, _)) | Change::Delete((key, _)) => {
                map.remove(&key);
            }
        }
        drop(map);
        self.version.send_modify(|v| *v += 1);
    }

    /// Waits until the first list is in.
    pub async fn ready(&self) {
        let mut listed = self.listed.subscribe();
        let _ = listed.wait_for(|l| *l).await;
    }
}

impl CredentialSource for SecretCredentials {
    fn credential(&self, namespace: &str, name: &str) -> Option<Credential> {
        let map = self.by_name.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let fields = map.get(&(namespace.to_string(), name.to_string()))?;
        let separate_ca = || map.get(&(namespace.to_string(), format!("{name}-cacert"))).and_then(|f| f.ca.clone());
        Some(Credential {
            certificate_chain: fields.cert.clone()?,
            private_key: fields.key.clone()?,
            ca_certificates: fields.ca.clone().or_else(separate_ca),
        })
    }

    fn ca_certificates(&self, namespace: &str, name: &str) -> Option<String> {
        let map = self.by_name.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let ca = |name: String| map.get(&(namespace.to_string(), name)).and_then(|f| f.ca.clone());
        ca(name.to_string()).or_else(|| ca(format!("{name}-cacert")))
    }

    fn version(&self) -> u64 {
        *self.version.borrow()
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }
}
