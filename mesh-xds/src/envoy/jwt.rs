//! RequestAuthentication as Envoy's `jwt_authn` filter, laid out as
//! istiod lays it out: one provider per rule (`origins-N`, by issuer),
//! each required only when its token is there, and the verified payload
//! in the filter's metadata under `payload` for RBAC and claim routes.
//! Keys go inline (`local_jwks`), as istiod sends them by default: a
//! `jwksUri` is fetched by the control plane ([`JwksLookup`]).

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
use envoy_types::pb::envoy::config::route::v3::{route_match::PathSpecifier, RouteMatch};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    jwt_provider::{JwksSourceSpecifier, NormalizePayload},
    jwt_requirement::RequiresType,
    requirement_rule::RequirementType,
    JwtAuthentication, JwtClaimToHeader, JwtHeader, JwtProvider as EnvoyProvider, JwtRequirement,
    JwtRequirementAndList, JwtRequirementOrList, RequirementRule,
};
use envoy_types::pb::google::protobuf::Empty;
use mesh_core::jwt::{JwksSource, JwtProvider, TokenLocation};

/// The filter's name; RBAC and routes read its metadata under it.
pub const FILTER: &str = "envoy.filters.http.jwt_authn";
/// Where the verified payload goes in the filter's metadata.
pub const PAYLOAD: &str = "payload";

/// The JWKS documents the control plane fetched, by `jwksUri` (or
/// discovery document URL).
pub trait JwksLookup: Send + Sync {
    fn jwks(&self, source: &JwksSource) -> Option<String>;
}

/// No documents fetched: every `jwksUri` provider gets keys no token
/// matches (401), as istiod does when it could not fetch them.
pub struct NoJwks;

impl JwksLookup for NoJwks {
    fn jwks(&self, _: &JwksSource) -> Option<String> {
        None
    }
}

/// A valid RSA public key whose private half was thrown away: Envoy
/// loads it, and it verifies nothing.
const UNFETCHED_JWKS: &str = r#"{"keys":[{"kty":"RSA","kid":"unfetched","e":"AQAB","n":"v40qG5MCRc5ng-m7mMd6xKH-sSc_OuDceTxBLJ6-3U5XnEDac-8TNUXypEx94UKHUG8cHo-hHJihWjpxAmsDIfPzPwXpspp8GYDB3QiUmXwIJNCSjqBjeqr4d3JQnUcVk4OPj3wNo8X5sa36g6uYzL5bgVCHNxqXgtlOGbBpZ0KMnL8b_dFbZDLBh378mv7rM-hKREPOh0X9fSBdai_WsBqt71fnbeHugVrm6Ko2tKclKcxy6YlEBy7U4EWrZv98OBjQ9l_O7PcFb6veK9P7OZ5SqDHmO5gzXfKN2XcPryvkI2VeuY-7nKUTonvtNv5ukxSzawI8ajIuXZ03P6wSHQ"}]}"#;

fn provider(p: &JwtProvider, jwks: &dyn JwksLookup, unsupported: &mut Vec<String>) -> EnvoyProvider {
    let keys = match &p.jwks {
        JwksSource::Inline(doc) => doc.clone(),
        remote => jwks.jwks(remote).unwrap_or_else(|| {
            unsupported.push(format!(
                "RequestAuthentication {}: the keys of issuer {} are not fetched yet; its tokens are refused",
                p.origin, p.issuer
            ));
            UNFETCHED_JWKS.to_string()
        }),
    };
    let defaults = p.locations == TokenLocation::defaults();
    let (mut from_headers, mut from_params, mut from_cookies) = (vec![], vec![], vec![]);
    for location in p.locations.iter().filter(|_| !defaults) {
        match location {
            TokenLocation::Header { name, prefix } => {
                from_headers.push(JwtHeader { name: name.clone(), value_prefix: prefix.clone() })
            }
            TokenLocation::Param(name) => from_params.push(name.clone()),
            TokenLocation::Cookie(name) => from_cookies.push(name.clone()),
        }
    }
    EnvoyProvider {
        issuer: p.issuer.clone(),
        audiences: p.audiences.clone(),
        forward: p.forward_original_token,
        forward_payload_header: p.output_payload_to_header.clone().unwrap_or_default(),
        payload_in_metadata: PAYLOAD.into(),
        normalize_payload_in_metadata: Some(NormalizePayload {
            space_delimited_claims: p.space_delimited_claims.clone(),
        }),
        claim_to_headers: p
            .output_claim_to_headers
            .iter()
            .map(|(header, claim)| JwtClaimToHeader {
                header_name: header.clone(),
                claim_name: claim.clone(),
                ..Default::default()
            })
            .collect(),
        from_headers,
        from_params,
        from_cookies,
        clear_route_cache: true,
        jwks_source_specifier: Some(JwksSourceSpecifier::LocalJwks(DataSource {
            specifier: Some(Specifier::InlineString(keys)),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn named(name: &str) -> JwtRequirement {
    JwtRequirement { requires_type: Some(RequiresType::ProviderName(name.into())) }
}

fn any_of(requirements: Vec<JwtRequirement>) -> JwtRequirement {
    JwtRequirement { requires_type: Some(RequiresType::RequiresAny(JwtRequirementOrList { requirements })) }
}

/// The filter config, `None` with no providers. A token, when present,
/// must verify with its provider; none at all passes.
pub fn authentication(
    providers: &[JwtProvider],
    jwks: &dyn JwksLookup,
    unsupported: &mut Vec<String>,
) -> Option<JwtAuthentication> {
    if providers.is_empty() {
        return None;
    }
    let names: Vec<String> = (0..providers.len()).map(|i| format!("origins-{i}")).collect();
    let optional = |name: &String| {
        any_of(vec![named(name), JwtRequirement { requires_type: Some(RequiresType::AllowMissing(Empty {})) }])
    };
    let requires = if names.len() == 1 {
        optional(&names[0])
    } else {
        // Any provider whose token verifies, or every provider's token
        // either verified or absent (providers may share a location).
        let all = JwtRequirement {
            requires_type: Some(RequiresType::RequiresAll(JwtRequirementAndList {
                requirements: names.iter().map(optional).collect(),
            })),
        };
        any_of(names.iter().map(|n| named(n)).chain([all]).collect())
    };
    let providers: HashMap<String, EnvoyProvider> =
        names.iter().cloned().zip(providers.iter().map(|p| provider(p, jwks, unsupported))).collect();
    Some(JwtAuthentication {
        providers,
        rules: vec![RequirementRule {
            r#match: Some(RouteMatch { path_specifier: Some(PathSpecifier::Prefix("/".into())), ..Default::default() }),
            requirement_type: Some(RequirementType::Requires(requires)),
        }],
        bypass_cors_preflight: true,
        ..Default::default()
    })
}

// ---------------------------------------------------------------- matchers

use envoy_types::pb::envoy::r#type::matcher::v3::{
    list_matcher::MatchPattern as ListPattern, metadata_matcher::path_segment::Segment, metadata_matcher::PathSegment,
    string_matcher::MatchPattern, value_matcher::MatchPattern as ValuePattern, ListMatcher, MetadataMatcher, OrMatcher,
    RegexMatcher, StringMatcher, ValueMatcher,
};

/// A matcher on the verified payload at `claims` (`[iss]`, `[org, team]`):
/// a string claim, or any string of a list claim, matching `value`.
pub fn claim_matcher(claims: &[String], value: StringMatcher) -> MetadataMatcher {
    let string = ValueMatcher { match_pattern: Some(ValuePattern::StringMatch(value)) };
    let list = ValueMatcher {
        match_pattern: Some(ValuePattern::ListMatch(Box::new(ListMatcher {
            match_pattern: Some(ListPattern::OneOf(Box::new(string.clone()))),
        }))),
    };
    MetadataMatcher {
        filter: FILTER.into(),
        path: std::iter::once(PAYLOAD)
            .chain(claims.iter().map(String::as_str))
            .map(|key| PathSegment { segment: Some(Segment::Key(key.into())) })
            .collect(),
        value: Some(ValueMatcher {
            match_pattern: Some(ValuePattern::OrMatch(OrMatcher { value_matchers: vec![list, string] })),
        }),
        invert: false,
    }
}

fn present() -> StringMatcher {
    StringMatcher {
        match_pattern: Some(MatchPattern::SafeRegex(RegexMatcher { regex: ".+".into(), ..Default::default() })),
        ignore_case: false,
    }
}

fn pattern(p: MatchPattern) -> StringMatcher {
    StringMatcher { match_pattern: Some(p), ignore_case: false }
}

/// A `requestPrincipals` value as istiod matches it: issuer and subject
/// apart (split at the last `/`), `*` meaning present.
pub fn request_principal(value: &str) -> [MetadataMatcher; 2] {
    let split = value.rsplit_once('/');
    let (iss, sub) = match (value, split) {
        ("*", _) => (present(), present()),
        (v, Some((iss, sub))) if v.starts_with('*') => {
            let iss = if iss == "*" { present() } else { pattern(MatchPattern::Suffix(iss[1..].into())) };
            (iss, pattern(MatchPattern::Exact(sub.into())))
        }
        (v, None) if v.starts_with('*') => (present(), pattern(MatchPattern::Suffix(v[1..].into()))),
        (v, Some((iss, sub))) if v.ends_with('*') => {
            let sub = if sub == "*" { present() } else { pattern(MatchPattern::Prefix(sub[..sub.len() - 1].into())) };
            (pattern(MatchPattern::Exact(iss.into())), sub)
        }
        (v, None) if v.ends_with('*') => (pattern(MatchPattern::Prefix(v[..v.len() - 1].into())), present()),
        (_, Some((iss, sub))) => (pattern(MatchPattern::Exact(iss.into())), pattern(MatchPattern::Exact(sub.into()))),
        (v, None) => (pattern(MatchPattern::Exact(v.into())), pattern(MatchPattern::Exact(String::new()))),
    };
    [claim_matcher(&["iss".into()], iss), claim_matcher(&["sub".into()], sub)]
}
