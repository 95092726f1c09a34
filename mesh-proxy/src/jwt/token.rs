//! One token checked as Envoy's `jwt_authn` checks it, in its order:
//! the form (three parts, header and payload JSON, `alg`, `kid` and the
//! registered claims' types), the issuer, the times (60 s of clock skew),
//! the audiences, then the signature against the issuer's keys.

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use mesh_core::jwt::{JwtProvider, VerifiedJwt};
use serde_json::{Map, Value};

use super::keys::KeySet;

/// Why a token was refused, with Envoy's text for each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum JwtError {
    #[error("Jwt is missing")]
    Missing,
    #[error("Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections")]
    BadFormat,
    #[error("Jwt header is an invalid Base64url encoded")]
    HeaderBadBase64,
    #[error("Jwt header is an invalid JSON")]
    HeaderBadJson,
    #[error("Jwt header [alg] field is required and must be a string")]
    HeaderBadAlg,
    #[error("Jwt header [alg] is not supported")]
    HeaderAlgNotImplemented,
    #[error("Jwt header [kid] field is not a string")]
    HeaderBadKid,
    #[error("Jwt payload is an invalid Base64url encoded")]
    PayloadBadBase64,
    #[error("Jwt payload is an invalid JSON")]
    PayloadBadJson,
    #[error("Jwt payload [iss] field is not a string")]
    IssNotString,
    #[error("Jwt payload [sub] field is not a string")]
    SubNotString,
    #[error("Jwt payload [iat] field is not an integer")]
    IatNotInteger,
    #[error("Jwt payload [nbf] field is not an integer")]
    NbfNotInteger,
    #[error("Jwt payload [exp] field is not an integer")]
    ExpNotInteger,
    #[error("Jwt payload [jti] field is not a string")]
    JtiNotString,
    #[error("Jwt payload [aud] field is not a string or string list")]
    AudNotString,
    #[error("Jwt signature is an invalid Base64url encoded")]
    SignatureBadBase64,
    #[error("Jwt issuer is not configured")]
    UnknownIssuer,
    #[error("Jwt not yet valid")]
    NotYetValid,
    #[error("Jwt is expired")]
    Expired,
    #[error("Audiences in Jwt are not allowed")]
    AudienceNotAllowed,
    #[error("Jwks doesn't have key to match kid or alg from Jwt")]
    KidAlgMismatch,
    #[error("Jwt verification fails")]
    VerificationFails,
    #[error("Jwks remote fetch is failed")]
    JwksFetchFailed,
}

/// base64url as Envoy (absl) decodes it: padding optional, and the
/// unused bits of the last character not checked.
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Envoy's default clock skew for `exp` and `nbf`.
pub const CLOCK_SKEW_SECONDS: u64 = 60;

/// Algorithms Envoy implements; any other (`none` included) is refused.
const IMPLEMENTED: &[&str] = &[
    "ES256", "ES384", "ES512", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA",
];

/// A token taken apart, before any key is used.
#[derive(Debug)]
pub struct ParsedJwt<'t> {
    pub alg: String,
    pub kid: Option<String>,
    /// `header.payload`: what the signature covers.
    pub signed: &'t str,
    pub signature: &'t str,
    /// The payload as sent (base64url), for `outputPayloadToHeader`.
    pub payload_base64: &'t str,
    pub payload: Map<String, Value>,
    pub issuer: String,
    pub nbf: u64,
    pub exp: u64,
    pub audiences: Vec<String>,
}

fn object(part: &str, bad_base64: JwtError, bad_json: JwtError) -> Result<Map<String, Value>, JwtError> {
    let bytes = BASE64URL.decode(part).map_err(|_| bad_base64)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(bad_json),
    }
}

/// A registered claim of the wrong type makes the token malformed.
fn registered<T>(
    payload: &Map<String, Value>,
    key: &str,
    wrong: JwtError,
    read: impl Fn(&Value) -> Option<T>,
) -> Result<Option<T>, JwtError> {
    payload.get(key).map(|v| read(v).ok_or(wrong)).transpose()
}

/// The form of a token, as Envoy parses it.
pub fn parse(token: &str) -> Result<ParsedJwt<'_>, JwtError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload_base64), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::BadFormat);
    };
    if header.is_empty() || payload_base64.is_empty() || signature.is_empty() {
        return Err(JwtError::BadFormat);
    }
    let head = object(header, JwtError::HeaderBadBase64, JwtError::HeaderBadJson)?;
    let alg = head.get("alg").and_then(Value::as_str).ok_or(JwtError::HeaderBadAlg)?.to_string();
    if !IMPLEMENTED.contains(&alg.as_str()) {
        return Err(JwtError::HeaderAlgNotImplemented);
    }
    let kid = match head.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(JwtError::HeaderBadKid),
    };
    let payload = object(payload_base64, JwtError::PayloadBadBase64, JwtError::PayloadBadJson)?;
    let text = |v: &Value| v.as_str().map(str::to_string);
    let time = |v: &Value| v.as_u64().or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64));
    let issuer = registered(&payload, "iss", JwtError::IssNotString, text)?.unwrap_or_default();
    registered(&payload, "sub", JwtError::SubNotString, text)?;
    registered(&payload, "iat", JwtError::IatNotInteger, time)?;
    let nbf = registered(&payload, "nbf", JwtError::NbfNotInteger, time)?.unwrap_or(0);
    let exp = registered(&payload, "exp", JwtError::ExpNotInteger, time)?.unwrap_or(0);
    registered(&payload, "jti", JwtError::JtiNotString, text)?;
    let audiences = registered(&payload, "aud", JwtError::AudNotString, |v| match v {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(list) => list.iter().map(text).collect(),
        _ => None,
    })?
    .unwrap_or_default();
    BASE64URL.decode(signature).map_err(|_| JwtError::SignatureBadBase64)?;
    let signed = &token[..header.len() + 1 + payload_base64.len()];
    Ok(ParsedJwt { alg, kid, signed, signature, payload_base64, payload, issuer, nbf, exp, audiences })
}

impl<'t> ParsedJwt<'t> {
    /// Envoy's time check: `nbf` and `exp` with the clock skew.
    pub fn check_times(&self, now: u64) -> Result<(), JwtError> {
        if now + CLOCK_SKEW_SECONDS < self.nbf {
            return Err(JwtError::NotYetValid);
        }
        if self.exp != 0 && now > self.exp + CLOCK_SKEW_SECONDS {
            return Err(JwtError::Expired);
        }
        Ok(())
    }

    /// Everything after the form, for `provider` with its `keys`.
    pub fn verify(self, provider: &JwtProvider, keys: &KeySet, now: u64) -> Result<(VerifiedJwt, &'t str), JwtError> {
        if self.issuer != provider.issuer {
            return Err(JwtError::UnknownIssuer);
        }
        self.check_times(now)?;
        if !provider.accepts_audiences(&self.audiences) {
            return Err(JwtError::AudienceNotAllowed);
        }
        keys.verify(&self)?;
        let payload_base64 = self.payload_base64;
        Ok((VerifiedJwt::from_payload(self.payload, &provider.space_delimited_claims), payload_base64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(json: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    #[test]
    fn malformed_tokens_get_envoys_reasons() {
        let good_head = b64(r#"{"alg":"RS256","kid":"k"}"#);
        let good_body = b64(r#"{"iss":"i","sub":"s","exp":100}"#);
        let cases = [
            ("a.b".to_string(), JwtError::BadFormat),
            ("a.b.c.d".to_string(), JwtError::BadFormat),
            (format!("{good_head}..c"), JwtError::BadFormat),
            (format!("!!.{good_body}.c"), JwtError::HeaderBadBase64),
            (format!("{}.{good_body}.c", b64("[1]")), JwtError::HeaderBadJson),
            (format!("{}.{good_body}.c", b64(r#"{"kid":"k"}"#)), JwtError::HeaderBadAlg),
            (format!("{}.{good_body}.c", b64(r#"{"alg":"none"}"#)), JwtError::HeaderAlgNotImplemented),
            (format!("{}.{good_body}.c", b64(r#"{"alg":"RS256","kid":7}"#)), JwtError::HeaderBadKid),
            (format!("{good_head}.@@.c"), JwtError::PayloadBadBase64),
            (format!("{good_head}.{}.c", b64("nope")), JwtError::PayloadBadJson),
            (format!("{good_head}.{}.c", b64(r#"{"exp":"soon"}"#)), JwtError::ExpNotInteger),
            (format!("{good_head}.{}.c", b64(r#"{"aud":7}"#)), JwtError::AudNotString),
            (format!("{good_head}.{good_body}.***"), JwtError::SignatureBadBase64),
        ];
        for (token, want) in cases {
            assert_eq!(parse(&token).err(), Some(want), "{token}");
        }
        let token = format!("{good_head}.{good_body}.c2ln");
        let ok = parse(&token).unwrap();
        assert_eq!((ok.alg.as_str(), ok.kid.as_deref(), ok.issuer.as_str(), ok.exp), ("RS256", Some("k"), "i", 100));
    }

    #[test]
    fn times_allow_a_minute_of_skew() {
        let token = format!("{}.{}.c2ln", b64(r#"{"alg":"RS256"}"#), b64(r#"{"nbf":1000,"exp":2000}"#));
        let t = parse(&token).unwrap();
        assert_eq!(t.check_times(939), Err(JwtError::NotYetValid));
        assert_eq!(t.check_times(940), Ok(()));
        assert_eq!(t.check_times(2060), Ok(()));
        assert_eq!(t.check_times(2061), Err(JwtError::Expired));
    }
}
