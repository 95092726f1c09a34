//! # mesh-proxy
//!
//! The data plane: a proxy that runs mesh-core's `ProxyConfig` (its own
//! HTTP/1.1 codec both ways, hyper for HTTP/2).
//! Feed it Istio config (a `ConfigStore` + `ServiceRegistry` pair, such as
//! adapter-static) or a stream of `ProxyConfig` (such as an xDS client), say
//! who it is (a gateway or a workload's sidecar), add your own `Filter`s,
//! and it serves: routing, weighted splits, load balancing, retries and
//! timeouts, circuit breaking, outlier detection, fault injection, mirroring,
//! redirects and rewrites, header operations and authorization, with Istio's
//! metrics and an Envoy-style admin server.
//!
//! | module | what it holds |
//! |---|---|
//! | [`forward`] | the request path, as named phases over a per-request context |
//! | [`answer`] | a response on its way out, its upstream fields listed until asked for as a map |
//! | [`limits`] | downstream timeouts and limits, with Envoy's defaults |
//! | [`live`] | the compiled config in force, swapped whole |
//! | [`cluster`] | a cluster's endpoints, balancer, breaker and detector |
//! | [`listener`] | listeners, added and drained as config changes |
//! | [`jwt`] | RequestAuthentication: JWTs checked in the request path (Envoy's `jwt_authn`) |
//! | [`inbound_mtls`] | a sidecar port's PeerAuthentication: mTLS required, sniffed, or off |
//! | [`upstream`] | pooled upstream connections (HTTP/1.1 and HTTP/2) |
//! | [`upstream_tls`] | TLS to upstreams: ISTIO_MUTUAL, SIMPLE and MUTUAL origination |
//! | [`downstream`] | the HTTP/1.1 server side of a downstream connection, run in its task |
//! | [`http1`] | the HTTP/1.1 upstream client, run in the request's task |
//! | [`admin`] | `/config_dump`, `/clusters`, `/stats`, `/ready`, `/drain`, Prometheus |
//! | [`metrics`] | Istio's metrics, and the downstream failures counted before any request |
//! | [`response_flags`] | Envoy's response flags: how an exchange ended |
//! | [`status`] | listeners down and config rejected, for `/ready`, `/stats`, Prometheus |
//! | [`tcp`] | TCP connections: authorized on inbound and gateways, then routed or passed through |
//! | [`access_log`] | the access log in Istio's format (text or JSON), buffered |
//! | [`trace`] | spans per request, trace headers passed on, spans sent to Zipkin or OTLP collectors |
//! | [`tls`] | TLS termination by SNI for gateway listeners |
//! | [`sni`] | a gateway connection's filter chain by its ClientHello's SNI (passthrough, TLS to TCP) |
//! | [`mtls`] | Istio mTLS: the workload identity, peer verification (SPIFFE), file-mounted certificates |
//! | [`body`] | body types and the replay buffer |
//! | `wire` | HTTP/1.1 message syntax both directions share: heads, framing, body decoding |
//! | `ascii` | addresses, numbers and JSON strings written without `core::fmt` |
//!
//! A custom gateway:
//!
//! ```no_run
//! use std::sync::Arc;
//! use async_trait::async_trait;
//! use mesh_core::filter::{Filter, FilterContext, FilterError, RequestAction, RequestHead};
//! use mesh_core::translate::ProxyIdentity;
//! use mesh_proxy::{ConfigSource, ProxyBuilder};
//!
//! struct Stamp;
//!
//! #[async_trait]
//! impl Filter for Stamp {
//!     fn name(&self) -> &str { "stamp" }
//!     async fn on_request(&self, req: &mut RequestHead, _ctx: &mut FilterContext) -> Result<RequestAction, FilterError> {
//!         req.headers.insert("x-gateway", http::HeaderValue::from_static("mine"));
//!         Ok(RequestAction::Continue)
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let files = Arc::new(adapter_static::StaticSource::load(adapter_static::StaticOptions::new(["config/"])));
//!     let _watch = files.watch_files()?;
//!     let identity = ProxyIdentity::gateway("my-gateway", "istio-system", [("istio".to_string(), "ingressgateway".to_string())].into());
//!     let proxy = ProxyBuilder::new(ConfigSource::mesh(files.clone(), files, identity))
//!         .filter(Arc::new(Stamp))
//!         .admin("127.0.0.1:15000".parse()?)
//!         .start()
//!         .await?;
//!     // Until SIGTERM or Ctrl-C, then a drain: requests in flight finish.
//!     proxy.serve_until_shutdown().await?;
//!     Ok(())
//! }
//! ```

pub mod access_log;
pub mod admin;
pub mod answer;
pub mod body;
pub mod cluster;
pub mod downstream;
pub mod forward;
pub mod http1;
pub mod inbound_mtls;
pub mod jwt;
pub mod limits;
pub mod listener;
pub mod live;
pub mod metrics;
pub mod mtls;
pub mod response_flags;
pub mod sni;
pub mod status;
pub mod tcp;
pub mod tls;
pub mod trace;
pub mod upstream;
pub mod upstream_tls;

mod ascii;
mod config_loop;
mod wire;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::stream::{BoxStream, StreamExt};
use mesh_core::credentials::CredentialSource;
use mesh_core::filter::{Filter, FilterChain};
use mesh_core::mesh::{self, Debounce};
use mesh_core::mesh_config::MeshConfig;
use mesh_core::path::PathNormalization;
use mesh_core::translate::{translate_with, ProxyIdentity, ProxyKind};
use mesh_core::workload::{WorkloadMeta, DEFAULT_CLUSTER};
use mesh_core::{ConfigStore, ProxyConfig, ServiceRegistry};
use tokio::net::TcpListener;
use tokio::sync::{watch, Mutex};

use crate::forward::Forwarder;
use crate::limits::DownstreamLimits;
use crate::listener::Listeners;
use crate::live::{LiveConfig, SharedConfig};
use crate::metrics::Metrics;
use crate::mtls::WorkloadIdentity;
use crate::status::ProxyStatus;

/// Where the proxy's config comes from.
pub enum ConfigSource {
    /// Istio config and services, translated here for `identity`.
    Mesh {
        store: Arc<dyn ConfigStore>,
        registry: Arc<dyn ServiceRegistry>,
        identity: ProxyIdentity,
        debounce: Debounce,
    },
    /// Ready-made configs (from an xDS client, or code), applied in order,
    /// for the proxy `identity` says (its name and labels are its
    /// workload's in the metrics).
    Stream { identity: ProxyIdentity, configs: BoxStream<'static, ProxyConfig> },
}

impl ConfigSource {
    pub fn mesh(
        store: Arc<dyn ConfigStore>,
        registry: Arc<dyn ServiceRegistry>,
        identity: ProxyIdentity,
    ) -> ConfigSource {
        ConfigSource::Mesh {
            store,
            registry,
            identity,
            debounce: Debounce { quiet: Duration::from_millis(20), max: Duration::from_secs(1) },
        }
    }
}

pub struct ProxyBuilder {
    source: ConfigSource,
    filters: Vec<Arc<dyn Filter>>,
    admin: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    bind_ip: Option<IpAddr>,
    drain_timeout: Duration,
    access_log: bool,
    http_proxy: Option<SocketAddr>,
    limits: DownstreamLimits,
    path_normalization: PathNormalization,
    allow_degraded: bool,
    after_config: Option<AfterConfig>,
    identity: Option<WorkloadIdentity>,
    credentials: Option<Arc<dyn CredentialSource>>,
    mesh_config: MeshConfig,
    jwks_refresh: Duration,
}

/// Called after each config is applied, on the thread that applied it.
pub type AfterConfig = Arc<dyn Fn() + Send + Sync>;

impl ProxyBuilder {
    pub fn new(source: ConfigSource) -> ProxyBuilder {
        ProxyBuilder {
            source,
            filters: vec![],
            admin: None,
            metrics: None,
            bind_ip: None,
            drain_timeout: Duration::from_secs(5),
            jwks_refresh: jwt::remote::REFRESH,
            access_log: false,
            http_proxy: None,
            limits: DownstreamLimits::default(),
            path_normalization: PathNormalization::default(),
            allow_degraded: false,
            after_config: None,
            identity: None,
            credentials: None,
            mesh_config: MeshConfig::default(),
        }
    }

    /// Where Gateway servers' `credentialName`s are found (Kubernetes
    /// Secrets: `adapter_k8s::secrets::SecretCredentials`), looked up in
    /// the proxy's namespace and read again when they change.
    pub fn credentials(mut self, source: Arc<dyn CredentialSource>) -> Self {
        self.credentials = Some(source);
        self
    }

    /// The workload's certificate, for Istio mTLS in and out
    /// ([`mtls::WorkloadIdentity`]: from a CA client, SDS or files).
    /// Without one, STRICT ports and ISTIO_MUTUAL clusters refuse
    /// connections and auto mTLS speaks plaintext.
    pub fn workload_identity(mut self, identity: WorkloadIdentity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Mesh-wide settings for translating a [`ConfigSource::Mesh`] (trust
    /// domain, auto mTLS, root namespace).
    pub fn mesh_config(mut self, mesh_config: MeshConfig) -> Self {
        self.mesh_config = mesh_config;
        self
    }

    /// Run `hook` after each config is applied: where a binary can have
    /// its allocator give back what building the config freed.
    pub fn after_config_applied(mut self, hook: AfterConfig) -> Self {
        self.after_config = Some(hook);
        self
    }

    /// Also serve an explicit HTTP proxy port, for apps that set
    /// `http_proxy` instead of having their traffic captured.
    pub fn http_proxy(mut self, addr: SocketAddr) -> Self {
        self.http_proxy = Some(addr);
        self
    }

    /// Add a user filter; filters run in the order added.
    pub fn filter(mut self, filter: Arc<dyn Filter>) -> Self {
        self.filters.push(filter);
        self
    }

    /// Serve the admin endpoints here (Istio: 15000).
    pub fn admin(mut self, addr: SocketAddr) -> Self {
        self.admin = Some(addr);
        self
    }

    /// Serve Prometheus metrics here (Istio: 15090).
    pub fn metrics(mut self, addr: SocketAddr) -> Self {
        self.metrics = Some(addr);
        self
    }

    /// Bind listeners on this address instead of the one in the config
    /// (`0.0.0.0`), e.g. 127.0.0.1 in tests.
    pub fn bind_ip(mut self, ip: IpAddr) -> Self {
        self.bind_ip = Some(ip);
        self
    }

    /// How long draining waits for connections in flight.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Downstream timeouts and limits: header and idle timeouts, head
    /// size and field count, stream idle and request timeouts, connections
    /// per listener, the accept queue ([`DownstreamLimits`] has Envoy's
    /// defaults where Istio keeps them).
    pub fn downstream_limits(mut self, limits: DownstreamLimits) -> Self {
        self.limits = limits;
        self
    }

    /// How request paths are normalized before routing, authorization and
    /// the upstream (Istio's `meshConfig.pathNormalization`; `BASE` by
    /// default, as Istio's).
    pub fn path_normalization(mut self, mode: PathNormalization) -> Self {
        self.path_normalization = mode;
        self
    }

    /// Keep serving when a listener of the first config cannot bind (its
    /// port taken, its address not the host's): `/ready` names the
    /// listeners down. By default the proxy fails instead
    /// ([`ProxyHandle::failed`]), as Envoy does on a listener it cannot
    /// bind at start.
    pub fn allow_degraded(mut self, allow: bool) -> Self {
        self.allow_degraded = allow;
        self
    }

    /// Write a JSON access log line per request to stdout, buffered as
    /// How often RequestAuthentication's `jwksUri` documents are fetched
    /// again (5 minutes, as the remote JWKS cache time Istio gives Envoy).
    pub fn jwks_refresh(mut self, every: Duration) -> Self {
        self.jwks_refresh = every;
        self
    }

    /// Envoy buffers its file log: written out every second, at 64 KiB
    /// and when draining.
    pub fn access_log(mut self, on: bool) -> Self {
        self.access_log = on;
        self
    }

    /// The access log's encoding (MeshConfig's `accessLogEncoding`).
    fn access_log_encoding(&self) -> access_log::Encoding {
        let file = &self.mesh_config.access_log_file;
        if !file.is_empty() && file != "/dev/stdout" {
            tracing::warn!(accessLogFile = %file, "MeshConfig accessLogFile: only /dev/stdout is written; the access log goes to stdout");
        }
        match self.mesh_config.access_log_encoding {
            mesh_core::mesh_config::AccessLogEncoding::Text => access_log::Encoding::Text,
            mesh_core::mesh_config::AccessLogEncoding::Json => access_log::Encoding::Json,
        }
    }

    /// Start serving. Listeners come up as the first config arrives.
    pub async fn start(self) -> std::io::Result<ProxyHandle> {
        self.limits.check().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let (ConfigSource::Mesh { identity, .. } | ConfigSource::Stream { identity, .. }) = &self.source;
        let namespace = identity.namespace.clone();
        let own = WorkloadMeta::from_labels(&identity.name, &identity.namespace, &identity.labels, DEFAULT_CLUSTER);
        let live: SharedConfig = Arc::new(ArcSwap::from_pointee(LiveConfig::empty()));
        let status = Arc::new(ProxyStatus::default());
        let (drain_tx, drain_rx) = watch::channel(false);
        let tracing = Arc::new(trace::Setup { own: own.clone(), ..trace::Setup::default() });
        let mut metrics = Metrics::new(own, self.access_log_encoding(), self.access_log);
        tracing.exporters.stats.register(metrics.registry_mut());
        metrics.set_identity(self.identity.clone());
        metrics.register_status(&status);
        metrics.register_server(drain_rx.clone());
        let downstream_stats = Arc::new(metrics::DownstreamStats::default());
        metrics.register_envoy_stats(Arc::clone(&live), Arc::clone(&downstream_stats));
        let jwks = Arc::new(jwt::remote::JwksCache::new(self.jwks_refresh));
        metrics.register_jwks(&jwks);
        let metrics = Arc::new(metrics);
        let forwarder = Arc::new(Forwarder {
            live: Arc::clone(&live),
            upstreams: upstream::Upstreams::new(self.identity.clone()),
            filters: FilterChain::new(self.filters),
            metrics: Arc::clone(&metrics),
            stats: downstream_stats,
            path_normalization: self.path_normalization,
            identity: self.identity.clone(),
            jwks,
            tracing,
        });
        let admin_state = admin::AdminState {
            live: Arc::clone(&live),
            metrics: Arc::clone(&metrics),
            drain: drain_tx.clone(),
            downstream: Arc::clone(&forwarder.stats),
            status: Arc::clone(&status),
            identity: self.identity.clone(),
        };
        let mut admin_addr = None;
        for (addr, prometheus_only) in [(self.admin, false), (self.metrics, true)] {
            if let Some(addr) = addr {
                let what = if prometheus_only { "metrics" } else { "admin" };
                let socket = TcpListener::bind(addr).await.map_err(|e| named(e, what, addr))?;
                if !prometheus_only {
                    admin_addr = Some(socket.local_addr()?);
                }
                tokio::spawn(admin::serve(socket, admin_state.clone(), prometheus_only, drain_rx.clone()));
            }
        }
        if let Some(addr) = self.http_proxy {
            let socket = listener::bind(addr, self.limits.listen_backlog).map_err(|e| named(e, "HTTP proxy", addr))?;
            let settings = self.limits;
            tokio::spawn(listener::serve_http_proxy(
                socket,
                Arc::clone(&forwarder),
                drain_rx.clone(),
                settings,
                self.drain_timeout,
            ));
        }
        let listeners = Arc::new(Mutex::new(Listeners::new(
            self.bind_ip,
            self.drain_timeout,
            self.limits,
            Arc::clone(&status),
            tls::Credentials {
                identity: self.identity.clone(),
                source: self.credentials.clone(),
                namespace: namespace.clone(),
            },
        )));
        let (failure_tx, failure_rx) = watch::channel(None);
        let (version_tx, version_rx) = watch::channel(String::new());
        let configs: BoxStream<'static, ProxyConfig> = match self.source {
            ConfigSource::Mesh { store, registry, identity, debounce } => {
                tokio::spawn(follow_rejections(Arc::clone(&store), Arc::clone(&status), drain_rx.clone()));
                let mesh_config = self.mesh_config.clone();
                mesh::watch(&*store, &*registry, debounce)
                    .map(move |update| translate_with(&update.snapshot, &identity, &mesh_config))
                    .boxed()
            }
            ConfigSource::Stream { configs, .. } => configs,
        };
        tokio::spawn(sweep(Arc::clone(&forwarder), version_rx.clone(), drain_rx.clone()));
        tokio::spawn(flush_access_log(Arc::clone(&metrics), drain_rx.clone()));
        let config_task = tokio::spawn(config_loop::run(config_loop::ConfigLoop {
            configs,
            live: Arc::clone(&live),
            forwarder: Arc::clone(&forwarder),
            listeners: Arc::clone(&listeners),
            status,
            version: version_tx,
            failure: (!self.allow_degraded).then_some(failure_tx),
            drain: drain_rx.clone(),
            after_config: self.after_config,
        }));
        Ok(ProxyHandle {
            live,
            listeners,
            drain: drain_tx,
            drained: drain_rx,
            config_task,
            version: version_rx,
            admin_addr,
            metrics,
            failure: failure_rx,
        })
    }
}

/// A bind error that names what was bound and where.
fn named(e: std::io::Error, what: &str, addr: SocketAddr) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{what} address {addr}: {e}"))
}

/// Outlier detection's interval sweeps, for every cluster that has it,
/// and idle upstream connections closed at their idle timeout. It sleeps
/// until the next of them is due or a config arrives (which can bring
/// sooner ones), never on a fixed tick: an idle proxy stays asleep, and a
/// thousand endpoints' pools are not walked ten times a second.
async fn sweep(forwarder: Arc<Forwarder>, mut configs: watch::Receiver<String>, mut drain: watch::Receiver<bool>) {
    loop {
        let outliers = forwarder.live.load().clusters.values().filter_map(|c| c.sweep_if_due()).min();
        let idle = forwarder.upstreams.close_expired();
        let next = outliers.into_iter().chain(idle).min();
        tokio::select! {
            _ = sleep_until_some(next) => {}
            Ok(()) = configs.changed() => {}
            _ = drain.changed() => return,
        }
    }
}

async fn sleep_until_some(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The store's rejections, looked at every second: a bad edit that keeps
/// the last good version changes nothing the mesh watch would publish.
async fn follow_rejections(store: Arc<dyn ConfigStore>, status: Arc<ProxyStatus>, mut drain: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => status.store_rejections(store.rejected()),
            _ = drain.changed() => return,
        }
    }
}

/// The access log's flush timer.
async fn flush_access_log(metrics: Arc<Metrics>, mut drain: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(access_log::FLUSH_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => metrics.flush_access_log(),
            _ = drain.changed() => return,
        }
    }
}

/// A running proxy.
pub struct ProxyHandle {
    live: SharedConfig,
    listeners: Arc<Mutex<Listeners>>,
    drain: watch::Sender<bool>,
    drained: watch::Receiver<bool>,
    config_task: tokio::task::JoinHandle<()>,
    version: watch::Receiver<String>,
    admin_addr: Option<SocketAddr>,
    metrics: Arc<Metrics>,
    failure: watch::Receiver<Option<String>>,
}

impl ProxyHandle {
    /// The version of the config serving now (empty before the first).
    pub fn version(&self) -> String {
        self.live.load().config.version.clone()
    }

    pub fn config(&self) -> Arc<ProxyConfig> {
        Arc::clone(&self.live.load().config)
    }

    /// Wait until a config other than `not` is serving, up to `limit`.
    pub async fn wait_for_version_change(&self, not: &str, limit: Duration) -> Option<String> {
        let mut rx = self.version.clone();
        tokio::time::timeout(limit, async {
            loop {
                let v = rx.borrow_and_update().clone();
                if !v.is_empty() && v != not {
                    return v;
                }
                if rx.changed().await.is_err() {
                    return String::new();
                }
            }
        })
        .await
        .ok()
        .filter(|v| !v.is_empty())
    }

    /// Resolves when the proxy cannot serve as configured: a listener of
    /// its first config could not bind (unless
    /// [`ProxyBuilder::allow_degraded`]). The text names the listeners,
    /// their addresses and the errors.
    pub async fn failed(&self) -> String {
        let mut rx = self.failure.clone();
        let failure = rx.wait_for(Option::is_some).await.map(|f| f.clone());
        match failure {
            Ok(failure) => failure.unwrap_or_default(),
            Err(_) => std::future::pending().await,
        }
    }

    /// Where each listener is bound, by listener name.
    pub async fn listener_addresses(&self) -> Vec<(String, SocketAddr)> {
        self.listeners.lock().await.addresses()
    }

    pub fn admin_address(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Resolves when a drain was asked for (SIGTERM in the binaries, or
    /// `POST /drain` on the admin server).
    pub async fn drain_requested(&self) {
        let mut rx = self.drained.clone();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Stop accepting, let requests in flight finish (up to the drain
    /// timeout), and stop.
    pub async fn drain(self) -> Drained {
        let _ = self.drain.send(true);
        self.config_task.abort();
        let cut_off_connections = self.listeners.lock().await.shutdown().await;
        self.metrics.drain_access_log();
        Drained { cut_off_connections }
    }

    /// Serve until SIGTERM or SIGINT (or `POST /drain` on the admin
    /// server), then drain, as Envoy does on SIGTERM; an error if the proxy
    /// cannot serve as configured ([`ProxyHandle::failed`]), after draining
    /// what it did serve.
    pub async fn serve_until_shutdown(self) -> std::io::Result<Drained> {
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let failure = tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: draining"); None }
            _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted: draining"); None }
            _ = self.drain_requested() => { tracing::info!("drain requested on the admin server"); None }
            failure = self.failed() => Some(failure),
        };
        let drained = self.drain().await;
        match failure {
            Some(failure) => Err(std::io::Error::other(format!("cannot serve: {failure}"))),
            None => {
                tracing::info!(cut_off_connections = drained.cut_off_connections, "drained");
                Ok(drained)
            }
        }
    }
}

/// How a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drained {
    /// Connections with requests still in flight at the drain deadline,
    /// closed with them (0: every request finished).
    pub cut_off_connections: usize,
}

/// The identity a gateway binary has by default: Istio's ingress gateway.
pub fn default_gateway_identity() -> ProxyIdentity {
    ProxyIdentity {
        kind: ProxyKind::Gateway,
        name: "istio-ingressgateway".into(),
        namespace: "istio-system".into(),
        labels: [("istio".to_string(), "ingressgateway".to_string())].into(),
        ip: None,
        locality: Default::default(),
    }
}

/// The README's snippets, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
