//! JWT issuers for tests: keys of each algorithm RequestAuthentication
//! takes, their JWKS, and tokens minted (or broken) with them.

use jsonwebtoken::jwk::{Jwk, JwkSet};
pub use jsonwebtoken::Algorithm;
use jsonwebtoken::{EncodingKey, Header};

/// One signing key with its `kid`.
pub struct Signer {
    pub alg: Algorithm,
    pub kid: String,
    key: EncodingKey,
    jwk: Jwk,
}

impl Signer {
    /// A new key for `alg` (RSA keys are 2048 bits).
    pub fn new(alg: Algorithm, kid: &str) -> Signer {
        use Algorithm::*;
        let pem = |kind: &'static rcgen::SignatureAlgorithm| {
            rcgen::KeyPair::generate_for(kind).unwrap_or_else(|e| panic!("a {alg:?} key: {e}")).serialize_pem()
        };
        let ed25519 =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap_or_else(|e| panic!("an Ed25519 key: {e}"));
        let key = match alg {
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => {
                EncodingKey::from_rsa_pem(pem(&rcgen::PKCS_RSA_SHA256).as_bytes())
            }
            ES256 => EncodingKey::from_ec_pem(pem(&rcgen::PKCS_ECDSA_P256_SHA256).as_bytes()),
            ES384 => EncodingKey::from_ec_pem(pem(&rcgen::PKCS_ECDSA_P384_SHA384).as_bytes()),
            EdDSA => EncodingKey::from_ed_pem(ed25519.serialize_pem().as_bytes()),
            HS256 | HS384 | HS512 => EncodingKey::from_secret(kid.as_bytes()),
            other => panic!("no test keys for {other:?}"),
        }
        .unwrap_or_else(|e| panic!("a {alg:?} encoding key: {e}"));
        let mut jwk = match alg {
            // jsonwebtoken reads the public half only of a bare PKCS#8 v1
            // Ed25519 key; rcgen's carries it: write the JWK from it.
            EdDSA => ed25519_jwk(&ed25519),
            _ => Jwk::from_encoding_key(&key, alg).unwrap_or_else(|e| panic!("the {alg:?} key as a JWK: {e}")),
        };
        jwk.common.key_id = Some(kid.to_string());
        Signer { alg, kid: kid.to_string(), key, jwk }
    }

    /// A token with these claims, signed with this key (its `kid` in the
    /// header).
    pub fn mint(&self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap_or_else(|e| panic!("minting a token: {e}"))
    }

    /// A token with `header` as its JSON header, signed with this key.
    pub fn mint_with_header(&self, header: &serde_json::Value, claims: &serde_json::Value) -> String {
        use base64::Engine;
        let b64 = |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let signed = format!("{}.{}", b64(header), b64(claims));
        let signature = jsonwebtoken::crypto::sign(signed.as_bytes(), &self.key, self.alg)
            .unwrap_or_else(|e| panic!("signing a token: {e}"));
        format!("{signed}.{signature}")
    }

    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }
}

fn ed25519_jwk(key: &rcgen::KeyPair) -> Jwk {
    use base64::Engine;
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.public_key_raw());
    serde_json::from_value(serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x, "alg": "EdDSA"}))
        .unwrap_or_else(|e| panic!("an Ed25519 JWK: {e}"))
}

/// The JWKS document of these keys.
pub fn jwks(signers: &[&Signer]) -> String {
    let set = JwkSet { keys: signers.iter().map(|s| s.jwk.clone()).collect() };
    serde_json::to_string(&set).unwrap_or_else(|e| panic!("a JWKS: {e}"))
}

/// Now, in Unix seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The JWKS server (`testkit/peers/jwks_server.py`) serving the files of
/// `dir` (read again on every request, so a test rotates keys by writing
/// a file), with its port. `/slow/NAME` answers after 30 s, `/fail/NAME`
/// with 500, and `/__hits/NAME` says how often NAME was asked for.
pub fn jwks_server(dir: &std::path::Path) -> (crate::Proc, u16) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/jwks_server.py");
    let mut command = std::process::Command::new("python3");
    command.arg(script).arg(dir).stderr(std::process::Stdio::null());
    let (child, line) = crate::process::announced(command, "");
    let port = line.parse().unwrap_or_else(|_| panic!("the JWKS server printed {line:?}, not its port"));
    (child, port)
}
