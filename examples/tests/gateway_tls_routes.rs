//! Gateway servers that carry TLS to TCP: SNI passthrough (VirtualService
//! `tls` routes by `sniHosts`) next to an HTTPS server on the same port,
//! and a TLS server that terminates and proxies TCP, in `SIMPLE` and
//! `MUTUAL` mode. The ClientHello's SNI picks the server, as Envoy's
//! filter chain match does: a name no server has is refused. The same
//! checks run against mesh-proxy and against Envoy 1.40 fed by our
//! control plane.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{backend, control_plane, free_port, gateway_envoy, wait_until, Gateway};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

/// A TCP backend that answers every connection with `name` and closes
/// its side. It reads what the client sent before dropping the socket:
/// closing with unread bytes sends a reset, which can overtake the name
/// and make a proxy drop it.
fn tcp_backend(name: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = stream.write_all(name.as_bytes());
                let _ = stream.shutdown(std::net::Shutdown::Write);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = std::io::copy(&mut stream, &mut std::io::sink());
            });
        }
    });
    port
}

/// A ClientHello for `sni` sent on a fresh connection: what comes back
/// before the gateway or the backend closes (a passthrough backend here
/// answers its name).
fn hello(port: u16, sni: &str) -> String {
    let config = client_config(None, None);
    let mut session = rustls::ClientConnection::new(config, ServerName::try_from(sni.to_string()).unwrap()).unwrap();
    let mut hello = Vec::new();
    session.write_tls(&mut hello).unwrap();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(&hello).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn client_config(
    root: Option<&CertificateDer<'static>>,
    identity: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(root) = root {
        roots.add(root.clone()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match identity {
        Some((cert, key)) => builder.with_client_auth_cert(vec![cert], key).unwrap(),
        None => builder.with_no_client_auth(),
    })
}

/// An HTTP/1.1 GET over TLS to `sni`: the status line, or the error.
fn https_get(port: u16, sni: &str, config: Arc<rustls::ClientConfig>) -> String {
    let tcp = match TcpStream::connect(("127.0.0.1", port)) {
        Ok(tcp) => tcp,
        Err(e) => return format!("error: {e}"),
    };
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let session = rustls::ClientConnection::new(config, ServerName::try_from(sni.to_string()).unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(session, tcp);
    let request = format!("GET /headers HTTP/1.1\r\nhost: {sni}\r\nconnection: close\r\n\r\n");
    if let Err(e) = tls.write_all(request.as_bytes()) {
        return format!("error: {e}");
    }
    let mut answer = Vec::new();
    match tls.read_to_end(&mut answer) {
        Err(e) if answer.is_empty() => format!("error: {e}"),
        _ => String::from_utf8_lossy(&answer).lines().next().unwrap_or("").to_string(),
    }
}

fn service(name: &str, port_name: &str, protocol: &str, port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  hosts: [{name}.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  ports: [{{number: 443, name: {port_name}, protocol: {protocol}}}]\n  resolution: STATIC\n  endpoints: [{{address: 127.0.0.1, ports: {{{port_name}: {port}}}}}]\n---\n"
    )
}

/// Port `shared`: passthrough for a. and b.example.com, HTTPS for
/// c.example.com; `simple` and `mutual`: TLS terminated, TCP on.
fn write_config(dir: &Path, pki: &Path, [shared, simple, mutual]: [u16; 3], [a, b, web]: [u16; 3]) {
    std::fs::create_dir(dir).unwrap();
    let file = |name: &str| pki.join(name).display().to_string();
    let (cert, key, ca) = (file("tls.crt"), file("tls.key"), file("ca.crt"));
    let simple_tls = format!("{{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}");
    let mutual_tls = format!("{{mode: MUTUAL, serverCertificate: {cert}, privateKey: {key}, caCertificates: {ca}}}");
    let mut yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {shared}, name: pass, protocol: TLS}}
    hosts: [a.example.com, b.example.com]
    tls: {{mode: PASSTHROUGH}}
  - port: {{number: {shared}, name: https, protocol: HTTPS}}
    hosts: [c.example.com]
    tls: {simple_tls}
  - port: {{number: {simple}, name: tls-simple, protocol: TLS}}
    hosts: [d.example.com]
    tls: {simple_tls}
  - port: {{number: {mutual}, name: tls-mutual, protocol: TLS}}
    hosts: ["*"]
    tls: {mutual_tls}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: pass, namespace: default}}
spec:
  hosts: [a.example.com, b.example.com]
  gateways: [gw]
  tls:
  - match: [{{port: {shared}, sniHosts: [a.example.com]}}]
    route: [{{destination: {{host: a.default.svc.cluster.local}}}}]
  - match: [{{port: {shared}, sniHosts: [b.example.com]}}]
    route: [{{destination: {{host: b.default.svc.cluster.local}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route: [{{destination: {{host: web.default.svc.cluster.local}}}}]
  tcp:
  - route: [{{destination: {{host: web.default.svc.cluster.local}}}}]
---
"#
    );
    yaml += &service("a", "tls", "TLS", a);
    yaml += &service("b", "tls", "TLS", b);
    yaml += &service("web", "http", "HTTP", web);
    std::fs::write(dir.join("mesh.yaml"), yaml).unwrap();
}

/// A CA, a server certificate for the example names, and a client
/// certificate from the CA (and one from a stranger CA): written where
/// the config points, returned for the clients.
struct Pki {
    server: CertificateDer<'static>,
    client: (CertificateDer<'static>, PrivateKeyDer<'static>),
    stranger: (CertificateDer<'static>, PrivateKeyDer<'static>),
}

fn pki(dir: &Path) -> Pki {
    let names = ["c.example.com", "d.example.com", "m.example.com"].map(String::from).to_vec();
    let server = rcgen::generate_simple_self_signed(names).unwrap();
    std::fs::write(dir.join("tls.crt"), server.cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), server.signing_key.serialize_pem()).unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    // Names of their own: rcgen's default subject on both would make the
    // client certificate look self-signed to BoringSSL.
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "test ca");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let client_key = rcgen::KeyPair::generate().unwrap();
    let mut client_params = rcgen::CertificateParams::new(vec!["client".into()]).unwrap();
    client_params.distinguished_name.push(rcgen::DnType::CommonName, "client");
    let client = client_params.signed_by(&client_key, &issuer).unwrap();
    let stranger = rcgen::generate_simple_self_signed(vec!["client".into()]).unwrap();
    let key = |k: &rcgen::KeyPair| PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(k.serialize_der()));
    Pki {
        server: server.cert.der().clone(),
        client: (client.der().clone(), key(&client_key)),
        stranger: (stranger.cert.der().clone(), key(&stranger.signing_key)),
    }
}

/// What each server does with each client, for `who`.
fn check(who: &str, [shared, simple, mutual]: [u16; 3], pki: &Pki) {
    assert_eq!(hello(shared, "a.example.com"), "backend a", "{who}: passthrough by SNI");
    assert_eq!(hello(shared, "b.example.com"), "backend b", "{who}: passthrough by SNI");
    assert_eq!(hello(shared, "z.example.com"), "", "{who}: a name no server has: closed");
    let trusted = client_config(Some(&pki.server), None);
    assert_eq!(
        https_get(shared, "c.example.com", trusted.clone()),
        "HTTP/1.1 200 OK",
        "{who}: HTTPS beside passthrough"
    );

    assert_eq!(https_get(simple, "d.example.com", trusted.clone()), "HTTP/1.1 200 OK", "{who}: TLS terminated, TCP on");

    let with = |identity: &(CertificateDer<'static>, PrivateKeyDer<'static>)| {
        client_config(Some(&pki.server), Some((identity.0.clone(), identity.1.clone_key())))
    };
    let the_ca = https_get(mutual, "m.example.com", with(&pki.client));
    assert_eq!(the_ca, "HTTP/1.1 200 OK", "{who}: MUTUAL: the CA's client");
    let stranger = https_get(mutual, "m.example.com", with(&pki.stranger));
    assert!(stranger.starts_with("error"), "{who}: MUTUAL: a stranger got {stranger}");
    let none = https_get(mutual, "m.example.com", trusted);
    assert!(none.starts_with("error"), "{who}: MUTUAL: no certificate got {none}");
}

#[test]
fn sni_picks_passthrough_https_or_terminated_tcp_in_mesh_proxy_and_envoy() {
    let work = tempfile::tempdir().unwrap();
    let dir = |name: &str| work.path().join(name);
    let (_web, web) = backend("v1", 0);
    let backends = [tcp_backend("backend a"), tcp_backend("backend b"), web];
    let pki = pki(work.path());

    let mesh_ports = [free_port(), free_port(), free_port()];
    write_config(&dir("mesh"), work.path(), mesh_ports, backends);
    let _gateway = Gateway::start(&dir("mesh"), mesh_ports[0]);
    check("mesh-proxy", mesh_ports, &pki);

    let envoy_ports = [free_port(), free_port(), free_port()];
    write_config(&dir("cp"), work.path(), envoy_ports, backends);
    let (_cp, xds, debug) = control_plane(&dir("cp"));
    std::fs::create_dir(dir("envoy")).unwrap();
    let envoy = gateway_envoy(&dir("envoy"), xds, "GRPC");
    let trusted = client_config(Some(&pki.server), None);
    assert!(
        wait_until(Duration::from_secs(30), || https_get(envoy_ports[0], "c.example.com", trusted.clone())
            == "HTTP/1.1 200 OK"),
        "Envoy never served c.example.com; its log:\n{}\nsyncz: {:?}",
        envoy.log(),
        common::debug_get(debug, "/debug/syncz").map(|r| r.body)
    );
    check("Envoy", envoy_ports, &pki);
}
