//! The mesh's identity with the released binaries as child processes: the
//! control plane as the CA (a kept root, CreateCertificate over TLS), two
//! gateways that prove who they are (a Kubernetes service-account token
//! checked by TokenReview against the fake API server, and a bootstrap
//! token) and talk Istio mTLS (auto mTLS by the pod's tlsMode label, an
//! ISTIO_MUTUAL server); meshctl issuing certificates a gateway reads from
//! files. A wrong token gets nothing, and the CA counts it.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{control_plane_on, debug_get, fake_server, free_port, send, Gateway};
use mesh_testkit::peers::recording_upstream;

const BACKEND: &str = "spiffe://cluster.local/ns/istio-system/sa/backend";
const SLEEP: &str = "spiffe://cluster.local/ns/foo/sa/sleep";

/// The back gateway's config: ISTIO_MUTUAL on `port`, to `app` on
/// `upstream`.
fn back_config(dir: &Path, port: u16, upstream: u16) {
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: {port}, name: https, protocol: HTTPS}}\n    hosts: [\"*\"]\n    tls: {{mode: ISTIO_MUTUAL}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: app, namespace: istio-system}}\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - route: [{{destination: {{host: app.default.svc.cluster.local}}}}]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: app, namespace: default}}\nspec:\n  hosts: [app.default.svc.cluster.local]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints: [{{address: 127.0.0.1, ports: {{http: {upstream}}}}}]\n"
    );
    std::fs::write(dir.join("back.yaml"), yaml).expect("written");
}

/// The front gateway's config: plain HTTP on `port`, to `secure`, whose
/// pod (service account `backend`, with a sidecar) is the back gateway.
fn front_config(dir: &Path, port: u16, back: u16) {
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: {port}, name: http, protocol: HTTP}}\n    hosts: [\"*\"]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: secure, namespace: istio-system}}\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - route: [{{destination: {{host: secure.istio-system.svc.cluster.local}}}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: secure, namespace: istio-system}}\nspec:\n  ports:\n  - {{name: http, port: 80}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: secure-0\n  namespace: istio-system\n  labels: {{kubernetes.io/service-name: secure}}\naddressType: IPv4\nports:\n- {{name: http, port: {back}}}\nendpoints:\n- addresses: [127.0.0.1]\n  targetRef: {{kind: Pod, name: secure-0, namespace: istio-system}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: secure-0, namespace: istio-system, labels: {{app: secure, security.istio.io/tlsMode: istio}}}}\nspec: {{serviceAccountName: backend}}\nstatus: {{phase: Running, podIP: 127.0.0.1}}\n"
    );
    std::fs::write(dir.join("front.yaml"), yaml).expect("written");
}

fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn xfcc(body: &str) -> Vec<String> {
    mesh_testkit::peers::recorded_header(body, "x-forwarded-client-cert")
}

fn meshctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl")).args(args).output().expect("meshctl runs")
}

#[test]
fn the_control_plane_certifies_what_gateways_prove_and_they_talk_mtls() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let ca_dir = path("ca");
    let made = meshctl(&["ca", "root", "--dir", &ca_dir]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let root = std::fs::read_to_string(dir.path().join("ca/root-cert.pem")).expect("the root");

    // Kubernetes knows sleep's token (for the CA's audience); the
    // bootstrap file knows backend's.
    let (_api, api) = fake_server("fake_apiserver", &[]);
    let registered = send(
        &api,
        "POST",
        "/fake/tokens",
        r#"{"token": "sleep-token", "user": "system:serviceaccount:foo:sleep", "audiences": ["istio-ca"]}"#,
    );
    assert_eq!(registered.status, 200);
    let kubeconfig = common::kube::kubeconfig(dir.path(), &api);
    std::fs::write(path("tokens"), format!("{BACKEND} backend-token\n")).expect("written");
    for (name, token) in [("sleep.tok", "sleep-token"), ("backend.tok", "backend-token"), ("bad.tok", "guess")] {
        std::fs::write(path(name), token).expect("written");
    }
    let ca_port = free_port();
    let ca_address = format!("127.0.0.1:{ca_port}");
    let (_cp, _xds, debug) = control_plane_on(&[
        "--kubeconfig",
        &kubeconfig,
        "--ca-dir",
        &ca_dir,
        "--ca-listen",
        &ca_address,
        "--bootstrap-tokens",
        &path("tokens"),
    ]);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ca/root-cert.pem")).expect("the root"),
        root,
        "the CA kept the root meshctl made"
    );

    let (_upstream, upstream) = recording_upstream(None);
    let (back_port, front_port) = (free_port(), free_port());
    let (back_dir, front_dir) = (tempfile::tempdir().expect("a dir"), tempfile::tempdir().expect("a dir"));
    back_config(back_dir.path(), back_port, upstream);
    front_config(front_dir.path(), front_port, back_port);
    let root_file = path("ca/root-cert.pem");
    let ca_flags = |token: &str, sa: &str| {
        vec![
            "--ca-address".to_string(),
            ca_address.clone(),
            "--ca-root".into(),
            root_file.clone(),
            "--token-file".into(),
            path(token),
            "--service-account".into(),
            sa.into(),
        ]
    };
    let back_flags = ca_flags("backend.tok", "backend");
    let back_args: Vec<&str> = back_flags.iter().map(String::as_str).collect();
    let back = Gateway::start_with(back_dir.path(), back_port, &back_args, Stdio::null());
    let mut front_flags = ca_flags("sleep.tok", "sleep");
    front_flags.extend(["--namespace".into(), "foo".into()]);
    let front_args: Vec<&str> = front_flags.iter().map(String::as_str).collect();
    let front = Gateway::start_with(front_dir.path(), front_port, &front_args, Stdio::null());

    let certs = back.admin_get("/certs").expect("/certs").body;
    assert!(certs.contains(BACKEND), "{certs}");
    let r = front.get("/ip", &[("x-forwarded-client-cert", "By=forged")]);
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = xfcc(&r.body);
    assert!(seen.len() == 1 && seen[0].contains(&format!("URI={SLEEP}")), "{seen:?}");

    // A wrong token proves nothing: no certificate, counted by the CA.
    let (bad_port, bad_dir) = (free_port(), tempfile::tempdir().expect("a dir"));
    front_config(bad_dir.path(), bad_port, back_port);
    let mut bad_flags = ca_flags("bad.tok", "sleep");
    bad_flags.extend(["--namespace".into(), "foo".into()]);
    let bad_args: Vec<&str> = bad_flags.iter().map(String::as_str).collect();
    let bad = Gateway::start_with(bad_dir.path(), bad_port, &bad_args, Stdio::null());
    let certs = bad.admin_get("/certs").expect("/certs").body;
    assert!(!certs.contains("spiffe://"), "{certs}");
    assert_eq!(
        bad.get("/ip", &[]).status,
        503,
        "auto mTLS without a certificate: plaintext, which the ISTIO_MUTUAL port refuses"
    );
    drop(bad);
    let metrics = debug_get(debug, "/metrics").expect("/metrics").body;
    assert!(counter(&metrics, "citadel_server_success_cert_issuance_count_total") >= 2, "{metrics}");
    assert!(counter(&metrics, "citadel_server_authentication_failure_count_total") >= 1, "{metrics}");

    // meshctl's certificate, read from files by a third gateway.
    let certs_dir = path("sleep-certs");
    let issued = meshctl(&["ca", "issue", "--dir", &ca_dir, "--identity", SLEEP, "--out", &certs_dir]);
    assert!(issued.status.success(), "{}", String::from_utf8_lossy(&issued.stderr));
    let (file_port, file_dir) = (free_port(), tempfile::tempdir().expect("a dir"));
    front_config(file_dir.path(), file_port, back_port);
    let files = Gateway::start_with(file_dir.path(), file_port, &["--cert-dir", &certs_dir], Stdio::null());
    let r = files.get("/ip", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(xfcc(&r.body)[0].contains(&format!("URI={SLEEP}")));
}
