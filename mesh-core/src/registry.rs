//! `ServiceRegistry`: what services exist and where their endpoints are.
//! Platform adapters (Kubernetes, Consul, files) implement it; the mesh reads
//! a snapshot and follows a stream of changes.

use std::sync::Arc;

use futures_util::stream::BoxStream;

use crate::keyed::{self, KeyedEvent, KeyedMap, Publisher};
use crate::model::{Endpoint, Service, ServiceState};

/// Services by fully qualified hostname.
pub type RegistrySnapshot = KeyedMap<String, ServiceState>;
pub type RegistryEvent = KeyedEvent<String, ServiceState>;

/// A source of services and endpoints.
///
/// `watch` starts with a `Reset` holding the full state and then yields
/// changes; a `Reset` can come again at any time (a full resync after a
/// reconnect or a lag) and replaces everything said before.
pub trait ServiceRegistry: Send + Sync {
    /// For logs and debug output: `kubernetes`, `consul`, `static`.
    fn name(&self) -> &str;
    fn snapshot(&self) -> Arc<RegistrySnapshot>;
    fn watch(&self) -> BoxStream<'static, RegistryEvent>;
}

/// A registry held in memory, fed by its owner: the building block of the
/// adapters, and a registry for tests and embedders.
pub struct MemoryRegistry {
    name: String,
    services: Arc<Publisher<String, ServiceState>>,
}

impl MemoryRegistry {
    pub fn new(name: impl Into<String>) -> MemoryRegistry {
        MemoryRegistry { name: name.into(), services: Arc::default() }
    }

    pub fn upsert(&self, service: Service, endpoints: Vec<Endpoint>) {
        let hostname = service.hostname.clone();
        self.services.upsert(hostname, ServiceState { service: Arc::new(service), endpoints: endpoints.into() });
    }

    /// Replace the endpoints of a known service, keeping its definition.
    /// Returns `false` when the service is unknown.
    pub fn set_endpoints(&self, hostname: &str, endpoints: Vec<Endpoint>) -> bool {
        let Some(state) = self.services.get(&hostname.to_string()) else { return false };
        self.services
            .upsert(hostname.to_string(), ServiceState { service: state.service, endpoints: endpoints.into() });
        true
    }

    pub fn remove(&self, hostname: &str) {
        self.services.delete(&hostname.to_string());
    }

    /// Swap in a whole new state at once (one `Reset` for watchers).
    pub fn replace_all(&self, services: impl IntoIterator<Item = (Service, Vec<Endpoint>)>) {
        let all = services
            .into_iter()
            .map(|(s, e)| (s.hostname.clone(), ServiceState { service: Arc::new(s), endpoints: e.into() }))
            .collect();
        let _ = self.services.replace_all(all);
    }
}

impl ServiceRegistry for MemoryRegistry {
    fn name(&self) -> &str {
        &self.name
    }

    fn snapshot(&self) -> Arc<RegistrySnapshot> {
        self.services.snapshot()
    }

    fn watch(&self) -> BoxStream<'static, RegistryEvent> {
        self.services.watch()
    }
}

/// Several registries seen as one, as Istio's aggregate controller does:
/// a service's definition comes from the first registry that has it (so
/// order the platform registry before ServiceEntries), and its endpoints are
/// the union of what every registry knows for that hostname.
pub struct AggregateRegistry {
    registries: Vec<Arc<dyn ServiceRegistry>>,
}

impl AggregateRegistry {
    pub fn new(registries: Vec<Arc<dyn ServiceRegistry>>) -> AggregateRegistry {
        AggregateRegistry { registries }
    }
}

/// How several sources' views of one hostname combine: the first definition,
/// the union of endpoints.
pub fn merge_states(states: &[&ServiceState]) -> ServiceState {
    if let [only] = states {
        return (*only).clone();
    }
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for state in states {
        for e in state.endpoints.iter() {
            if !endpoints.contains(e) {
                endpoints.push(e.clone());
            }
        }
    }
    ServiceState { service: Arc::clone(&states[0].service), endpoints: endpoints.into() }
}

impl ServiceRegistry for AggregateRegistry {
    fn name(&self) -> &str {
        "aggregate"
    }

    fn snapshot(&self) -> Arc<RegistrySnapshot> {
        let snapshots: Vec<_> = self.registries.iter().map(|r| r.snapshot()).collect();
        let mut merged = RegistrySnapshot::new();
        let keys: std::collections::BTreeSet<&String> = snapshots.iter().flat_map(|s| s.keys()).collect();
        for key in keys {
            let states: Vec<&ServiceState> = snapshots.iter().filter_map(|s| s.get(key)).collect();
            merged.insert(key.clone(), merge_states(&states));
        }
        Arc::new(merged)
    }

    fn watch(&self) -> BoxStream<'static, RegistryEvent> {
        keyed::aggregate(self.registries.iter().map(|r| r.watch()).collect(), merge_states)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::model::{Protocol, Resolution, ServicePort};

    fn service(host: &str, ns: &str) -> Service {
        Service {
            hostname: host.into(),
            namespace: ns.into(),
            ports: vec![ServicePort { name: "http".into(), port: 9080, protocol: Protocol::Http, target_port: None }],
            labels: Default::default(),
            addresses: vec![],
            resolution: Resolution::Static,
            mesh_external: false,
            subject_alt_names: Vec::new(),
        }
    }

    #[tokio::test]
    async fn aggregate_prefers_first_definition_and_unions_endpoints() {
        let kube = Arc::new(MemoryRegistry::new("kubernetes"));
        let entries = Arc::new(MemoryRegistry::new("serviceentry"));
        kube.upsert(service("reviews.default.svc.cluster.local", "default"), vec![Endpoint::new("10.0.0.1")]);
        entries.upsert(service("reviews.default.svc.cluster.local", "other"), vec![Endpoint::new("10.0.0.9")]);
        let agg = AggregateRegistry::new(vec![kube.clone(), entries.clone()]);
        let snap = agg.snapshot();
        let state = &snap["reviews.default.svc.cluster.local"];
        assert_eq!(state.service.namespace, "default");
        assert_eq!(state.endpoints.len(), 2);

        let mut watch = agg.watch();
        let Some(KeyedEvent::Reset(all)) = watch.next().await else { panic!("expected Reset") };
        assert_eq!(all.len(), 1);
        assert!(kube.set_endpoints("reviews.default.svc.cluster.local", vec![]));
        let Some(KeyedEvent::Upsert(_, state)) = watch.next().await else { panic!("expected Upsert") };
        assert_eq!(state.endpoints.iter().map(|e| e.address.as_str()).collect::<Vec<_>>(), ["10.0.0.9"]);
    }
}
