//! The mesh as one consistent, debounced snapshot: a config store and a
//! service registry followed together, as Pilot's push queue does. Bursts of
//! changes become one update after a quiet period (bounded by a maximum
//! delay), and each update says what changed, so a consumer can push only
//! endpoints when only endpoints moved.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::time::Instant;

use crate::keyed::KeyedEvent;
use crate::registry::{RegistryEvent, RegistrySnapshot, ServiceRegistry};
use crate::store::{ConfigEvent, ConfigSnapshot, ConfigStore};

/// Everything translation reads, at one moment.
#[derive(Clone, Debug)]
pub struct MeshSnapshot {
    pub config: Arc<ConfigSnapshot>,
    pub services: Arc<RegistrySnapshot>,
}

impl MeshSnapshot {
    /// Read both sources now.
    pub fn read(store: &dyn ConfigStore, registry: &dyn ServiceRegistry) -> MeshSnapshot {
        MeshSnapshot { config: store.snapshot(), services: registry.snapshot() }
    }
}

/// What changed since the previous update.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeSet {
    /// A source resynchronised (or this is the first update): treat
    /// everything as changed.
    pub full: bool,
    /// Some Istio resource was added, changed or removed.
    pub config: bool,
    /// Hostnames whose service definition was added, changed or removed.
    pub services: BTreeSet<String>,
    /// Hostnames whose endpoints changed while the definition did not.
    pub endpoints: BTreeSet<String>,
}

impl ChangeSet {
    pub fn is_empty(&self) -> bool {
        *self == ChangeSet::default()
    }

    /// Only endpoints moved: an EDS-only push is enough.
    pub fn endpoints_only(&self) -> bool {
        !self.full && !self.config && self.services.is_empty() && !self.endpoints.is_empty()
    }
}

#[derive(Clone, Debug)]
pub struct MeshUpdate {
    pub snapshot: MeshSnapshot,
    pub changes: ChangeSet,
}

/// How long to wait for a burst of changes to settle (Istio's
/// `PILOT_DEBOUNCE_AFTER` and `PILOT_DEBOUNCE_MAX`).
#[derive(Clone, Copy, Debug)]
pub struct Debounce {
    /// Publish once no change came for this long...
    pub quiet: Duration,
    /// ...or once the oldest unpublished change is this old.
    pub max: Duration,
}

impl Default for Debounce {
    fn default() -> Self {
        Debounce { quiet: Duration::from_millis(100), max: Duration::from_secs(10) }
    }
}

enum Event {
    Config(ConfigEvent),
    Registry(RegistryEvent),
}

struct State {
    events: BoxStream<'static, Event>,
    config: Option<ConfigSnapshot>,
    services: Option<RegistrySnapshot>,
    pending: ChangeSet,
    first_change: Option<Instant>,
    last_change: Option<Instant>,
    debounce: Debounce,
}

impl State {
    fn ready(&self) -> bool {
        self.config.is_some() && self.services.is_some()
    }

    fn apply(&mut self, event: Event) {
        let now = Instant::now();
        self.first_change.get_or_insert(now);
        self.last_change = Some(now);
        match event {
            Event::Config(e) => {
                let state = self.config.get_or_insert_with(Default::default);
                self.pending.full |= matches!(e, KeyedEvent::Reset(_));
                self.pending.config = true;
                e.apply(state);
            }
            Event::Registry(e) => {
                let state = self.services.get_or_insert_with(Default::default);
                match &e {
                    KeyedEvent::Reset(_) => self.pending.full = true,
                    KeyedEvent::Upsert(host, new) => match state.get(host) {
                        Some(old) if Arc::ptr_eq(&old.service, &new.service) || old.service == new.service => {
                            self.pending.endpoints.insert(host.clone());
                        }
                        _ => {
                            self.pending.services.insert(host.clone());
                        }
                    },
                    KeyedEvent::Delete(host) => {
                        self.pending.services.insert(host.clone());
                    }
                }
                e.apply(state);
            }
        }
    }

    fn take_update(&mut self) -> MeshUpdate {
        self.first_change = None;
        self.last_change = None;
        let mut changes = std::mem::take(&mut self.pending);
        // A changed definition covers its endpoints too.
        changes.endpoints.retain(|h| !changes.services.contains(h));
        MeshUpdate {
            snapshot: MeshSnapshot {
                config: Arc::new(self.config.clone().unwrap_or_default()),
                services: Arc::new(self.services.clone().unwrap_or_default()),
            },
            changes,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let first = self.first_change?;
        let last = self.last_change?;
        Some((last + self.debounce.quiet).min(first + self.debounce.max))
    }
}

/// Follow a store and a registry as one stream of debounced snapshots. The
/// first update comes once both sources have given their initial state and
/// is marked `full`. The stream ends when both sources end.
pub fn watch(
    store: &dyn ConfigStore,
    registry: &dyn ServiceRegistry,
    debounce: Debounce,
) -> BoxStream<'static, MeshUpdate> {
    let events = stream::select(store.watch().map(Event::Config), registry.watch().map(Event::Registry)).boxed();
    let state = State {
        events,
        config: None,
        services: None,
        pending: ChangeSet::default(),
        first_change: None,
        last_change: None,
        debounce,
    };
    stream::unfold(state, |mut state| async move {
        loop {
            let deadline = state.ready().then(|| state.deadline()).flatten();
            match deadline {
                Some(deadline) => {
                    tokio::select! {
                        event = state.events.next() => match event {
                            Some(e) => state.apply(e),
                            None => {
                                let update = state.take_update();
                                return (!update.changes.is_empty()).then_some((update, state));
                            }
                        },
                        _ = tokio::time::sleep_until(deadline) => {
                            let update = state.take_update();
                            return Some((update, state));
                        }
                    }
                }
                None => {
                    let event = state.events.next().await?;
                    state.apply(event);
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Resource;
    use crate::model::{Endpoint, Protocol, Resolution, Service, ServicePort};
    use crate::registry::MemoryRegistry;
    use crate::store::MemoryConfigStore;

    fn service(host: &str) -> Service {
        Service {
            hostname: host.into(),
            namespace: "default".into(),
            ports: vec![ServicePort { name: "http".into(), port: 80, protocol: Protocol::Http, target_port: None }],
            labels: Default::default(),
            addresses: vec![],
            resolution: Resolution::Static,
            mesh_external: false,
            subject_alt_names: Vec::new(),
        }
    }

    fn vs(name: &str) -> Resource {
        Resource::from_yaml(&format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{name}]\n  http:\n  - route:\n    - destination: {{host: {name}}}\n"
        ))
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn bursts_become_one_update_that_says_what_changed() {
        let store = MemoryConfigStore::new();
        let registry = MemoryRegistry::new("test");
        registry.upsert(service("a"), vec![Endpoint::new("10.0.0.1")]);
        let debounce = Debounce { quiet: Duration::from_millis(100), max: Duration::from_secs(1) };
        let mut updates = watch(&store, &registry, debounce);

        let first = updates.next().await.unwrap();
        assert!(first.changes.full);
        assert_eq!(first.snapshot.services.len(), 1);

        // A burst of endpoint changes: one update, endpoints only.
        for i in 2..=5 {
            registry.set_endpoints("a", (1..=i).map(|n| Endpoint::new(format!("10.0.0.{n}"))).collect());
        }
        let update = updates.next().await.unwrap();
        assert!(update.changes.endpoints_only(), "{:?}", update.changes);
        assert_eq!(update.snapshot.services["a"].endpoints.len(), 5);

        // Config and a new service together.
        store.upsert(vs("a"));
        registry.upsert(service("b"), vec![]);
        let update = updates.next().await.unwrap();
        assert!(update.changes.config && !update.changes.endpoints_only());
        assert_eq!(update.changes.services.iter().collect::<Vec<_>>(), ["b"]);
        assert_eq!(update.snapshot.config.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_trickle_is_published_by_the_max_delay() {
        let store = std::sync::Arc::new(MemoryConfigStore::new());
        let registry = MemoryRegistry::new("test");
        let debounce = Debounce { quiet: Duration::from_millis(100), max: Duration::from_millis(500) };
        let mut updates = watch(&*store, &registry, debounce);
        assert!(updates.next().await.unwrap().changes.full);
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    store.upsert(vs(&format!("r{i}")));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        let started = Instant::now();
        let update = updates.next().await.unwrap();
        let waited = started.elapsed();
        assert!(waited <= Duration::from_millis(600), "published after {waited:?}");
        assert!(update.snapshot.config.len() < 50, "published before the trickle ended");
        writer.abort();
    }
}
