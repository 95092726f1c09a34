//! xDS at scale: 1,000 lightweight ADS clients (one process) against the
//! ADS server (a child process, so its RSS is its own) serving a mesh of
//! 1,000 services and 10,000 endpoints.
//!
//! Measures the connect storm (all clients connecting at once until each
//! has CDS, EDS, LDS and RDS), the time from one endpoint change and from
//! one route change to each client receiving it, and the server's RSS.
//!
//! ```sh
//! cargo bench -p benches --bench xds_scale -- [--clients 1000] [--workloads 10] [--rounds 5] [--secrets] [--cert-ttl 90]
//! ```
//! Clients are replicas of `--workloads` distinct workloads (identical
//! replicas share one translation on the server).
//!
//! With `--secrets` the server runs as on istiod's secure port: gRPC over
//! TLS, each client proving its own identity (a bootstrap token) and
//! getting its certificate and roots over SDS at connect; the storm ends
//! when each also has SDS. Certificates live `--cert-ttl` seconds and are
//! renewed at half that: the bench then waits for every client's renewed
//! certificate and reports how late it came.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::{filter::ConfigType, Listener};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DiscoveryRequest,
};
use mesh_core::mesh::{self, Debounce};
use mesh_core::registry::MemoryRegistry;
use mesh_core::store::MemoryConfigStore;
use mesh_core::translate::ProxyIdentity;
use mesh_xds::resources::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};
use prost::Message;

/// As the control-plane binary: many streams' short-lived buffers on
/// several threads fragment glibc's per-thread arenas (1,000 clients: 510 MB
/// RSS with glibc, 433 MB with jemalloc, 244 MB with mimalloc).
#[global_allocator]
static ALLOCATOR: benches::alloc::Counting<mimalloc::MiMalloc> = benches::alloc::Counting::new(mimalloc::MiMalloc);

const DEBOUNCE: Duration = Duration::from_millis(10);
/// The types a client follows, and the bytes of each all clients were sent.
const TYPES: [&str; 5] = [CLUSTER, LISTENER, ROUTE, ENDPOINT, SECRET];
static RECEIVED: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];
/// The name the server's certificate carries, as istiod's.
const SERVER_NAME: &str = "istiod.istio-system.svc";

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// Client `i`'s identity and the token that proves it.
fn identity_of(i: usize) -> (String, String) {
    (format!("spiffe://cluster.local/ns/default/sa/client-{i}"), format!("token-{i}"))
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    if std::env::args().any(|a| a == "--server") {
        server();
    } else {
        clients();
    }
}

// ------------------------------------------------------------------ server

fn server() {
    // As the control-plane binary.
    examples::return_freed_pages_sooner();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let (config, services) = benches::mesh(1000, 10);
        let store = Arc::new(MemoryConfigStore::new());
        store.replace_all(config);
        let registry = Arc::new(MemoryRegistry::new("bench"));
        registry.replace_all(services.clone());
        let hook: mesh_xds::generator::AfterTranslation = examples::give_back_memory();
        let cache = Arc::new(mesh_xds::cache::SnapshotCache::new());
        let options = mesh_xds::generator::GeneratorOptions { after_translation: Some(hook), ..Default::default() };
        let generator = mesh_xds::generator::Generator::with_options(cache, options);
        let debounce = Debounce { quiet: DEBOUNCE, max: Duration::from_millis(100) };
        tokio::spawn(generator.clone().run(mesh::watch(store.as_ref(), registry.as_ref(), debounce)));
        generator.ready().await;
        if std::env::var("XDS_SCALE_TRANSLATION_HEAP").is_ok() {
            let mesh = generator.mesh().expect("mesh");
            let identity =
                ProxyIdentity::sidecar("client-0", "default", [("app".to_string(), "client-0".to_string())].into());
            let node = mesh_xds::node::parse(Some(&mesh_xds::node::node_for(&identity))).expect("node");
            let before = ALLOCATOR.live_bytes();
            ALLOCATOR.reset_peak();
            let config = mesh_core::translate::translate(&mesh, &node.identity);
            let translated = ALLOCATOR.live_bytes() - before;
            let resources = mesh_xds::envoy::resources(&config, node.flavor, node.has_certificate);
            let encoded = ALLOCATOR.live_bytes() - before - translated;
            drop(config);
            drop(resources);
            eprintln!(
                "translation heap: ProxyConfig {:.1} MB, resources {:.1} MB, peak {:.1} MB",
                translated as f64 / 1e6,
                encoded as f64 / 1e6,
                (ALLOCATOR.peak_bytes() - before) as f64 / 1e6
            );
        }
        let ads = mesh_xds::server::AdsServer::new(generator, Arc::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let _ca_dir = if flag("--secrets") {
            let (dir, ads, tls) = secure(ads);
            tokio::spawn(ads.serve_tls(listener, tls, std::future::pending()));
            Some(dir)
        } else {
            tokio::spawn(ads.serve(listener, std::future::pending()));
            None
        };
        println!("port {port}");
        // Changes, one per line: `endpoint N` or `route N`.
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()));
        let mut round = 0u32;
        while let Ok(Some(line)) = lines.next_line().await {
            round += 1;
            match line.split_once(' ') {
                Some(("endpoint", n)) => {
                    let n: usize = n.parse().expect("service number");
                    let (service, mut endpoints) = services[n].clone();
                    endpoints[0].address = format!("10.200.{}.{}", round / 250, round % 250 + 1);
                    registry.upsert(service, endpoints);
                }
                Some(("route", n)) => {
                    let yaml = benches::routing_yaml(n.parse().expect("service number"), 50 + round % 40);
                    for doc in mesh_core::config::parse_documents(&yaml).expect("yaml") {
                        if let mesh_core::config::Decoded::Istio { resource, .. } =
                            mesh_core::config::decode(doc, "default").expect("decode")
                        {
                            store.upsert(resource);
                        }
                    }
                }
                // A profiler wrapping the server then sees what is live
                // at this point as leaked.
                _ if line == "exit" => std::process::exit(0),
                _ if line == "heap" => {
                    eprintln!(
                        "live heap by allocation size: {}",
                        benches::alloc::by_size_text(&ALLOCATOR.live_by_size())
                    );
                    eprintln!("... and at the peak: {}", benches::alloc::by_size_text(&ALLOCATOR.peak_by_size()));
                    println!("heap {} {}", ALLOCATOR.live_bytes(), ALLOCATOR.peak_bytes());
                    ALLOCATOR.reset_peak();
                }
                _ => eprintln!("unknown command {line:?}"),
            }
        }
    });
}

/// The server as on istiod's secure port: a new CA (its root written for
/// the clients, `root PATH` on stdout), one bootstrap token per client.
fn secure(
    ads: mesh_xds::server::AdsServer,
) -> (tempfile::TempDir, mesh_xds::server::AdsServer, Arc<rustls::ServerConfig>) {
    use mesh_xds::ca::authn::{Authenticator, BootstrapTokens};
    use mesh_xds::ca::authority::{CertificateAuthority, Lifetimes};
    let dir = tempfile::tempdir().expect("a temp dir");
    let ca = CertificateAuthority::load_or_create(dir.path(), "cluster.local", Lifetimes::default()).expect("a CA");
    let ca = Arc::new(ca);
    let tokens: String =
        (0..arg("--clients", 1000)).map(identity_of).map(|(id, token)| format!("{id} {token}\n")).collect();
    let tokens: Arc<dyn Authenticator> = Arc::new(BootstrapTokens::parse(&tokens).expect("tokens"));
    let ttl = Duration::from_secs(arg("--cert-ttl", 90) as u64);
    let security = mesh_xds::server::StreamSecurity {
        authenticators: vec![tokens].into(),
        secrets: mesh_xds::sds::SecretIssuer::new(ca.clone(), ttl),
        credentials: None,
    };
    let tls = mesh_xds::ca::server::tls_config(ca.clone(), vec![SERVER_NAME.into()]).expect("TLS");
    let root = dir.path().join("root.pem");
    std::fs::write(&root, ca.root_pem()).expect("root written");
    println!("root {}", root.display());
    (dir, ads.with_security(security), tls)
}

// ------------------------------------------------------------------ clients

/// Per client: when it had every type (ns since the epoch), and when it
/// last received EDS and RDS.
#[derive(Default)]
struct Stamps {
    ready: AtomicU64,
    eds: AtomicU64,
    rds: AtomicU64,
    /// When the client started connecting, and when its first and its
    /// renewed certificate came (`--secrets`).
    connect: AtomicU64,
    first_certificate: AtomicU64,
    renewed_certificate: AtomicU64,
}

fn clients() {
    let clients = arg("--clients", 1000);
    let workloads = arg("--workloads", 10);
    let rounds = arg("--rounds", 5);
    let exe = std::env::current_exe().expect("own path");
    // XDS_SCALE_WRAP="heaptrack -o /tmp/ht" profiles the server.
    let wrap = std::env::var("XDS_SCALE_WRAP").unwrap_or_default();
    let mut words = wrap.split_whitespace();
    let mut command = match words.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(words).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    let secrets = flag("--secrets");
    let cert_ttl = arg("--cert-ttl", 90);
    command.args(["--server", "--clients", &clients.to_string(), "--cert-ttl", &cert_ttl.to_string()]);
    if secrets {
        command.arg("--secrets");
    }
    let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("server");
    let pid = child.id();
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    // Wrappers (a profiler) may print first.
    let mut tls = None;
    while !line.starts_with("port ") {
        line.clear();
        if out.read_line(&mut line).expect("port line") == 0 {
            panic!("the server exited before printing its port");
        }
        if let Some(root) = line.trim().strip_prefix("root ") {
            tls = Some(client_tls(std::path::Path::new(root)));
        }
    }
    let port: u16 = line.trim().strip_prefix("port ").and_then(|p| p.parse().ok()).expect("port");
    let mut commands = child.stdin.take().expect("stdin");
    let idle_rss = rss(pid, "VmRSS");
    let (idle_heap, _) = live_heap(&mut commands, &mut out);

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let epoch = Instant::now();
    let stamps: Arc<Vec<Stamps>> = Arc::new((0..clients).map(|_| Stamps::default()).collect());
    rt.block_on(async {
        let (server_cpu, own_cpu) = (cpu_seconds(pid), cpu_seconds(std::process::id()));
        let storm = Instant::now();
        for i in 0..clients {
            let (stamps, tls) = (stamps.clone(), tls.clone());
            tokio::spawn(async move {
                if let Err(e) = client(port, i, workloads, &stamps[i], epoch, tls).await {
                    eprintln!("client {i}: {e}");
                }
            });
        }
        wait_all(&stamps, |s| &s.ready, Duration::from_secs(120), "connect storm").await;
        let served = stamps.iter().map(|s| s.ready.load(Ordering::Relaxed)).max().unwrap_or(0);
        let storm_s = (Duration::from_nanos(served) - storm.duration_since(epoch)).as_secs_f64();
        let with = if secrets { ", each with its own certificate over SDS" } else { "" };
        println!("connect storm: {clients} clients ({workloads} workloads{with}) fully served in {storm_s:.2} s");
        println!(
            "  CPU during the storm: server {:.2} s, clients {:.2} s (2 cores: {:.2} s available)",
            cpu_seconds(pid) - server_cpu,
            cpu_seconds(std::process::id()) - own_cpu,
            2.0 * storm.elapsed().as_secs_f64()
        );
        let per_client: Vec<String> = TYPES
            .iter()
            .zip(&RECEIVED)
            .map(|(t, n)| format!("{} {:.0} KB", t.rsplit('.').next().unwrap_or(t), n.load(Ordering::Relaxed) as f64 / 1e3 / clients as f64))
            .collect();
        println!("  sent to each client in the storm: {}", per_client.join(", "));
        let (heap, heap_peak) = live_heap(&mut commands, &mut out);
        println!("server RSS (live heap), MB: idle {idle_rss:.1} ({idle_heap:.1}), after the storm {:.1} ({heap:.1}), peak {:.1} ({heap_peak:.1})", rss(pid, "VmRSS"), rss(pid, "VmHWM"));

        for (what, command, pick) in [("endpoint", "endpoint", 0usize), ("route", "route", 1)] {
            let mut latencies = Vec::new();
            for round in 0..rounds {
                for s in stamps.iter() {
                    s.eds.store(0, Ordering::Relaxed);
                    s.rds.store(0, Ordering::Relaxed);
                }
                let service = (round * 97 + 13) % 1000;
                let t0 = epoch.elapsed().as_nanos() as u64;
                writeln!(commands, "{command} {service}").expect("send change");
                wait_all(&stamps, |s| field(s, pick), Duration::from_secs(60), what).await;
                latencies.extend(stamps.iter().map(|s| (field(s, pick).load(Ordering::Relaxed) - t0) as f64 / 1e6));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            latencies.sort_by(f64::total_cmp);
            let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
            println!(
                "{what} change to each client, {rounds} rounds (ms, including the {} ms debounce): p50 {:.0}, p99 {:.0}, max {:.0}",
                DEBOUNCE.as_millis(),
                at(0.5),
                at(0.99),
                latencies.last().copied().unwrap_or(0.0)
            );
        }
        let (heap, heap_peak) = live_heap(&mut commands, &mut out);
        println!("server RSS (live heap), MB: after the changes {:.1} ({heap:.1}), peak {:.1} ({heap_peak:.1} during the changes)", rss(pid, "VmRSS"), rss(pid, "VmHWM"));
        if secrets {
            rotation(&stamps, Duration::from_secs(cert_ttl as u64)).await;
            let (heap, heap_peak) = live_heap(&mut commands, &mut out);
            println!("server RSS (live heap), MB: after the rotation {:.1} ({heap:.1}), peak {:.1} ({heap_peak:.1} during it)", rss(pid, "VmRSS"), rss(pid, "VmHWM"));
        }
    });
    if wrap.is_empty() {
        let _ = child.kill();
    } else {
        let _ = writeln!(commands, "exit");
    }
    let _ = child.wait();
}

/// Waits for every client's renewed certificate and reports how late it
/// came after its renewal time (half the lifetime after the client started
/// connecting: an upper bound, as the certificate was issued later).
async fn rotation(stamps: &[Stamps], ttl: Duration) {
    wait_all(stamps, |s| &s.renewed_certificate, ttl + Duration::from_secs(60), "certificate rotation").await;
    let at = |f: &AtomicU64| f.load(Ordering::Relaxed) as f64 / 1e9;
    let mut late: Vec<f64> = stamps
        .iter()
        .map(|s| (at(&s.renewed_certificate) - at(&s.connect) - ttl.as_secs_f64() / 2.0).max(0.0))
        .collect();
    late.sort_by(f64::total_cmp);
    let first = stamps.iter().map(|s| at(&s.renewed_certificate)).fold(f64::MAX, f64::min);
    let last = stamps.iter().map(|s| at(&s.renewed_certificate)).fold(0.0, f64::max);
    println!(
        "certificate rotation: {} renewed certificates pushed over {:.2} s; each after its renewal time (s): p50 {:.2}, p99 {:.2}, max {:.2}",
        stamps.len(),
        last - first,
        late[late.len() / 2],
        late[(late.len() * 99 / 100).min(late.len() - 1)],
        late.last().copied().unwrap_or(0.0)
    );
}

/// EDS (0) or RDS (1) arrival.
fn field(s: &Stamps, pick: usize) -> &AtomicU64 {
    if pick == 0 {
        &s.eds
    } else {
        &s.rds
    }
}

async fn wait_all(stamps: &[Stamps], field: impl Fn(&Stamps) -> &AtomicU64, limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    loop {
        let done = stamps.iter().filter(|s| field(s).load(Ordering::Relaxed) > 0).count();
        if done == stamps.len() {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: only {done} of {} clients after {limit:?}", stamps.len());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The server's bytes allocated and not freed (MB), as its counting
/// allocator sees them: RSS above this is what the allocator keeps.
fn live_heap(commands: &mut impl Write, out: &mut impl BufRead) -> (f64, f64) {
    writeln!(commands, "heap").expect("ask the server");
    let mut line = String::new();
    while !line.starts_with("heap ") {
        line.clear();
        if out.read_line(&mut line).expect("heap line") == 0 {
            panic!("the server exited");
        }
    }
    let mut figures = line
        .trim()
        .strip_prefix("heap ")
        .unwrap_or_default()
        .split(' ')
        .map(|n| n.parse::<f64>().unwrap_or(0.0) / 1048576.0);
    (figures.next().unwrap_or(0.0), figures.next().unwrap_or(0.0))
}

/// A process's user and system CPU so far (s).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start at `) `.
    let fields: Vec<&str> = stat.rsplit_once(") ").map(|(_, rest)| rest.split(' ').collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line, in clock ticks (100 a second).
    (ticks(11) + ticks(12)) / 100.0
}

fn rss(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// The two fields of a Cluster a client needs: the clients are a load
/// generator sharing the server's two cores, so they skip the rest of a
/// 2.3 MB CDS response rather than build it (decoding whole Clusters took
/// more CPU than the server spent serving them).
#[derive(Clone, PartialEq, prost::Message)]
struct ClusterHead {
    #[prost(string, tag = "1")]
    name: String,
    /// `Cluster.type`, one arm of the `cluster_discovery_type` oneof.
    #[prost(int32, optional, tag = "2")]
    discovery_type: Option<i32>,
}

/// `Cluster.DiscoveryType.EDS`.
const EDS: i32 = 3;

/// One ADS client: CDS and LDS, then the EDS and RDS names they give; ACKs
/// every response.
async fn client(
    port: u16,
    i: usize,
    workloads: usize,
    stamps: &Stamps,
    epoch: Instant,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let now = || epoch.elapsed().as_nanos() as u64;
    stamps.connect.store(now(), Ordering::Relaxed);
    // Envoy's HTTP/2 windows for its xDS stream (its defaults: 256 MiB),
    // not h2's 64 KiB: the server sends a snapshot without waiting for
    // window updates, as it does to a real Envoy.
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
        .initial_stream_window_size(256 << 20)
        .initial_connection_window_size(256 << 20);
    let secure = tls.is_some();
    let channel = match tls {
        Some(config) => endpoint.connect_with_connector(TlsConnector { config, port }).await?,
        None => endpoint.connect().await?,
    };
    let mut ads = AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(256 << 20);
    let identity = ProxyIdentity::sidecar(
        &format!("client-{}", i % workloads),
        "default",
        [("app".to_string(), format!("client-{}", i % workloads))].into(),
    );
    let node: Node = mesh_xds::node::node_for(&identity);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let req = |type_url: &str, names: Vec<String>, version: String, nonce: String| DiscoveryRequest {
        type_url: type_url.into(),
        resource_names: names,
        version_info: version,
        response_nonce: nonce,
        ..Default::default()
    };
    tx.send(DiscoveryRequest { node: Some(node), ..req(CLUSTER, vec![], String::new(), String::new()) }).await?;
    tx.send(req(LISTENER, vec![], String::new(), String::new())).await?;
    let mut names: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    if secure {
        let secrets = vec![mesh_xds::sds::WORKLOAD_SECRET.to_string(), mesh_xds::sds::ROOT_SECRET.to_string()];
        names.insert(SECRET.into(), secrets.clone());
        tx.send(req(SECRET, secrets, String::new(), String::new())).await?;
    }
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if secure {
        let bearer = format!("Bearer {}", identity_of(i).1);
        request.metadata_mut().insert("authorization", bearer.parse()?);
    }
    let mut responses = ads.stream_aggregated_resources(request).await?.into_inner();
    let mut seen = std::collections::BTreeSet::new();
    let types = if secure { 5 } else { 4 };
    while let Some(resp) = responses.message().await? {
        if let Some(n) =
            TYPES.iter().position(|t| *t == resp.type_url).filter(|_| stamps.ready.load(Ordering::Relaxed) == 0)
        {
            RECEIVED[n].fetch_add(resp.encoded_len() as u64, Ordering::Relaxed);
        }
        match resp.type_url.as_str() {
            CLUSTER => {
                let eds: Vec<String> = resp
                    .resources
                    .iter()
                    .filter_map(|a| ClusterHead::decode(a.value.as_slice()).ok())
                    .filter(|c| c.discovery_type == Some(EDS))
                    .map(|c| c.name)
                    .collect();
                if names.get(ENDPOINT) != Some(&eds) {
                    names.insert(ENDPOINT.into(), eds.clone());
                    tx.send(req(ENDPOINT, eds, String::new(), String::new())).await?;
                }
            }
            LISTENER => {
                let mut rds: Vec<String> = resp
                    .resources
                    .iter()
                    .filter_map(|a| Listener::decode(a.value.as_slice()).ok())
                    .flat_map(|l| l.filter_chains)
                    .flat_map(|c| c.filters)
                    .filter_map(|f| match f.config_type {
                        Some(ConfigType::TypedConfig(any)) => HttpConnectionManager::decode(any.value.as_slice()).ok(),
                        _ => None,
                    })
                    .filter_map(|h| match h.route_specifier {
                        Some(RouteSpecifier::Rds(r)) => Some(r.route_config_name),
                        _ => None,
                    })
                    .collect();
                rds.sort();
                rds.dedup();
                if names.get(ROUTE) != Some(&rds) {
                    names.insert(ROUTE.into(), rds.clone());
                    tx.send(req(ROUTE, rds, String::new(), String::new())).await?;
                }
            }
            ENDPOINT => stamps.eds.store(now(), Ordering::Relaxed),
            ROUTE => stamps.rds.store(now(), Ordering::Relaxed),
            SECRET if stamps.first_certificate.load(Ordering::Relaxed) == 0 => {
                stamps.first_certificate.store(now(), Ordering::Relaxed)
            }
            SECRET if stamps.renewed_certificate.load(Ordering::Relaxed) == 0 => {
                stamps.renewed_certificate.store(now(), Ordering::Relaxed)
            }
            _ => {}
        }
        seen.insert(resp.type_url.clone());
        if seen.len() == types && stamps.ready.load(Ordering::Relaxed) == 0 {
            stamps.ready.store(now(), Ordering::Relaxed);
        }
        let names = names.get(&resp.type_url).cloned().unwrap_or_default();
        tx.send(req(&resp.type_url, names, resp.version_info, resp.nonce)).await?;
    }
    Ok(())
}

/// The clients' TLS: the server checked against the CA's root, h2.
fn client_tls(root: &std::path::Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(root).expect("the root") {
        roots.add(cert.expect("a root certificate")).expect("a usable root");
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// Connects tonic's channel over TLS to the server's port.
#[derive(Clone)]
struct TlsConnector {
    config: Arc<rustls::ClientConfig>,
    port: u16,
}

type TlsIo = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<http::Uri> for TlsConnector {
    type Response = TlsIo;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<TlsIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let (config, port) = (self.config.clone(), self.port);
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            let name = rustls::pki_types::ServerName::try_from(SERVER_NAME)?;
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}
