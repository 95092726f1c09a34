//! Pods as network namespaces on one bridge, for the sidecar tests that
//! need several (root only): a world of pods, commands and GETs run in
//! them, and files their proxies (UID 1337) can read.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use mesh_testkit::netns::{python, run};

pub fn in_ns(ns: &str, args: &[&str]) {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    run(&full);
}

/// A GET from inside `ns`: the status (000 when the connection failed),
/// and the body.
pub fn get(ns: &str, url: &str, host: &str) -> (String, String) {
    let code = format!(
        "import urllib.request, urllib.error\nreq = urllib.request.Request('{url}', headers={{'Host': '{host}'}})\ntry:\n    r = urllib.request.urlopen(req, timeout=5); print(r.status); print(r.read().decode())\nexcept urllib.error.HTTPError as e:\n    print(e.code); print(e.read().decode())\nexcept Exception:\n    print('000')"
    );
    let out = python(ns, &code).unwrap_or_else(|e| format!("000\n{e}"));
    let (status, body) = out.split_once('\n').unwrap_or((&out, ""));
    (status.trim().to_string(), body.to_string())
}

/// The namespaces and links of the test; all deleted when dropped.
pub struct Network {
    names: Vec<String>,
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in self.names.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

pub struct Pod {
    pub ns: String,
    pub ip: String,
}

/// A world of pods on one bridge, in a `node` namespace that also runs
/// the control plane.
pub struct World {
    net: Network,
    prefix: String,
    subnet: String,
    pub node: String,
}

impl World {
    /// A new world; the worlds of one process (tests run in parallel)
    /// get their own names and subnet.
    pub fn new() -> World {
        static WORLDS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
        let k = WORLDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 10;
        let n = std::process::id() % 150 + 50;
        let prefix = format!("mauth{n}{k}");
        let node = format!("{prefix}node");
        let _ = Command::new("ip").args(["netns", "del", &node]).stderr(Stdio::null()).status();
        run(&["ip", "netns", "add", &node]);
        let world =
            World { net: Network { names: vec![node.clone()] }, prefix, subnet: format!("10.{}.{n}", 81 + k), node };
        in_ns(&world.node, &["ip", "link", "add", "br0", "type", "bridge"]);
        in_ns(&world.node, &["ip", "addr", "add", &format!("{}.1/24", world.subnet), "dev", "br0"]);
        in_ns(&world.node, &["ip", "link", "set", "br0", "up"]);
        in_ns(&world.node, &["ip", "link", "set", "lo", "up"]);
        world
    }

    pub fn node_ip(&self) -> String {
        format!("{}.1", self.subnet)
    }

    /// A pod namespace with address `.host` on the bridge.
    pub fn pod(&mut self, name: &str, host: u8) -> Pod {
        let ns = format!("{}{name}", self.prefix);
        let _ = Command::new("ip").args(["netns", "del", &ns]).stderr(Stdio::null()).status();
        run(&["ip", "netns", "add", &ns]);
        self.net.names.push(ns.clone());
        let (outer, inner) = (
            format!("{}o{host}", &self.prefix[..9.min(self.prefix.len())]),
            format!("{}i{host}", &self.prefix[..9.min(self.prefix.len())]),
        );
        run(&["ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner]);
        run(&["ip", "link", "set", &outer, "netns", &self.node]);
        run(&["ip", "link", "set", &inner, "netns", &ns]);
        in_ns(&self.node, &["ip", "link", "set", &outer, "master", "br0"]);
        in_ns(&self.node, &["ip", "link", "set", &outer, "up"]);
        let ip = format!("{}.{host}", self.subnet);
        in_ns(&ns, &["ip", "addr", "add", &format!("{ip}/24"), "dev", &inner]);
        in_ns(&ns, &["ip", "link", "set", &inner, "up"]);
        in_ns(&ns, &["ip", "link", "set", "lo", "up"]);
        Pod { ns, ip }
    }
}

/// A file the proxies (UID 1337) can read.
pub fn write_readable(path: &Path, text: &str) {
    std::fs::write(path, text).expect("written");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
}
