use jsonwebtoken::Algorithm;
use mesh_core::jwt::{JwksSource, JwtProvider, TokenLocation};
use mesh_testkit::jwt::{jwks, now, Signer};
use serde_json::json;

use super::*;

const ISSUER: &str = "https://issuer.example";

fn provider(jwks: String) -> JwtProvider {
    let rule = serde_json::from_value(json!({"issuer": ISSUER, "audiences": ["api"], "jwks": jwks})).unwrap();
    JwtProvider::from_rule("foo/jwt", &rule)
}

fn claims() -> serde_json::Value {
    json!({"iss": ISSUER, "sub": "alice", "aud": "api", "exp": now() + 600, "groups": ["dev"], "org": {"tier": 2}})
}

fn head(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::get(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn check(a: &Authenticator, token: &str) -> Outcome {
    a.authenticate(&mut head("/", &[("authorization", &format!("Bearer {token}"))]), now())
}

fn refused(a: &Authenticator, token: &str) -> Option<JwtError> {
    match check(a, token) {
        Outcome::Refused(e) => Some(e),
        _ => None,
    }
}

#[test]
fn every_algorithm_verifies_and_a_foreign_key_does_not() {
    for alg in [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ] {
        let (key, other) = (Signer::new(alg, "k1"), Signer::new(alg, "k1"));
        let a = Authenticator::new(&[provider(jwks(&[&key]))]);
        let Outcome::Verified(jwt) = check(&a, &key.mint(&claims())) else { panic!("{alg:?} did not verify") };
        assert_eq!(
            (jwt.principal().as_str(), jwt.audiences.as_slice()),
            ("https://issuer.example/alice", &["api".to_string()][..])
        );
        assert_eq!(refused(&a, &other.mint(&claims())), Some(JwtError::VerificationFails), "{alg:?} with another key");
    }
}

#[test]
fn claims_times_and_keys_are_refused_with_envoys_reasons() {
    let key = Signer::new(Algorithm::RS256, "k1");
    let a = Authenticator::new(&[provider(jwks(&[&key]))]);
    let with = |patch: serde_json::Value| {
        let mut c = claims();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        key.mint(&c)
    };
    assert_eq!(refused(&a, &with(json!({"exp": now() - 61}))), Some(JwtError::Expired));
    assert!(matches!(check(&a, &with(json!({"exp": now() - 30}))), Outcome::Verified(_)), "inside the skew");
    assert_eq!(refused(&a, &with(json!({"nbf": now() + 120}))), Some(JwtError::NotYetValid));
    assert_eq!(refused(&a, &with(json!({"iss": "https://other"}))), Some(JwtError::UnknownIssuer));
    assert_eq!(refused(&a, &with(json!({"aud": ["web", "mobile"]}))), Some(JwtError::AudienceNotAllowed));
    let unknown_kid = Signer::new(Algorithm::RS256, "k2").mint(&claims());
    assert_eq!(refused(&a, &unknown_kid), Some(JwtError::KidAlgMismatch));
    let es = Signer::new(Algorithm::ES256, "k1").mint(&claims());
    assert_eq!(refused(&a, &es), Some(JwtError::KidAlgMismatch), "no EC key");
    let none = key.mint_with_header(&json!({"alg": "none"}), &claims());
    assert_eq!(refused(&a, &none), Some(JwtError::HeaderAlgNotImplemented));
    // The payload changed after signing.
    let token = key.mint(&claims());
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"iss": ISSUER, "sub": "admin", "aud": "api"}).to_string());
    parts[1] = &forged;
    use base64::Engine;
    assert_eq!(refused(&a, &parts.join(".")), Some(JwtError::VerificationFails));
    assert_eq!(refused(&a, "not-a-token"), Some(JwtError::BadFormat));
    assert_eq!(refused(&a, &"a".repeat(1 << 20)), Some(JwtError::BadFormat), "a megabyte of garbage");
}

#[test]
fn no_token_passes_and_every_token_must_verify() {
    let key = Signer::new(Algorithm::ES256, "k1");
    let a = Authenticator::new(&[provider(jwks(&[&key]))]);
    assert_eq!(a.authenticate(&mut head("/", &[]), now()), Outcome::Anonymous);
    assert_eq!(a.authenticate(&mut head("/", &[("authorization", "Basic YWxhZGRpbg==")]), now()), Outcome::Anonymous);
    let good = key.mint(&claims());
    let expired = key.mint(&json!({"iss": ISSUER, "sub": "bob", "aud": "api", "exp": 10}));
    let two = [("authorization", format!("Bearer {good}")), ("authorization", format!("Bearer {expired}"))];
    let mut h = head("/", &[(two[0].0, two[0].1.as_str()), (two[1].0, two[1].1.as_str())]);
    assert_eq!(a.authenticate(&mut h, now()), Outcome::Refused(JwtError::Expired));
    let mut q = head(&format!("/p?x=1&access_token={good}"), &[]);
    assert!(matches!(a.authenticate(&mut q, now()), Outcome::Verified(_)));
    assert_eq!(q.uri, "/p?x=1", "the verified token leaves the query");
}

#[test]
fn outputs_replace_what_the_client_sent() {
    let key = Signer::new(Algorithm::RS256, "k1");
    let rule = json!({
        "issuer": ISSUER, "jwks": jwks(&[&key]), "forwardOriginalToken": false,
        "fromHeaders": [{"name": "x-jwt", "prefix": "Token "}],
        "outputPayloadToHeader": "x-jwt-payload",
        "outputClaimToHeaders": [{"header": "x-tier", "claim": "org.tier"}, {"header": "x-sub", "claim": "sub"}]
    });
    let p = JwtProvider::from_rule("foo/jwt", &serde_json::from_value(rule).unwrap());
    assert_eq!(p.locations, [TokenLocation::Header { name: "x-jwt".into(), prefix: "Token ".into() }]);
    let a = Authenticator::new(&[p]);
    let token = key.mint(&claims());
    let mut h = head("/", &[("x-jwt", &format!("Token {token}")), ("x-sub", "forged"), ("x-jwt-payload", "forged")]);
    assert!(matches!(a.authenticate(&mut h, now()), Outcome::Verified(_)));
    assert_eq!(h.headers.get("x-jwt"), None, "not forwarded");
    assert_eq!(h.headers["x-sub"], "alice");
    assert_eq!(h.headers["x-tier"], "2");
    assert_eq!(h.headers["x-jwt-payload"], token.split('.').nth(1).unwrap());
    let mut anonymous = head("/", &[("x-sub", "forged")]);
    assert_eq!(a.authenticate(&mut anonymous, now()), Outcome::Anonymous);
    assert_eq!(anonymous.headers.get("x-sub"), None, "an output header is never the client's");
}

#[test]
fn keys_that_cannot_be_had_refuse_their_issuers_tokens() {
    let key = Signer::new(Algorithm::RS256, "k1");
    let mut p = provider(String::new());
    p.jwks = JwksSource::Inline("{not json".into());
    let a = Authenticator::new(&[p]);
    assert_eq!(refused(&a, &key.mint(&claims())), Some(JwtError::KidAlgMismatch));
}
