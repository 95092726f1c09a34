use super::*;
use crate::config::{Resource, Spec};

fn policies(yaml: &str) -> Vec<AuthorizationPolicyRef> {
    yaml.split("\n---\n")
        .map(|doc| {
            let r = Resource::from_yaml(doc).unwrap();
            let Spec::AuthorizationPolicy(p) = r.spec else { panic!("not a policy") };
            AuthorizationPolicyRef { namespace: r.meta.namespace, name: r.meta.name, policy: p }
        })
        .collect()
}

struct Req {
    headers: http::HeaderMap,
}

fn request<'a>(r: &'a Req, method: &'a str, path: &'a str, principal: Option<&'a str>, ip: &str) -> AuthzRequest<'a> {
    AuthzRequest {
        source_ip: ip.parse().ok(),
        remote_ip: None,
        source_principal: principal,
        peer_uri: None,
        request_auth: None,
        host: "httpbin.foo.svc.cluster.local:8000",
        method,
        path,
        port: 8000,
        headers: &r.headers,
        destination_ip: None,
        sni: None,
    }
}

const SLEEP: Option<&str> = Some("cluster.local/ns/foo/sa/sleep");

#[test]
fn allow_policy_admits_only_matching_requests() {
    let a = Authorizer::new(&policies(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: httpbin, namespace: foo}\nspec:\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/foo/sa/sleep\"]\n    to:\n    - operation:\n        methods: [GET]\n        paths: [\"/info*\"]\n    when:\n    - key: request.headers[version]\n      values: [v1, v2]\n",
    ));
    let mut r = Req { headers: http::HeaderMap::new() };
    r.headers.insert("version", "v1".parse().unwrap());
    assert_eq!(a.evaluate(&request(&r, "GET", "/info/x", SLEEP, "10.0.0.1")), Decision::Allow);
    assert_eq!(a.evaluate(&request(&r, "POST", "/info", SLEEP, "10.0.0.1")), Decision::Deny { policy: None });
    assert_eq!(a.evaluate(&request(&r, "GET", "/admin", SLEEP, "10.0.0.1")), Decision::Deny { policy: None });
    assert_eq!(
        a.evaluate(&request(&r, "GET", "/info", None, "10.0.0.1")),
        Decision::Deny { policy: None },
        "no mTLS identity"
    );
    r.headers.insert("version", "v3".parse().unwrap());
    assert_eq!(a.evaluate(&request(&r, "GET", "/info", SLEEP, "10.0.0.1")), Decision::Deny { policy: None });
}

#[test]
fn deny_wins_over_allow_and_not_forms_work() {
    let a = Authorizer::new(&policies(concat!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-all, namespace: foo}\nspec:\n  rules:\n  - {}\n",
        "\n---\n",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-outside, namespace: foo}\nspec:\n  action: DENY\n  rules:\n  - from:\n    - source:\n        notNamespaces: [foo]\n  - from:\n    - source:\n        ipBlocks: [\"192.168.0.0/16\"]\n",
    )));
    let r = Req { headers: http::HeaderMap::new() };
    assert_eq!(a.evaluate(&request(&r, "GET", "/", SLEEP, "10.0.0.1")), Decision::Allow);
    assert_eq!(
        a.evaluate(&request(&r, "GET", "/", Some("cluster.local/ns/bar/sa/x"), "10.0.0.1")),
        Decision::Deny { policy: Some("foo/deny-outside".into()) }
    );
    assert_eq!(
        a.evaluate(&request(&r, "GET", "/", SLEEP, "192.168.3.4")),
        Decision::Deny { policy: Some("foo/deny-outside".into()) }
    );
}

/// As Envoy's RBAC: an attribute the request lacks matches no value,
/// and so every `not` form (plaintext is "not namespace foo").
#[test]
fn a_missing_attribute_matches_not_forms() {
    let a = Authorizer::new(&policies(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny, namespace: foo}\nspec:\n  action: DENY\n  rules:\n  - from:\n    - source:\n        notNamespaces: [foo]\n  - when:\n    - key: request.headers[x-user]\n      notValues: [alice]\n",
    ));
    let mut r = Req { headers: http::HeaderMap::new() };
    r.headers.insert("x-user", "alice".parse().unwrap());
    assert_eq!(a.evaluate(&request(&r, "GET", "/", SLEEP, "10.0.0.1")), Decision::Allow);
    let denied = Decision::Deny { policy: Some("foo/deny".into()) };
    assert_eq!(a.evaluate(&request(&r, "GET", "/", None, "10.0.0.1")), denied, "plaintext");
    let r = Req { headers: http::HeaderMap::new() };
    assert_eq!(a.evaluate(&request(&r, "GET", "/", SLEEP, "10.0.0.1")), denied, "no x-user header");
}

#[test]
fn empty_allow_policy_denies_everything_and_no_policy_allows() {
    let deny_all = Authorizer::new(&policies(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: foo}\nspec: {}\n",
    ));
    let r = Req { headers: http::HeaderMap::new() };
    assert_eq!(deny_all.evaluate(&request(&r, "GET", "/", SLEEP, "10.0.0.1")), Decision::Deny { policy: None });
    assert_eq!(Authorizer::default().evaluate(&request(&r, "GET", "/", None, "10.0.0.1")), Decision::Allow);
}

#[test]
fn hosts_ports_suffix_and_conditions() {
    let a = Authorizer::new(&policies(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo}\nspec:\n  rules:\n  - to:\n    - operation:\n        hosts: [\"*.cluster.local\"]\n        ports: [\"8000\"]\n        notPaths: [\"*.secret\"]\n    when:\n    - key: source.ip\n      values: [\"10.0.0.0/8\"]\n    - key: request.auth.claims[group]\n      notValues: [x]\n",
    ));
    let r = Req { headers: http::HeaderMap::new() };
    // No token: the claim is missing, which no `notValues` excludes.
    assert_eq!(a.evaluate(&request(&r, "GET", "/a", None, "10.1.1.1")), Decision::Allow);
    let a = Authorizer::new(&policies(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo}\nspec:\n  rules:\n  - to:\n    - operation:\n        hosts: [\"*.cluster.local\"]\n        ports: [\"8000\"]\n        notPaths: [\"*.secret\"]\n    when:\n    - key: source.ip\n      values: [\"10.0.0.0/8\"]\n",
    ));
    assert_eq!(a.evaluate(&request(&r, "GET", "/a", None, "10.1.1.1")), Decision::Allow);
    assert_eq!(a.evaluate(&request(&r, "GET", "/a.secret", None, "10.1.1.1")), Decision::Deny { policy: None });
    assert_eq!(a.evaluate(&request(&r, "GET", "/a", None, "11.1.1.1")), Decision::Deny { policy: None });
}

fn token(payload: serde_json::Value) -> VerifiedJwt {
    let serde_json::Value::Object(map) = payload else { panic!("an object") };
    VerifiedJwt::from_payload(map, &["scope".into()])
}

#[test]
fn request_principals_match_issuer_and_subject_apart() {
    let jwt = token(serde_json::json!({"iss": "https://issuer.example/a", "sub": "alice"}));
    let no_sub = token(serde_json::json!({"iss": "https://issuer.example/a"}));
    let cases = [
        ("*", Some(&jwt), true),
        ("*", Some(&no_sub), false),
        ("*", None, false),
        ("https://issuer.example/a/alice", Some(&jwt), true),
        ("https://issuer.example/a/*", Some(&jwt), true),
        ("https://issuer.example/a/al*", Some(&jwt), true),
        ("https://issuer.example/*", Some(&jwt), false),
        ("*/alice", Some(&jwt), true),
        ("*example/a/alice", Some(&jwt), true),
        ("*ice", Some(&jwt), true),
        // Split at the last `/`: issuer `https:/`, subject `issuer*`.
        ("https://issuer*", Some(&jwt), false),
        ("https://issuer.example/a/bob", Some(&jwt), false),
    ];
    for (value, jwt, want) in cases {
        let m = PrincipalMatch::new(value);
        assert_eq!(jwt.is_some_and(|j| m.matches(j)), want, "{value}");
    }
}

#[test]
fn conditions_read_audiences_presenter_and_nested_claims() {
    let a = Authorizer::new(&policies(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo}\nspec:\n  rules:\n  - from:\n    - source:\n        requestPrincipals: [\"https://issuer.example/*\"]\n    when:\n    - key: request.auth.audiences\n      values: [api]\n    - key: request.auth.presenter\n      values: [\"web*\"]\n    - key: request.auth.claims[org][team]\n      values: [blue]\n    - key: request.auth.claims[scope]\n      values: [write]\n      notValues: [admin]\n",
    ));
    let r = Req { headers: http::HeaderMap::new() };
    let mut base = serde_json::json!({
        "iss": "https://issuer.example", "sub": "alice", "aud": ["x", "api"], "azp": "web-app",
        "org": {"team": "blue"}, "scope": "read write"
    });
    let ask = |jwt: &VerifiedJwt| {
        let mut req = request(&r, "GET", "/", None, "10.0.0.1");
        req.request_auth = Some(jwt);
        a.evaluate(&req)
    };
    assert_eq!(ask(&token(base.clone())), Decision::Allow);
    base["scope"] = "read write admin".into();
    assert_eq!(ask(&token(base.clone())), Decision::Deny { policy: None }, "a notValues word");
    base["scope"] = "write".into();
    base["org"]["team"] = serde_json::json!(["red", "blue"]);
    assert_eq!(ask(&token(base.clone())), Decision::Allow, "a list claim matches by element");
    base["aud"] = "other".into();
    assert_eq!(ask(&token(base)), Decision::Deny { policy: None });
    assert_eq!(a.evaluate(&request(&r, "GET", "/", None, "10.0.0.1")), Decision::Deny { policy: None }, "no token");
    assert_eq!(claim_path("request.auth.claims[a][b]"), Some(vec!["a".to_string(), "b".to_string()]));
    assert_eq!(claim_path("request.auth.claims[]"), None);
}

fn policy(namespace: &str, action: &str, rules: &str) -> Vec<AuthorizationPolicyRef> {
    policies(&format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: {namespace}}}\nspec:\n  action: {action}\n  rules:\n{rules}"
    ))
}

fn peer<'a>(r: &'a Req, principal: &'a str) -> AuthzRequest<'a> {
    request(r, "GET", "/", Some(principal), "10.0.0.1")
}

/// A bare service account is in the policy's namespace (istiod's regex),
/// and a source's fields all hold at once: principals AND serviceAccounts.
#[test]
fn service_accounts_live_in_the_policy_namespace_and_and_with_principals() {
    let r = Req { headers: http::HeaderMap::new() };
    let a = Authorizer::new(&policy("istio-system", "ALLOW", "  - from: [{source: {serviceAccounts: [sleep]}}]\n"));
    assert_eq!(a.evaluate(&peer(&r, "cluster.local/ns/istio-system/sa/sleep")), Decision::Allow);
    assert_eq!(a.evaluate(&peer(&r, "cluster.local/ns/default/sa/sleep")), Decision::Deny { policy: None });
    assert_eq!(a.evaluate(&peer(&r, "td/ns/istio-system/x/sa/sleep/y")), Decision::Allow, "istiod's (.+/|) and (/.+)?");
    assert_eq!(a.evaluate(&peer(&r, "cluster.local/ns/istio-system/sa/sleepy")), Decision::Deny { policy: None });

    let both = "  - from: [{source: {principals: [\"cluster.local/ns/foo/sa/a\"], serviceAccounts: [\"foo/b\"]}}]\n";
    let a = Authorizer::new(&policy("foo", "ALLOW", both));
    assert_eq!(a.evaluate(&peer(&r, "cluster.local/ns/foo/sa/a")), Decision::Deny { policy: None });
    assert_eq!(a.evaluate(&peer(&r, "cluster.local/ns/foo/sa/b")), Decision::Deny { policy: None });
}

#[test]
fn trust_domains_match_the_principal_domain() {
    let r = Req { headers: http::HeaderMap::new() };
    let a = Authorizer::new(&policy(
        "foo",
        "ALLOW",
        "  - from: [{source: {trustDomains: [\"cluster.local\", \"*.corp\"], notTrustDomains: [\"bad.corp\"]}}]\n",
    ));
    assert_eq!(a.evaluate(&peer(&r, "cluster.local/ns/foo/sa/a")), Decision::Allow);
    assert_eq!(a.evaluate(&peer(&r, "east.corp/ns/foo/sa/a")), Decision::Allow);
    assert_eq!(a.evaluate(&peer(&r, "bad.corp/ns/foo/sa/a")), Decision::Deny { policy: None });
    assert_eq!(a.evaluate(&peer(&r, "other.local/ns/foo/sa/a")), Decision::Deny { policy: None });
    assert_eq!(a.evaluate(&request(&r, "GET", "/", None, "10.0.0.1")), Decision::Deny { policy: None }, "plaintext");

    let a = Authorizer::new(&policy("foo", "DENY", "  - when: [{key: source.trust_domain, values: [\"*.corp\"]}]\n"));
    assert_eq!(a.evaluate(&peer(&r, "east.corp/ns/foo/sa/a")), Decision::Deny { policy: Some("foo/p".into()) });
    assert_eq!(a.evaluate(&peer(&r, "cluster.local/ns/foo/sa/a")), Decision::Allow);
}

/// On a connection an ALLOW rule with an HTTP field is dropped, and a
/// DENY rule loses the field: both fail closed, as istiod narrows them.
#[test]
fn connections_are_judged_by_policies_narrowed_to_tcp() {
    let r = Req { headers: http::HeaderMap::new() };
    let allow = "  - to: [{operation: {methods: [GET]}}]\n  - from: [{source: {namespaces: [foo]}}]\n    to: [{operation: {ports: [\"8000\"]}}]\n";
    let a = Authorizer::new(&policy("foo", "ALLOW", allow));
    assert_eq!(a.narrowed(), ["AuthorizationPolicy foo/p rules[0] names HTTP-only fields: it allows no connection"]);
    assert_eq!(a.evaluate(&request(&r, "GET", "/", None, "10.0.0.1")), Decision::Allow, "HTTP: the method rule");
    assert_eq!(a.evaluate_connection(&request(&r, "", "", None, "10.0.0.1")), Decision::Deny { policy: None });
    assert_eq!(a.evaluate_connection(&request(&r, "", "", SLEEP, "10.0.0.1")), Decision::Allow);

    let deny = "  - from: [{source: {namespaces: [bar]}}]\n    to: [{operation: {paths: [\"/admin\"]}}]\n";
    let a = Authorizer::new(&policy("foo", "DENY", deny));
    let bar = Some("cluster.local/ns/bar/sa/x");
    assert_eq!(a.evaluate(&request(&r, "GET", "/", bar, "10.0.0.1")), Decision::Allow, "HTTP: only /admin");
    assert_eq!(
        a.evaluate_connection(&request(&r, "", "", bar, "10.0.0.1")),
        Decision::Deny { policy: Some("foo/p".into()) },
        "a connection has no path: the whole port is denied to bar"
    );
    assert_eq!(a.evaluate_connection(&request(&r, "", "", SLEEP, "10.0.0.1")), Decision::Allow);
    assert_eq!(
        a.narrowed(),
        ["AuthorizationPolicy foo/p rules[0] names HTTP-only fields: it applies to connections without them"]
    );

    let only_http = Authorizer::new(&policy("foo", "ALLOW", "  - to: [{operation: {paths: [\"/x\"]}}]\n"));
    assert_eq!(
        only_http.evaluate_connection(&request(&r, "", "", SLEEP, "10.0.0.1")),
        Decision::Deny { policy: None },
        "an ALLOW policy with every rule dropped allows nothing"
    );
}

/// A condition key this data plane cannot read fails closed either way.
#[test]
fn an_unreadable_condition_narrows_fail_closed() {
    let r = Req { headers: http::HeaderMap::new() };
    let when = "  - when: [{key: \"experimental.envoy.filters.network.mysql_proxy[db.table]\", values: [x]}]\n";
    let deny = Authorizer::new(&policy("foo", "DENY", when));
    assert_eq!(deny.evaluate(&peer(&r, "cluster.local/ns/foo/sa/a")), Decision::Deny { policy: Some("foo/p".into()) });
    let allow = Authorizer::new(&policy("foo", "ALLOW", when));
    assert_eq!(allow.evaluate(&peer(&r, "cluster.local/ns/foo/sa/a")), Decision::Deny { policy: None });
}
