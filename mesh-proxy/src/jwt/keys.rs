//! An issuer's public keys (a JWKS document), and the signature check of
//! a token against them as Envoy picks keys: a key whose `kid` or `alg`
//! disagrees with the token's is skipped, and so is one of another type.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::token::{JwtError, ParsedJwt};

struct Key {
    kid: Option<String>,
    /// The key's own `alg`, when it names one.
    alg: Option<Algorithm>,
    /// The algorithms its type can check.
    fits: fn(&Algorithm, &AlgorithmParameters) -> bool,
    params: AlgorithmParameters,
    key: DecodingKey,
}

/// The usable keys of one JWKS document.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<Key>,
    /// The document they came from (a control plane sends it on).
    document: String,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet").field("keys", &self.keys.len()).finish()
    }
}

/// Why a JWKS document gave no keys.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("not a JWKS document: {0}")]
    Parse(String),
    #[error("the JWKS document has no usable public key")]
    NoValidKeys,
}

fn fits(alg: &Algorithm, params: &AlgorithmParameters) -> bool {
    use Algorithm::*;
    match params {
        AlgorithmParameters::RSA(_) => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
        AlgorithmParameters::EllipticCurve(ec) => {
            matches!((alg, &ec.curve), (ES256, EllipticCurve::P256) | (ES384, EllipticCurve::P384))
        }
        AlgorithmParameters::OctetKeyPair(_) => *alg == EdDSA,
        AlgorithmParameters::OctetKey(_) => matches!(alg, HS256 | HS384 | HS512),
        _ => false,
    }
}

impl KeySet {
    /// The keys of a JWKS document; keys this proxy cannot use are left
    /// out, and a document with none is an error.
    pub fn parse(document: &str) -> Result<KeySet, JwksError> {
        let set: JwkSet = serde_json::from_str(document).map_err(|e| JwksError::Parse(e.to_string()))?;
        let keys: Vec<Key> = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let key = DecodingKey::from_jwk(jwk).ok()?;
                let alg = jwk.common.key_algorithm.and_then(|a| a.to_string().parse().ok());
                Some(Key { kid: jwk.common.key_id.clone(), alg, fits, params: jwk.algorithm.clone(), key })
            })
            .collect();
        if keys.is_empty() {
            return Err(JwksError::NoValidKeys);
        }
        Ok(KeySet { keys, document: document.to_string() })
    }

    /// The JWKS document the keys came from.
    pub fn document(&self) -> &str {
        &self.document
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The token's signature checked by each key that may have made it.
    pub fn verify(&self, token: &ParsedJwt<'_>) -> Result<(), JwtError> {
        let alg: Algorithm = token.alg.parse().map_err(|_| JwtError::KidAlgMismatch)?;
        let mut tried = false;
        for k in &self.keys {
            let kid_differs = matches!((&token.kid, &k.kid), (Some(a), Some(b)) if a != b);
            if kid_differs || k.alg.is_some_and(|a| a != alg) || !(k.fits)(&alg, &k.params) {
                continue;
            }
            tried = true;
            if jsonwebtoken::crypto::verify(token.signature, token.signed.as_bytes(), &k.key, alg).unwrap_or(false) {
                return Ok(());
            }
        }
        Err(if tried { JwtError::VerificationFails } else { JwtError::KidAlgMismatch })
    }
}
