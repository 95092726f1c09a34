//! Envoy's `jwt_authn` filter -> mesh-core's JWT providers, when it says
//! what Istio's RequestAuthentication says (as istiod and
//! [`crate::envoy`] lay it out): every provider optional, a token that is
//! there must verify, none at all passes, CORS preflights unchecked, the
//! payload in the filter's metadata under `payload`. mesh-proxy then
//! checks tokens as Envoy does. Anything else (other requirements, per-
//! route rules, subjects or lifetimes to check, a skew other than Envoy's
//! default) is refused, naming the field.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    jwt_provider::JwksSourceSpecifier, jwt_requirement::RequiresType, requirement_rule::RequirementType,
    JwtAuthentication, JwtProvider as EnvoyProvider, JwtRequirement,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    list_matcher::MatchPattern as ListPattern, metadata_matcher::path_segment::Segment,
    value_matcher::MatchPattern as ValuePattern, MetadataMatcher,
};
use mesh_core::jwt::{JwksSource, JwtProvider, TokenLocation, DEFAULT_FETCH_TIMEOUT};
use mesh_core::rbac::TextMatch;

use super::duration;

/// Where RBAC and routes find the verified payload.
pub(super) const PAYLOAD: &str = "payload";

type Refusal = (String, String);

fn refuse<T>(at: String, what: &str) -> Result<T, Refusal> {
    Err((at, what.to_string()))
}

/// The providers, by name (Envoy's `origins-N`: the issuers' order).
pub(super) fn providers(config: &JwtAuthentication, at: &str) -> Result<Vec<JwtProvider>, Refusal> {
    if !config.bypass_cors_preflight {
        return refuse(format!("{at}.bypass_cors_preflight"), "checking CORS preflights is not supported");
    }
    if config.filter_state_rules.is_some() || !config.requirement_map.is_empty() {
        return refuse(format!("{at}.requirement_map"), "per-route requirements are not supported");
    }
    // `origins-2` before `origins-10`: the issuers' order.
    let mut names: Vec<&String> = config.providers.keys().collect();
    names.sort_by_key(|n| (n.len(), n.as_str()));
    let [rule] = config.rules.as_slice() else {
        return refuse(format!("{at}.rules"), "exactly one rule, for every path, is supported");
    };
    let every_path = rule.r#match.as_ref().is_some_and(|m| {
        m.path_specifier == Some(PathSpecifier::Prefix("/".into()))
            && m.headers.is_empty()
            && m.query_parameters.is_empty()
    });
    let Some(RequirementType::Requires(requires)) = rule.requirement_type.as_ref().filter(|_| every_path) else {
        return refuse(format!("{at}.rules[0]"), "only a requirement on every path (prefix /) is supported");
    };
    if !is_istio_requirement(requires, &names) {
        return refuse(
            format!("{at}.rules[0].requires"),
            "only RequestAuthentication's requirement (each provider's token verified when present) is supported",
        );
    }
    names.iter().map(|name| provider(name, &config.providers[*name], &format!("{at}.providers[{name}]"))).collect()
}

/// Each provider optional: `any(provider, allow_missing)` for one; for
/// several, any provider, or all of them each optional.
fn is_istio_requirement(r: &JwtRequirement, names: &[&String]) -> bool {
    fn optional(r: &JwtRequirement) -> Option<&str> {
        match &r.requires_type {
            Some(RequiresType::RequiresAny(any)) => match any.requirements.as_slice() {
                [named, missing] => matches!(&missing.requires_type, Some(RequiresType::AllowMissing(_)))
                    .then(|| provider_name(named))
                    .flatten(),
                _ => None,
            },
            _ => None,
        }
    }
    let all_names: BTreeSet<&str> = names.iter().map(|n| n.as_str()).collect();
    if let [only] = names {
        return optional(r) == Some(only.as_str());
    }
    let Some(RequiresType::RequiresAny(any)) = &r.requires_type else { return false };
    let Some((last, each)) = any.requirements.split_last() else { return false };
    let named: BTreeSet<&str> = each.iter().filter_map(provider_name).collect();
    let Some(RequiresType::RequiresAll(all)) = &last.requires_type else { return false };
    let optional_all: BTreeSet<&str> = all.requirements.iter().filter_map(optional).collect();
    named == all_names && optional_all == all_names && each.len() == names.len()
}

fn provider_name(r: &JwtRequirement) -> Option<&str> {
    match &r.requires_type {
        Some(RequiresType::ProviderName(n)) => Some(n.as_str()),
        _ => None,
    }
}

fn provider(name: &str, p: &EnvoyProvider, at: &str) -> Result<JwtProvider, Refusal> {
    if p.payload_in_metadata != PAYLOAD {
        return refuse(format!("{at}.payload_in_metadata"), "the payload must be in the metadata under `payload`");
    }
    let unchecked = [
        ("subjects", p.subjects.is_some()),
        ("require_expiration", p.require_expiration),
        ("max_lifetime", p.max_lifetime.is_some()),
        ("clock_skew_seconds", p.clock_skew_seconds != 0 && p.clock_skew_seconds != 60),
        ("header_in_metadata", !p.header_in_metadata.is_empty()),
        ("failed_status_in_metadata", !p.failed_status_in_metadata.is_empty()),
        ("pad_forward_payload_header", p.pad_forward_payload_header),
    ];
    if let Some((field, _)) = unchecked.iter().find(|(_, set)| *set) {
        return refuse(format!("{at}.{field}"), "is not supported");
    }
    let (jwks, fetch_timeout) = match &p.jwks_source_specifier {
        Some(JwksSourceSpecifier::LocalJwks(source)) => match &source.specifier {
            Some(Specifier::InlineString(doc)) => (JwksSource::Inline(doc.clone()), DEFAULT_FETCH_TIMEOUT),
            Some(Specifier::InlineBytes(doc)) => {
                (JwksSource::Inline(String::from_utf8_lossy(doc).into_owned()), DEFAULT_FETCH_TIMEOUT)
            }
            _ => return refuse(format!("{at}.local_jwks"), "only inline keys are supported"),
        },
        Some(JwksSourceSpecifier::RemoteJwks(remote)) => match &remote.http_uri {
            Some(uri) => {
                (JwksSource::Uri(uri.uri.clone()), uri.timeout.as_ref().map_or(DEFAULT_FETCH_TIMEOUT, duration))
            }
            None => return refuse(format!("{at}.remote_jwks.http_uri"), "required"),
        },
        None => return refuse(format!("{at}.jwks_source_specifier"), "keys are required"),
    };
    let mut locations: Vec<TokenLocation> = p
        .from_headers
        .iter()
        .map(|h| TokenLocation::Header { name: h.name.to_ascii_lowercase(), prefix: h.value_prefix.clone() })
        .collect();
    locations.extend(p.from_params.iter().cloned().map(TokenLocation::Param));
    locations.extend(p.from_cookies.iter().cloned().map(TokenLocation::Cookie));
    if locations.is_empty() {
        locations = TokenLocation::defaults();
    }
    Ok(JwtProvider {
        origin: name.to_string(),
        issuer: p.issuer.clone(),
        audiences: p.audiences.clone(),
        jwks,
        locations,
        forward_original_token: p.forward,
        output_payload_to_header: Some(p.forward_payload_header.clone()).filter(|h| !h.is_empty()),
        output_claim_to_headers: p
            .claim_to_headers
            .iter()
            .map(|c| (c.header_name.clone(), c.claim_name.clone()))
            .collect(),
        space_delimited_claims: p
            .normalize_payload_in_metadata
            .as_ref()
            .map(|n| n.space_delimited_claims.clone())
            .unwrap_or_default(),
        fetch_timeout,
    })
}

/// A JWT claim as RBAC and routes match it: a metadata matcher on the
/// `jwt_authn` filter's payload. Its claim path, and what a string claim
/// and an element of a list claim must match.
pub(super) struct ClaimMatch {
    pub path: Vec<String>,
    pub string: Option<TextMatch>,
    pub element: Option<TextMatch>,
    pub invert: bool,
}

pub(super) fn claim_match(m: &MetadataMatcher, at: &str) -> Result<ClaimMatch, Refusal> {
    if m.filter != crate::envoy::jwt::FILTER {
        return refuse(format!("{at}.filter"), "only the jwt_authn filter's metadata is supported");
    }
    let keys: Vec<String> = m
        .path
        .iter()
        .map(|s| s.segment.as_ref().map(|Segment::Key(k)| k.clone()))
        .collect::<Option<_>>()
        .unwrap_or_default();
    let Some((PAYLOAD, claim)) = keys.split_first().map(|(first, rest)| (first.as_str(), rest)) else {
        return refuse(format!("{at}.path"), "only claims of the payload (`payload`, then claim names) are supported");
    };
    if claim.is_empty() {
        return refuse(format!("{at}.path"), "a claim name is required");
    }
    let mut out = ClaimMatch { path: claim.to_vec(), string: None, element: None, invert: m.invert };
    let value = m.value.as_ref().and_then(|v| v.match_pattern.as_ref());
    let forms: Vec<&ValuePattern> = match value {
        Some(ValuePattern::OrMatch(or)) => or.value_matchers.iter().filter_map(|v| v.match_pattern.as_ref()).collect(),
        Some(one) => vec![one],
        None => Vec::new(),
    };
    for form in forms {
        let slot = match form {
            ValuePattern::StringMatch(s) => (&mut out.string, s),
            ValuePattern::ListMatch(list) => match list.match_pattern.as_ref() {
                Some(ListPattern::OneOf(v)) => match v.match_pattern.as_ref() {
                    Some(ValuePattern::StringMatch(s)) => (&mut out.element, s),
                    _ => return refuse(format!("{at}.value"), "only string elements of a list are supported"),
                },
                None => return refuse(format!("{at}.value"), "a list matcher needs one_of"),
            },
            _ => return refuse(format!("{at}.value"), "only string and list-of-string matches are supported"),
        };
        if slot.0.is_some() {
            return refuse(format!("{at}.value"), "two matchers of one kind are not supported");
        }
        *slot.0 = Some(super::rbac::text(slot.1, &format!("{at}.value"))?);
    }
    if out.string.is_none() && out.element.is_none() {
        return refuse(format!("{at}.value"), "a value matcher is required");
    }
    Ok(out)
}
