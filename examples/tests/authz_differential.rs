//! AuthorizationPolicy, differential: one set of policies enforced by
//! Envoy 1.40 (RBAC from our control plane, over the secure xDS port) and
//! by mesh-proxy (its own evaluation), each as an ISTIO_MUTUAL gateway
//! in front of the same backend, and by mesh-proxy fed over xDS by the
//! same control plane (Envoy's RBAC filters, enforced as Envoy does).
//! Three client identities send the same 486 requests to all three; every
//! allow/deny decision must agree. The same policies also judge TCP
//! connections (Envoy's network RBAC filter) on two TCP servers of each
//! gateway, from two source addresses.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::secure::{gateway_mesh, mesh_ca, secure_control_plane, secure_envoy, server};
use common::{backend, control_plane, free_port, wait_until, Gateway};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

const ENVOY_ID: &str = "spiffe://cluster.local/ns/default/sa/ingress";
const GATEWAY_ID: &str = "spiffe://cluster.local/ns/default/sa/gateway";
const CLIENTS: [(&str, &str); 3] = [
    ("sleep", "spiffe://cluster.local/ns/foo/sa/sleep"),
    ("curl", "spiffe://cluster.local/ns/bar/sa/curl"),
    ("dflt", "spiffe://cluster.local/ns/default/sa/sleep"),
];

/// Paths, methods, hosts, ports, headers and identities (principals,
/// namespaces, service accounts, trust domains), every `not` form, `when`
/// conditions on both sides of a rule, a root-namespace policy, and a
/// CUSTOM policy with no authorizer (its rules deny). The gateways' HTTP
/// ports go in for `"ENVOY_PORT", "MESH_PORT"`; their TCP servers'
/// ports for `TCP_OPEN` and `TCP_SHUT`.
const POLICIES: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"], ports: ["ENVOY_PORT", "MESH_PORT"]}}]
    from: [{source: {notNamespaces: [bar]}}]
  - to: [{operation: {methods: [DELETE], notPaths: ["*.html"], ports: ["ENVOY_PORT", "MESH_PORT"]}}]
    when: [{key: "request.headers[x-user]", notValues: [alice]}]
  - to: [{operation: {methods: [GET], ports: [TCP_SHUT]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: root-deny, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules:
  - from: [{source: {serviceAccounts: [sleep]}}]
    to: [{operation: {paths: ["/public/*"]}}]
  - from: [{source: {notTrustDomains: ["cluster.local"]}}]
    to: [{operation: {paths: ["/td"], ports: ["ENVOY_PORT", "MESH_PORT"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz, namespace: default}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: CUSTOM
  provider: {name: opa}
  rules:
  - to: [{operation: {paths: ["/health"], methods: [POST], ports: ["ENVOY_PORT", "MESH_PORT"]}}]
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
  - from: [{source: {principals: ["cluster.local/ns/foo/sa/sleep"], serviceAccounts: ["bar/curl"]}}]
    to: [{operation: {paths: ["/both"]}}]
  - from: [{source: {trustDomains: ["other.td"]}}]
    to: [{operation: {paths: ["/"]}}]
  - from: [{source: {trustDomains: ["cluster.*"], notServiceAccounts: [sleep]}}]
    to: [{operation: {paths: ["/td"]}}]
  - from: [{source: {ipBlocks: ["127.0.0.1/32"]}}]
    to: [{operation: {ports: [TCP_OPEN, TCP_SHUT]}}]
"#;

/// Each gateway's two TCP servers, routed to the backend.
fn tcp_servers(open: u16, shut: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: tcp-gw, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {open}, name: tcp-open, protocol: TCP}}
    hosts: ["*"]
  - port: {{number: {shut}, name: tcp-shut, protocol: TCP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: tcp-routes, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [tcp-gw]
  tcp:
  - route: [{{destination: {{host: app.default.svc.cluster.local, port: {{number: 80}}}}}}]
---
"#
    )
}

const PATHS: [&str; 9] =
    ["/", "/admin", "/admin/x", "/public/a", "/api/v1/items", "/x.html", "/health", "/both", "/td"];
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

/// One TCP connection from `source` (an address of 127/8): whether the
/// backend answered an HTTP request sent through it (a denied connection
/// is closed with nothing said).
fn tcp_passes(port: u16, source: [u8; 4]) -> bool {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let connected = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind((source, 0).into())?;
        socket.connect(([127, 0, 0, 1], port).into()).await
    });
    let Ok(stream) = connected.and_then(|s| s.into_std()) else { return false };
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut stream = stream;
    if stream.write_all(b"GET / HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer.starts_with(b"HTTP/1.1 200")
}

/// A gateway's ports: its ISTIO_MUTUAL HTTPS server and two TCP servers.
#[derive(Clone, Copy)]
struct Ports {
    https: u16,
    tcp_open: u16,
    tcp_shut: u16,
}

impl Ports {
    fn new() -> Ports {
        Ports { https: free_port(), tcp_open: free_port(), tcp_shut: free_port() }
    }
}

/// The gateway's config (`mesh.yaml`) and the policies into `dir`.
fn write_config(dir: &Path, ports: Ports, backend_port: u16, policies: &str) {
    std::fs::create_dir(dir).unwrap();
    let tls = "    tls: {mode: ISTIO_MUTUAL}\n";
    let tcp = tcp_servers(ports.tcp_open, ports.tcp_shut);
    std::fs::write(dir.join("mesh.yaml"), gateway_mesh(&server(ports.https, tls), "app", backend_port, "", &tcp))
        .unwrap();
    std::fs::write(dir.join("policies.yaml"), policies).unwrap();
}

#[test]
fn envoy_rbac_and_mesh_proxy_decide_every_request_alike() {
    let work = tempfile::tempdir().unwrap();
    let path = |name: &str| work.path().join(name);
    let mut identities = vec![("gateway", GATEWAY_ID)];
    identities.extend(CLIENTS);
    let ca = mesh_ca(work.path(), &identities, ENVOY_ID);
    let (_backend, backend_port) = backend("v1", 0);
    let (envoy_ports, mesh_ports, xds_ports) = (Ports::new(), Ports::new(), Ports::new());
    let all = |port: fn(&Ports) -> u16| {
        format!("\"{}\", \"{}\", \"{}\"", port(&envoy_ports), port(&mesh_ports), port(&xds_ports))
    };
    let policies = POLICIES
        .replace("\"ENVOY_PORT\", \"MESH_PORT\"", &all(|p| p.https))
        .replace("TCP_OPEN", &all(|p| p.tcp_open))
        .replace("TCP_SHUT", &all(|p| p.tcp_shut));

    write_config(&path("mesh"), mesh_ports, backend_port, &policies);
    let gateway = path("gateway");
    let certs = ["--cert-dir", &gateway.to_string_lossy()].map(String::from);
    let certs: Vec<&str> = certs.iter().map(String::as_str).collect();
    let source = ["--config", &path("mesh").to_string_lossy(), "--namespace", "default"].map(String::from);
    let source: Vec<&str> = source.iter().map(String::as_str).collect();
    let mesh = Gateway::launch(&source, mesh_ports.https, &certs, Stdio::null());

    // mesh-proxy over xDS: its own control plane (the ports differ from
    // Envoy's), plaintext xDS, its certificate from files.
    write_config(&path("xds"), xds_ports, backend_port, &policies);
    let (_xds_cp, xds, _) = control_plane(&path("xds"));
    let server = format!("http://127.0.0.1:{xds}");
    let source = ["--xds-server", &server, "--namespace", "default"];
    let _over_xds = Gateway::launch(&source, xds_ports.https, &certs, Stdio::null());

    write_config(&path("cp"), envoy_ports, backend_port, &policies);
    let (_cp, secure, debug) = secure_control_plane(&path("cp"), &ca, &path("tokens"));
    let envoy_dir = path("envoy");
    std::fs::create_dir(&envoy_dir).unwrap();
    let envoy = secure_envoy(&envoy_dir, secure, &ca.join("root-cert.pem"));

    let clients: Vec<(&str, Arc<rustls::ClientConfig>)> =
        CLIENTS.iter().map(|(name, _)| (*name, client(&path(name)))).collect();
    let sleep = &clients[0].1;
    assert!(
        wait_until(Duration::from_secs(30), || send(
            envoy_ports.https,
            sleep,
            "GET",
            "/public/a",
            "app.example.com",
            None
        )
        .0 == 200),
        "Envoy never served the allowed request; its log:\n{}\nsyncz: {:?}",
        envoy.log(),
        common::debug_get(debug, "/debug/syncz").map(|r| r.body)
    );

    let gateways = [("mesh-proxy", mesh_ports), ("over xDS", xds_ports)];
    compare_requests(&clients, envoy_ports.https, &gateways);
    compare_connections(envoy_ports, &gateways);

    // Denied connections are counted, flagged as RBAC denials.
    let metrics = mesh.admin_get("/stats/prometheus").map(|r| r.body).unwrap_or_default();
    let denied = metrics
        .lines()
        .find(|l| l.starts_with("istio_tcp_connections_opened_total{") && l.contains("response_flags=\"RBAC\""));
    assert!(denied.is_some_and(|l| l.ends_with(" 3")), "three denied connections counted:\n{metrics}");
}

/// Every request from every client through Envoy and each gateway: the
/// same decisions, and Envoy's body on each denial.
fn compare_requests(clients: &[(&str, Arc<rustls::ClientConfig>)], envoy_port: u16, gateways: &[(&str, Ports)]) {
    let mut disagreements = Vec::new();
    let (mut requests, mut denied) = (0, 0);
    for (name, tls) in clients {
        for p in PATHS {
            for method in METHODS {
                for host in HOSTS {
                    for user in USERS {
                        let (envoy_code, envoy_body) = send(envoy_port, tls, method, p, host, user);
                        requests += 1;
                        denied += usize::from(envoy_code == 403);
                        for (gateway, ports) in gateways {
                            let (code, body) = send(ports.https, tls, method, p, host, user);
                            let row = format!(
                                "{name:5} {method:6} {host:15} {p:14} x-user={:5} Envoy {envoy_code} {gateway} {code}",
                                user.unwrap_or("-")
                            );
                            if (envoy_code == 403) != (code == 403) || ![200, 403].contains(&envoy_code) {
                                disagreements.push(row);
                            } else if envoy_code == 403 {
                                assert_eq!(
                                    (envoy_body.as_str(), body.as_str()),
                                    ("RBAC: access denied", "RBAC: access denied"),
                                    "{row}"
                                );
                            }
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

/// TCP connections to every gateway's TCP servers from two addresses:
/// the same decisions as Envoy's, and the ones the policies call for
/// (open only from 127.0.0.1; the other port shut by a DENY rule whose
/// method a connection does not have).
fn compare_connections(envoy: Ports, gateways: &[(&str, Ports)]) {
    let expected = [("open", 1, true), ("open", 2, false), ("shut", 1, false), ("shut", 2, false)];
    for (who, ports) in [("Envoy", envoy)].iter().chain(gateways) {
        let mut table = Vec::new();
        for (name, port) in [("open", ports.tcp_open), ("shut", ports.tcp_shut)] {
            for source in [[127, 0, 0, 1], [127, 0, 0, 2]] {
                table.push((name, source[3], tcp_passes(port, source)));
            }
        }
        assert_eq!(table, expected, "{who}: (port, from 127.0.0.x, passes)");
    }
}
