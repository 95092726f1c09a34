//! The snapshot cache: per node key, the latest complete set of resources,
//! and the decisions of what a subscription should be sent. No protocol
//! state lives here (go-control-plane's split): the stream state machines
//! in [`crate::sotw`] and [`crate::delta`] ask, the cache answers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::resources::{version_of, Resource, ResourceSet};

/// One node key's resources at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// The `ProxyConfig` version these resources were built from.
    pub config_version: String,
    pub resources: ResourceSet,
    /// When this snapshot was made from another by changing a few
    /// resources of a type: the map it replaced and the names changed,
    /// so streams that had the old map send just those (O(changed), not
    /// O(resources)).
    pub changes: BTreeMap<String, TypeChange>,
    /// What of the config the resources cannot express for this node.
    pub unsupported: Arc<Vec<String>>,
    /// The credentials the resources refer to over SDS: an authenticated
    /// stream adds them from its own namespace ([`crate::sds`]).
    pub credentials: Arc<std::collections::BTreeSet<crate::sds::SecretRef>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TypeChange {
    pub from: Arc<crate::resources::TypeMap>,
    pub names: BTreeSet<String>,
}

/// What a client subscribed to for one type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subscription {
    /// Everything of the type (LDS and CDS, and an empty SotW name list).
    Wildcard,
    /// Shared: streams that subscribe to the same names (every replica of
    /// a workload asks for the same thousands of clusters) hold one set.
    Names(Arc<BTreeSet<String>>),
}

impl Subscription {
    /// SotW's rule: an empty name list means everything, for LDS and CDS.
    pub fn from_names(type_url: &str, names: &[String]) -> Subscription {
        if names.is_empty() && crate::resources::is_wildcard_type(type_url) || names.iter().any(|n| n == "*") {
            Subscription::Wildcard
        } else {
            Subscription::Names(shared_names(names))
        }
    }

    pub fn wants(&self, name: &str) -> bool {
        match self {
            Subscription::Wildcard => true,
            Subscription::Names(names) => names.contains(name),
        }
    }
}

/// The one shared set with these names.
fn shared_names(names: &[String]) -> Arc<BTreeSet<String>> {
    static SETS: std::sync::OnceLock<Mutex<HashMap<u64, std::sync::Weak<BTreeSet<String>>>>> =
        std::sync::OnceLock::new();
    let mut h = xxhash_rust::xxh64::Xxh64::new(0);
    for n in names {
        h.update(n.as_bytes());
        h.update(&[0]);
    }
    let set: BTreeSet<String> = names.iter().cloned().collect();
    let mut sets = SETS.get_or_init(Mutex::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(shared) = sets.get(&h.digest()).and_then(|w| w.upgrade()).filter(|s| **s == set) {
        return shared;
    }
    if sets.len().is_power_of_two() {
        sets.retain(|_, w| w.strong_count() > 0);
    }
    let shared = Arc::new(set);
    sets.insert(h.digest(), Arc::downgrade(&shared));
    shared
}

/// A delta answer: what the client lacks or has stale, and what it holds
/// that no longer exists.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeltaChange {
    pub updated: Vec<Arc<Resource>>,
    pub removed: Vec<String>,
}

impl DeltaChange {
    pub fn is_empty(&self) -> bool {
        self.updated.is_empty() && self.removed.is_empty()
    }
}

impl Snapshot {
    /// State of the world: every subscribed resource of the type that
    /// exists, and a version that changes exactly when one of them does
    /// (so an endpoint change elsewhere does not resend this client's EDS).
    pub fn sotw(&self, type_url: &str, sub: &Subscription) -> (String, Vec<Arc<Resource>>) {
        let chosen: Vec<Arc<Resource>> = match self.resources.of_type(type_url) {
            None => Vec::new(),
            Some(all) => match sub {
                Subscription::Wildcard => all.values().cloned().collect(),
                Subscription::Names(names) => names.iter().filter_map(|n| all.get(n).cloned()).collect(),
            },
        };
        (version_of(chosen.iter().map(|r| r.as_ref())), chosen)
    }

    /// Incremental: against what the client holds (`known`: name ->
    /// version), the subscribed resources that are new or changed, and the
    /// subscribed ones it holds that no longer exist.
    pub fn delta(&self, type_url: &str, sub: &Subscription, known: &BTreeMap<String, String>) -> DeltaChange {
        let empty = Arc::default();
        let all: &crate::resources::TypeMap = self.resources.of_type(type_url).unwrap_or(&empty);
        let updated =
            all.values().filter(|r| sub.wants(&r.name) && known.get(&r.name) != Some(&r.version)).cloned().collect();
        let removed = known.keys().filter(|n| sub.wants(n) && !all.contains_key(*n)).cloned().collect();
        DeltaChange { updated, removed }
    }
}

type Slot = watch::Sender<Option<Arc<Snapshot>>>;

/// Snapshots by node key, each followed through a watch channel: a stream
/// wakes when its key's snapshot is replaced and reads the latest one (so
/// a burst of updates costs one push, never a queue).
#[derive(Default)]
pub struct SnapshotCache {
    slots: Mutex<HashMap<String, Slot>>,
}

impl SnapshotCache {
    pub fn new() -> SnapshotCache {
        SnapshotCache::default()
    }

    fn slot(&self, key: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(key.to_string()).or_insert_with(|| watch::channel(None).0).clone()
    }

    /// Replace a key's snapshot; watchers wake only if it differs.
    pub fn set(&self, key: &str, snapshot: Snapshot) {
        self.slot(key).send_if_modified(|current| {
            if current.as_deref() == Some(&snapshot) {
                return false;
            }
            *current = Some(Arc::new(snapshot));
            true
        });
    }

    pub fn get(&self, key: &str) -> Option<Arc<Snapshot>> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.get(key).and_then(|s| s.borrow().clone())
    }

    /// Follow a key; the receiver sees the current snapshot (if any) as
    /// unseen, so the first push needs no special case.
    pub fn watch(&self, key: &str) -> watch::Receiver<Option<Arc<Snapshot>>> {
        let mut rx = self.slot(key).subscribe();
        rx.mark_changed();
        rx
    }

    pub fn keys(&self) -> Vec<String> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut keys: Vec<String> = slots.keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Drop a key nobody follows any more.
    pub fn remove(&self, key: &str) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if slots.get(key).is_some_and(|s| s.receiver_count() == 0) {
            slots.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{CLUSTER, ENDPOINT};
    use envoy_types::pb::google::protobuf::Any;

    fn res(name: &str, body: &[u8]) -> Resource {
        Resource::from_any(name.into(), Any { type_url: ENDPOINT.into(), value: body.to_vec() })
    }

    fn snapshot(items: &[(&str, &[u8])]) -> Snapshot {
        let mut s = Snapshot::default();
        for (n, b) in items {
            s.resources.insert(ENDPOINT, res(n, b));
        }
        s
    }

    fn names(n: &[&str]) -> Subscription {
        Subscription::Names(Arc::new(n.iter().map(|s| s.to_string()).collect()))
    }

    #[test]
    fn sotw_version_follows_only_the_subscribed_resources() {
        let a = snapshot(&[("a", b"1"), ("b", b"1")]);
        let b = snapshot(&[("a", b"1"), ("b", b"2")]);
        let (va, ra) = a.sotw(ENDPOINT, &names(&["a"]));
        let (vb, _) = b.sotw(ENDPOINT, &names(&["a"]));
        assert_eq!(va, vb, "a change to b must not change a's version");
        assert_eq!(ra.len(), 1);
        assert_ne!(a.sotw(ENDPOINT, &names(&["a", "b"])).0, b.sotw(ENDPOINT, &names(&["a", "b"])).0);
        assert_eq!(a.sotw(ENDPOINT, &names(&["missing"])).1.len(), 0);
        assert_eq!(a.sotw(CLUSTER, &Subscription::Wildcard).1.len(), 0);
    }

    #[test]
    fn wildcard_rules() {
        assert_eq!(Subscription::from_names(CLUSTER, &[]), Subscription::Wildcard);
        assert_eq!(Subscription::from_names(ENDPOINT, &[]), names(&[]));
        assert_eq!(Subscription::from_names(ENDPOINT, &["*".into()]), Subscription::Wildcard);
    }

    #[test]
    fn delta_sends_new_and_changed_and_removes_gone() {
        let s = snapshot(&[("a", b"1"), ("b", b"2"), ("c", b"3")]);
        let mut known = BTreeMap::new();
        let first = s.delta(ENDPOINT, &Subscription::Wildcard, &known);
        assert_eq!(first.updated.len(), 3);
        for r in &first.updated {
            known.insert(r.name.clone(), r.version.clone());
        }
        assert!(s.delta(ENDPOINT, &Subscription::Wildcard, &known).is_empty());
        let next = snapshot(&[("a", b"1"), ("b", b"changed")]);
        let change = next.delta(ENDPOINT, &Subscription::Wildcard, &known);
        assert_eq!(change.updated.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["b"]);
        assert_eq!(change.removed, ["c"]);
        // Only subscribed names are sent.
        assert_eq!(next.delta(ENDPOINT, &names(&["a"]), &BTreeMap::new()).updated.len(), 1);
    }

    #[tokio::test]
    async fn watchers_wake_on_change_and_see_the_latest() {
        let cache = SnapshotCache::new();
        let mut rx = cache.watch("k");
        cache.set("k", snapshot(&[("a", b"1")]));
        cache.set("k", snapshot(&[("a", b"2")]));
        rx.changed().await.unwrap();
        let seen = rx.borrow_and_update().clone().unwrap();
        assert_eq!(seen.resources.get(ENDPOINT, "a").unwrap().value(), b"2");
        // An identical snapshot wakes nobody.
        cache.set("k", snapshot(&[("a", b"2")]));
        assert!(!rx.has_changed().unwrap());
        // A late watcher sees the current snapshot at once.
        let mut late = cache.watch("k");
        late.changed().await.unwrap();
        assert!(late.borrow().is_some());
        drop((rx, late));
        cache.remove("k");
        assert!(cache.keys().is_empty());
    }
}
