//! RequestAuthentication as one proxy applies it (Istio's origin
//! authentication): which JWT issuers it accepts, where it finds their
//! tokens, and what a verified token tells authorization and routing.
//!
//! | module | what it holds |
//! |---|---|
//! | this one | [`JwtProvider`]: one `jwtRules` entry compiled for a proxy, and which rules select it |
//! | [`location`] | finding tokens in a request, as Envoy's `jwt_authn` extractor does |
//! | [`claims`] | a verified token's claims, as authorization and claim-based routing read them |
//!
//! The signature check needs a crypto stack, so it lives in the proxy
//! (mesh-proxy's `jwt`); Envoy gets the same providers over xDS.

pub mod claims;
pub mod location;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::security::{JwtRule, RequestAuthentication};

pub use claims::VerifiedJwt;
pub use location::TokenLocation;

/// Where a provider's keys come from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JwksSource {
    /// A JWKS document in the rule itself (`jwks`).
    Inline(String),
    /// Fetched from `jwksUri`, or, when the rule has neither, from the
    /// issuer's OpenID discovery document (`<issuer>/.well-known/openid-configuration`).
    Uri(String),
    /// The issuer's discovery document names the JWKS URI.
    Discovery(String),
}

/// One `jwtRules` entry as a proxy applies it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JwtProvider {
    /// The RequestAuthentication it came from, `namespace/name`.
    pub origin: String,
    pub issuer: String,
    /// Empty: any audience.
    pub audiences: Vec<String>,
    pub jwks: JwksSource,
    /// Where its tokens are looked for; never empty (the default is
    /// `Authorization: Bearer` and the `access_token` parameter).
    pub locations: Vec<TokenLocation>,
    /// Keep the token in the request sent upstream.
    pub forward_original_token: bool,
    /// The header that carries the verified payload (base64url) upstream.
    pub output_payload_to_header: Option<String>,
    /// `(header, claim)`: a claim's value copied into a header upstream.
    pub output_claim_to_headers: Vec<(String, String)>,
    /// Claims whose value is a space-separated list (`scope` by default).
    pub space_delimited_claims: Vec<String>,
    /// How long a JWKS fetch may take.
    #[serde(with = "crate::config::duration::text")]
    pub fetch_timeout: Duration,
}

/// Istio's default JWKS fetch timeout.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

impl JwtProvider {
    /// The provider of `rule`, from the RequestAuthentication `origin`.
    pub fn from_rule(origin: &str, rule: &JwtRule) -> JwtProvider {
        let jwks = match (&rule.jwks, rule.jwks_uri.as_ref().or(rule.jwks_uri_snake.as_ref())) {
            (Some(inline), _) => JwksSource::Inline(inline.clone()),
            (None, Some(uri)) => JwksSource::Uri(uri.clone()),
            (None, None) => {
                JwksSource::Discovery(format!("{}/.well-known/openid-configuration", rule.issuer.trim_end_matches('/')))
            }
        };
        let mut locations: Vec<TokenLocation> = rule
            .from_headers
            .iter()
            .map(|h| TokenLocation::Header {
                name: h.name.to_ascii_lowercase(),
                prefix: h.prefix.clone().unwrap_or_default(),
            })
            .chain(rule.from_params.iter().map(|p| TokenLocation::Param(p.clone())))
            .chain(rule.from_cookies.iter().map(|c| TokenLocation::Cookie(c.clone())))
            .collect();
        if locations.is_empty() {
            locations = TokenLocation::defaults();
        }
        let mut space_delimited_claims = vec!["scope".to_string(), "permission".to_string()];
        for claim in &rule.space_delimited_claims {
            if !space_delimited_claims.contains(claim) {
                space_delimited_claims.push(claim.clone());
            }
        }
        JwtProvider {
            origin: origin.to_string(),
            issuer: rule.issuer.clone(),
            audiences: rule.audiences.clone(),
            jwks,
            locations,
            forward_original_token: rule.forward_original_token.unwrap_or(false),
            output_payload_to_header: rule.output_payload_to_header.clone().filter(|h| !h.is_empty()),
            output_claim_to_headers: rule
                .output_claim_to_headers
                .iter()
                .map(|c| (c.header.to_ascii_lowercase(), c.claim.clone()))
                .collect(),
            space_delimited_claims,
            fetch_timeout: rule
                .timeout
                .as_deref()
                .and_then(|t| crate::config::duration::parse(t).ok())
                .unwrap_or(DEFAULT_FETCH_TIMEOUT),
        }
    }

    /// Whether `audiences` (a token's `aud`) is acceptable.
    pub fn accepts_audiences(&self, audiences: &[String]) -> bool {
        self.audiences.is_empty() || audiences.iter().any(|a| self.audiences.iter().any(|mine| same_audience(mine, a)))
    }
}

/// Envoy compares audiences ignoring an `http(s)://` scheme and a trailing
/// slash.
fn same_audience(a: &str, b: &str) -> bool {
    let bare = |s: &str| {
        let s = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://")).unwrap_or(s);
        s.strip_suffix('/').unwrap_or(s).to_string()
    };
    bare(a) == bare(b)
}

/// The claim path a VirtualService header match names, as Istio reads
/// it: `@request.auth.claims.a.b` or `@request.auth.claims[a][b]` is
/// `[a, b]`; any other name is a header.
pub fn routing_claim(header_name: &str) -> Option<Vec<String>> {
    const PREFIX: &str = "@request.auth.claims";
    let name = header_name.get(PREFIX.len()..).filter(|_| header_name[..PREFIX.len()].eq_ignore_ascii_case(PREFIX))?;
    if let Some(dotted) = name.strip_prefix('.').filter(|n| !n.is_empty()) {
        return Some(dotted.split('.').map(str::to_string).collect());
    }
    let bracketed = name.strip_prefix('[')?.strip_suffix(']').filter(|n| !n.is_empty())?;
    Some(bracketed.split("][").map(str::to_string).collect())
}

/// The providers of the RequestAuthentications that select a workload, in
/// Istio's order (by issuer). `resources` are `(namespace, name, spec)`;
/// `selects` says whether a resource's selector picks the workload.
pub fn providers<'a>(
    resources: impl Iterator<Item = (&'a str, &'a str, &'a RequestAuthentication)>,
) -> Vec<JwtProvider> {
    let mut providers: Vec<JwtProvider> = resources
        .flat_map(|(ns, name, ra)| {
            let origin = format!("{ns}/{name}");
            ra.jwt_rules.iter().map(move |rule| JwtProvider::from_rule(&origin, rule))
        })
        .collect();
    providers.sort_by(|a, b| a.issuer.cmp(&b.issuer));
    providers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(yaml: &str) -> JwtRule {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn a_rule_without_locations_reads_bearer_and_access_token() {
        let p = JwtProvider::from_rule(
            "foo/jwt",
            &rule("issuer: https://issuer.example\njwksUri: https://issuer.example/jwks\n"),
        );
        assert_eq!(p.locations, TokenLocation::defaults());
        assert_eq!(p.jwks, JwksSource::Uri("https://issuer.example/jwks".into()));
        assert!(!p.forward_original_token);
        assert_eq!(p.fetch_timeout, DEFAULT_FETCH_TIMEOUT);
        let p = JwtProvider::from_rule(
            "foo/jwt",
            &rule("issuer: https://issuer.example/\nfromHeaders: [{name: X-Jwt, prefix: 'Token '}]\nfromCookies: [session]\ntimeout: 2s\n"),
        );
        assert_eq!(
            p.locations,
            [
                TokenLocation::Header { name: "x-jwt".into(), prefix: "Token ".into() },
                TokenLocation::Cookie("session".into())
            ]
        );
        assert_eq!(p.jwks, JwksSource::Discovery("https://issuer.example/.well-known/openid-configuration".into()));
        assert_eq!(p.fetch_timeout, Duration::from_secs(2));
    }

    #[test]
    fn routing_claims_are_read_as_istio_reads_them() {
        assert_eq!(routing_claim("@request.auth.claims.group"), Some(vec!["group".to_string()]));
        assert_eq!(routing_claim("@Request.Auth.Claims.Org.Team"), Some(vec!["Org".to_string(), "Team".to_string()]));
        assert_eq!(routing_claim("@request.auth.claims[a.b][c]"), Some(vec!["a.b".to_string(), "c".to_string()]));
        for header in [
            "@request.auth.claims",
            "@request.auth.claims.",
            "@request.auth.claims[]",
            "x-group",
            "@request.auth.claimsx",
        ] {
            assert_eq!(routing_claim(header), None, "{header}");
        }
    }

    #[test]
    fn audiences_compare_as_envoy_compares_them() {
        let p = JwtProvider::from_rule("foo/jwt", &rule("issuer: i\naudiences: [\"https://api.example/\"]\n"));
        assert!(p.accepts_audiences(&["api.example".into()]));
        assert!(p.accepts_audiences(&["other".into(), "http://api.example".into()]));
        assert!(!p.accepts_audiences(&["api.example.org".into()]));
        assert!(!p.accepts_audiences(&[]));
        let any = JwtProvider::from_rule("foo/jwt", &rule("issuer: i\n"));
        assert!(any.accepts_audiences(&[]));
    }
}
