//! One watch's loop of blocking queries: send the index, keep the answer
//! only when it is new, back off after failures, and never query faster
//! than the floor allows.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::api::ConsulClient;
use crate::blocking::{pause_before_next, Backoff, IndexStep, QueryIndex};

/// How one watch paces and retries its queries.
#[derive(Clone, Debug)]
pub struct WatchOptions {
    /// The least time between the starts of two queries.
    pub min_interval: Duration,
    /// Backoff after a failed query: from `min`, doubling, capped at `max`,
    /// jittered.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            min_interval: Duration::from_millis(100),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// Counters shared by every watch of one source.
#[derive(Default)]
pub struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
    index_resets: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// A read of [`Counters`].
#[derive(Clone, Debug, Default)]
pub struct CounterValues {
    pub requests: u64,
    pub errors: u64,
    pub index_resets: u64,
    pub last_error: Option<String>,
}

impl Counters {
    pub fn read(&self) -> CounterValues {
        CounterValues {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            index_resets: self.index_resets.load(Ordering::Relaxed),
            last_error: self.last_error.lock().unwrap_or_else(PoisonError::into_inner).clone(),
        }
    }
}

pub struct Query {
    client: ConsulClient,
    path: String,
    index: QueryIndex,
    backoff: Backoff,
    min_interval: Duration,
    last_start: Option<Instant>,
    counters: std::sync::Arc<Counters>,
}

impl Query {
    pub fn new(
        client: ConsulClient,
        path: String,
        options: &WatchOptions,
        counters: std::sync::Arc<Counters>,
    ) -> Query {
        Query {
            client,
            path,
            index: QueryIndex::default(),
            backoff: Backoff::new(options.backoff_min, options.backoff_max),
            min_interval: options.min_interval,
            last_start: None,
            counters,
        }
    }

    /// The next answer that is new (a 404, no such KV prefix, is the empty
    /// value); `None` when the wait expired with nothing new. Failures are
    /// retried here.
    pub async fn next<T: DeserializeOwned + Default>(&mut self) -> Option<T> {
        loop {
            if let Some(last) = self.last_start {
                tokio::time::sleep(pause_before_next(last.elapsed(), self.min_interval)).await;
            }
            self.last_start = Some(Instant::now());
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            match self.client.get::<T>(&self.path, self.index.get()).await {
                Ok(answer) => {
                    self.backoff.succeeded();
                    let step = self.index.advance(answer.index);
                    if step == IndexStep::Reset {
                        self.counters.index_resets.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(target: "adapter_consul", path = self.path, "index went backwards; starting over");
                    }
                    return match step {
                        IndexStep::Unchanged => None,
                        IndexStep::Advanced | IndexStep::Reset => Some(answer.value.unwrap_or_default()),
                    };
                }
                Err(e) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    let delay = self.backoff.next_delay();
                    tracing::warn!(target: "adapter_consul", error = %e, ?delay, "query failed; retrying");
                    *self.counters.last_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(e.to_string());
                    // Another agent may answer next, with other indexes.
                    self.index.reset();
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}
