//! Shared pieces of the example binaries.

pub mod backend;
pub mod ca;
pub mod identity;
pub mod jwks;
pub mod scrape;
pub mod sources;

use std::sync::Arc;

use adapter_static::{FileWatch, StaticOptions, StaticSource};
use mesh_core::model::Labels;
use mesh_proxy::limits::DownstreamLimits;

/// The options the gateway and the sidecar share.
#[derive(clap::Args, Debug)]
pub struct ProxyArgs {
    #[command(flatten)]
    pub sources: sources::SourceArgs,
    /// Take config from this xDS (ADS) server instead, e.g. the
    /// control-plane binary's `http://127.0.0.1:15010`.
    #[arg(long, value_name = "URL", conflicts_with_all = ["config", "kubeconfig", "kubernetes", "consul"])]
    pub xds_server: Option<String>,
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin: std::net::SocketAddr,
    #[arg(long, default_value = "0.0.0.0:15090")]
    pub metrics: std::net::SocketAddr,
    /// Seconds to let requests in flight finish when draining.
    #[arg(long, default_value_t = 5)]
    pub drain_timeout: u64,
    /// Seconds a client may take to send its request headers.
    #[arg(long, default_value_t = 10)]
    pub header_read_timeout: u64,
    /// An access log line per request on stdout, in Istio's text format
    /// (JSON with MeshConfig `accessLogEncoding: JSON`).
    #[arg(long)]
    pub access_log: bool,
    /// Connections each listener's accept queue holds (the kernel caps it
    /// at net.core.somaxconn, as for Envoy's default).
    #[arg(long, default_value_t = DownstreamLimits::default().listen_backlog)]
    pub listen_backlog: u32,
    /// The largest request head in KiB (Envoy's max_request_headers_kb).
    #[arg(long, default_value_t = 60)]
    pub max_request_headers_kb: usize,
    /// The most header fields in a request (Envoy's max_headers_count).
    #[arg(long, default_value_t = 100)]
    pub max_headers: usize,
    /// Seconds a request body may go without a byte (Envoy's
    /// stream_idle_timeout; off by default, as Istio sets it).
    #[arg(long, value_name = "SECONDS")]
    pub stream_idle_timeout: Option<u64>,
    /// Seconds a whole request may take to arrive (Envoy's
    /// request_timeout; off by default).
    #[arg(long, value_name = "SECONDS")]
    pub request_timeout: Option<u64>,
    /// Serve HTTP/1.0 requests (refused with 426 by default, as Istio's
    /// PILOT_HTTP10 leaves them).
    #[arg(long)]
    pub accept_http_10: bool,
    /// Connections each listener serves at once; more are closed and
    /// counted (listener.downstream_cx_overflow). No limit by default.
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// How request paths are normalized before routing and authorization
    /// (Istio's meshConfig.pathNormalization): NONE, BASE,
    /// MERGE_SLASHES or DECODE_AND_MERGE_SLASHES.
    #[arg(long, value_name = "MODE", default_value = "BASE")]
    pub path_normalization: mesh_core::path::PathNormalization,
    /// Keep serving when a listener cannot bind its address (by default
    /// the proxy exits, naming it); /ready then names the listeners down.
    #[arg(long)]
    pub allow_degraded: bool,
    /// Seconds between fetches of RequestAuthentication's `jwksUri`
    /// documents (Envoy's remote JWKS cache time as Istio sets it: 300).
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub jwks_refresh: u64,
    #[command(flatten)]
    pub identity: identity::IdentityArgs,
    /// Worker threads; 1 runs everything on one thread, with no work
    /// stealing (as Envoy's `--concurrency 1`). Default: one per core.
    #[arg(long)]
    pub workers: Option<usize>,
}

impl ProxyArgs {
    /// The downstream limits the flags set.
    pub fn limits(&self) -> DownstreamLimits {
        let seconds = std::time::Duration::from_secs;
        DownstreamLimits {
            header_timeout: seconds(self.header_read_timeout),
            max_request_headers_bytes: self.max_request_headers_kb * 1024,
            max_headers: self.max_headers,
            stream_idle_timeout: self.stream_idle_timeout.map(seconds),
            request_timeout: self.request_timeout.map(seconds),
            max_connections: self.max_connections,
            listen_backlog: self.listen_backlog,
            accept_http_10: self.accept_http_10,
            ..DownstreamLimits::default()
        }
    }

    /// Set the shared options on a builder.
    pub fn apply(&self, builder: mesh_proxy::ProxyBuilder) -> mesh_proxy::ProxyBuilder {
        builder
            .admin(self.admin)
            .metrics(self.metrics)
            .drain_timeout(std::time::Duration::from_secs(self.drain_timeout))
            .downstream_limits(self.limits())
            .access_log(self.access_log)
            .path_normalization(self.path_normalization)
            .allow_degraded(self.allow_degraded)
            .jwks_refresh(std::time::Duration::from_secs(self.jwks_refresh))
            .after_config_applied(give_back_memory())
    }
}

impl ProxyArgs {
    /// The MeshConfig and workload identity the flags give, set on a
    /// builder.
    pub async fn apply_identity(
        &self,
        builder: mesh_proxy::ProxyBuilder,
        namespace: &str,
    ) -> Result<mesh_proxy::ProxyBuilder, String> {
        let mesh = self.identity.mesh_config()?;
        let identity = self.identity.start(namespace, &mesh).await?;
        let builder = builder.mesh_config(mesh);
        Ok(match identity {
            Some(identity) => builder.workload_identity(identity),
            None => builder,
        })
    }
}

/// The cluster's TLS Secrets as credentials, listed before this returns
/// (or after 10 s, warned).
pub async fn secret_credentials(client: kube::Client) -> std::sync::Arc<adapter_k8s::secrets::SecretCredentials> {
    let secrets = adapter_k8s::secrets::SecretCredentials::start(client);
    if tokio::time::timeout(std::time::Duration::from_secs(10), secrets.ready()).await.is_err() {
        tracing::warn!("Secrets not listed in 10 s: credentialName servers refuse handshakes until they are");
    }
    secrets
}

/// Have mimalloc (the binaries' allocator) return the memory freed so far
/// on the calling thread: after a config load or a translation, which free
/// megabytes at once that an idle thread would otherwise keep (a gateway
/// on 1,000 routes: 24.7 MB idle RSS without this).
pub fn give_back_memory() -> std::sync::Arc<dyn Fn() + Send + Sync> {
    std::sync::Arc::new(|| {
        // SAFETY: `mi_collect` takes no pointers and may be called from any
        // thread at any time (mimalloc's documented contract).
        unsafe { libmimalloc_sys::mi_collect(true) }
    })
}

/// mimalloc's `purge_delay` option: 15 in both v2's and v3's
/// `mi_option_e` (libmimalloc-sys names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Have mimalloc return freed pages to the OS 100 ms after they are freed
/// rather than after v3's default second. The control plane frees tens of
/// megabytes at once after each burst (1,000 clients connecting, a push to
/// all of them); held for a second, they are what put its RSS over its
/// live heap (`benches/xds_scale.rs` with secrets: 154.9 MB after the
/// storm, 140.1 MB with this, and no more CPU).
pub fn return_freed_pages_sooner() {
    // SAFETY: `mi_option_set` takes no pointers and may be called from any
    // thread at any time (mimalloc's documented contract).
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 100) }
}

/// Where the proxy's config comes from: the sources (files, Kubernetes;
/// followed for as long as the returned value lives, and synced before
/// this returns), or an xDS server the proxy subscribes to as a node with
/// this identity.
pub async fn config_source(
    args: &ProxyArgs,
    identity: mesh_core::translate::ProxyIdentity,
) -> Result<(mesh_proxy::ConfigSource, Option<sources::Sources>), Box<dyn std::error::Error>> {
    if let Some(server) = &args.xds_server {
        let node = mesh_xds::node::node_for(&identity);
        tracing::info!(%server, node = %node.id, "config from xDS");
        let client = mesh_xds::client::start(mesh_xds::client::ClientOptions::new(server.clone(), node, identity.kind));
        let source = mesh_proxy::ConfigSource::Stream { identity, configs: client.configs };
        return Ok((source, None));
    }
    if args.sources.is_empty() {
        return Err("give --config, --kubeconfig, --kubernetes, --consul or --xds-server".into());
    }
    let sources = args.sources.start().await?;
    sources.ready().await;
    let identity = named_from_registry(identity, &*sources.registry);
    Ok((mesh_proxy::ConfigSource::mesh(sources.store.clone(), sources.registry.clone(), identity), Some(sources)))
}

/// A proxy started without a workload name takes it (and its labels, when
/// none were given) from the registry's endpoint at its IP, as Istio's
/// injector names a pod's workload from its controller; else `unknown`.
fn named_from_registry(
    mut identity: mesh_core::translate::ProxyIdentity,
    registry: &dyn mesh_core::ServiceRegistry,
) -> mesh_core::translate::ProxyIdentity {
    if !identity.name.is_empty() {
        return identity;
    }
    let found = identity.ip.as_deref().and_then(|ip| mesh_core::workload::at_address(&registry.snapshot(), ip));
    match found {
        Some((name, labels)) => {
            tracing::info!(workload = %name, "workload name from the registry");
            identity.name = name;
            if identity.labels.is_empty() {
                identity.labels = labels;
            }
        }
        None => {
            tracing::warn!(
                "no --name and no registry endpoint at this proxy's --ip: metrics name the workload `unknown`"
            );
            identity.name = "unknown".into();
        }
    }
    identity
}

/// The proxy's runtime: with one worker, a current-thread runtime (no work
/// stealing, no cross-thread wakeups; 35-40% more requests per second than
/// a one-worker multi-thread runtime in `benches/load`), else one worker per
/// core or the number asked for.
pub fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
        None => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
}

/// Istio config from files, its problems logged, reloaded on change for as
/// long as the returned watch lives.
pub fn watched_config(
    paths: Vec<std::path::PathBuf>,
    allow_unknown_fields: bool,
) -> Result<(Arc<StaticSource>, FileWatch), Box<dyn std::error::Error>> {
    let mut options = StaticOptions::new(paths);
    options.loader.allow_unknown_fields = allow_unknown_fields;
    let files = Arc::new(StaticSource::load(options));
    for problem in &files.status().problems {
        tracing::warn!("{problem}");
    }
    let watch = files.watch_files().map_err(Box::new)?;
    Ok((files, watch))
}

/// `app=reviews,version=v1` as given to `--labels`.
pub fn parse_labels(pairs: &[String]) -> Result<Labels, String> {
    pairs
        .iter()
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| format!("--labels: `{kv}` is not key=value"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    /// Option 15 is the purge delay: v3's default second (unless the
    /// environment sets it), then what we set.
    #[test]
    fn the_purge_delay_is_option_15() {
        // SAFETY: as in `return_freed_pages_sooner`.
        let get = || unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(get(), 1000);
        }
        super::return_freed_pages_sooner();
        assert_eq!(get(), 100);
    }
}
