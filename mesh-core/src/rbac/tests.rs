use super::*;

fn text(pattern: TextPattern) -> TextMatch {
    TextMatch { pattern, ignore_case: false }
}

/// `uri`: the peer's URI SAN.
fn request<'a>(headers: &'a http::HeaderMap, path: &'a str, uri: Option<&'a str>) -> AuthzRequest<'a> {
    AuthzRequest {
        source_ip: "10.0.0.1".parse().ok(),
        remote_ip: None,
        source_principal: uri.map(|u| u.trim_start_matches("spiffe://")),
        peer_uri: uri,
        request_auth: None,
        host: "app.example.com",
        method: "GET",
        path,
        port: 8080,
        headers,
        destination_ip: "10.0.0.9".parse().ok(),
        sni: None,
    }
}

fn filter(action: RbacAction, permissions: Vec<Permission>, principals: Vec<Principal>) -> RbacFilter {
    RbacFilter { action, policies: vec![RbacPolicy { name: "p".into(), permissions, principals }] }
}

#[test]
fn allow_needs_a_permission_and_a_principal() {
    let h = http::HeaderMap::new();
    let sleep = Some("spiffe://cluster.local/ns/foo/sa/sleep");
    let by_sa = Principal::Authenticated(Some(text(TextPattern::Regex("spiffe://.+/ns/foo/sa/sleep".into()))));
    let rbac = Rbac::new(&[filter(
        RbacAction::Allow,
        vec![Permission::UrlPath(text(TextPattern::Prefix("/api/".into())))],
        vec![by_sa],
    )])
    .unwrap();
    assert_eq!(rbac.evaluate(&request(&h, "/api/x", sleep)), Decision::Allow);
    assert_eq!(rbac.evaluate(&request(&h, "/other", sleep)), Decision::Deny { policy: None });
    assert_eq!(rbac.evaluate(&request(&h, "/api/x", None)), Decision::Deny { policy: None }, "plaintext");
    let empty = Rbac::new(&[RbacFilter { action: RbacAction::Allow, policies: vec![] }]).unwrap();
    assert_eq!(empty.evaluate(&request(&h, "/", sleep)), Decision::Deny { policy: None }, "no policy allows nothing");
}

#[test]
fn deny_names_the_policy_and_log_decides_nothing() {
    let h = http::HeaderMap::new();
    let not_foo =
        Principal::Not(Box::new(Principal::Authenticated(Some(text(TextPattern::Regex(".*/ns/foo/.*".into()))))));
    let rbac = Rbac::new(&[
        filter(RbacAction::Log, vec![Permission::Any], vec![Principal::Any]),
        filter(RbacAction::Deny, vec![Permission::Any], vec![not_foo]),
    ])
    .unwrap();
    assert_eq!(rbac.evaluate(&request(&h, "/", Some("spiffe://cluster.local/ns/foo/sa/a"))), Decision::Allow);
    assert_eq!(
        rbac.evaluate(&request(&h, "/", Some("spiffe://cluster.local/ns/bar/sa/a"))),
        Decision::Deny { policy: Some("p".into()) }
    );
    assert_eq!(rbac.evaluate(&request(&h, "/", None)), Decision::Deny { policy: Some("p".into()) });
}

/// Envoy's header matching: values joined by commas, pseudo headers from
/// the request, an absent header matching only `present_match: false`.
#[test]
fn headers_match_as_envoy_matches_them() {
    let mut h = http::HeaderMap::new();
    h.append("x-user", "alice".parse().unwrap());
    h.append("x-user", "bob".parse().unwrap());
    let header = |name: &str, value: HeaderValue, invert: bool| {
        Permission::Header(HeaderMatch { name: name.into(), value, invert })
    };
    let check = |p: Permission| {
        Rbac::new(&[filter(RbacAction::Allow, vec![p], vec![Principal::Any])])
            .unwrap()
            .evaluate(&request(&h, "/", None))
            == Decision::Allow
    };
    assert!(check(header("x-user", HeaderValue::Text(text(TextPattern::Exact("alice,bob".into()))), false)));
    assert!(!check(header("x-user", HeaderValue::Text(text(TextPattern::Exact("alice".into()))), false)));
    assert!(check(header(":method", HeaderValue::Text(text(TextPattern::Exact("GET".into()))), false)));
    let host = TextMatch { pattern: TextPattern::Suffix(".EXAMPLE.com".into()), ignore_case: true };
    assert!(check(header(":authority", HeaderValue::Text(host), false)));
    assert!(!check(header("x-none", HeaderValue::Present(true), false)));
    assert!(check(header("x-none", HeaderValue::Present(false), false)));
    assert!(check(header("x-none", HeaderValue::Present(true), true)));
    assert!(!check(header("x-none", HeaderValue::Text(text(TextPattern::Exact("a".into()))), true)));
    assert!(check(Permission::And(vec![
        Permission::DestinationPort(8080),
        Permission::DestinationPortRange(8000, 8081),
        Permission::DestinationIp("10.0.0.0/24".parse().unwrap()),
        Permission::Not(Box::new(Permission::RequestedServerName(text(TextPattern::Prefix("x".into()))))),
    ])));
    assert!(!check(Permission::DestinationPortRange(8000, 8080)), "the end is exclusive");
}

#[test]
fn text_matches_with_and_without_case() {
    let matches = |pattern: TextPattern, ignore_case: bool, value: &str| {
        CompiledText::new(&TextMatch { pattern, ignore_case }).unwrap().matches(value)
    };
    let cases = [
        (TextPattern::Exact("App.Example.com".into()), "app.EXAMPLE.com", "app.example.co"),
        (TextPattern::Prefix("/API/".into()), "/api/items", "/ap"),
        (TextPattern::Suffix(".Example.COM".into()), "a.example.com", "example.com"),
        (TextPattern::Contains("Admin".into()), "/x/ADMIN/y", "/x/adm/in"),
    ];
    for (pattern, folded, other) in cases {
        assert!(matches(pattern.clone(), true, folded), "{pattern:?} ~ {folded}");
        assert!(!matches(pattern.clone(), false, folded), "{pattern:?} is case-sensitive without ignore_case");
        assert!(!matches(pattern.clone(), true, other), "{pattern:?} !~ {other}");
    }
    assert!(matches(TextPattern::Contains(String::new()), false, "anything"));
    assert!(!matches(TextPattern::Prefix("é".into()), true, "É!"), "ASCII folding only, as Envoy's");
    assert!(matches(TextPattern::Exact("/Ü".into()), true, "/Ü"), "non-ASCII bytes compare as they are");
}
