//! AuthorizationPolicy, differential: one set of policies enforced by
//! Envoy 1.40 (RBAC from our control plane, over the secure xDS port) and
//! by mesh-proxy (its own evaluation), each as an ISTIO_MUTUAL gateway
//! in front of the same backend. Two client identities send the same
//! 252 requests to both; every allow/deny decision must agree.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::secure::{gateway_mesh, mesh_ca, secure_control_plane, secure_envoy, server};
use common::{backend, free_port, wait_until, Gateway};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

const ENVOY_ID: &str = "spiffe://cluster.local/ns/default/sa/ingress";
const GATEWAY_ID: &str = "spiffe://cluster.local/ns/default/sa/gateway";
const CLIENTS: [(&str, &str); 2] =
    [("sleep", "spiffe://cluster.local/ns/foo/sa/sleep"), ("curl", "spiffe://cluster.local/ns/bar/sa/curl")];

/// Paths, methods, hosts, ports, headers and identities, every `not`
/// form, `when` conditions on both sides of a rule, and a CUSTOM policy
/// with no authorizer (its rules deny); the two gateways'
/// ports go in for `ENVOY_PORT` and `MESH_PORT`.
const POLICIES: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
    from: [{source: {notNamespaces: [bar]}}]
  - to: [{operation: {methods: [DELETE], notPaths: ["*.html"]}}]
    when: [{key: "request.headers[x-user]", notValues: [alice]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz, namespace: default}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: CUSTOM
  provider: {name: opa}
  rules:
  - to: [{operation: {paths: ["/health"], methods: [POST]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: default}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/foo/sa/sleep"]}}]
    to: [{operation: {paths: ["/public/*", "/health"], methods: [GET, POST]}}]
  - from: [{source: {namespaces: [bar], ipBlocks: ["127.0.0.1/32"], notIpBlocks: ["10.0.0.0/8"]}}]
    to: [{operation: {hosts: ["*.example.com"], notMethods: [POST]}}]
  - to: [{operation: {paths: ["*.html"], notHosts: ["other.test"], ports: ["ENVOY_PORT", "MESH_PORT"]}}]
    when: [{key: source.namespace, values: [foo, bar]}]
  - from: [{source: {principals: ["*"], remoteIpBlocks: ["127.0.0.0/8"], notRemoteIpBlocks: ["10.0.0.0/8"]}}]
    to: [{operation: {paths: ["/api/*"], notPorts: ["1"]}}]
    when: [{key: "request.headers[x-user]", values: [bob, "a*"]}]
  - from: [{source: {serviceAccounts: ["bar/curl"], notPrincipals: ["*/sa/sleep"]}}]
    to: [{operation: {methods: [DELETE]}}]
  - to: [{operation: {paths: ["*"], hosts: [app.example.com]}}]
    when:
    - {key: source.principal, values: ["*/ns/foo/sa/sleep"]}
    - {key: "request.headers[x-user]", values: ["*"]}
"#;

const PATHS: [&str; 7] = ["/", "/admin", "/admin/x", "/public/a", "/api/v1/items", "/x.html", "/health"];
const METHODS: [&str; 3] = ["GET", "POST", "DELETE"];
const HOSTS: [&str; 2] = ["app.example.com", "other.test"];
const USERS: [Option<&str>; 3] = [None, Some("alice"), Some("bob")];

/// A TLS client with the identity issued into `dir`; it takes any server.
fn client(dir: &Path) -> Arc<rustls::ClientConfig> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join("cert-chain.pem")).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("key.pem")).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(mesh_testkit::tls::AnyServerCertificate))
        .with_client_auth_cert(chain, key)
        .unwrap();
    Arc::new(config)
}

/// One request over its own mTLS connection: the status and the body.
fn send(
    port: u16,
    tls: &Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    host: &str,
    user: Option<&str>,
) -> (u16, String) {
    let Ok(tcp) = TcpStream::connect(("127.0.0.1", port)) else { return (0, String::new()) };
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let session = rustls::ClientConnection::new(tls.clone(), ServerName::try_from("gateway").unwrap()).unwrap();
    let mut stream = rustls::StreamOwned::new(session, tcp);
    let user = user.map(|u| format!("x-user: {u}\r\n")).unwrap_or_default();
    let request =
        format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\n{user}content-length: 0\r\nconnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return (0, String::new());
    }
    // Read the head and a body of its content-length: Envoy keeps a
    // connection it closes open for a moment (its delayed close).
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head, length) = loop {
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..end]).into_owned();
            let length = head
                .lines()
                .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            answer.drain(..end + 4);
            break (head, length);
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return (0, String::new()),
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
    };
    while answer.len() < length {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
    }
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = String::from_utf8_lossy(&answer).into_owned();
    (code, body)
}

#[test]
fn envoy_rbac_and_mesh_proxy_decide_every_request_alike() {
    let work = tempfile::tempdir().unwrap();
    let path = |name: &str| work.path().join(name);
    let mut identities = vec![("gateway", GATEWAY_ID)];
    identities.extend(CLIENTS);
    let ca = mesh_ca(work.path(), &identities, ENVOY_ID);
    let (_backend, backend_port) = backend("v1", 0);
    let (envoy_port, mesh_port) = (free_port(), free_port());
    let tls = "    tls: {mode: ISTIO_MUTUAL}\n";

    let mesh_config = path("mesh");
    std::fs::create_dir(&mesh_config).unwrap();
    std::fs::write(mesh_config.join("mesh.yaml"), gateway_mesh(&server(mesh_port, tls), "app", backend_port, "", ""))
        .unwrap();
    let policies = POLICIES.replace("ENVOY_PORT", &envoy_port.to_string()).replace("MESH_PORT", &mesh_port.to_string());
    std::fs::write(mesh_config.join("policies.yaml"), &policies).unwrap();
    let gateway = path("gateway");
    let _mesh = Gateway::launch(
        &["--config", &mesh_config.to_string_lossy(), "--namespace", "default"],
        mesh_port,
        &["--cert-dir", &gateway.to_string_lossy()],
        Stdio::null(),
    );

    let cp_config = path("cp");
    std::fs::create_dir(&cp_config).unwrap();
    std::fs::write(cp_config.join("mesh.yaml"), gateway_mesh(&server(envoy_port, tls), "app", backend_port, "", ""))
        .unwrap();
    std::fs::write(cp_config.join("policies.yaml"), &policies).unwrap();
    let (_cp, secure, debug) = secure_control_plane(&cp_config, &ca, &path("tokens"));
    let envoy_dir = path("envoy");
    std::fs::create_dir(&envoy_dir).unwrap();
    let envoy = secure_envoy(&envoy_dir, secure, &ca.join("root-cert.pem"));

    let clients: Vec<(&str, Arc<rustls::ClientConfig>)> =
        CLIENTS.iter().map(|(name, _)| (*name, client(&path(name)))).collect();
    let sleep = &clients[0].1;
    assert!(
        wait_until(Duration::from_secs(30), || send(envoy_port, sleep, "GET", "/public/a", "app.example.com", None).0
            == 200),
        "Envoy never served the allowed request; its log:\n{}\nsyncz: {:?}",
        envoy.log(),
        common::debug_get(debug, "/debug/syncz").map(|r| r.body)
    );

    let mut disagreements = Vec::new();
    let (mut requests, mut denied) = (0, 0);
    for (name, tls) in &clients {
        for p in PATHS {
            for method in METHODS {
                for host in HOSTS {
                    for user in USERS {
                        let (envoy_code, envoy_body) = send(envoy_port, tls, method, p, host, user);
                        let (mesh_code, mesh_body) = send(mesh_port, tls, method, p, host, user);
                        requests += 1;
                        denied += usize::from(envoy_code == 403);
                        let row = format!("{name:5} {method:6} {host:15} {p:14} x-user={:5} Envoy {envoy_code} mesh-proxy {mesh_code}", user.unwrap_or("-"));
                        if (envoy_code == 403) != (mesh_code == 403) || ![200, 403].contains(&envoy_code) {
                            disagreements.push(row);
                        } else if envoy_code == 403 {
                            assert_eq!(
                                (envoy_body.as_str(), mesh_body.as_str()),
                                ("RBAC: access denied", "RBAC: access denied"),
                                "{row}"
                            );
                        }
                    }
                }
            }
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of {requests} decisions differ:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
    assert!(
        denied > 50 && denied < requests - 50,
        "the policies should split the requests: {denied} of {requests} denied"
    );
}
