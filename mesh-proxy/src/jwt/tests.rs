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

fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

fn authenticator(providers: &[JwtProvider]) -> Authenticator {
    Authenticator::new(providers, &Arc::new(JwksCache::default()))
}

fn check(a: &Authenticator, token: &str) -> Outcome {
    block(a.authenticate(&mut head("/", &[("authorization", &format!("Bearer {token}"))]), now()))
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
        let a = authenticator(&[provider(jwks(&[&key]))]);
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
    let a = authenticator(&[provider(jwks(&[&key]))]);
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
    let a = authenticator(&[provider(jwks(&[&key]))]);
    assert_eq!(block(a.authenticate(&mut head("/", &[]), now())), Outcome::Anonymous);
    assert_eq!(
        block(a.authenticate(&mut head("/", &[("authorization", "Basic YWxhZGRpbg==")]), now())),
        Outcome::Anonymous
    );
    let good = key.mint(&claims());
    let expired = key.mint(&json!({"iss": ISSUER, "sub": "bob", "aud": "api", "exp": 10}));
    // Two Authorization lines are one field to Envoy, and no token.
    let two = [("authorization", format!("Bearer {good}")), ("authorization", format!("Bearer {good}"))];
    let mut h = head("/", &[(two[0].0, two[0].1.as_str()), (two[1].0, two[1].1.as_str())]);
    assert_eq!(block(a.authenticate(&mut h, now())), Outcome::Refused(JwtError::BadFormat));
    // Two tokens in a header of its own: both must verify.
    let rule = json!({"issuer": ISSUER, "jwks": jwks(&[&key]), "fromHeaders": [{"name": "x-jwt"}]});
    let own = authenticator(&[JwtProvider::from_rule("foo/jwt", &serde_json::from_value(rule).unwrap())]);
    let mut h = head("/", &[("x-jwt", good.as_str()), ("x-jwt", expired.as_str())]);
    assert_eq!(block(own.authenticate(&mut h, now())), Outcome::Refused(JwtError::Expired));
    let mut h = head("/", &[("x-jwt", good.as_str()), ("x-jwt", good.as_str())]);
    assert!(matches!(block(own.authenticate(&mut h, now())), Outcome::Verified(_)));
    let mut q = head(&format!("/p?x=1&access_token={good}"), &[]);
    assert!(matches!(block(a.authenticate(&mut q, now())), Outcome::Verified(_)));
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
    let a = authenticator(&[p]);
    let token = key.mint(&claims());
    let mut h = head("/", &[("x-jwt", &format!("Token {token}")), ("x-sub", "forged"), ("x-jwt-payload", "forged")]);
    assert!(matches!(block(a.authenticate(&mut h, now())), Outcome::Verified(_)));
    assert_eq!(h.headers.get("x-jwt"), None, "not forwarded");
    assert_eq!(h.headers["x-sub"], "alice");
    assert_eq!(h.headers["x-tier"], "2");
    assert_eq!(h.headers["x-jwt-payload"], token.split('.').nth(1).unwrap());
    let mut anonymous = head("/", &[("x-sub", "forged")]);
    assert_eq!(block(a.authenticate(&mut anonymous, now())), Outcome::Anonymous);
    assert_eq!(anonymous.headers.get("x-sub"), None, "an output header is never the client's");
}

#[test]
fn keys_that_cannot_be_had_refuse_their_issuers_tokens() {
    let key = Signer::new(Algorithm::RS256, "k1");
    let mut p = provider(String::new());
    p.jwks = JwksSource::Inline("{not json".into());
    let a = authenticator(&[p]);
    assert_eq!(refused(&a, &key.mint(&claims())), Some(JwtError::KidAlgMismatch));
}

fn remote_provider(issuer: &str, jwks_uri: Option<String>, timeout: &str) -> JwtProvider {
    let mut rule = json!({"issuer": issuer, "timeout": timeout});
    if let Some(uri) = jwks_uri {
        rule["jwksUri"] = uri.into();
    }
    JwtProvider::from_rule("foo/jwt", &serde_json::from_value(rule).unwrap())
}

fn bearer(token: &str) -> http::request::Parts {
    head("/", &[("authorization", &format!("Bearer {token}"))])
}

/// Polls `f` until it holds, for up to 10 s (refreshes run every 200 ms).
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if f().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{what}: never");
}

#[test]
fn remote_keys_are_fetched_refreshed_kept_and_never_stall_other_issuers() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (Signer::new(Algorithm::RS256, "old"), Signer::new(Algorithm::ES256, "new"));
    std::fs::write(dir.path().join("jwks.json"), jwks(&[&old])).unwrap();
    std::fs::write(dir.path().join("garbage.json"), "{\"keys\": 7").unwrap();
    let (_server, port) = mesh_testkit::jwt::jwks_server(dir.path());
    let base = format!("http://127.0.0.1:{port}");
    std::fs::create_dir(dir.path().join(".well-known")).unwrap();
    std::fs::write(
        dir.path().join(".well-known/openid-configuration"),
        json!({"issuer": base, "jwks_uri": format!("{base}/jwks.json")}).to_string(),
    )
    .unwrap();
    let token = |signer: &Signer, iss: &str| signer.mint(&json!({"iss": iss, "sub": "alice", "exp": now() + 600}));
    block(async {
        let cache = Arc::new(JwksCache::new(std::time::Duration::from_millis(200)));
        let a = Authenticator::new(
            &[
                remote_provider("https://by-uri", Some(format!("{base}/jwks.json")), "5s"),
                remote_provider(&base, None, "5s"),
                remote_provider("https://down", Some(format!("{base}/fail/jwks.json")), "5s"),
                remote_provider("https://garbage", Some(format!("{base}/garbage.json")), "5s"),
                remote_provider("https://slow", Some(format!("{base}/slow/jwks.json")), "20s"),
            ],
            &cache,
        );
        let check = |t: String| {
            let a = &a;
            async move { a.authenticate(&mut bearer(&t), now()).await }
        };
        assert!(matches!(check(token(&old, "https://by-uri")).await, Outcome::Verified(_)), "from jwksUri");
        assert!(matches!(check(token(&old, &base)).await, Outcome::Verified(_)), "from the discovery document");
        assert_eq!(check(token(&old, "https://down")).await, Outcome::Refused(JwtError::JwksFetchFailed));
        assert_eq!(check(token(&old, "https://garbage")).await, Outcome::Refused(JwtError::JwksFetchFailed));

        // A request of the slow issuer waits for its keys; others do not.
        let slow = tokio::spawn({
            let t = token(&old, "https://slow");
            let a = Authenticator::new(
                &[remote_provider("https://slow", Some(format!("{base}/slow/jwks.json")), "20s")],
                &cache,
            );
            async move { a.authenticate(&mut bearer(&t), now()).await }
        });
        let quick =
            tokio::time::timeout(std::time::Duration::from_secs(10), check(token(&old, "https://by-uri"))).await;
        assert!(matches!(quick, Ok(Outcome::Verified(_))), "a known issuer waited on a slow one: {quick:?}");
        assert!(!slow.is_finished(), "the slow issuer's request should still wait for its keys");
        slow.abort();

        // Rotation: a new key is published beside the old one.
        std::fs::write(dir.path().join("jwks.json"), jwks(&[&old, &new])).unwrap();
        eventually("the new key verifies", async || {
            matches!(check(token(&new, "https://by-uri")).await, Outcome::Verified(_))
        })
        .await;
        assert!(
            matches!(check(token(&old, "https://by-uri")).await, Outcome::Verified(_)),
            "the old key still published"
        );
        // A refresh that fails keeps the keys fetched before: wait for two
        // fetches to start after the bad document is written (so one ran
        // whole).
        let hits = || async move {
            let answer = tokio::task::spawn_blocking(move || mesh_testkit::http::get(port, "/__hits/jwks.json", &[]));
            answer.await.map_or(0, |r| r.body.trim().parse::<u64>().unwrap_or(0))
        };
        std::fs::write(dir.path().join("jwks.json"), "not json").unwrap();
        let before = hits().await;
        eventually("two more fetches", async || hits().await >= before + 2).await;
        assert!(
            matches!(check(token(&new, "https://by-uri")).await, Outcome::Verified(_)),
            "the last good keys are kept"
        );
        // The old key withdrawn: its tokens fail.
        std::fs::write(dir.path().join("jwks.json"), jwks(&[&new])).unwrap();
        eventually("the withdrawn key is refused", async || {
            check(token(&old, "https://by-uri")).await == Outcome::Refused(JwtError::KidAlgMismatch)
        })
        .await;
    });
}
