//! One end-user token checked as mesh-proxy checks it (RequestAuthentication),
//! keys already fetched: the form, issuer, times and audience, then the
//! signature. Goals: under 50 µs for RS256 and 100 µs for ES256.

use criterion::{criterion_group, criterion_main, Criterion};
use mesh_core::jwt::JwtProvider;
use mesh_proxy::jwt::keys::KeySet;
use mesh_proxy::jwt::token;
use mesh_testkit::jwt::{jwks, now, Algorithm, Signer};

const ISSUER: &str = "https://issuer.example";

fn check(c: &mut Criterion) {
    for alg in [Algorithm::RS256, Algorithm::ES256, Algorithm::PS256, Algorithm::EdDSA] {
        let signer = Signer::new(alg, "k1");
        // A realistic JWKS: the signing key among four.
        let others: Vec<Signer> = (2..5).map(|i| Signer::new(alg, &format!("k{i}"))).collect();
        let mut all: Vec<&Signer> = others.iter().collect();
        all.insert(1, &signer);
        let keys = KeySet::parse(&jwks(&all)).expect("keys");
        let rule = serde_json::from_value(serde_json::json!({"issuer": ISSUER, "audiences": ["api"]})).expect("rule");
        let provider = JwtProvider::from_rule("bench/jwt", &rule);
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": "alice", "aud": "api", "exp": now() + 3600,
            "groups": ["dev", "ops"], "scope": "read write", "org": {"team": "blue"}
        });
        let token = signer.mint(&claims);
        c.bench_function(&format!("jwt/check/{alg:?}"), |b| {
            b.iter(|| {
                let parsed = token::parse(std::hint::black_box(&token)).expect("parses");
                parsed.verify(&provider, &keys, now()).expect("verifies")
            })
        });
    }
}

criterion_group!(benches, check);
criterion_main!(benches);
