//! `control-plane --config PATH... | --kubeconfig FILE | --kubernetes |
//! --consul ADDR`: services and Istio config from files, Kubernetes and/or
//! Consul in, xDS out.
//!
//! Serves ADS (state of the world and delta) on 15010 to Envoy, proxyless
//! gRPC and mesh-proxy, pushing on every change of the files (debounced),
//! and debug endpoints on 15014:
//! - `/debug/syncz`: every connected node, what it was sent, ACKed, NACKed
//! - `/debug/config_dump?proxyID=ID`: the config a node is sent
//! - `/ready`: 200 once the sources synced (nothing is pushed before)
//! - `/metrics`: Prometheus counters of connections, pushes and rejects,
//!   and the CA's `citadel_server_*`
//!
//! With `--ca-dir` it is also the mesh's CA on 15012 (gRPC over TLS):
//! workloads send a CSR (`IstioCertificateService/CreateCertificate`)
//! with a Kubernetes service-account token (checked by TokenReview), a
//! bootstrap token (`--bootstrap-tokens`) or their current certificate,
//! and get a certificate for the identity they proved. ADS is served
//! there too, to streams that prove an identity the same way: they are
//! also sent their secrets over SDS (`default`, `ROOTCA`, and with
//! Kubernetes the `kubernetes://NAME` gateway credentials of their
//! namespace). The plaintext port sends no secrets.
//!
//! `--mesh-config FILE` is Istio's MeshConfig (auto mTLS, trust domain and
//! aliases, root namespace); the CA issues in its trust domain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use examples::scrape::Scrape;
use examples::sources::Sources;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use mesh_core::mesh::{self, Debounce};
use mesh_xds::ca::server::CaStats;
use mesh_xds::cache::SnapshotCache;
use mesh_xds::generator::{Generator, GeneratorOptions};
use mesh_xds::server::{AdsServer, AdsStats};
use mesh_xds::status::SyncStatus;

/// Thousands of streams' short-lived buffers on several threads fragment
/// glibc's per-thread arenas; mimalloc keeps the RSS near the heap
/// (`benches/xds_scale.rs`: 1,000 clients, 510 MB with glibc, 244 MB).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "An Istio-config xDS control plane", version)]
struct Args {
    #[command(flatten)]
    sources: examples::sources::SourceArgs,
    /// The address to serve ADS (gRPC) on.
    #[arg(long, default_value = "0.0.0.0:15010")]
    xds_listen: SocketAddr,
    /// The debug and metrics address.
    #[arg(long, default_value = "127.0.0.1:15014")]
    debug: SocketAddr,
    /// Push once changes have been quiet this long (milliseconds)...
    #[arg(long, default_value_t = 100)]
    debounce_ms: u64,
    /// ...or at the latest this long after the first (milliseconds).
    #[arg(long, default_value_t = 1000)]
    debounce_max_ms: u64,
    /// Refuse xDS request messages larger than this (bytes); tonic's and
    /// gRPC's default.
    #[arg(long, default_value_t = mesh_xds::grpc::MAX_MESSAGE)]
    xds_max_message_bytes: usize,
    /// Istio's MeshConfig (the `mesh` key of the `istio` ConfigMap):
    /// `enableAutoMtls`, `trustDomain` (also the CA's), `trustDomainAliases`,
    /// `rootNamespace`. Istio's defaults without it.
    #[arg(long, value_name = "FILE")]
    mesh_config: Option<std::path::PathBuf>,
    /// Seconds between fetches of RequestAuthentication's `jwksUri`
    /// documents, sent to Envoy inline (Istio's default: 20 minutes).
    #[arg(long, value_name = "SECONDS", default_value_t = examples::jwks::REFRESH.as_secs())]
    jwks_refresh: u64,
    #[command(flatten)]
    ca: examples::ca::CaArgs,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    examples::init_tracing();
    examples::return_freed_pages_sooner();
    let args = Args::parse();
    let sources = Arc::new(args.sources.start().await?);
    // A whole-mesh translation frees tens of megabytes on the translation
    // thread; mimalloc keeps them in that thread's heap unless told
    // (`benches/xds_scale.rs`: 1,000 clients, peak 255 MB to 200 MB).
    let mesh_config = Arc::new(examples::identity::load_mesh_config(args.mesh_config.as_deref())?);
    let jwks = examples::jwks::FetchedJwks::new(Duration::from_secs(args.jwks_refresh));
    let options = GeneratorOptions {
        mesh_config: mesh_config.clone(),
        after_translation: Some(examples::give_back_memory()),
        jwks: Some(jwks.clone()),
    };
    let generator = Generator::with_options(Arc::new(SnapshotCache::new()), options);
    jwks.rebuild_on_change(&generator);
    let debounce =
        Debounce { quiet: Duration::from_millis(args.debounce_ms), max: Duration::from_millis(args.debounce_max_ms) };
    let (run_sources, run_generator) = (sources.clone(), generator.clone());
    tokio::spawn(async move {
        // Nothing is pushed before the sources have synced.
        run_sources.ready().await;
        let changes = mesh::watch(run_sources.store.as_ref(), run_sources.registry.as_ref(), debounce);
        run_generator.run(changes).await;
    });
    let status = Arc::new(SyncStatus::default());
    let ads = AdsServer::new(generator.clone(), status.clone()).with_max_message(args.xds_max_message_bytes);
    let ca = args.ca.start(sources.kube_client.clone(), ads.clone(), mesh_config.trust_domains()).await?;

    let xds = tokio::net::TcpListener::bind(args.xds_listen).await?;
    let debug_listener = tokio::net::TcpListener::bind(args.debug).await?;
    tracing::info!(xds = %xds.local_addr()?, debug = %debug_listener.local_addr()?, "control plane listening");
    tokio::spawn(serve_debug(debug_listener, Debug { generator, status, sources, ca, ads: ads.stats().clone() }));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stopping");
    };
    ads.serve(xds, shutdown).await?;
    Ok(())
}

/// What the debug endpoints show.
#[derive(Clone)]
struct Debug {
    generator: Arc<Generator>,
    status: Arc<SyncStatus>,
    sources: Arc<Sources>,
    ca: Option<Arc<CaStats>>,
    ads: Arc<AdsStats>,
}

async fn serve_debug(listener: tokio::net::TcpListener, debug: Debug) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let debug = debug.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let response = debug_response(&req, &debug);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
    }
}

fn debug_response(req: &Request<hyper::body::Incoming>, debug: &Debug) -> Response<Full<Bytes>> {
    let Debug { generator, status, sources, ca, ads } = debug;
    let query = |name: &str| {
        req.uri()
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .map(|v| percent_encoding::percent_decode_str(&v.replace('+', " ")).decode_utf8_lossy().into_owned())
    };
    let (code, body) = match req.uri().path() {
        "/debug/syncz" => (StatusCode::OK, mesh_xds::debug::syncz(status).to_string()),
        "/debug/config_dump" => match (query("proxyID"), labels_param(query("labels"))) {
            (None, _) => (
                StatusCode::BAD_REQUEST,
                "missing ?proxyID= (and &labels=k=v,... for a node not connected)\n".to_string(),
            ),
            (_, Err(e)) => (StatusCode::BAD_REQUEST, format!("{e}\n")),
            (Some(id), Ok(labels)) => match mesh_xds::debug::config_dump(generator, status, &id, &labels) {
                Ok(v) => (StatusCode::OK, serde_json::to_string_pretty(&v).unwrap_or_default()),
                Err(e) => (StatusCode::NOT_FOUND, format!("{e}\n")),
            },
        },
        "/ready" if generator.mesh().is_some() => (StatusCode::OK, "ready\n".to_string()),
        "/ready" => (StatusCode::SERVICE_UNAVAILABLE, "sources not synced\n".to_string()),
        "/metrics" => (StatusCode::OK, metrics(status, sources, ca.as_deref(), ads)),
        _ => (StatusCode::NOT_FOUND, "/debug/syncz, /debug/config_dump?proxyID=, /ready, /metrics\n".to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = code;
    response
}

/// `&labels=istio=ingressgateway,app=x` of a config dump.
fn labels_param(value: Option<String>) -> Result<mesh_core::model::Labels, String> {
    let pairs: Vec<String> = value.unwrap_or_default().split(',').map(str::to_string).collect();
    examples::parse_labels(&pairs)
}

/// Istio's names for the same figures.
fn metrics(status: &SyncStatus, sources: &Sources, ca: Option<&CaStats>, ads: &AdsStats) -> String {
    let t = status.totals();
    let mut scrape = Scrape::default();
    scrape.gauge("pilot_xds", "Connected xDS clients", t.connected);
    scrape.counter("pilot_xds_pushes", "xDS responses sent", t.pushes);
    scrape.counter("pilot_total_xds_rejects", "xDS responses NACKed", t.nacks);
    let n = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    scrape.counters_by(
        "mesh_xds_streams_refused",
        "xDS streams refused or cut, by reason",
        "reason",
        &[
            ("unauthenticated", n(&ads.unauthenticated)),
            ("identity_mismatch", n(&ads.identity_mismatch)),
            ("bad_node", n(&ads.bad_node)),
            ("bad_message", n(&ads.bad_messages)),
            ("flood", n(&ads.flooded)),
        ],
    );
    scrape.counter(
        "mesh_xds_secrets_refused",
        "Streams that asked for secrets without proving an identity",
        n(&ads.secrets_refused),
    );
    if let Some(ca) = ca {
        scrape.counter("citadel_server_csr_count", "CSRs received", n(&ca.csr));
        scrape.counter(
            "citadel_server_authentication_failure_count",
            "CSRs whose caller proved no identity",
            n(&ca.authn_failures),
        );
        scrape.counter("citadel_server_csr_sign_error_count", "CSRs refused after authentication", n(&ca.sign_errors));
        scrape.counter("citadel_server_success_cert_issuance_count", "Certificates issued", n(&ca.issued));
    }
    sources.metrics(&mut scrape);
    scrape.encode()
}
