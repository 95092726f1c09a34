//! RequestAuthentication in the request path (Envoy's `jwt_authn` filter
//! as Istio configures it): a request without a token passes with no
//! request principal; one whose token fails gets 401 (403 for a token of
//! another audience, as Envoy answers); a verified token
//! becomes the request's [`VerifiedJwt`] for authorization.
//!
//! | module | does |
//! |---|---|
//! | [`token`] | one token's form, issuer, times and audiences, with Envoy's reasons |
//! | [`keys`] | an issuer's JWKS and the signature check |
//! | [`remote`] | JWKS documents fetched and refreshed off the request path |

pub mod keys;
pub mod remote;
pub mod token;

use std::sync::Arc;

use http::HeaderValue;
use mesh_core::jwt::{claims::claim_header_value, JwksSource, JwtProvider, VerifiedJwt};

use keys::KeySet;
use remote::{Fetched, JwksCache, RemoteKeys};
pub use token::JwtError;

/// Where a provider's keys are.
enum KeySource {
    /// An inline JWKS; `None` when it had no usable key.
    Inline(Option<Arc<KeySet>>),
    Remote(Arc<RemoteKeys>),
}

struct Provider {
    spec: JwtProvider,
    keys: KeySource,
}

/// The RequestAuthentication providers of one proxy, compiled.
#[derive(Default)]
pub struct Authenticator {
    providers: Vec<Provider>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.providers.iter().map(|p| &p.spec.issuer)).finish()
    }
}

/// What authentication decided for a request.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// No provider, or no token: the request goes on unauthenticated.
    Anonymous,
    Verified(VerifiedJwt),
    Refused(JwtError),
}

impl Authenticator {
    /// The providers of a config; remote keys come from `cache`, which
    /// outlives configs.
    pub fn new(providers: &[JwtProvider], cache: &Arc<JwksCache>) -> Authenticator {
        let providers = providers
            .iter()
            .map(|spec| {
                let keys = match &spec.jwks {
                    JwksSource::Inline(doc) => KeySource::Inline(match KeySet::parse(doc) {
                        Ok(keys) => Some(Arc::new(keys)),
                        Err(e) => {
                            tracing::warn!(policy = %spec.origin, issuer = %spec.issuer, error = %e, "RequestAuthentication: the inline jwks has no usable key; tokens of this issuer are refused (401)");
                            None
                        }
                    }),
                    remote => KeySource::Remote(cache.remote(remote, spec.fetch_timeout)),
                };
                Provider { spec: spec.clone(), keys }
            })
            .collect();
        Authenticator { providers }
    }

    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// Checks the request's tokens at `now` (Unix seconds), and on success
    /// rewrites the request as the provider says (token removed unless
    /// forwarded, payload and claims copied into headers).
    ///
    /// Istio's rule: with no token anywhere the request passes; otherwise
    /// some provider must find a token at its locations and verify every
    /// token it found.
    pub async fn authenticate(&self, head: &mut http::request::Parts, now: u64) -> Outcome {
        if self.providers.is_empty() {
            return Outcome::Anonymous;
        }
        // Headers only a verified token may set are never the client's.
        for p in &self.providers {
            let outputs =
                p.spec.output_payload_to_header.iter().chain(p.spec.output_claim_to_headers.iter().map(|(h, _)| h));
            for header in outputs {
                head.headers.remove(header.as_str());
            }
        }
        let mut first_error = None;
        let mut any_token = false;
        for p in &self.providers {
            let tokens: Vec<String> = p
                .spec
                .locations
                .iter()
                .flat_map(|l| l.find(&head.headers, head.uri.query()))
                .map(|t| t.into_owned())
                .collect();
            if tokens.is_empty() {
                continue;
            }
            any_token = true;
            match p.verify_all(&tokens, now).await {
                Ok((jwt, payload)) => {
                    p.rewrite(head, &jwt, &payload);
                    return Outcome::Verified(jwt);
                }
                // An issuer this provider does not serve says least.
                Err(e) if first_error.is_none() || first_error == Some(JwtError::UnknownIssuer) => {
                    first_error = Some(e)
                }
                Err(_) => {}
            }
        }
        match (any_token, first_error) {
            (false, _) => Outcome::Anonymous,
            (true, e) => Outcome::Refused(e.unwrap_or(JwtError::VerificationFails)),
        }
    }
}

impl Provider {
    /// Every token must verify; the last found is the one kept, as Envoy
    /// checks them from the last.
    async fn verify_all(&self, tokens: &[String], now: u64) -> Result<(VerifiedJwt, String), JwtError> {
        let mut verified = None;
        for token in tokens.iter().rev() {
            let parsed = token::parse(token)?;
            if parsed.issuer != self.spec.issuer {
                return Err(JwtError::UnknownIssuer);
            }
            let keys = self.keys().await?;
            let (jwt, payload) = parsed.verify(&self.spec, &keys, now)?;
            verified.get_or_insert((jwt, payload.to_string()));
        }
        verified.ok_or(JwtError::Missing)
    }

    /// The keys, waiting (up to the fetch timeout) for a first fetch
    /// under way: only requests with tokens of this issuer wait.
    async fn keys(&self) -> Result<Arc<KeySet>, JwtError> {
        match &self.keys {
            KeySource::Inline(keys) => keys.clone().ok_or(JwtError::KidAlgMismatch),
            KeySource::Remote(remote) => match remote.current(self.spec.fetch_timeout).await {
                Fetched::Keys(keys) => Ok(keys),
                Fetched::Pending | Fetched::Failed(_) => Err(JwtError::JwksFetchFailed),
            },
        }
    }

    fn rewrite(&self, head: &mut http::request::Parts, jwt: &VerifiedJwt, payload_base64: &str) {
        if let Some(header) = &self.spec.output_payload_to_header {
            if let (Ok(name), Ok(value)) =
                (http::HeaderName::from_bytes(header.as_bytes()), HeaderValue::from_str(payload_base64))
            {
                head.headers.insert(name, value);
            }
        }
        for (header, claim) in &self.spec.output_claim_to_headers {
            let path: Vec<&str> = claim.split('.').collect();
            let value = jwt.claim(&path).and_then(claim_header_value);
            if let (Ok(name), Some(Ok(value))) =
                (http::HeaderName::from_bytes(header.as_bytes()), value.map(|v| HeaderValue::from_str(&v)))
            {
                head.headers.insert(name, value);
            }
        }
        if self.spec.forward_original_token {
            return;
        }
        for location in &self.spec.locations {
            let query = head.uri.query().map(str::to_string);
            if let Some(new_query) = location.remove(&mut head.headers, query.as_deref()) {
                set_query(&mut head.uri, new_query.as_deref());
            }
        }
    }
}

fn set_query(uri: &mut http::Uri, query: Option<&str>) {
    let path = uri.path().to_string();
    let path_and_query = match query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = path_and_query.parse().ok();
    if let Ok(new) = http::Uri::from_parts(parts) {
        *uri = new;
    }
}

/// Envoy's challenge on a 401: `Bearer realm="<scheme>://<host><path>",
/// error="invalid_token"`.
pub fn challenge(scheme: &str, host: &str, path: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer realm=\"{scheme}://{host}{path}\", error=\"invalid_token\""))
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"invalid_token\""))
}

#[cfg(test)]
mod tests;
