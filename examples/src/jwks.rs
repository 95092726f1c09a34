//! The control plane's JWKS fetcher (istiod's default for `jwksUri`):
//! mesh-proxy's, with each document sent on to Envoy inline, and every
//! node rebuilt when one changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_core::jwt::{JwksSource, DEFAULT_FETCH_TIMEOUT};
use mesh_proxy::jwt::remote::{Fetched, JwksCache, RemoteKeys};
use mesh_xds::envoy::jwt::JwksLookup;
use mesh_xds::generator::Generator;

/// Istio's default: PILOT_JWT_PUB_KEY_REFRESH_INTERVAL.
pub const REFRESH: Duration = Duration::from_secs(20 * 60);

pub struct FetchedJwks {
    cache: Arc<JwksCache>,
    /// The sources asked for, kept fetching (a source a config stops
    /// naming is fetched until the control plane restarts).
    sources: Mutex<HashMap<JwksSource, Arc<RemoteKeys>>>,
    runtime: tokio::runtime::Handle,
}

impl FetchedJwks {
    /// Documents fetched again every `refresh` (on the current runtime).
    pub fn new(refresh: Duration) -> Arc<FetchedJwks> {
        let cache = Arc::new(JwksCache::new(refresh));
        Arc::new(FetchedJwks { cache, sources: Mutex::default(), runtime: tokio::runtime::Handle::current() })
    }

    /// Have `generator` rebuild its nodes whenever keys change.
    pub fn rebuild_on_change(&self, generator: &Arc<Generator>) {
        let mut changes = self.cache.changes();
        let generator = generator.clone();
        self.runtime.spawn(async move {
            while changes.changed().await.is_ok() {
                generator.refresh().await;
                tracing::info!("JWKS keys changed, snapshots rebuilt");
            }
        });
    }
}

impl JwksLookup for FetchedJwks {
    fn jwks(&self, source: &JwksSource) -> Option<String> {
        let remote = {
            let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
            sources
                .entry(source.clone())
                .or_insert_with(|| {
                    // Translation runs on its own thread: fetches run on the
                    // control plane's runtime.
                    let _in_runtime = self.runtime.enter();
                    self.cache.remote(source, DEFAULT_FETCH_TIMEOUT)
                })
                .clone()
        };
        match remote.now() {
            Fetched::Keys(keys) => Some(keys.document().to_string()),
            Fetched::Pending | Fetched::Failed(_) => None,
        }
    }
}
