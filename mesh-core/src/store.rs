//! `ConfigStore`: Istio resources by kind, as Galley served them to Pilot.
//! Adapters implement it; several stores can be aggregated.

use std::sync::Arc;

use futures_util::stream::BoxStream;

use crate::config::{Kind, Resource, ResourceKey};
use crate::keyed::{self, KeyedEvent, KeyedMap, Publisher};

/// Resources by key, ordered by kind, then namespace, then name.
pub type ConfigSnapshot = KeyedMap<ResourceKey, Arc<Resource>>;
pub type ConfigEvent = KeyedEvent<ResourceKey, Arc<Resource>>;

/// A source of Istio resources. `watch` has the same contract as
/// [`crate::ServiceRegistry::watch`]: a `Reset` first, then changes.
pub trait ConfigStore: Send + Sync {
    fn snapshot(&self) -> Arc<ConfigSnapshot>;
    fn watch(&self) -> BoxStream<'static, ConfigEvent>;

    fn get(&self, key: &ResourceKey) -> Option<Arc<Resource>> {
        self.snapshot().get(key).cloned()
    }

    fn list(&self, kind: Kind) -> Vec<Arc<Resource>> {
        of_kind(&self.snapshot(), kind).cloned().collect()
    }

    /// What this store could not apply, and why, as of now (the last good
    /// version of each keeps serving): for operators' status endpoints
    /// and metrics. A store that rejects nothing says nothing.
    fn rejected(&self) -> Vec<Rejected> {
        Vec::new()
    }
}

/// A resource (or file) a store did not apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// Where it came from: `reviews.yaml:14 (document 3) DestinationRule default/ratings`.
    pub source: String,
    /// `spec.trafficPolcy: unknown field (a typo?)`.
    pub error: String,
}

/// The resources of one kind in a snapshot, in namespace/name order.
pub fn of_kind(snapshot: &ConfigSnapshot, kind: Kind) -> impl Iterator<Item = &Arc<Resource>> {
    let start = ResourceKey { kind, namespace: String::new(), name: String::new() };
    snapshot.range(start..).take_while(move |(k, _)| k.kind == kind).map(|(_, r)| r)
}

/// A store held in memory: what adapters fill, and a store for tests and
/// embedders who produce config in code.
#[derive(Default)]
pub struct MemoryConfigStore {
    resources: Arc<Publisher<ResourceKey, Arc<Resource>>>,
}

impl MemoryConfigStore {
    pub fn new() -> MemoryConfigStore {
        MemoryConfigStore::default()
    }

    pub fn upsert(&self, resource: Resource) {
        self.resources.upsert(resource.key(), Arc::new(resource));
    }

    pub fn delete(&self, key: &ResourceKey) {
        self.resources.delete(key);
    }

    /// Swap in a whole new set of resources (one `Reset` for watchers).
    pub fn replace_all(&self, resources: impl IntoIterator<Item = Resource>) {
        let _ = self.resources.replace_all(resources.into_iter().map(|r| (r.key(), Arc::new(r))).collect());
    }
}

impl ConfigStore for MemoryConfigStore {
    fn snapshot(&self) -> Arc<ConfigSnapshot> {
        self.resources.snapshot()
    }

    fn watch(&self) -> BoxStream<'static, ConfigEvent> {
        self.resources.watch()
    }
}

/// Several stores seen as one; when two hold the same resource, the first
/// store wins.
pub struct AggregateConfigStore {
    stores: Vec<Arc<dyn ConfigStore>>,
}

impl AggregateConfigStore {
    pub fn new(stores: Vec<Arc<dyn ConfigStore>>) -> AggregateConfigStore {
        AggregateConfigStore { stores }
    }
}

fn first_wins(values: &[&Arc<Resource>]) -> Arc<Resource> {
    Arc::clone(values[0])
}

impl ConfigStore for AggregateConfigStore {
    fn snapshot(&self) -> Arc<ConfigSnapshot> {
        let mut merged = ConfigSnapshot::new();
        for store in self.stores.iter().rev() {
            merged.extend(store.snapshot().iter().map(|(k, v)| (k.clone(), Arc::clone(v))));
        }
        Arc::new(merged)
    }

    fn watch(&self) -> BoxStream<'static, ConfigEvent> {
        keyed::aggregate(self.stores.iter().map(|s| s.watch()).collect(), first_wins)
    }

    fn rejected(&self) -> Vec<Rejected> {
        self.stores.iter().flat_map(|s| s.rejected()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_by_kind_and_aggregate_first_wins() {
        let a = Arc::new(MemoryConfigStore::new());
        let b = Arc::new(MemoryConfigStore::new());
        let vs = |host: &str| {
            Resource::from_yaml(&format!(
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: r, namespace: default}}\nspec:\n  hosts: [{host}]\n  http:\n  - route:\n    - destination: {{host: {host}}}\n"
            ))
            .unwrap()
        };
        a.upsert(vs("from-a"));
        b.upsert(vs("from-b"));
        b.upsert(
            Resource::from_yaml(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec: {host: x}\n",
            )
            .unwrap(),
        );
        let agg = AggregateConfigStore::new(vec![a, b]);
        let vss = agg.list(Kind::VirtualService);
        assert_eq!(vss.len(), 1);
        let crate::config::Spec::VirtualService(spec) = &vss[0].spec else { panic!() };
        assert_eq!(spec.hosts, ["from-a"]);
        assert_eq!(agg.list(Kind::DestinationRule).len(), 1);
        assert!(agg.get(&ResourceKey { kind: Kind::Gateway, namespace: "default".into(), name: "r".into() }).is_none());
    }
}
