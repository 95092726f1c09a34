//! Istio mTLS between Envoy and mesh-proxy, Envoy's side all from our
//! control plane: xDS over TLS on the secure port, the node's identity
//! proved by a bootstrap token, its certificate and roots over SDS. Real
//! Envoy 1.40, control plane, gateways and backend on 127.0.0.1.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::secure::{
    gateway_mesh, istio_mutual_to, mesh_ca, secure_control_plane, secure_envoy, server, status, SecureBootstrap, TOKEN,
};
use common::{backend, debug_get, free_port, wait_until, Gateway};
use mesh_testkit::envoy::Envoy;

const ENVOY_ID: &str = "spiffe://cluster.local/ns/default/sa/ingress";
const BACK_ID: &str = "spiffe://cluster.local/ns/default/sa/httpbin";
const FRONT_ID: &str = "spiffe://cluster.local/ns/default/sa/sleep";

#[test]
fn envoy_and_mesh_proxy_speak_istio_mtls_with_certificates_from_our_control_plane() {
    let work = tempfile::tempdir().unwrap();
    let path = |name: &str| work.path().join(name);
    let ca = mesh_ca(work.path(), &[("back-certs", BACK_ID), ("front-certs", FRONT_ID)], ENVOY_ID);
    let (_backend, backend_port) = backend("v1", 0);

    // mesh-proxy as the server: an ISTIO_MUTUAL gateway server in front of
    // the backend, with its certificate from files of the same CA.
    let (back_port, envoy_port, envoy_mtls_port, front_port) = (free_port(), free_port(), free_port(), free_port());
    let back_config = path("back");
    std::fs::create_dir(&back_config).unwrap();
    let back_server = server(back_port, "    tls: {mode: ISTIO_MUTUAL}\n");
    std::fs::write(back_config.join("mesh.yaml"), gateway_mesh(&back_server, "app", backend_port, BACK_ID, ""))
        .unwrap();
    let back_certs = path("back-certs");
    let back = Gateway::launch(
        &["--config", &back_config.to_string_lossy()],
        back_port,
        &["--cert-dir", &back_certs.to_string_lossy()],
        Stdio::null(),
    );

    // Envoy: a plaintext server that sends to mesh-proxy over
    // ISTIO_MUTUAL, and an ISTIO_MUTUAL server of its own.
    let cp_config = path("cp");
    std::fs::create_dir(&cp_config).unwrap();
    let servers = server(envoy_port, "") + &server(envoy_mtls_port, "    tls: {mode: ISTIO_MUTUAL}\n");
    let mesh = gateway_mesh(&servers, "httpbin", back_port, BACK_ID, &istio_mutual_to("httpbin", ""));
    std::fs::write(cp_config.join("mesh.yaml"), &mesh).unwrap();
    let (_cp, secure, debug) = secure_control_plane(&cp_config, &ca, &path("tokens"));
    let envoy_dir = path("envoy");
    std::fs::create_dir(&envoy_dir).unwrap();
    let envoy = secure_envoy(&envoy_dir, secure, &ca.join("root-cert.pem"));

    // Envoy -> mTLS -> mesh-proxy: the back takes only mTLS, so a 200
    // says Envoy presented its SDS certificate and accepted the back's.
    assert!(
        wait_until(Duration::from_secs(30), || status(envoy_port) == 200),
        "Envoy never reached mesh-proxy over mTLS (answered {}); Envoy's stats:\n{}\nmesh-proxy's:\n{}",
        status(envoy_port),
        envoy.admin_get("/stats?filter=httpbin.*(ssl|cx_connect_fail|upstream_rq_5)").unwrap_or_default(),
        back.admin_get("/stats").map(|r| r.body).unwrap_or_default()
    );
    let syncz = debug_get(debug, "/debug/syncz").unwrap().body;
    assert!(syncz.contains("SDS"), "the node was sent its secrets: {syncz}");
    let certs = envoy.admin_get("/certs").unwrap_or_default();
    assert!(certs.contains(ENVOY_ID), "Envoy holds a certificate for the identity it proved: {certs}");

    // mesh-proxy -> mTLS -> Envoy: a mesh-proxy gateway whose upstream is
    // Envoy's ISTIO_MUTUAL server, expecting Envoy's identity.
    let front_config = path("front");
    std::fs::create_dir(&front_config).unwrap();
    let front_mesh =
        gateway_mesh(&server(front_port, ""), "ingress", envoy_mtls_port, ENVOY_ID, &istio_mutual_to("ingress", ""));
    std::fs::write(front_config.join("mesh.yaml"), front_mesh).unwrap();
    let front_certs = path("front-certs");
    let _front = Gateway::launch(
        &["--config", &front_config.to_string_lossy()],
        front_port,
        &["--cert-dir", &front_certs.to_string_lossy()],
        Stdio::null(),
    );
    assert!(
        wait_until(Duration::from_secs(20), || status(front_port) == 200),
        "mesh-proxy never reached Envoy's ISTIO_MUTUAL server (front answered {}); Envoy's log:\n{}",
        status(front_port),
        envoy.log()
    );
    // Plaintext to Envoy's ISTIO_MUTUAL server gets nothing.
    assert_eq!(status(envoy_mtls_port), 0, "plaintext to an ISTIO_MUTUAL server");

    // Secure naming: a server that is not the expected identity is refused.
    let wrong = format!(", subjectAltNames: [\"{FRONT_ID}\"]");
    let mesh = gateway_mesh(&servers, "httpbin", back_port, BACK_ID, &istio_mutual_to("httpbin", &wrong));
    std::fs::write(cp_config.join("mesh.yaml"), mesh).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || status(envoy_port) == 503),
        "Envoy kept talking to a server whose SPIFFE ID is not the expected one"
    );
}

/// The LDS version the node ACKed, once it ACKed what it was last sent
/// (and it differs from `previous`); panics on a NACK.
fn acked_listeners(debug: u16, previous: &str) -> String {
    let mut last = String::new();
    let acked = wait_until(Duration::from_secs(20), || {
        last = debug_get(debug, "/debug/syncz").map(|r| r.body).unwrap_or_default();
        let syncz: serde_json::Value = serde_json::from_str(&last).unwrap_or_default();
        let lds = &syncz["nodes"][0]["types"]["LDS"];
        assert!(syncz["totals"]["nacks"] == 0, "the node NACKed: {last}");
        lds["acked_version"] == lds["sent_version"] && lds["acked_version"].as_str().is_some_and(|v| v != previous)
    });
    assert!(acked, "no new listeners ACKed in 20 s: {last}");
    let syncz: serde_json::Value = serde_json::from_str(&last).unwrap();
    syncz["nodes"][0]["types"]["LDS"]["acked_version"].as_str().unwrap_or_default().to_string()
}

/// `virtualInbound`'s filter chains in Envoy's config dump: the port and
/// transport each matches (no port: Istio's passthrough chains for ports
/// no Service declares), and whether it requires a client certificate.
fn inbound_chains(envoy: &Envoy) -> Vec<(Option<u64>, String, bool)> {
    let dump = envoy.admin_get("/config_dump?resource=dynamic_listeners").unwrap_or_default();
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap_or_default();
    let Some(listener) = dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["name"] == "virtualInbound")
        .map(|l| &l["active_state"]["listener"])
    else {
        return Vec::new();
    };
    listener["filter_chains"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let port = c["filter_chain_match"]["destination_port"].as_u64();
            let transport = c["filter_chain_match"]["transport_protocol"].as_str().unwrap_or("").to_string();
            let mutual = c["transport_socket"]["typed_config"]["require_client_certificate"] == true;
            (port, transport, mutual)
        })
        .collect()
}

/// Istio's mesh as a sidecar Envoy sees it, over the secure port: each
/// PeerAuthentication mode, a DENY policy and an empty mesh are ACKed,
/// and the inbound chains follow the mode.
#[test]
fn an_envoy_sidecar_acks_every_peer_authentication_mode_and_an_empty_mesh() {
    for port in [15001, 15006] {
        assert!(std::net::TcpListener::bind(("0.0.0.0", port)).is_ok(), "a sidecar Envoy binds {port}: it is busy");
    }
    let work = tempfile::tempdir().unwrap();
    let path = |name: &str| work.path().join(name);
    let ca = mesh_ca(work.path(), &[], "spiffe://cluster.local/ns/default/sa/reviews");
    let config = path("cp");
    std::fs::create_dir(&config).unwrap();
    let service = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, labels: {app: reviews, security.istio.io/tlsMode: istio}}]
"#;
    std::fs::write(config.join("reviews.yaml"), service).unwrap();
    let (_cp, secure, debug) = secure_control_plane(&config, &ca, &path("tokens"));
    let envoy_dir = path("envoy");
    std::fs::create_dir(&envoy_dir).unwrap();
    let root = ca.join("root-cert.pem");
    let bootstrap = SecureBootstrap {
        node_id: "sidecar~127.0.0.1~reviews-v1.default~default.svc.cluster.local",
        namespace: "default",
        labels: "app: reviews",
        xds: ("127.0.0.1", secure),
        admin_port: 0,
        token: TOKEN,
        root: &root,
        api_type: "GRPC",
    }
    .render();
    let envoy = Envoy::start(&bootstrap, &envoy_dir);

    // PERMISSIVE by default: mTLS and plaintext on 9080.
    let mut version = acked_listeners(debug, "");
    let tls = |port: Option<u64>| (port, "tls".to_string(), true);
    let raw = |port: Option<u64>| (port, "raw_buffer".to_string(), false);
    let (declared, undeclared) = (Some(9080), None);
    let permissive = vec![tls(declared), raw(declared), tls(undeclared), raw(undeclared)];
    // Active once its secrets came: the TLS chain waits for them.
    assert!(
        wait_until(Duration::from_secs(10), || inbound_chains(&envoy) == permissive),
        "PERMISSIVE: inbound chains {:?}; Envoy's log:\n{}",
        inbound_chains(&envoy),
        envoy.log()
    );
    let policy = |mode: &str| {
        format!("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: istio-system}}\nspec:\n  mtls: {{mode: {mode}}}\n")
    };
    let strict = vec![tls(declared), tls(undeclared)];
    for (mode, chains) in
        [("STRICT", strict), ("DISABLE", vec![raw(declared), raw(undeclared)]), ("PERMISSIVE", permissive)]
    {
        std::fs::write(config.join("peer-authentication.yaml"), policy(mode)).unwrap();
        version = acked_listeners(debug, &version);
        assert!(
            wait_until(Duration::from_secs(10), || inbound_chains(&envoy) == chains),
            "{mode}: inbound chains {:?}, expected {chains:?}",
            inbound_chains(&envoy)
        );
    }
    let deny = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-admin, namespace: default}\nspec:\n  action: DENY\n  rules: [{to: [{operation: {paths: [/admin]}}]}]\n";
    std::fs::write(config.join("deny.yaml"), deny).unwrap();
    std::fs::write(config.join("peer-authentication.yaml"), policy("STRICT")).unwrap();
    version = acked_listeners(debug, &version);
    // No inbound service: only the passthrough chains, as Istio's.
    std::fs::remove_file(config.join("reviews.yaml")).unwrap();
    acked_listeners(debug, &version);
    assert!(
        wait_until(Duration::from_secs(10), || inbound_chains(&envoy) == [tls(undeclared)]),
        "with no inbound service: {:?}",
        inbound_chains(&envoy)
    );
}
