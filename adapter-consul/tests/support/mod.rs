//! The fake Consul agent as a child process, and the HTTP calls a test
//! makes to it (Consul's own register and KV API).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub struct FakeConsul {
    child: Child,
    pub addr: String,
}

impl Drop for FakeConsul {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent().and_then(|d| d.parent()).expect("target dir").join("examples").join("fake_consul")
}

fn spawn(args: &[&str]) -> Option<(Child, String)> {
    let mut child = Command::new(binary())
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (`cargo test -p adapter-consul` builds it)", binary().display()));
    let mut line = String::new();
    let _ = BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line);
    match line.trim().strip_prefix("listening on ") {
        Some(addr) => Some((child, addr.to_string())),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    }
}

impl FakeConsul {
    pub fn start(args: &[&str]) -> FakeConsul {
        let (child, addr) = spawn(args).expect("fake_consul started");
        FakeConsul { child, addr }
    }

    /// Kill it; `restart` brings a new, empty one up on the same address.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.addr.clone()
    }

    pub fn restart(addr: &str, args: &[&str]) -> FakeConsul {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut all = vec!["--listen", addr];
            all.extend_from_slice(args);
            if let Some((child, addr)) = spawn(&all) {
                return FakeConsul { child, addr };
            }
            assert!(Instant::now() < deadline, "could not listen on {addr} again");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One HTTP/1.1 request; the status code and body.
    pub fn call(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut stream = std::net::TcpStream::connect(&self.addr).expect("connect");
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: consul\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("write");
        let mut out = String::new();
        let _ = stream.read_to_string(&mut out);
        let status = out.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
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

/// Poll `check` until it returns `Some`, for at most `secs` seconds.
pub async fn eventually<T>(secs: u64, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
