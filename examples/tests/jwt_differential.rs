//! RequestAuthentication, differential: one RequestAuthentication, one set
//! of AuthorizationPolicies and a claim route, enforced by Envoy 1.40
//! (jwt_authn and RBAC from our control plane), by a mesh-proxy gateway
//! (its own checks) and by a mesh-proxy gateway fed the same jwt_authn and
//! RBAC over xDS, each in front of the same backend. The same tokens
//! (valid, expired, not yet valid, wrong issuer, audience or key, `none`,
//! tampered, malformed, nested and list claims) go to all three on several
//! paths; every status code and body must agree.

mod common;

use std::time::Duration;

use common::secure::{gateway_mesh, server};
use common::{backend, control_plane_on, debug_get, free_port, gateway_envoy, get, wait_until, Gateway};
use mesh_testkit::jwt::{jwks, now, Algorithm, Signer};
use serde_json::{json, Value};

const ISSUER_A: &str = "https://issuer-a.example";
const ISSUER_B: &str = "https://issuer-b.example";
/// Its keys come from a JWKS server: fetched by mesh-proxy, and by the
/// control plane for Envoy.
const ISSUER_C: &str = "https://issuer-c.example";

/// The gateway on `port`, the backend as `app`, the JWT rules and
/// policies, and routes: claim routes first, then everything to `app`.
fn mesh(port: u16, backend: u16, rules: &str) -> String {
    let claim_routes = r#"  - match: [{uri: {prefix: /route}, headers: {"@request.auth.claims.groups": {exact: admin}}}]
    directResponse: {status: 203}
  - match: [{uri: {prefix: /route}, headers: {"@request.auth.claims[org][team]": {exact: blue}}}]
    directResponse: {status: 206}
"#;
    let mesh = gateway_mesh(&server(port, ""), "app", backend, "", "");
    let routed = mesh.replacen("  http:\n", &format!("  http:\n{claim_routes}"), 1);
    assert_ne!(routed, mesh, "the VirtualService should have an http list");
    format!("{routed}---\n{rules}")
}

/// Three issuers: A in the default places with an audience, B in its own
/// header, forwarded, with a claim copied into a header, C with its keys
/// at `c_uri`.
fn rules(a_keys: &str, b_keys: &str, c_uri: &str) -> String {
    let ra = json!({
        "apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
        "metadata": {"name": "jwt", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"istio": "ingressgateway"}}, "jwtRules": [
            {"issuer": ISSUER_A, "audiences": ["api"], "jwks": a_keys},
            {"issuer": ISSUER_B, "jwks": b_keys, "fromHeaders": [{"name": "x-jwt-b"}], "forwardOriginalToken": true,
             "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}]},
            {"issuer": ISSUER_C, "jwksUri": c_uri}
        ]}
    });
    format!(
        "{ra}\n---\n{}",
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: default}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: ALLOW
  rules:
  - to: [{operation: {paths: ["/public*", "/route*"]}}]
  - from: [{source: {requestPrincipals: ["https://issuer-a.example/*"]}}]
    to: [{operation: {paths: ["/a*"]}}]
  - from: [{source: {requestPrincipals: ["*/bob"]}}]
    to: [{operation: {paths: ["/b*"]}}]
  - to: [{operation: {paths: ["/admin*"]}}]
    when: [{key: "request.auth.claims[groups]", values: [admin]}]
  - to: [{operation: {paths: ["/team*"]}}]
    when: [{key: "request.auth.claims[org][team]", values: [blue]}]
  - to: [{operation: {paths: ["/aud*"]}}]
    when: [{key: request.auth.audiences, values: ["api"]}, {key: request.auth.presenter, values: ["web*"]}]
  - from: [{source: {notRequestPrincipals: ["*"]}}]
    to: [{operation: {paths: ["/anonymous*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny, namespace: default}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules:
  - when: [{key: "request.auth.claims[scope]", values: [blocked]}]
"#
    )
}

/// A token's name and the headers it travels in.
struct Case {
    name: String,
    headers: Vec<(String, String)>,
}

fn b64(v: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

fn cases(a: &[Signer], b: &Signer, c: &[Signer; 2], stranger: &Signer) -> Vec<Case> {
    let t = now();
    let base = json!({"iss": ISSUER_A, "sub": "alice", "aud": "api", "exp": t + 600, "azp": "web-app"});
    let with = |patch: Value| {
        let mut c = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let variants: Vec<(&str, Value)> = vec![
        ("valid", base.clone()),
        ("expired", with(json!({"exp": t - 3600}))),
        ("expired-in-skew", with(json!({"exp": t - 30}))),
        ("not-yet-valid", with(json!({"nbf": t + 3600}))),
        ("nbf-in-skew", with(json!({"nbf": t + 30}))),
        ("wrong-issuer", with(json!({"iss": "https://evil.example"}))),
        ("wrong-audience", with(json!({"aud": ["web", "mobile"]}))),
        ("no-audience", with(json!({"aud": null}))),
        ("no-subject", with(json!({"sub": null}))),
        ("no-exp", with(json!({"exp": null}))),
        ("admin-list", with(json!({"groups": ["dev", "admin"]}))),
        ("admin-string", with(json!({"groups": "admin"}))),
        ("not-admin", with(json!({"groups": ["dev"]}))),
        ("team-blue", with(json!({"org": {"team": "blue"}}))),
        ("team-red", with(json!({"org": {"team": "red"}}))),
        ("blocked-scope", with(json!({"scope": "read blocked"}))),
        ("presenter-mobile", with(json!({"azp": "mobile"}))),
        ("exp-not-number", with(json!({"exp": "tomorrow"}))),
    ];
    let bearer = |token: String| vec![("authorization".to_string(), format!("Bearer {token}"))];
    let mut out = Vec::new();
    for signer in a {
        for (name, claims) in &variants {
            out.push(Case { name: format!("{:?}/{name}", signer.alg), headers: bearer(signer.mint(claims)) });
        }
    }
    let valid = a[0].mint(&base);
    let parts: Vec<&str> = valid.split('.').collect();
    let forged_payload = b64(&with(json!({"sub": "admin", "groups": "admin"})).to_string());
    let mut broken = vec![
        ("stranger-key", stranger.mint(&base)),
        ("unknown-kid", Signer::new(Algorithm::RS256, "nobody").mint(&base)),
        ("alg-none", format!("{}.{}.", b64(r#"{"alg":"none"}"#), parts[1])),
        ("alg-none-signed", a[0].mint_with_header(&json!({"alg": "none", "kid": a[0].kid}), &base)),
        ("alg-hs256", a[0].mint_with_header(&json!({"alg": "HS256", "kid": a[0].kid}), &base)),
        ("tampered-payload", format!("{}.{forged_payload}.{}", parts[0], parts[2])),
        ("truncated-signature", format!("{}.{}.{}", parts[0], parts[1], &parts[2][..parts[2].len() / 2])),
        ("two-parts", format!("{}.{}", parts[0], parts[1])),
        ("four-parts", format!("{valid}.x")),
        ("header-not-base64", format!("!!!.{}.{}", parts[1], parts[2])),
        ("header-not-json", format!("{}.{}.{}", b64("not json"), parts[1], parts[2])),
        ("payload-not-base64", format!("{}.%%%.{}", parts[0], parts[2])),
        ("payload-not-json", format!("{}.{}.{}", parts[0], b64("[1,2"), parts[2])),
        ("signature-not-base64", format!("{}.{}.@@@", parts[0], parts[1])),
        ("garbage", "garbage".to_string()),
        ("kid-not-string", a[0].mint_with_header(&json!({"alg": "RS256", "kid": 7}), &base)),
    ];
    broken.push(("large", format!("{}.{}.{}", parts[0], b64(&"x".repeat(30_000)), parts[2])));
    for (name, token) in broken {
        out.push(Case { name: name.into(), headers: bearer(token) });
    }
    let b_token = |sub: &str| b.mint(&json!({"iss": ISSUER_B, "sub": sub, "exp": t + 600}));
    out.push(Case { name: "b/bob".into(), headers: vec![("x-jwt-b".into(), b_token("bob"))] });
    out.push(Case { name: "b/carol".into(), headers: vec![("x-jwt-b".into(), b_token("carol"))] });
    out.push(Case { name: "b/in-bearer".into(), headers: bearer(b_token("bob")) });
    out.push(Case { name: "a/in-b-header".into(), headers: vec![("x-jwt-b".into(), valid.clone())] });
    out.push(Case {
        name: "a-and-b".into(),
        headers: vec![("authorization".into(), format!("Bearer {valid}")), ("x-jwt-b".into(), b_token("bob"))],
    });
    out.push(Case {
        name: "valid-and-expired".into(),
        headers: vec![
            ("authorization".into(), format!("Bearer {valid}")),
            ("authorization".into(), format!("Bearer {}", a[0].mint(&with(json!({"exp": t - 3600}))))),
        ],
    });
    let c_token = |signer: &Signer| signer.mint(&json!({"iss": ISSUER_C, "sub": "bob", "exp": t + 600}));
    out.push(Case { name: "c/published-key".into(), headers: bearer(c_token(&c[0])) });
    out.push(Case { name: "c/unpublished-key".into(), headers: bearer(c_token(&c[1])) });
    out.push(Case {
        name: "basic-auth".into(),
        headers: vec![("authorization".into(), "Basic YWxpY2U6c2VjcmV0".into())],
    });
    out.push(Case { name: "anonymous".into(), headers: vec![] });
    out.push(Case { name: "param".into(), headers: vec![("__query".into(), format!("access_token={valid}"))] });
    out
}

const PATHS: [&str; 8] = ["/public", "/a", "/b", "/admin", "/team", "/aud", "/anonymous", "/route"];

/// The status, and for a refusal its body and challenge.
fn send(port: u16, path: &str, case: &Case) -> (u16, String) {
    let query = case.headers.iter().find(|(k, _)| k == "__query").map(|(_, q)| format!("?{q}")).unwrap_or_default();
    let headers: Vec<(&str, &str)> =
        case.headers.iter().filter(|(k, _)| k != "__query").map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = get(port, &format!("{path}{query}"), &headers);
    let refusal = match r.status {
        401 | 403 => format!("{} | {}", r.body, r.header("www-authenticate").unwrap_or("-")),
        _ => String::new(),
    };
    (r.status, refusal)
}

#[test]
fn envoy_jwt_authn_and_mesh_proxy_answer_every_token_alike() {
    let a: Vec<Signer> = [Algorithm::RS256, Algorithm::ES256, Algorithm::PS256, Algorithm::EdDSA, Algorithm::ES384]
        .into_iter()
        .enumerate()
        .map(|(i, alg)| Signer::new(alg, &format!("a{i}")))
        .collect();
    let b = Signer::new(Algorithm::ES256, "b0");
    // Same kid and algorithm as A's first key: only the signature tells.
    let stranger = Signer::new(Algorithm::RS256, &a[0].kid);
    let a_refs: Vec<&Signer> = a.iter().collect();
    let c = [Signer::new(Algorithm::ES256, "c0"), Signer::new(Algorithm::RS256, "c1")];
    let keys = tempfile::tempdir().unwrap();
    std::fs::write(keys.path().join("c.json"), jwks(&[&c[0]])).unwrap();
    let (_jwks_server, jwks_port) = mesh_testkit::jwt::jwks_server(keys.path());
    let rules = rules(&jwks(&a_refs), &jwks(&[&b]), &format!("http://127.0.0.1:{jwks_port}/c.json"));

    let (_backend, backend_port) = backend("v1", 0);
    let (envoy_port, mesh_port, xds_port) = (free_port(), free_port(), free_port());
    let work = tempfile::tempdir().unwrap();
    let dir = |name: &str| {
        let d = work.path().join(name);
        std::fs::create_dir(&d).unwrap();
        d
    };
    let (mesh_dir, cp_dir, xds_dir) = (dir("mesh"), dir("cp"), dir("xds"));
    std::fs::write(mesh_dir.join("mesh.yaml"), mesh(mesh_port, backend_port, &rules)).unwrap();
    std::fs::write(cp_dir.join("mesh.yaml"), mesh(envoy_port, backend_port, &rules)).unwrap();
    std::fs::write(xds_dir.join("mesh.yaml"), mesh(xds_port, backend_port, &rules)).unwrap();
    let _mesh = Gateway::launch(
        &["--config", &mesh_dir.to_string_lossy(), "--namespace", "default"],
        mesh_port,
        &["--jwks-refresh", "1"],
        std::process::Stdio::null(),
    );
    // mesh-proxy fed over xDS (the JWT filter, RBAC on its payload and
    // claim routes as Envoy gets them), by a control plane of its own: its
    // gateway port differs from Envoy's.
    let (_xds_cp, xds_for_mesh, _) = control_plane_on(&["--config", &xds_dir.to_string_lossy(), "--jwks-refresh", "1"]);
    let server = format!("http://127.0.0.1:{xds_for_mesh}");
    let _over_xds = Gateway::launch(
        &["--xds-server", &server, "--namespace", "default"],
        xds_port,
        &[],
        std::process::Stdio::null(),
    );
    let (_cp, xds, debug) = control_plane_on(&["--config", &cp_dir.to_string_lossy(), "--jwks-refresh", "1"]);
    let envoy = gateway_envoy(&dir("envoy"), xds, "GRPC");
    assert!(
        wait_until(Duration::from_secs(30), || std::net::TcpStream::connect(("127.0.0.1", envoy_port)).is_ok()
            && get(envoy_port, "/public", &[]).status == 200),
        "Envoy never served the gateway; its log:\n{}\nsyncz: {:?}",
        envoy.log(),
        debug_get(debug, "/debug/syncz").map(|r| r.body)
    );

    // The control plane fetched C's keys and pushed them inline.
    let c_valid = bearer_header(&c[0].mint(&json!({"iss": ISSUER_C, "sub": "bob", "exp": now() + 600})));
    for (who, port) in [("Envoy", envoy_port), ("mesh-proxy over xDS", xds_port)] {
        assert!(
            wait_until(Duration::from_secs(30), || get(port, "/public", &[("authorization", &c_valid)]).status == 200),
            "{who} never got issuer C's keys from the control plane; syncz: {:?}",
            debug_get(debug, "/debug/syncz").map(|r| r.body)
        );
    }
    let cases = cases(&a, &b, &c, &stranger);
    assert!(cases.len() >= 60, "{} tokens", cases.len());
    let mut disagreements = Vec::new();
    let mut codes = std::collections::BTreeMap::<u16, usize>::new();
    for case in &cases {
        for path in PATHS {
            let (envoy_code, envoy_body) = send(envoy_port, path, case);
            *codes.entry(envoy_code).or_default() += 1;
            for (who, port) in [("mesh-proxy", mesh_port), ("over xDS", xds_port)] {
                let (code, body) = send(port, path, case);
                if (envoy_code, &envoy_body) != (code, &body) {
                    disagreements.push(format!(
                        "{:28} {path:10} Envoy {envoy_code} {envoy_body:?} {who} {code} {body:?}",
                        case.name,
                    ));
                }
            }
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of {} answers differ (codes from Envoy: {codes:?}):\n{}",
        disagreements.len(),
        cases.len() * PATHS.len(),
        disagreements.join("\n")
    );
    for code in [200, 203, 206, 401, 403] {
        assert!(codes.get(&code).is_some_and(|n| *n > 0), "no {code} among {codes:?}: the cases should cover it");
    }

    // C's second key published: both take it at their next fetch, and
    // the first key's tokens keep passing.
    std::fs::write(keys.path().join("c.json"), jwks(&[&c[0], &c[1]])).unwrap();
    let rotated = bearer_header(&c[1].mint(&json!({"iss": ISSUER_C, "sub": "bob", "exp": now() + 600})));
    for (who, port) in [("Envoy", envoy_port), ("mesh-proxy", mesh_port), ("mesh-proxy over xDS", xds_port)] {
        assert!(
            wait_until(Duration::from_secs(30), || get(port, "/public", &[("authorization", &rotated)]).status == 200),
            "{who} never took the rotated key"
        );
        assert_eq!(get(port, "/public", &[("authorization", &c_valid)]).status, 200, "{who}: the first key");
    }
}

fn bearer_header(token: &str) -> String {
    format!("Bearer {token}")
}
