//! JWKS documents fetched off the request path (`jwksUri`, or the
//! issuer's OpenID discovery document): each fetched once when a config
//! first names it, then again every refresh period ([`REFRESH`] by
//! default); a failed refresh keeps the keys it had and retries sooner. Shared by every config the proxy
//! runs, so a config change does not refetch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_core::jwt::JwksSource;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::watch;

use super::keys::KeySet;

/// How often keys are fetched again (Envoy's remote JWKS cache time, as
/// Istio sets it).
pub const REFRESH: Duration = Duration::from_secs(5 * 60);
/// The longest wait between retries of a failing fetch.
const MAX_RETRY: Duration = Duration::from_secs(60);
/// A JWKS or discovery document larger than this is refused.
const MAX_DOCUMENT: usize = 1 << 20;

/// What a source has given so far.
#[derive(Clone, Debug)]
pub enum Fetched {
    /// The first fetch is under way.
    Pending,
    Keys(Arc<KeySet>),
    /// No fetch ever succeeded: the last error.
    Failed(String),
}

type HttpsClient =
    Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Empty<Bytes>>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FetchLabels {
    result: &'static str,
}

/// The remote key sources of the proxy.
pub struct JwksCache {
    sources: Mutex<HashMap<String, Weak<RemoteKeys>>>,
    client: HttpsClient,
    fetches: Family<FetchLabels, Counter>,
    refresh: Duration,
    /// Bumped whenever a source's keys change.
    changes: watch::Sender<u64>,
}

/// One source's keys, fetched by a task that lives as long as this.
pub struct RemoteKeys {
    pub url: String,
    keys: watch::Receiver<Fetched>,
    task: Option<tokio::task::AbortHandle>,
}

impl Drop for RemoteKeys {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl RemoteKeys {
    /// The keys now, without waiting.
    pub fn now(&self) -> Fetched {
        self.keys.borrow().clone()
    }

    /// The keys now, waiting up to `wait` for a first fetch under way.
    pub async fn current(&self, wait: Duration) -> Fetched {
        let mut keys = self.keys.clone();
        let now = keys.borrow().clone();
        if !matches!(now, Fetched::Pending) {
            return now;
        }
        let ready = tokio::time::timeout(wait, keys.wait_for(|f| !matches!(f, Fetched::Pending))).await;
        match ready {
            Ok(Ok(fetched)) => fetched.clone(),
            _ => Fetched::Failed(format!("no answer from {} within {wait:?}", self.url)),
        }
    }
}

impl Default for JwksCache {
    fn default() -> Self {
        JwksCache::new(REFRESH)
    }
}

impl JwksCache {
    /// Keys fetched again every `refresh`.
    pub fn new(refresh: Duration) -> JwksCache {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("aws-lc-rs supports rustls' default protocol versions")
            .with_root_certificates(rustls_native_roots())
            .with_no_client_auth();
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        JwksCache {
            sources: Mutex::default(),
            client: Client::builder(TokioExecutor::new()).build(connector),
            fetches: Family::default(),
            refresh,
            changes: watch::channel(0).0,
        }
    }

    /// Changes whenever some source's keys change (a control plane
    /// sends them on).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Serve `mesh_jwks_fetches_total{result}` with the proxy's metrics.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register("mesh_jwks_fetches", "JWKS documents fetched, by result", self.fetches.clone());
    }

    /// The keys of `source` (a URI or a discovery document), fetched by
    /// a task started the first time it is asked for.
    pub fn remote(self: &Arc<Self>, source: &JwksSource, timeout: Duration) -> Arc<RemoteKeys> {
        let (url, discovery) = match source {
            JwksSource::Uri(u) => (u.clone(), false),
            JwksSource::Discovery(u) => (u.clone(), true),
            JwksSource::Inline(_) => (String::new(), false),
        };
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(live) = sources.get(&url).and_then(Weak::upgrade) {
            return live;
        }
        let (tx, rx) = watch::channel(Fetched::Pending);
        let task = match tokio::runtime::Handle::try_current() {
            Ok(rt) => Some(rt.spawn(Arc::clone(self).refresh(url.clone(), discovery, timeout, tx)).abort_handle()),
            Err(_) => {
                let _ = tx.send(Fetched::Failed("no runtime to fetch it".into()));
                None
            }
        };
        let remote = Arc::new(RemoteKeys { url: url.clone(), keys: rx, task });
        sources.retain(|_, w| w.strong_count() > 0);
        sources.insert(url, Arc::downgrade(&remote));
        remote
    }

    async fn refresh(self: Arc<Self>, url: String, discovery: bool, timeout: Duration, tx: watch::Sender<Fetched>) {
        let mut retry = Duration::from_secs(1);
        loop {
            let result = tokio::time::timeout(timeout, self.fetch(&url, discovery))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
            let wait = match result {
                Ok(keys) => {
                    self.fetches.get_or_create(&FetchLabels { result: "ok" }).inc();
                    tracing::debug!(%url, keys = keys.len(), "JWKS fetched");
                    let same = matches!(&*tx.borrow(), Fetched::Keys(k) if k.document() == keys.document());
                    if !same {
                        let _ = tx.send(Fetched::Keys(Arc::new(keys)));
                        self.changes.send_modify(|n| *n += 1);
                    }
                    retry = Duration::from_secs(1);
                    self.refresh
                }
                Err(e) => {
                    self.fetches.get_or_create(&FetchLabels { result: "error" }).inc();
                    let kept = matches!(&*tx.borrow(), Fetched::Keys(_));
                    tracing::warn!(%url, error = %e, kept_previous_keys = kept, "JWKS fetch failed");
                    if !kept {
                        let first_failure = !matches!(&*tx.borrow(), Fetched::Failed(_));
                        let _ = tx.send(Fetched::Failed(e));
                        if first_failure {
                            self.changes.send_modify(|n| *n += 1);
                        }
                    }
                    let wait = retry;
                    retry = (retry * 2).min(MAX_RETRY);
                    wait
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    async fn fetch(&self, url: &str, discovery: bool) -> Result<KeySet, String> {
        let jwks_url = if discovery {
            let doc: serde_json::Value = serde_json::from_slice(&self.get(url).await?)
                .map_err(|e| format!("{url}: not a discovery document: {e}"))?;
            doc.get("jwks_uri").and_then(|u| u.as_str()).ok_or_else(|| format!("{url}: no jwks_uri"))?.to_string()
        } else {
            url.to_string()
        };
        let body = self.get(&jwks_url).await?;
        let text = std::str::from_utf8(&body).map_err(|_| format!("{jwks_url}: not UTF-8"))?;
        KeySet::parse(text).map_err(|e| format!("{jwks_url}: {e}"))
    }

    async fn get(&self, url: &str) -> Result<Bytes, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let response = self.client.get(uri).await.map_err(|e| format!("{url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("{url}: HTTP {}", response.status()));
        }
        let body =
            Limited::new(response.into_body(), MAX_DOCUMENT).collect().await.map_err(|e| format!("{url}: {e}"))?;
        Ok(body.to_bytes())
    }
}

fn rustls_native_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    roots
}
