//! Keyed state published as a snapshot plus a stream of changes: the shape
//! shared by service registries and config stores. A watcher always starts
//! with a `Reset` (the full state, as kube-rs's `Init .. InitDone`), and gets
//! another whenever it fell behind, so it never has to guess what it missed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::sync::broadcast;

/// A full state: key to value, ordered so that output built from it is
/// deterministic.
pub type KeyedMap<K, V> = BTreeMap<K, V>;

#[derive(Clone, Debug, PartialEq)]
pub enum KeyedEvent<K, V> {
    /// Everything there is now; replaces all earlier state.
    Reset(Arc<KeyedMap<K, V>>),
    Upsert(K, V),
    Delete(K),
}

impl<K: Ord + Clone, V: Clone> KeyedEvent<K, V> {
    /// Apply this event to a consumer's copy of the state.
    pub fn apply(&self, state: &mut KeyedMap<K, V>) {
        match self {
            KeyedEvent::Reset(all) => state.clone_from(all),
            KeyedEvent::Upsert(k, v) => {
                state.insert(k.clone(), v.clone());
            }
            KeyedEvent::Delete(k) => {
                state.remove(k);
            }
        }
    }
}

/// An in-memory source of keyed state: what adapters hold and publish from.
pub struct Publisher<K, V> {
    /// Copy-on-write: a snapshot is an Arc clone; a write after it copies.
    state: Mutex<Arc<KeyedMap<K, V>>>,
    changes: broadcast::Sender<KeyedEvent<K, V>>,
}

const CHANGE_BUFFER: usize = 1024;

impl<K, V> Default for Publisher<K, V>
where
    K: Ord + Clone + Send + Sync + 'static,
    V: Clone + PartialEq + Send + Sync + 'static,
{
    fn default() -> Self {
        Publisher { state: Mutex::new(Arc::new(KeyedMap::new())), changes: broadcast::channel(CHANGE_BUFFER).0 }
    }
}

impl<K, V> Publisher<K, V>
where
    K: Ord + Clone + Send + Sync + 'static,
    V: Clone + PartialEq + Send + Sync + 'static,
{
    fn lock(&self) -> std::sync::MutexGuard<'_, Arc<KeyedMap<K, V>>> {
        // The map is always left consistent, so a panic elsewhere does not
        // make it unusable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn snapshot(&self) -> Arc<KeyedMap<K, V>> {
        Arc::clone(&self.lock())
    }

    pub fn get(&self, key: &K) -> Option<V> {
        self.lock().get(key).cloned()
    }

    /// Insert or replace one entry; watchers hear of it only if it changed.
    pub fn upsert(&self, key: K, value: V) {
        let mut state = self.lock();
        if state.get(&key) == Some(&value) {
            return;
        }
        Arc::make_mut(&mut state).insert(key.clone(), value.clone());
        let _ = self.changes.send(KeyedEvent::Upsert(key, value));
    }

    pub fn delete(&self, key: &K) {
        let mut state = self.lock();
        if state.contains_key(key) {
            Arc::make_mut(&mut state).remove(key);
            let _ = self.changes.send(KeyedEvent::Delete(key.clone()));
        }
    }

    /// Replace everything at once. Every event a watcher gets leaves it
    /// with a state that was really published: a change to one key goes
    /// out as that key's `Upsert` or `Delete` (so an endpoints-only edit
    /// stays one), a change to several as one `Reset`.
    /// Returns whether anything changed.
    pub fn replace_all(&self, all: KeyedMap<K, V>) -> bool {
        let mut state = self.lock();
        // The first two differences are enough to choose the event.
        let mut diffs: Vec<(K, bool)> =
            all.iter().filter(|(k, v)| state.get(*k) != Some(*v)).map(|(k, _)| (k.clone(), true)).take(2).collect();
        if diffs.len() < 2 {
            // Every key of `all` was compared; what else differs is keys
            // that went away.
            let gone = state.keys().filter(|k| !all.contains_key(*k)).take(2 - diffs.len());
            diffs.extend(gone.map(|k| (k.clone(), false)).collect::<Vec<_>>());
        }
        if diffs.is_empty() {
            return false;
        }
        *state = Arc::new(all);
        let event = match diffs.as_slice() {
            [(k, true)] => KeyedEvent::Upsert(k.clone(), state[k].clone()),
            [(k, false)] => KeyedEvent::Delete(k.clone()),
            _ => KeyedEvent::Reset(Arc::clone(&state)),
        };
        let _ = self.changes.send(event);
        true
    }

    /// The current state as a `Reset`, then every change after it.
    pub fn watch(self: &Arc<Self>) -> BoxStream<'static, KeyedEvent<K, V>> {
        let mut receiver = {
            // Subscribe under the lock so no change falls between the
            // snapshot and the subscription.
            let state = self.lock();
            let receiver = self.changes.subscribe();
            let first = KeyedEvent::Reset(Arc::clone(&state));
            (Some(first), receiver)
        };
        let source = Arc::clone(self);
        let initial = receiver.0.take();
        stream::iter(initial)
            .chain(stream::unfold((receiver.1, source), |(mut rx, source)| async move {
                let event = match rx.recv().await {
                    Ok(event) => event,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Fell behind: resubscribe and resynchronise.
                        let state = source.lock();
                        rx = source.changes.subscribe();
                        KeyedEvent::Reset(Arc::clone(&state))
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                };
                Some((event, (rx, source)))
            }))
            .boxed()
    }
}

/// Merge several keyed sources into one. `merge` combines the values that
/// several sources hold for one key, in source order (so it can say "the
/// first wins" or "union").
pub fn aggregate<K, V>(
    sources: Vec<BoxStream<'static, KeyedEvent<K, V>>>,
    merge: fn(&[&V]) -> V,
) -> BoxStream<'static, KeyedEvent<K, V>>
where
    K: Ord + Clone + Send + Sync + 'static,
    V: Clone + PartialEq + Send + Sync + 'static,
{
    let count = sources.len();
    let tagged = stream::select_all(sources.into_iter().enumerate().map(|(i, s)| s.map(move |e| (i, e))));
    struct State<K, V> {
        per_source: Vec<Option<KeyedMap<K, V>>>,
        merged: KeyedMap<K, V>,
    }
    let state = State { per_source: vec![None; count], merged: KeyedMap::new() };
    tagged
        .scan(state, move |state, (i, event)| {
            let was_ready = state.per_source.iter().all(Option::is_some);
            let source = state.per_source[i].get_or_insert_with(KeyedMap::new);
            event.apply(source);
            let ready = state.per_source.iter().all(Option::is_some);
            let merged_value = |state: &State<K, V>, key: &K| -> Option<V> {
                let values: Vec<&V> = state.per_source.iter().flatten().filter_map(|m| m.get(key)).collect();
                (!values.is_empty()).then(|| merge(&values))
            };
            let out: Vec<KeyedEvent<K, V>> = if !ready {
                // Wait until every source has said what it holds, so the
                // first Reset downstream is complete.
                Vec::new()
            } else if !was_ready || matches!(event, KeyedEvent::Reset(_)) {
                let mut all = KeyedMap::new();
                let keys: std::collections::BTreeSet<K> =
                    state.per_source.iter().flatten().flat_map(|m| m.keys().cloned()).collect();
                for k in keys {
                    if let Some(v) = merged_value(state, &k) {
                        all.insert(k, v);
                    }
                }
                if was_ready && all == state.merged {
                    Vec::new()
                } else {
                    state.merged = all.clone();
                    vec![KeyedEvent::Reset(Arc::new(all))]
                }
            } else {
                let key = match &event {
                    KeyedEvent::Upsert(k, _) | KeyedEvent::Delete(k) => k.clone(),
                    KeyedEvent::Reset(_) => unreachable!("handled above"),
                };
                match merged_value(state, &key) {
                    Some(v) if state.merged.get(&key) == Some(&v) => Vec::new(),
                    Some(v) => {
                        state.merged.insert(key.clone(), v.clone());
                        vec![KeyedEvent::Upsert(key, v)]
                    }
                    None if state.merged.remove(&key).is_some() => vec![KeyedEvent::Delete(key)],
                    None => Vec::new(),
                }
            };
            futures_util::future::ready(Some(stream::iter(out)))
        })
        .flatten()
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(values: &[&u32]) -> u32 {
        *values[0]
    }

    #[tokio::test]
    async fn watch_starts_with_reset_and_follows_changes() {
        let p = Arc::new(Publisher::<String, u32>::default());
        p.upsert("a".into(), 1);
        let mut w = p.watch();
        let KeyedEvent::Reset(all) = w.next().await.unwrap() else { panic!("first event must be Reset") };
        assert_eq!(all.get("a"), Some(&1));
        p.upsert("a".into(), 1); // unchanged: no event
        p.upsert("b".into(), 2);
        p.delete(&"a".to_string());
        assert_eq!(w.next().await.unwrap(), KeyedEvent::Upsert("b".into(), 2));
        assert_eq!(w.next().await.unwrap(), KeyedEvent::Delete("a".into()));
    }

    #[tokio::test]
    async fn replace_all_sends_one_change_alone_and_several_as_a_reset() {
        let p = Arc::new(Publisher::<u32, u32>::default());
        p.replace_all((0..10).map(|i| (i, i)).collect());
        let mut w = p.watch();
        let _ = w.next().await;
        let mut next: KeyedMap<u32, u32> = (0..10).map(|i| (i, i)).collect();
        next.insert(5, 50);
        p.replace_all(next.clone());
        assert_eq!(w.next().await.unwrap(), KeyedEvent::Upsert(5, 50));
        next.remove(&0);
        p.replace_all(next.clone());
        assert_eq!(w.next().await.unwrap(), KeyedEvent::Delete(0));
        next.insert(1, 10);
        next.insert(2, 20);
        p.replace_all(next.clone());
        assert!(matches!(w.next().await.unwrap(), KeyedEvent::Reset(all) if *all == next));
        // One change and one removal are two changes: a Reset too.
        next.insert(3, 30);
        next.remove(&4);
        assert!(p.replace_all(next.clone()));
        assert!(matches!(w.next().await.unwrap(), KeyedEvent::Reset(all) if *all == next));
        assert!(!p.replace_all(next.clone()), "no change, no event");
    }

    #[tokio::test]
    async fn lagging_watcher_gets_a_reset_with_the_latest_state() {
        let p = Arc::new(Publisher::<u32, u32>::default());
        let mut w = p.watch();
        let _ = w.next().await;
        for i in 0..(CHANGE_BUFFER as u32 + 10) {
            p.upsert(i, i);
        }
        let KeyedEvent::Reset(all) = w.next().await.unwrap() else { panic!("expected a resync") };
        assert_eq!(all.len(), CHANGE_BUFFER + 10);
    }

    #[tokio::test]
    async fn aggregate_waits_for_all_sources_then_merges_first_wins() {
        let a = Arc::new(Publisher::<&'static str, u32>::default());
        let b = Arc::new(Publisher::<&'static str, u32>::default());
        a.upsert("x", 1);
        b.upsert("x", 2);
        b.upsert("y", 3);
        let mut w = aggregate(vec![a.watch(), b.watch()], first);
        let KeyedEvent::Reset(all) = w.next().await.unwrap() else { panic!("expected Reset") };
        assert_eq!(all.get("x"), Some(&1));
        assert_eq!(all.get("y"), Some(&3));
        // Shadowed by a: nothing downstream; the next event is b's "w".
        b.upsert("x", 9);
        b.upsert("w", 5);
        assert_eq!(w.next().await.unwrap(), KeyedEvent::Upsert("w", 5));
        // Once a lets go, b's value shows through.
        a.delete(&"x");
        assert_eq!(w.next().await.unwrap(), KeyedEvent::Upsert("x", 9));
        b.delete(&"y");
        assert_eq!(w.next().await.unwrap(), KeyedEvent::Delete("y"));
    }
}
