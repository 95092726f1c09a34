//! Proxyless gRPC: real gRPC clients (Python grpcio, Node grpc-js-xds)
//! resolve a service through the control-plane binary and spread calls
//! over two real gRPC servers by the VirtualService's weights.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::secure::mesh_ca;
use common::{control_plane, free_port, grpc_echo_server, peers, wait_until, Gateway, Proc};

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
    bootstrap_with_certificates(dir, xds, None)
}

/// The bootstrap, and with `certs` (a directory of `cert-chain.pem`,
/// `key.pem`, `root-cert.pem`) the `default` certificate provider Istio's
/// proxyless bootstrap declares: gRPC's file watcher.
fn bootstrap_with_certificates(dir: &Path, xds: u16, certs: Option<&Path>) -> PathBuf {
    let path = dir.join("grpc-bootstrap.json");
    let mut text = serde_json::json!({
        "xds_servers": [{"server_uri": format!("127.0.0.1:{xds}"), "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
        "node": {
            "id": "sidecar~127.0.0.1~echo-client-1.default~default.svc.cluster.local",
            "metadata": {"GENERATOR": "grpc", "NAMESPACE": "default"},
            "locality": {}
        }
    });
    if let Some(certs) = certs {
        let file = |name: &str| certs.join(name).to_string_lossy().into_owned();
        text["certificate_providers"] = serde_json::json!({"default": {"plugin_name": "file_watcher", "config": {
            "certificate_file": file("cert-chain.pem"),
            "private_key_file": file("key.pem"),
            "ca_certificate_file": file("root-cert.pem"),
            "refresh_interval": "10s"
        }}});
    }
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

const ECHO_ID: &str = "spiffe://cluster.local/ns/default/sa/echo";

/// mesh-proxy as the echo server's sidecar-like front: an ISTIO_MUTUAL
/// server on `port` (client certificates of our CA required) routing gRPC
/// to the echo server.
fn mtls_front(dir: &Path, port: u16, echo_port: u16, certs: &Path) -> Gateway {
    let config = format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: front, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers: [{{port: {{number: {port}, name: https, protocol: HTTPS}}, hosts: ["*"], tls: {{mode: ISTIO_MUTUAL}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo-app, namespace: default}}
spec:
  hosts: [echo-app.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 7070, name: grpc, protocol: GRPC}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{grpc: {echo_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: front, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [front]
  http: [{{route: [{{destination: {{host: echo-app.default.svc.cluster.local}}}}]}}]
"#
    );
    std::fs::write(dir.join("mesh.yaml"), config).expect("written");
    let certs = certs.to_string_lossy();
    Gateway::launch(&["--config", &dir.to_string_lossy()], port, &["--cert-dir", &certs], Stdio::null())
}

/// Proxyless gRPC with mTLS: grpcio's xDS credentials take the cluster's
/// ISTIO_MUTUAL as Istio sends it (certificate provider instances) with
/// certificates from its bootstrap's file watcher (issued by our CA); the
/// server, a mesh-proxy that requires a client certificate of the mesh,
/// answers. A server that is not the expected identity is refused (and
/// the client, reconnecting after the rule changed, gets the new rule).
#[test]
fn python_grpcio_calls_over_mtls_with_certificates_from_our_ca() {
    let work = tempfile::tempdir().unwrap();
    let client_id = "spiffe://cluster.local/ns/default/sa/echo-client";
    mesh_ca(work.path(), &[("client-certs", client_id), ("echo-certs", ECHO_ID)], client_id);
    let (_echo, echo_port) = grpc_backend("v1");
    let front_dir = work.path().join("front");
    std::fs::create_dir(&front_dir).unwrap();
    let front_port = free_port();
    let _front = mtls_front(&front_dir, front_port, echo_port, &work.path().join("echo-certs"));

    let config = tempfile::tempdir().unwrap();
    let mesh = |sans: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: echo, namespace: default}}\nspec:\n  ports: [{{name: grpc, port: 7070}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: echo, namespace: default, labels: {{kubernetes.io/service-name: echo}}}}\naddressType: IPv4\nports: [{{name: grpc, port: {front_port}}}]\nendpoints:\n- addresses: [127.0.0.1]\n  targetRef: {{kind: Pod, name: echo, namespace: default}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: echo, namespace: default, labels: {{app: echo}}}}\nspec: {{serviceAccountName: echo}}\nstatus: {{phase: Running, podIP: 127.0.0.1}}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: echo, namespace: default}}\nspec:\n  host: echo\n  trafficPolicy:\n    tls: {{mode: ISTIO_MUTUAL{sans}}}\n")
    };
    std::fs::write(config.path().join("mesh.yaml"), mesh("")).unwrap();
    let (_cp, xds, debug) = control_plane(config.path());
    let bootstrap = bootstrap_with_certificates(work.path(), xds, Some(&work.path().join("client-certs")));
    let client = |calls: &str| {
        let mut cmd = Command::new("python3");
        cmd.arg(peers().join("grpc_xds_client.py"))
            .args(["echo.default.svc.cluster.local:7070", calls, "xds-creds"])
            .env("GRPC_XDS_BOOTSTRAP", &bootstrap);
        run_client(cmd, "the grpcio xDS client with xDS credentials")
    };
    let counts = client("20");
    assert_eq!(counts.get("v1").and_then(|v| v.as_u64()), Some(20), "20 calls over mTLS: {counts:?}");

    // Secure naming: expecting another identity, the client refuses the server.
    let wrong = ", subjectAltNames: [\"spiffe://cluster.local/ns/default/sa/not-echo\"]";
    std::fs::write(config.path().join("mesh.yaml"), mesh(wrong)).unwrap();
    // The client reconnects for its next run: it must get the new rule.
    assert!(
        wait_until(Duration::from_secs(10), || {
            let dump = common::debug_get(
                debug,
                "/debug/config_dump?proxyID=sidecar~127.0.0.1~x.default~default.svc.cluster.local",
            );
            dump.is_some_and(|r| r.body.contains("not-echo"))
        }),
        "the control plane did not take the new rule"
    );
    let counts = client("1");
    // The handshake is refused each time; the call waits for a usable
    // connection until its deadline.
    assert!(
        !counts.is_empty() && counts.keys().all(|k| k.starts_with("error ")),
        "a server of the wrong identity: {counts:?}"
    );
}
