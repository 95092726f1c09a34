//! What a gateway's config costs in memory, stage by stage, as the
//! `gateway` binary builds it: the Istio YAML read by adapter-static, the
//! translated `ProxyConfig`, and the compiled config the request path runs
//! (route tables, cluster states with their balancers and pools). Each
//! stage stays alive, as in the gateway. Counted by the global allocator,
//! for the load benchmark's two configs: one route and one endpoint, and
//! 1,000 routes and 1,000 endpoints (issue 5: under 20 MB of RSS in all
//! at that size). A scenario run, not criterion:
//!
//! ```sh
//! cargo bench -p benches --bench proxy_memory
//! ```

use std::io::Write;

use adapter_static::{StaticOptions, StaticSource};
use mesh_core::mesh::MeshSnapshot;
use mesh_core::translate::translate;
use mesh_proxy::live::LiveConfig;
use mesh_proxy::upstream::Upstreams;

#[global_allocator]
static ALLOCATOR: benches::alloc::Counting<std::alloc::System> = benches::alloc::Counting::new(std::alloc::System);

/// The load benchmark's gateway config (`benches/load/loadbench.py`).
fn mesh_yaml(prefixes: &[String], addresses: &[String]) -> String {
    let endpoints: String = addresses.iter().map(|a| format!("- addresses: [{a}]\n")).collect();
    let http: String = prefixes
        .iter()
        .map(|p| format!("  - match: [{{uri: {{prefix: {p}}}}}]\n    route:\n    - destination: {{host: backend}}\n"))
        .collect();
    format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 8080, name: http, protocol: HTTP}}\n    hosts: [\"*\"]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: backend, namespace: default}}\nspec:\n  ports: [{{name: http, port: 80}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: backend, namespace: default, labels: {{kubernetes.io/service-name: backend}}}}\naddressType: IPv4\nports: [{{name: http, port: 9000}}]\nendpoints:\n{endpoints}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: routes, namespace: default}}\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n{http}"
    )
}

fn mb(bytes: usize) -> f64 {
    bytes as f64 / 1e6
}

fn measure(label: &str, routes: usize, endpoints: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let prefixes: Vec<String> = (0..routes).map(|i| format!("/svc{i}/")).collect();
    let addresses: Vec<String> = (0..endpoints).map(|i| format!("127.0.{}.{}", i / 250, i % 250 + 1)).collect();
    let mut file = std::fs::File::create(dir.path().join("mesh.yaml")).expect("config file");
    file.write_all(mesh_yaml(&prefixes, &addresses).as_bytes()).expect("write config");
    drop(file);

    let start = ALLOCATOR.live_bytes();
    ALLOCATOR.reset_peak();
    let source = StaticSource::load(StaticOptions::new([dir.path()]));
    let loaded = ALLOCATOR.live_bytes();
    let mesh = MeshSnapshot::read(&source, &source);
    let config = translate(&mesh, &mesh_proxy::default_gateway_identity());
    let translated = ALLOCATOR.live_bytes();
    let upstreams = Upstreams::default();
    let jwks = std::sync::Arc::new(mesh_proxy::jwt::remote::JwksCache::default());
    let live =
        LiveConfig::compile(config, &LiveConfig::empty(), &upstreams, &jwks, &Default::default()).expect("compiles");
    let compiled = ALLOCATOR.live_bytes();
    println!(
        "proxy_memory {label}: the files read {:.2} MB, translated {:.2} MB, compiled {:.2} MB; {:.2} MB live in all, peak {:.2} MB",
        mb(loaded - start),
        mb(translated - loaded),
        mb(compiled - translated),
        mb(compiled - start),
        mb(ALLOCATOR.peak_bytes() - start),
    );
    println!("  by allocation size: {}", benches::alloc::by_size_text(&ALLOCATOR.live_by_size()));
    drop((live, mesh, source));
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    println!(
        "one route is {} bytes as Istio config (HttpRoute), {} translated (Route)",
        std::mem::size_of::<mesh_core::config::networking::HttpRoute>(),
        std::mem::size_of::<mesh_core::proxy_config::Route>()
    );
    measure("1 route, 1 endpoint", 1, 1);
    measure("1,000 routes, 1,000 endpoints", 1000, 1000);
    measure("1,000 routes, 1 endpoint", 1000, 1);
    measure("1 route, 1,000 endpoints", 1, 1000);
}
