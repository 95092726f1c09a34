//! Test harness: backends and the gateway as child processes, config files
//! in a temp dir, and a plain HTTP/1.1 client.

#![allow(dead_code)]

use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

#[allow(unused_imports)]
pub use mesh_testkit::http::{get, parse, raw_port, Response};
#[allow(unused_imports)]
pub use mesh_testkit::process::example_server as fake_server;
pub use mesh_testkit::{free_port, wait_until, Proc};

pub mod kube;
pub mod netns;
pub mod secure;

/// An EnvoyFilter with Envoy's local rate limit for the ingress gateway:
/// a bucket of 3 a minute, and a header on the 429.
pub const LOCAL_RATE_LIMIT_FILTER: &str = "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: filter-local-ratelimit-gw, namespace: istio-system}\nspec:\n  workloadSelector:\n    labels: {istio: ingressgateway}\n  configPatches:\n    - applyTo: HTTP_FILTER\n      match:\n        context: GATEWAY\n      patch:\n        operation: INSERT_BEFORE\n        value:\n          name: envoy.filters.http.local_ratelimit\n          typed_config:\n            \"@type\": type.googleapis.com/udpa.type.v1.TypedStruct\n            type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit\n            value:\n              stat_prefix: http_local_rate_limiter\n              token_bucket: {max_tokens: 3, tokens_per_fill: 3, fill_interval: 60s}\n              response_headers_to_add:\n              - header: {key: x-local-rate-limit, value: 'true'}\n";

/// Start `demo-backend`; returns it and its port.
pub fn backend(version: &str, fail_every: u64) -> (Proc, u16) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_demo-backend"));
    command.args(["--version", version, "--fail-every", &fail_every.to_string()]);
    let (child, line) = mesh_testkit::process::announced(command, "");
    let port =
        line.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("bad backend line {line:?}"));
    (child, port)
}

/// The Python peers' directory (`tests/peers`).
pub fn peers() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers")
}

/// A grpcio echo server, tagging its answers with `version` when given;
/// with its port.
pub fn grpc_echo_server(version: Option<&str>) -> (Proc, u16) {
    mesh_testkit::peers::require_python_module("grpc", "pip install grpcio");
    let mut command = Command::new("python3");
    command.arg(peers().join("grpc_echo_server.py")).args(version);
    let (child, line) = mesh_testkit::process::announced(command, "");
    (child, line.parse().unwrap_or_else(|_| panic!("the gRPC server printed {line:?}, not its port")))
}

/// `demo-backend`s answering as reviews v1, v2 and v3; their ports.
pub fn reviews_backends() -> (Vec<Proc>, [u16; 3]) {
    let (procs, ports): (Vec<Proc>, Vec<u16>) = ["v1", "v2", "v3"].into_iter().map(|v| backend(v, 0)).unzip();
    (procs, [ports[0], ports[1], ports[2]])
}

/// One request with a JSON body to `addr` (`127.0.0.1:PORT`), as the
/// Kubernetes and Consul APIs take them.
pub fn send(addr: &str, method: &str, path: &str, body: &str) -> Response {
    mesh_testkit::http::request(addr, method, path, "test", &[("Content-Type", "application/json")], body)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The control-plane binary on `dir`, ready; with its xDS and debug ports.
pub fn control_plane(dir: &Path) -> (Proc, u16, u16) {
    control_plane_on(&["--config", &dir.to_string_lossy()])
}

/// The control-plane binary on these sources (`--config DIR`,
/// `--kubeconfig FILE`), ready; with its xDS and debug ports.
pub fn control_plane_on(sources: &[&str]) -> (Proc, u16, u16) {
    let (xds, debug) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_control-plane"))
        .args(sources)
        .args([
            "--xds-listen",
            &format!("127.0.0.1:{xds}"),
            "--debug",
            &format!("127.0.0.1:{debug}"),
            "--debounce-ms",
            "20",
        ])
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("start control-plane");
    let cp = Proc(child);
    assert!(
        wait_until(Duration::from_secs(20), || debug_get(debug, "/ready").is_some_and(|r| r.status == 200)),
        "control plane not ready"
    );
    (cp, xds, debug)
}

/// GET on the control plane's debug port.
pub fn debug_get(port: u16, path: &str) -> Option<Response> {
    mesh_testkit::http::try_get(&format!("127.0.0.1:{port}"), path)
}

/// A service's backends: `(version, port)`.
pub struct Service<'a> {
    pub name: &'a str,
    pub backends: &'a [(&'a str, u16)],
}

/// Write the gateway (on `gateway_port`), the services with their pods,
/// and a DestinationRule with a subset per version, to `dir`.
pub fn write_mesh(dir: &Path, gateway_port: u16, services: &[Service<'_>], destination_rule_extra: &str) {
    let mut y = format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: {gateway_port}, name: http, protocol: HTTP}}\n    hosts: [\"*\"]\n"
    );
    for s in services {
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {0}, namespace: default}}\nspec:\n  ports:\n  - {{name: http, port: 9080}}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {0}, namespace: default}}\nspec:\n  host: {0}\n{destination_rule_extra}  subsets:\n",
            s.name
        ));
        let mut versions: Vec<&str> = s.backends.iter().map(|(v, _)| *v).collect();
        versions.dedup();
        for v in versions {
            y.push_str(&format!("  - {{name: {v}, labels: {{version: {v}}}}}\n"));
        }
        for (i, (version, port)) in s.backends.iter().enumerate() {
            y.push_str(&format!(
                "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {0}-{i}\n  namespace: default\n  labels: {{kubernetes.io/service-name: {0}}}\naddressType: IPv4\nports:\n- {{name: http, port: {port}}}\nendpoints:\n- addresses: [127.0.0.1]\n  targetRef: {{kind: Pod, name: {0}-{i}, namespace: default}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {0}-{i}, namespace: default, labels: {{app: {0}, version: {version}}}}}\nstatus: {{phase: Running, podIP: 127.0.0.1}}\n",
                s.name
            ));
        }
    }
    std::fs::write(dir.join("mesh.yaml"), y).expect("write mesh.yaml");
}

/// The mesh of [`write_mesh`] with `web` on `backend`, served over TLS as
/// `host` on `port` (a self-signed certificate from files, as a Gateway's
/// `SIMPLE` mode reads them), routed to `web`; the certificate.
pub fn write_tls_mesh(dir: &Path, port: u16, host: &str, backend: u16) -> rcgen::CertifiedKey<rcgen::KeyPair> {
    let cert = rcgen::generate_simple_self_signed(vec![host.to_string()]).expect("a self-signed certificate");
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_path, cert.cert.pem()).expect("write tls.crt");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write tls.key");
    write_mesh(dir, port, &[Service { name: "web", backends: &[("v1", backend)] }], "");
    let mesh = std::fs::read_to_string(dir.join("mesh.yaml")).expect("read mesh.yaml").replace(
        "name: http, protocol: HTTP}\n    hosts: [\"*\"]",
        &format!("name: https, protocol: HTTPS}}\n    hosts: [\"{host}\"]\n    tls: {{mode: SIMPLE, serverCertificate: {}, privateKey: {}}}", cert_path.display(), key_path.display()),
    );
    std::fs::write(dir.join("mesh.yaml"), mesh).expect("write mesh.yaml");
    let routes = routes("web", "  - route:\n    - destination: {host: web}\n")
        .replace("hosts: [\"*\"]", &format!("hosts: [{host}]"));
    std::fs::write(dir.join("routes.yaml"), routes).expect("write routes.yaml");
    cert
}

/// A VirtualService for `host` bound to the test gateway, with `http` as
/// its routes (YAML, indented two spaces).
pub fn routes(host: &str, http: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {host}-routes, namespace: default}}\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n{http}")
}

pub struct Gateway {
    pub proc: Proc,
    pub port: u16,
    pub admin: u16,
}

impl Gateway {
    /// Start the gateway binary on `dir` and wait until it is ready.
    pub fn start(dir: &Path, port: u16) -> Gateway {
        Gateway::start_with(dir, port, &[], Stdio::null())
    }

    /// Start with extra arguments, and stdout sent to `stdout`.
    pub fn start_with(dir: &Path, port: u16, extra: &[&str], stdout: Stdio) -> Gateway {
        Gateway::launch(&["--config", &dir.to_string_lossy()], port, extra, stdout)
    }

    /// Start with its config from an xDS server (`http://127.0.0.1:PORT`).
    pub fn start_xds(server: &str, port: u16) -> Gateway {
        Gateway::launch(&["--xds-server", server], port, &[], Stdio::null())
    }

    /// Start on these sources (`--config DIR`, `--kubeconfig FILE`, `--xds-server URL`).
    pub fn launch(source: &[&str], port: u16, extra: &[&str], stdout: Stdio) -> Gateway {
        let admin = free_port();
        let metrics = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(source)
            .args([
                "--admin",
                &format!("127.0.0.1:{admin}"),
                "--metrics",
                &format!("127.0.0.1:{metrics}"),
                "--bind",
                "127.0.0.1",
                "--drain-timeout",
                "5",
            ])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(stdout)
            .spawn()
            .expect("start gateway");
        let g = Gateway { proc: Proc(child), port, admin };
        assert!(
            wait_until(Duration::from_secs(20), || g.admin_get("/ready").is_some_and(|r| r.status == 200)),
            "gateway not ready in 20 s"
        );
        assert!(
            wait_until(Duration::from_secs(10), || TcpStream::connect(("127.0.0.1", port)).is_ok()),
            "listener not up"
        );
        g
    }

    pub fn admin_get(&self, path: &str) -> Option<Response> {
        mesh_testkit::http::try_get(&format!("127.0.0.1:{}", self.admin), path)
    }

    pub fn version(&self) -> String {
        self.admin_get("/config_dump")
            .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.body).ok())
            .and_then(|v| v["version"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// Write `file` in `dir` and wait until the gateway serves a new config.
    pub fn apply(&self, dir: &Path, file: &str, text: &str) {
        let before = self.version();
        std::fs::write(dir.join(file), text).expect("write config");
        assert!(wait_until(Duration::from_secs(10), || self.version() != before), "the edit was not applied in 10 s");
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        get(self.port, path, headers)
    }

    /// The lines the gateway (started with its stdout piped) writes, as
    /// they come: its access log.
    pub fn stdout_lines(&mut self) -> std::sync::mpsc::Receiver<String> {
        let stdout = self.proc.0.stdout.take().expect("the gateway started with its stdout piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        rx
    }

    /// Wait up to `limit` for the gateway process to exit; its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        self.proc.wait_exit(limit)
    }
}

/// How many of `n` requests each backend version answered.
pub fn versions(
    g: &Gateway,
    n: usize,
    path: &str,
    headers: &[(&str, &str)],
) -> std::collections::BTreeMap<String, usize> {
    versions_at(g.port, n, path, headers)
}

/// The same through any proxy listening on `port`.
pub fn versions_at(
    port: u16,
    n: usize,
    path: &str,
    headers: &[(&str, &str)],
) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..n {
        let r = get(port, path, headers);
        let key = if r.status == 200 {
            r.header("x-backend-version").unwrap_or("?").to_string()
        } else {
            format!("status {}", r.status)
        };
        *counts.entry(key).or_default() += 1;
    }
    counts
}

/// Envoy as Istio's ingress gateway (`router~` node, `istio=ingressgateway`
/// labels), all its config from ADS: the sample bootstrap the README
/// shows, with this test's ports.
pub fn gateway_envoy(dir: &Path, xds: u16, api_type: &str) -> mesh_testkit::envoy::Envoy {
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/config/envoy/ingress-gateway.yaml");
    let bootstrap = std::fs::read_to_string(sample).unwrap_or_else(|e| panic!("{sample}: {e}"));
    for needle in ["port_value: 15000", "port_value: 15010", "api_type: GRPC"] {
        assert_eq!(bootstrap.matches(needle).count(), 1, "{sample} should hold `{needle}` once");
    }
    let bootstrap = bootstrap
        .replace("port_value: 15000", "port_value: 0")
        .replace("port_value: 15010", &format!("port_value: {xds}"))
        .replace("api_type: GRPC", &format!("api_type: {api_type}"));
    mesh_testkit::envoy::Envoy::start(&bootstrap, dir)
}
