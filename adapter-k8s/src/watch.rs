//! kube-rs watchers as streams of changes in the mesh's shape: a (re)list
//! arrives as one `Reset` holding every object, so a relist after `410
//! Gone` replaces what was known instead of leaking deleted objects.
//!
//! kube-rs does the protocol: list then watch from the list's
//! resourceVersion, bookmarks, a relist on 410, a new watch when the
//! server closes one. This adds jittered backoff on errors, counts them,
//! and turns each object into the few fields the mesh keeps before it is
//! buffered.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::stream::{BoxStream, StreamExt};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

#[derive(Debug)]
pub enum Change<T> {
    Reset(Vec<T>),
    Apply(T),
    Delete(T),
}

/// Counters shared by every watch of one source.
#[derive(Debug, Default)]
pub struct WatchCounters {
    /// Lists done, the first ones included (each is a `Reset`).
    pub lists: AtomicU64,
    /// Errors from the API server or the connection (each one backs off).
    pub errors: AtomicU64,
    pub events: AtomicU64,
}

/// Follow every object of `api`, each turned into `T` at once.
pub fn changes<K, T>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    counters: Arc<WatchCounters>,
    convert: impl Fn(K) -> T + Send + 'static,
) -> BoxStream<'static, Change<T>>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    T: Send + 'static,
{
    let events = watcher::watcher(api, config).default_backoff();
    events
        .scan(None::<Vec<T>>, move |listing, event| {
            let change = match event {
                Err(e) => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(target: "adapter_k8s", what, error = %e, "watch failed; retrying with backoff");
                    None
                }
                Ok(Event::Init) => {
                    *listing = Some(Vec::new());
                    None
                }
                Ok(Event::InitApply(object)) => {
                    listing.get_or_insert_with(Vec::new).push(convert(object));
                    None
                }
                Ok(Event::InitDone) => {
                    counters.lists.fetch_add(1, Ordering::Relaxed);
                    let all = listing.take().unwrap_or_default();
                    tracing::debug!(target: "adapter_k8s", what, objects = all.len(), "listed");
                    Some(Change::Reset(all))
                }
                Ok(Event::Apply(object)) => {
                    counters.events.fetch_add(1, Ordering::Relaxed);
                    Some(Change::Apply(convert(object)))
                }
                Ok(Event::Delete(object)) => {
                    counters.events.fetch_add(1, Ordering::Relaxed);
                    Some(Change::Delete(convert(object)))
                }
            };
            // `scan` ends the stream on `None`: keep it going with an empty step.
            futures_util::future::ready(Some(change))
        })
        .filter_map(futures_util::future::ready)
        .boxed()
}
