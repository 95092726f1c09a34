//! Proxyless gRPC: real gRPC clients (Python grpcio, Node grpc-js-xds)
//! resolve a service through the control-plane binary and spread calls
//! over two real gRPC servers by the VirtualService's weights.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{control_plane, grpc_echo_server, peers, wait_until, Proc};

/// A gRPC echo server that tags answers with `version`; returns it and its port.
fn grpc_backend(version: &str) -> (Proc, u16) {
    grpc_echo_server(Some(version))
}

/// Services `echo` (gRPC port 7070) with pods v1 and v2, and a 70/30 split.
fn write_config(dir: &Path, v1: u16, v2: u16) {
    let mut y = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: default}\nspec:\n  ports: [{name: grpc, port: 7070}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: echo, namespace: default}\nspec:\n  host: echo\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: echo, namespace: default}\nspec:\n  hosts: [echo]\n  http:\n  - route:\n    - destination: {host: echo, subset: v1}\n      weight: 70\n    - destination: {host: echo, subset: v2}\n      weight: 30\n",
    );
    for (version, port) in [("v1", v1), ("v2", v2)] {
        y.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: echo-{version}, namespace: default, labels: {{kubernetes.io/service-name: echo}}}}\naddressType: IPv4\nports: [{{name: grpc, port: {port}}}]\nendpoints:\n- addresses: [127.0.0.1]\n  targetRef: {{kind: Pod, name: echo-{version}, namespace: default}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: echo-{version}, namespace: default, labels: {{app: echo, version: {version}}}}}\nstatus: {{phase: Running, podIP: 127.0.0.1}}\n"
        ));
    }
    std::fs::write(dir.join("mesh.yaml"), y).expect("write mesh.yaml");
}

/// gRPC's bootstrap: our server, a sidecar-style node id in `default`.
fn bootstrap(dir: &Path, xds: u16) -> PathBuf {
    let path = dir.join("grpc-bootstrap.json");
    let text = serde_json::json!({
        "xds_servers": [{"server_uri": format!("127.0.0.1:{xds}"), "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
        "node": {
            "id": "sidecar~127.0.0.1~echo-client-1.default~default.svc.cluster.local",
            "metadata": {"GENERATOR": "grpc", "NAMESPACE": "default"},
            "locality": {}
        }
    });
    std::fs::write(&path, text.to_string()).expect("write the gRPC bootstrap");
    path
}

/// Run a client to completion (bounded), and parse its JSON counts.
fn run_client(mut cmd: Command, what: &str) -> serde_json::Map<String, serde_json::Value> {
    let mut child =
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("start {what}: {e}"));
    let mut status = None;
    wait_until(Duration::from_secs(120), || {
        status = child.try_wait().expect("poll the client");
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("client output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let counts: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|_| panic!("{what} (status {:?}) printed {stdout:?}; stderr:\n{stderr}", out.status));
    counts.as_object().cloned().unwrap_or_default()
}

fn assert_split(counts: &serde_json::Map<String, serde_json::Value>, calls: u64, what: &str) {
    let n = |k: &str| counts.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    assert_eq!(n("v1") + n("v2"), calls, "{what}: {counts:?}");
    let share = n("v1") as f64 / calls as f64;
    assert!((0.62..=0.78).contains(&share), "{what}: 70/30 split gave {counts:?}");
}

/// Two gRPC servers, the control plane on the 70/30 config, and `client`
/// (a program and its script) making 500 calls through xDS.
fn split_through_xds(program: &str, script: &str, what: &str) {
    let (_s1, p1) = grpc_backend("v1");
    let (_s2, p2) = grpc_backend("v2");
    let config = tempfile::tempdir().unwrap();
    write_config(config.path(), p1, p2);
    let (_cp, xds, _debug) = control_plane(config.path());
    let work = tempfile::tempdir().unwrap();
    let bootstrap = bootstrap(work.path(), xds);
    let mut cmd = Command::new(program);
    cmd.arg(peers().join(script))
        .args(["echo.default.svc.cluster.local:7070", "500"])
        .env("GRPC_XDS_BOOTSTRAP", &bootstrap);
    let counts = run_client(cmd, what);
    assert_split(&counts, 500, what);
}

#[test]
fn python_grpcio_resolves_through_xds_and_splits_by_weight() {
    split_through_xds("python3", "grpc_xds_client.py", "the grpcio xDS client");
}

#[test]
fn node_grpc_js_xds_resolves_through_xds_and_splits_by_weight() {
    assert!(
        peers().join("node_modules/@grpc/grpc-js-xds").exists(),
        "Node peers missing: run `npm ci --prefix examples/tests/peers` (.ci/run does)"
    );
    split_through_xds("node", "grpc_xds_client.js", "the grpc-js-xds client");
}
