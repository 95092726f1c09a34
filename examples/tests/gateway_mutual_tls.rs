//! A Gateway server with `MUTUAL` TLS from a Kubernetes Secret
//! (`credentialName`) on both proxies: Envoy, sent the Secret over SDS by
//! our control plane (delta xDS), and mesh-proxy, reading the Secret
//! itself. Both
//! accept a client certificate from the Secret's CA and refuse one from
//! another CA, or none; a renewed Secret reaches both without a restart.
//! The fake API server, control plane, Envoy 1.40, gateway and backend
//! are child processes on 127.0.0.1.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::kube::{self, apply, apply_yaml};
use common::secure::{mesh_ca, secure_envoy_with};
use common::{backend, control_plane_on, debug_get, fake_server, free_port, wait_until, Gateway};
use mesh_testkit::tls::TestCa;

const ENVOY_ID: &str = "spiffe://cluster.local/ns/default/sa/ingress";
const HOST: &str = "web.example";

/// One Gateway per proxy (Envoy's sample bootstrap is labelled
/// `istio: ingressgateway`), both MUTUAL from the same Secret, and a
/// route to the backend.
fn mesh(envoy_port: u16, mesh_port: u16, backend_port: u16) -> String {
    let gateway = |name: &str, selector: &str, port: u16| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  selector: {{istio: {selector}}}\n  servers:\n  - port: {{number: {port}, name: https, protocol: HTTPS}}\n    hosts: [\"*\"]\n    tls: {{mode: MUTUAL, credentialName: web-mtls}}\n---\n"
        )
    };
    gateway("envoy-gw", "ingressgateway", envoy_port)
        + &gateway("mesh-gw", "mesh-gateway", mesh_port)
        + &format!(
            r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: app, namespace: default}}
spec:
  hosts: [app.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {backend_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: app, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [envoy-gw, mesh-gw]
  http:
  - route: [{{destination: {{host: app.default.svc.cluster.local}}}}]
"#
        )
}

/// The Secret `web-mtls`: a server certificate from `servers`, and
/// `clients` as the CA client certificates must chain to. The server
/// certificate's serial.
fn put_credential(api: &str, servers: &TestCa, clients: &TestCa) -> String {
    use base64::Engine;
    let (cert, key) = servers.issue_pem(HOST);
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    apply(
        api,
        &serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": "web-mtls", "namespace": "default"},
            "data": {"tls.crt": b64(&cert), "tls.key": b64(&key), "ca.crt": b64(&clients.pem)},
        }),
    );
    serial(&cert)
}

fn serial(pem: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM certificate");
    mesh_core::certificate::CertificateInfo::from_der(&der).expect("a certificate").serial
}

/// What a client showing `client` (certificate and key PEM; none if
/// `None`) gets on `port`: the server certificate's serial and the HTTP
/// status line; `None` when the server refused the handshake or closed
/// without an answer.
fn answer(port: u16, client: Option<&(String, String)>) -> Option<(String, String)> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    runtime.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let config = match client {
            Some((cert, key)) => mesh_testkit::tls::any_server_client_with(cert, key),
            None => mesh_testkit::tls::any_server_client(),
        };
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let name = rustls::pki_types::ServerName::try_from(HOST).ok()?;
        let connect = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
        let mut tls = tokio::time::timeout(Duration::from_secs(5), connect).await.ok()?.ok()?;
        let leaf = tls.get_ref().1.peer_certificates()?.first()?.clone();
        let serial = mesh_core::certificate::CertificateInfo::from_der(&leaf).ok()?.serial;
        tls.write_all(format!("GET / HTTP/1.1\r\nhost: {HOST}\r\nconnection: close\r\n\r\n").as_bytes()).await.ok()?;
        let mut body = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut body)).await;
        let status =
            String::from_utf8_lossy(&body).lines().next().filter(|l| l.starts_with("HTTP/")).map(str::to_string);
        Some((serial, status?))
    })
}

#[test]
fn mutual_gateways_on_envoy_and_mesh_proxy_accept_only_the_configured_ca() {
    let work = tempfile::tempdir().expect("a temp dir");
    let path = |name: &str| work.path().join(name).to_string_lossy().into_owned();
    let ca = mesh_ca(work.path(), &[], ENVOY_ID);
    let (_backend, backend_port) = backend("v1", 0);
    let (_api_server, api) = fake_server("fake_apiserver", &[]);
    let (envoy_port, mesh_port, secure) = (free_port(), free_port(), free_port());
    apply_yaml(&api, &mesh(envoy_port, mesh_port, backend_port));
    let (servers, clients, strangers) = (TestCa::new("servers"), TestCa::new("clients"), TestCa::new("strangers"));
    let first = put_credential(&api, &servers, &clients);
    let kubeconfig = kube::kubeconfig(work.path(), &api);

    let listen = format!("127.0.0.1:{secure}");
    let (_cp, _xds, debug) = control_plane_on(&[
        "--kubeconfig",
        &kubeconfig,
        "--ca-dir",
        &ca.to_string_lossy(),
        "--bootstrap-tokens",
        &path("tokens"),
        "--ca-listen",
        &listen,
    ]);
    let envoy_dir = work.path().join("envoy");
    std::fs::create_dir(&envoy_dir).expect("a dir");
    // Delta xDS here (the other secure tests use state of the world).
    let envoy = secure_envoy_with(&envoy_dir, secure, &ca.join("root-cert.pem"), "DELTA_GRPC");
    let _mesh_proxy = Gateway::launch(
        &["--kubeconfig", &kubeconfig],
        mesh_port,
        &["--namespace", "default", "--labels", "istio=mesh-gateway"],
        Stdio::null(),
    );

    let client = clients.issue_pem("client.example");
    let stranger = strangers.issue_pem("client.example");
    for (proxy, port) in [("Envoy", envoy_port), ("mesh-proxy", mesh_port)] {
        let ok = (first.clone(), "HTTP/1.1 200 OK".to_string());
        assert!(
            wait_until(Duration::from_secs(30), || answer(port, Some(&client)) == Some(ok.clone())),
            "{proxy} did not serve the Secret's certificate to a client of its CA: {:?}\nsyncz: {}\nEnvoy's listeners: {}",
            answer(port, Some(&client)),
            debug_get(debug, "/debug/syncz").map(|r| r.body).unwrap_or_default(),
            envoy.admin_get("/config_dump?resource=dynamic_listeners").unwrap_or_default(),
        );
        assert_eq!(answer(port, Some(&stranger)), None, "{proxy} refuses a client of another CA");
        assert_eq!(answer(port, None), None, "{proxy} refuses a client without a certificate");
    }
    let certs = envoy.admin_get("/certs").unwrap_or_default();
    assert!(certs.contains(&first), "Envoy holds the Secret's certificate, sent over SDS: {certs}");

    // Renewed: both serve the new certificate, no restart.
    let second = put_credential(&api, &servers, &clients);
    for (proxy, port) in [("Envoy", envoy_port), ("mesh-proxy", mesh_port)] {
        assert!(
            wait_until(Duration::from_secs(20), || answer(port, Some(&client)).is_some_and(|(s, _)| s == second)),
            "{proxy} did not take the renewed Secret: {:?}",
            answer(port, Some(&client))
        );
    }
}
