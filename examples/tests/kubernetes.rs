//! The binaries on Kubernetes: the gateway with `--kubeconfig`, and the
//! control plane with `--kubeconfig` feeding a gateway over xDS, against
//! the fake API server (adapter-k8s's example, a child process) holding
//! Services, Pods, EndpointSlices and Istio CRDs that point at real
//! backends; edits made through the API change routing.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::kube::{self, apply, apply_yaml};
use common::{
    control_plane_on, debug_get, fake_server, free_port, reviews_backends, routes, versions, wait_until, write_mesh,
    Gateway, Service,
};

const RULES: &str = "  - match:\n    - headers: {end-user: {exact: jason}}\n    route:\n    - destination: {host: reviews, subset: v2}\n  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 80\n    - destination: {host: reviews, subset: v3}\n      weight: 20\n";

#[test]
fn gateway_and_control_plane_read_kubernetes() {
    let (_backends, [p1, p2, p3]) = reviews_backends();
    let (_api, api) = fake_server("fake_apiserver", &[]);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // The same objects the file tests use, through the API this time.
    write_mesh(dir.path(), port, &[Service { name: "reviews", backends: &[("v1", p1), ("v2", p2), ("v3", p3)] }], "");
    apply_yaml(&api, &std::fs::read_to_string(dir.path().join("mesh.yaml")).unwrap());
    apply_yaml(&api, &routes("reviews", RULES));
    let kubeconfig = kube::kubeconfig(dir.path(), &api);

    let direct = Gateway::launch(&["--kubeconfig", &kubeconfig], port, &[], Stdio::null());
    assert_eq!(versions(&direct, 20, "/", &[("end-user", "jason")]), [("v2".to_string(), 20)].into());
    let split = versions(&direct, 500, "/", &[]);
    let v1 = split.get("v1").copied().unwrap_or(0);
    assert!((370..=430).contains(&v1) && v1 + split.get("v3").copied().unwrap_or(0) == 500, "80/20 gave {split:?}");
    drop(direct);

    let (_cp, xds, debug) = control_plane_on(&["--kubeconfig", &kubeconfig]);
    let metrics = debug_get(debug, "/metrics").expect("metrics").body;
    assert!(metrics.contains("mesh_k8s_synced 1"), "{metrics}");
    let g = Gateway::start_xds(&format!("http://127.0.0.1:{xds}"), port);
    assert_eq!(versions(&g, 20, "/", &[("end-user", "jason")]), [("v2".to_string(), 20)].into());

    // An edit through the API reaches the gateway over xDS.
    apply_yaml(&api, &routes("reviews", "  - route:\n    - destination: {host: reviews, subset: v3}\n"));
    assert!(
        wait_until(Duration::from_secs(10), || versions(&g, 5, "/", &[]) == [("v3".to_string(), 5)].into()),
        "the VirtualService edit did not reach the gateway"
    );
    // v3's pod scaled away (its slice emptied): an endpoint-only push,
    // and the subset has nowhere to go.
    apply(
        &api,
        &serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "reviews-2", "namespace": "default", "labels": {"kubernetes.io/service-name": "reviews"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": p3}], "endpoints": []
        }),
    );
    let mut last = None;
    let emptied = wait_until(Duration::from_secs(10), || {
        let r = g.get("/", &[]);
        last = Some((r.status, r.body.clone()));
        r.status == 503
    });
    assert!(emptied, "routing to an emptied subset should answer 503, got {last:?}");
    // The other subsets kept their endpoints through that push.
    apply_yaml(&api, &routes("reviews", "  - route:\n    - destination: {host: reviews, subset: v2}\n"));
    assert!(
        wait_until(Duration::from_secs(10), || versions(&g, 5, "/", &[]) == [("v2".to_string(), 5)].into()),
        "v2 should still serve"
    );
}

/// The manifest grants list and watch on exactly what the adapter reads.
#[test]
fn deployment_manifest_grants_only_list_and_watch_on_what_is_read() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes/control-plane.yaml");
    let docs = mesh_core::config::parse_documents(&std::fs::read_to_string(path).unwrap()).unwrap();
    let role = docs.iter().find(|d| d["kind"] == "ClusterRole").expect("a ClusterRole");
    let mut granted = Vec::new();
    for rule in role["rules"].as_array().expect("rules") {
        let verbs: Vec<&str> = rule["verbs"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
        assert_eq!(verbs, ["list", "watch"], "{rule}");
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                granted.push((group.as_str().unwrap().to_string(), resource.as_str().unwrap().to_string()));
            }
        }
    }
    let mut read: Vec<(String, String)> =
        adapter_k8s::READS.iter().map(|(g, r)| (g.to_string(), r.to_string())).collect();
    granted.sort();
    read.sort();
    assert_eq!(granted, read);
    // Every Istio kind the mesh understands is read.
    for kind in mesh_core::config::Kind::ALL {
        assert!(read.iter().any(|(g, r)| g == kind.group() && r == kind.plural()), "{kind} is not read");
    }
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").expect("a Deployment");
    let args = &deployment["spec"]["template"]["spec"]["containers"][0]["args"];
    assert_eq!(args[0], "--kubernetes");
}

/// A Secret of type kubernetes.io/tls holding a certificate for `host`;
/// the certificate's serial.
fn tls_secret(api: &str, host: &str) -> (rcgen::CertifiedKey<rcgen::KeyPair>, String) {
    use base64::Engine;
    let cert = rcgen::generate_simple_self_signed(vec![host.to_string()]).expect("a certificate");
    let b64 = |text: String| base64::engine::general_purpose::STANDARD.encode(text);
    apply(
        api,
        &serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": "web-cert", "namespace": "istio-system"},
            "data": {"tls.crt": b64(cert.cert.pem()), "tls.key": b64(cert.signing_key.serialize_pem())},
        }),
    );
    let serial = mesh_core::certificate::CertificateInfo::from_der(cert.cert.der()).expect("read").serial;
    (cert, serial)
}

/// The serial of the certificate the gateway serves for `host` on `port`
/// (any certificate accepted: the test compares serials), and the answer
/// to a GET on that connection.
fn served(port: u16, host: &str) -> Option<(String, String)> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    runtime.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let config = mesh_testkit::tls::any_server_client();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let name = rustls::pki_types::ServerName::try_from(host.to_string()).ok()?;
        let mut tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.ok()?;
        let leaf = tls.get_ref().1.peer_certificates()?.first()?.clone();
        let serial = mesh_core::certificate::CertificateInfo::from_der(&leaf).ok()?.serial;
        tls.write_all(format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
        Some((serial, String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_string()))
    })
}

#[test]
fn gateway_serves_tls_from_a_secret_and_follows_its_changes() {
    let (_backends, [p1, _, _]) = reviews_backends();
    let (_api, api) = fake_server("fake_apiserver", &[]);
    let dir = tempfile::tempdir().expect("a temp dir");
    let port = free_port();
    write_mesh(dir.path(), port, &[Service { name: "web", backends: &[("v1", p1)] }], "");
    let mesh = std::fs::read_to_string(dir.path().join("mesh.yaml")).expect("mesh.yaml").replace(
        "name: http, protocol: HTTP}\n    hosts: [\"*\"]",
        "name: https, protocol: HTTPS}\n    hosts: [\"*\"]\n    tls: {mode: SIMPLE, credentialName: web-cert}",
    );
    apply_yaml(&api, &mesh);
    apply_yaml(&api, &routes("web", "  - route:\n    - destination: {host: web}\n"));
    let (_first, first) = tls_secret(&api, "web.example");
    let kubeconfig = kube::kubeconfig(dir.path(), &api);
    // The Gateway lives in `default`; its Secret in the gateway's own namespace.
    let _gateway = Gateway::launch(&["--kubeconfig", &kubeconfig], port, &[], Stdio::null());
    let (serial, status) = served(port, "web.example").expect("a TLS answer");
    assert_eq!((serial, status.as_str()), (first.clone(), "HTTP/1.1 200 OK"));
    // A renewed Secret: new connections get it, no restart.
    let (_second, second) = tls_secret(&api, "web.example");
    assert!(
        wait_until(Duration::from_secs(10), || served(port, "web.example").is_some_and(|(s, _)| s == second)),
        "the renewed Secret is served"
    );
}
