//! The fake Consul agent as a child process, and the HTTP calls a test
//! makes to it (Consul's own register and KV API).

#![allow(dead_code)]

use std::process::Command;
use std::time::{Duration, Instant};

use mesh_testkit::process::{example_binary, try_announced};
use mesh_testkit::Proc;
use serde_json::{json, Value};

pub use mesh_testkit::eventually;

pub struct FakeConsul {
    child: Option<Proc>,
    pub addr: String,
}

fn spawn(args: &[&str]) -> Option<(Proc, String)> {
    let mut command = Command::new(example_binary("fake_consul"));
    command.args(args);
    try_announced(command, "listening on ")
}

impl FakeConsul {
    pub fn start(args: &[&str]) -> FakeConsul {
        let (child, addr) = spawn(args).expect("fake_consul did not announce its address");
        FakeConsul { child: Some(child), addr }
    }

    /// Kill it; `restart` brings a new, empty one up on the same address.
    pub fn stop(mut self) -> String {
        drop(self.child.take());
        self.addr.clone()
    }

    pub fn restart(addr: &str, args: &[&str]) -> FakeConsul {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut all = vec!["--listen", addr];
            all.extend_from_slice(args);
            if let Some((child, addr)) = spawn(&all) {
                return FakeConsul { child: Some(child), addr };
            }
            assert!(Instant::now() < deadline, "could not listen on {addr} again");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One HTTP/1.1 request; the status code and body.
    pub fn call(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        match mesh_testkit::http::request(&self.addr, method, path, "consul", &[], body) {
            Ok(r) => (r.status, r.body),
            Err(e) => (0, e),
        }
    }

    fn ok(&self, method: &str, path: &str, body: &str) {
        let (status, text) = self.call(method, path, body);
        assert_eq!(status, 200, "{method} {path}: {text}");
    }

    /// An instance of `service` on its own node, with one check.
    pub fn register(&self, service: &str, id: &str, address: &str, tags: &[&str], check: &str) {
        let body = json!({
            "Node": format!("node-{id}"), "Address": address, "NodeMeta": {"zone": "zone-a"},
            "Service": {"ID": id, "Service": service, "Tags": tags, "Port": 9080,
                        "Meta": {"protocol": "http"}, "Weights": {"Passing": 10, "Warning": 1}},
            "Check": {"CheckID": format!("service:{id}"), "Name": "http", "Status": check, "ServiceID": id}
        });
        self.ok("PUT", "/v1/catalog/register", &body.to_string());
    }

    pub fn set_check(&self, id: &str, check_id: &str, status: &str) {
        let body = json!({
            "Node": format!("node-{id}"), "Address": "0.0.0.0",
            "Check": {"CheckID": check_id, "Name": check_id, "Status": status,
                      "ServiceID": if check_id.starts_with("service:") || check_id.starts_with("_service") { id } else { "" }}
        });
        // Re-registering the node keeps its address only if given again.
        let mut body: Value = body;
        body["Address"] = json!(self.node_address(id));
        self.ok("PUT", "/v1/catalog/register", &body.to_string());
    }

    fn node_address(&self, id: &str) -> String {
        let (_, services) = self.call("GET", "/v1/catalog/services", "");
        let services: Value = serde_json::from_str(&services).unwrap_or_default();
        for name in services.as_object().into_iter().flatten().map(|(k, _)| k) {
            let (_, entries) = self.call("GET", &format!("/v1/health/service/{name}"), "");
            let entries: Value = serde_json::from_str(&entries).unwrap_or_default();
            for e in entries.as_array().into_iter().flatten() {
                if e["Service"]["ID"] == id {
                    return e["Node"]["Address"].as_str().unwrap_or("").to_string();
                }
            }
        }
        panic!("no instance {id}")
    }

    pub fn deregister(&self, id: &str) {
        let body = json!({"Node": format!("node-{id}"), "ServiceID": id});
        self.ok("PUT", "/v1/catalog/deregister", &body.to_string());
    }

    pub fn kv_put(&self, key: &str, value: &str) {
        self.ok("PUT", &format!("/v1/kv/{key}"), value);
    }

    pub fn kv_delete(&self, key: &str) {
        self.ok("DELETE", &format!("/v1/kv/{key}"), "");
    }

    pub fn control(&self, what: &str) {
        let method = if what == "stats" { "GET" } else { "POST" };
        self.ok(method, &format!("/fake/{what}"), "");
    }

    pub fn stats(&self) -> Value {
        serde_json::from_str(&self.call("GET", "/fake/stats", "").1).expect("stats")
    }
}
