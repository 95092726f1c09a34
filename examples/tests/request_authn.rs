//! RequestAuthentication end to end in the gateway binary, keys from a
//! JWKS server (a child process): fetched at start, rotated at the
//! server, a failing and a slow issuer beside a working one, the token
//! kept from the app, every refusal in the metrics.

mod common;

use std::time::{Duration, Instant};

use common::secure::{gateway_mesh, server};
use common::{free_port, get, wait_until, Gateway};
use mesh_testkit::jwt::{jwks, jwks_server, now, Algorithm, Signer};
use mesh_testkit::peers::{recorded_header, recording_upstream};

/// The gateway on `port` routing to `app`, and issuers whose keys are at
/// the JWKS server `base`.
fn mesh(port: u16, app: u16, base: &str) -> String {
    let rules = format!(
        r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: istio-system}}
spec:
  jwtRules:
  - issuer: https://rotating.example
    jwksUri: {base}/jwks.json
    outputClaimToHeaders: [{{header: x-user, claim: sub}}]
  - issuer: {base}
  - issuer: https://down.example
    jwksUri: {base}/fail/jwks.json
  - issuer: https://slow.example
    jwksUri: {base}/slow/jwks.json
    timeout: 8s
"#
    );
    format!("{}---\n{rules}", gateway_mesh(&server(port, ""), "app", app, "", ""))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn metric(g: &Gateway, line_start: &str) -> f64 {
    let body = g.admin_get("/stats/prometheus").map(|r| r.body).unwrap_or_default();
    body.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn gateway_takes_keys_from_jwks_uri_and_discovery_rotates_them_and_counts_refusals() {
    let keys = tempfile::tempdir().unwrap();
    let (old, new) = (Signer::new(Algorithm::RS256, "old"), Signer::new(Algorithm::ES256, "new"));
    std::fs::write(keys.path().join("jwks.json"), jwks(&[&old])).unwrap();
    let (_jwks, jwks_port) = jwks_server(keys.path());
    let base = format!("http://127.0.0.1:{jwks_port}");
    std::fs::create_dir(keys.path().join(".well-known")).unwrap();
    let discovery = serde_json::json!({"issuer": base, "jwks_uri": format!("{base}/jwks.json")});
    std::fs::write(keys.path().join(".well-known/openid-configuration"), discovery.to_string()).unwrap();

    let (_app, app_port) = recording_upstream(None);
    let config = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(config.path().join("mesh.yaml"), mesh(port, app_port, &base)).unwrap();
    let g = Gateway::start_with(config.path(), port, &["--jwks-refresh", "1"], std::process::Stdio::null());
    let token =
        |signer: &Signer, iss: &str| signer.mint(&serde_json::json!({"iss": iss, "sub": "alice", "exp": now() + 600}));

    // From jwksUri: the token is kept from the app, the claim copied.
    let r = get(port, "/x", &[("authorization", &bearer(&token(&old, "https://rotating.example")))]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(recorded_header(&r.body, "authorization").is_empty(), "the token reached the app: {}", r.body);
    assert_eq!(recorded_header(&r.body, "x-user"), ["alice"]);
    // From the issuer's discovery document.
    assert_eq!(get(port, "/x", &[("authorization", &bearer(&token(&old, &base)))]).status, 200);
    assert_eq!(get(port, "/x", &[]).status, 200, "no token passes");
    // A CORS preflight is not checked (istiod's bypass_cors_preflight).
    let bad = bearer("not-a-token");
    let preflight =
        [("origin", "https://app.example"), ("access-control-request-method", "GET"), ("authorization", bad.as_str())];
    let r =
        mesh_testkit::http::request(&format!("127.0.0.1:{port}"), "OPTIONS", "/x", "test.example.com", &preflight, "")
            .unwrap();
    assert_eq!(r.status, 200, "a preflight was checked: {}", r.body);
    assert_eq!(get(port, "/x", &[("authorization", &bad)]).status, 401);

    // A JWKS endpoint answering 500: that issuer's tokens are refused.
    let r = get(port, "/x", &[("authorization", &bearer(&token(&old, "https://down.example")))]);
    assert_eq!((r.status, r.body.as_str()), (401, "Jwks remote fetch is failed"));
    // A slow one holds its own requests only.
    let slow = std::thread::spawn(move || {
        let t = Signer::new(Algorithm::RS256, "x")
            .mint(&serde_json::json!({"iss": "https://slow.example", "exp": now() + 600}));
        get(port, "/x", &[("authorization", &bearer(&t))]).status
    });
    let started = Instant::now();
    assert_eq!(get(port, "/x", &[("authorization", &bearer(&token(&old, "https://rotating.example")))]).status, 200);
    assert!(started.elapsed() < Duration::from_secs(10), "a known issuer waited {:?} on a slow one", started.elapsed());
    assert!(!slow.is_finished(), "the slow issuer's request should still wait for its keys");

    // Rotation at the JWKS server: a new key beside the old, then the old
    // withdrawn.
    std::fs::write(keys.path().join("jwks.json"), jwks(&[&old, &new])).unwrap();
    assert!(
        wait_until(Duration::from_secs(15), || get(
            port,
            "/x",
            &[("authorization", &bearer(&token(&new, "https://rotating.example")))]
        )
        .status
            == 200),
        "the new key never verified"
    );
    assert_eq!(get(port, "/x", &[("authorization", &bearer(&token(&old, "https://rotating.example")))]).status, 200);
    std::fs::write(keys.path().join("jwks.json"), jwks(&[&new])).unwrap();
    assert!(
        wait_until(Duration::from_secs(15), || get(
            port,
            "/x",
            &[("authorization", &bearer(&token(&old, "https://rotating.example")))]
        )
        .status
            == 401),
        "the withdrawn key kept verifying"
    );

    assert!(metric(&g, "mesh_jwt_authn_denied_total{reason=\"JwksFetchFailed\"}") >= 1.0);
    assert!(metric(&g, "mesh_jwks_fetches_total{result=\"error\"}") >= 1.0);
    assert!(metric(&g, "mesh_jwks_fetches_total{result=\"ok\"}") >= 3.0);
    assert_eq!(slow.join().unwrap(), 401, "the slow issuer's keys never came within its timeout");
}
