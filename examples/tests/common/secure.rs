//! A mesh with our CA: `meshctl` certificates, the control plane serving
//! xDS and the CA on its secure port, Envoy on the secure sample
//! bootstrap, and the Istio config the mTLS tests share.

use std::path::Path;
use std::process::Command;

use mesh_testkit::envoy::Envoy;
use mesh_testkit::process::Proc;

use super::{control_plane_on, free_port};

/// Envoy's bootstrap token (its identity is in the tokens file beside it).
pub const TOKEN: &str = "envoy-bootstrap-token-5f0c6c1e";

/// The status of `GET /` on `port`; 0 when the connection failed.
pub fn status(port: u16) -> u16 {
    mesh_testkit::http::request(&format!("127.0.0.1:{port}"), "GET", "/", "test.example.com", &[], "")
        .map_or(0, |r| r.status)
}

/// A CA in `dir/ca` (`meshctl ca root`), a certificate for each
/// `(name, SPIFFE ID)` in `dir/NAME`, and `dir/tokens` proving `envoy_id`
/// with [`TOKEN`]. The CA's directory.
pub fn mesh_ca(dir: &Path, identities: &[(&str, &str)], envoy_id: &str) -> std::path::PathBuf {
    let ca = dir.join("ca");
    meshctl(&["ca", "root", "--dir", &ca.to_string_lossy()]);
    for (name, id) in identities {
        let out = dir.join(name);
        meshctl(&["ca", "issue", "--dir", &ca.to_string_lossy(), "--identity", id, "--out", &out.to_string_lossy()]);
    }
    std::fs::write(dir.join("tokens"), format!("{envoy_id} {TOKEN}\n")).unwrap();
    ca
}

pub fn meshctl(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl")).args(args).output().expect("run meshctl");
    assert!(out.status.success(), "meshctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A gateway server line, a ServiceEntry `service` on 127.0.0.1:`port`
/// with the identity `account` (none if empty), a route of everything to
/// it, and `extra`.
pub fn gateway_mesh(server: &str, service: &str, port: u16, account: &str, extra: &str) -> String {
    let sans = if account.is_empty() { String::new() } else { format!("  subjectAltNames: [\"{account}\"]\n") };
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
{server}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {service}, namespace: default}}
spec:
  hosts: [{service}.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
{sans}  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
---
{extra}apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: routes, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route: [{{destination: {{host: {service}.default.svc.cluster.local}}}}]
"#
    )
}

pub fn server(port: u16, tls: &str) -> String {
    let protocol = if tls.is_empty() { "HTTP" } else { "HTTPS" };
    format!("  - port: {{number: {port}, name: p{port}, protocol: {protocol}}}\n    hosts: [\"*\"]\n{tls}")
}

pub fn istio_mutual_to(host: &str, sans: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {host}, namespace: default}}\nspec:\n  host: {host}.default.svc.cluster.local\n  trafficPolicy:\n    tls: {{mode: ISTIO_MUTUAL{sans}}}\n---\n"
    )
}

/// The control plane with its CA in `ca` (serving xDS and the CA on one
/// TLS port), the gateway's bootstrap token known; its secure port.
pub fn secure_control_plane(config: &Path, ca: &Path, tokens: &Path) -> (Proc, u16, u16) {
    let secure = free_port();
    let (config, ca, tokens) = (config.to_string_lossy(), ca.to_string_lossy(), tokens.to_string_lossy());
    let listen = format!("127.0.0.1:{secure}");
    let (cp, _xds, debug) = control_plane_on(&[
        "--config",
        &config,
        "--ca-dir",
        &ca,
        "--bootstrap-tokens",
        &tokens,
        "--ca-listen",
        &listen,
    ]);
    (cp, secure, debug)
}

/// Who an Envoy on the sample secure bootstrap
/// (`config/envoy/ingress-gateway-secure.yaml`) is, and where it goes.
pub struct SecureBootstrap<'a> {
    /// Istio's node id: `router~...` or `sidecar~IP~POD.NS~NS.svc.cluster.local`.
    pub node_id: &'a str,
    pub namespace: &'a str,
    /// The body of the LABELS map, `app: reviews`.
    pub labels: &'a str,
    /// The control plane's secure port.
    pub xds: (&'a str, u16),
    /// 0 for any.
    pub admin_port: u16,
    pub token: &'a str,
    pub root: &'a Path,
    /// `GRPC` or `DELTA_GRPC`.
    pub api_type: &'a str,
}

impl SecureBootstrap<'_> {
    /// The sample with these values, each replaced where the sample holds
    /// it once.
    pub fn render(&self) -> String {
        let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/config/envoy/ingress-gateway-secure.yaml");
        let text = std::fs::read_to_string(sample).unwrap_or_else(|e| panic!("{sample}: {e}"));
        let replacements = [
            ("router~127.0.0.1~istio-ingressgateway-1.default~default.svc.cluster.local", self.node_id.to_string()),
            ("NAMESPACE: default", format!("NAMESPACE: {}", self.namespace)),
            ("LABELS: {istio: ingressgateway}", format!("LABELS: {{{}}}", self.labels)),
            ("address: 127.0.0.1, port_value: 15012", format!("address: {}, port_value: {}", self.xds.0, self.xds.1)),
            ("port_value: 15000", format!("port_value: {}", self.admin_port)),
            ("Bearer TOKEN", format!("Bearer {}", self.token)),
            ("/etc/istio/root-cert.pem", self.root.to_string_lossy().into_owned()),
            ("api_type: GRPC", format!("api_type: {}", self.api_type)),
        ];
        replacements.into_iter().fold(text, |text, (needle, value)| {
            assert_eq!(text.matches(needle).count(), 1, "{sample} should hold `{needle}` once");
            text.replace(needle, &value)
        })
    }
}

/// Envoy on the sample secure bootstrap as the ingress gateway, this
/// test's ports and token, state-of-the-world xDS.
pub fn secure_envoy(dir: &Path, secure_port: u16, root: &Path) -> Envoy {
    secure_envoy_with(dir, secure_port, root, "GRPC")
}

/// The same with `api_type` (`GRPC` or `DELTA_GRPC`).
pub fn secure_envoy_with(dir: &Path, secure_port: u16, root: &Path, api_type: &str) -> Envoy {
    let bootstrap = SecureBootstrap {
        node_id: "router~127.0.0.1~istio-ingressgateway-1.default~default.svc.cluster.local",
        namespace: "default",
        labels: "istio: ingressgateway",
        xds: ("127.0.0.1", secure_port),
        admin_port: 0,
        token: TOKEN,
        root,
        api_type,
    };
    Envoy::start(&bootstrap.render(), dir)
}
