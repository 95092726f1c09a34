//! Envoy's RBAC filter configs (HTTP and network) -> mesh-core's
//! [`RbacFilter`], enforced by mesh-proxy as Envoy enforces them; JWT
//! claims (the jwt_authn payload in the request's metadata) included. A
//! rule it cannot judge (other metadata, filter state, CEL conditions,
//! extensions) is refused, naming the field: a policy enforced in part
//! would allow or deny the wrong requests.

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::rbac::v3::{
    permission::Rule, principal::Identifier, rbac::Action, MetadataSource, Permission as EnvoyPermission,
    Principal as EnvoyPrincipal, Rbac as EnvoyRbac,
};
use envoy_types::pb::envoy::config::route::v3::{header_matcher::HeaderMatchSpecifier, HeaderMatcher};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    path_matcher::Rule as PathRule, string_matcher::MatchPattern, MetadataMatcher, PathMatcher, StringMatcher,
};
use ipnet::IpNet;
use mesh_core::rbac::{
    HeaderMatch, HeaderValue, Permission, Principal, RbacAction, RbacFilter, RbacPolicy, TextMatch, TextPattern,
};

/// Why a part cannot be taken, with where it is (relative to the rules).
type Refusal = (String, String);

fn refuse<T>(at: &str, what: impl Into<String>) -> Result<T, Refusal> {
    Err((at.to_string(), what.into()))
}

/// `rules` of an RBAC filter; `at` locates it for the refusal.
pub(super) fn filter(rules: &EnvoyRbac, at: &str) -> Result<RbacFilter, Refusal> {
    let action = match Action::try_from(rules.action) {
        Ok(Action::Allow) => RbacAction::Allow,
        Ok(Action::Deny) => RbacAction::Deny,
        Ok(Action::Log) => RbacAction::Log,
        Err(_) => return refuse(&format!("{at}.action"), format!("unknown action {}", rules.action)),
    };
    let mut names: Vec<&String> = rules.policies.keys().collect();
    names.sort();
    let mut policies = Vec::new();
    for name in names {
        let p = &rules.policies[name];
        let at = format!("{at}.policies[{name}]");
        if p.condition.is_some() || p.checked_condition.is_some() {
            return refuse(&format!("{at}.condition"), "CEL conditions are not supported");
        }
        let permissions = p
            .permissions
            .iter()
            .enumerate()
            .map(|(i, x)| permission(x, &format!("{at}.permissions[{i}]")))
            .collect::<Result<_, _>>()?;
        let principals = p
            .principals
            .iter()
            .enumerate()
            .map(|(i, x)| principal(x, &format!("{at}.principals[{i}]")))
            .collect::<Result<_, _>>()?;
        policies.push(RbacPolicy { name: name.clone(), permissions, principals });
    }
    Ok(RbacFilter { action, policies })
}

fn permission(p: &EnvoyPermission, at: &str) -> Result<Permission, Refusal> {
    let all = |rules: &[EnvoyPermission], at: String| {
        rules.iter().enumerate().map(|(i, r)| permission(r, &format!("{at}[{i}]"))).collect::<Result<Vec<_>, _>>()
    };
    Ok(match &p.rule {
        Some(Rule::Any(true)) => Permission::Any,
        Some(Rule::AndRules(set)) => Permission::And(all(&set.rules, format!("{at}.and_rules"))?),
        Some(Rule::OrRules(set)) => Permission::Or(all(&set.rules, format!("{at}.or_rules"))?),
        Some(Rule::NotRule(inner)) => Permission::Not(Box::new(permission(inner, &format!("{at}.not_rule"))?)),
        Some(Rule::Header(h)) => Permission::Header(header(h, &format!("{at}.header"))?),
        Some(Rule::UrlPath(m)) => Permission::UrlPath(path(m, &format!("{at}.url_path"))?),
        Some(Rule::DestinationIp(c)) => Permission::DestinationIp(cidr(c, &format!("{at}.destination_ip"))?),
        Some(Rule::DestinationPort(port)) => Permission::DestinationPort(
            u16::try_from(*port).or_else(|_| refuse(&format!("{at}.destination_port"), "not a port"))?,
        ),
        Some(Rule::DestinationPortRange(r)) => {
            let bound = |v: i32| u16::try_from(v.clamp(0, 65535));
            match (bound(r.start), bound(r.end)) {
                (Ok(start), Ok(end)) => Permission::DestinationPortRange(start, end),
                _ => return refuse(&format!("{at}.destination_port_range"), "not a port range"),
            }
        }
        Some(Rule::RequestedServerName(m)) => {
            Permission::RequestedServerName(text(m, &format!("{at}.requested_server_name"))?)
        }
        other => return refuse(at, format!("{} is not supported", variant(other))),
    })
}

fn principal(p: &EnvoyPrincipal, at: &str) -> Result<Principal, Refusal> {
    let all = |ids: &[EnvoyPrincipal], at: String| {
        ids.iter().enumerate().map(|(i, r)| principal(r, &format!("{at}[{i}]"))).collect::<Result<Vec<_>, _>>()
    };
    Ok(match &p.identifier {
        Some(Identifier::Any(true)) => Principal::Any,
        Some(Identifier::AndIds(set)) => Principal::And(all(&set.ids, format!("{at}.and_ids"))?),
        Some(Identifier::OrIds(set)) => Principal::Or(all(&set.ids, format!("{at}.or_ids"))?),
        Some(Identifier::NotId(inner)) => Principal::Not(Box::new(principal(inner, &format!("{at}.not_id"))?)),
        Some(Identifier::Authenticated(a)) => Principal::Authenticated(
            a.principal_name.as_ref().map(|m| text(m, &format!("{at}.authenticated.principal_name"))).transpose()?,
        ),
        Some(Identifier::DirectRemoteIp(c)) => Principal::DirectRemoteIp(cidr(c, &format!("{at}.direct_remote_ip"))?),
        Some(Identifier::RemoteIp(c)) => Principal::RemoteIp(cidr(c, &format!("{at}.remote_ip"))?),
        Some(Identifier::Header(h)) => Principal::Header(header(h, &format!("{at}.header"))?),
        Some(Identifier::UrlPath(m)) => Principal::UrlPath(path(m, &format!("{at}.url_path"))?),
        // A JWT claim: the jwt_authn filter's payload in the request's metadata.
        Some(Identifier::SourcedMetadata(s)) if s.metadata_source == MetadataSource::Dynamic as i32 => {
            let at = format!("{at}.sourced_metadata.metadata_matcher");
            let Some(m) = &s.metadata_matcher else { return refuse(&at, "required") };
            claim(m, &at)?
        }
        other => return refuse(at, format!("{} is not supported", variant(other))),
    })
}

fn claim(m: &MetadataMatcher, at: &str) -> Result<Principal, Refusal> {
    let c = super::jwt::claim_match(m, at)?;
    Ok(Principal::JwtClaim { path: c.path, string: c.string, element: c.element, invert: c.invert })
}

/// The variant's name: `Some(Metadata(..))` -> `Metadata`.
fn variant(v: &Option<impl std::fmt::Debug>) -> String {
    match v {
        None => "an empty rule".into(),
        Some(v) => format!("{v:?}").split(['(', ' ', '{']).next().unwrap_or("this rule").to_string(),
    }
}

fn header(h: &HeaderMatcher, at: &str) -> Result<HeaderMatch, Refusal> {
    let value = match &h.header_match_specifier {
        Some(HeaderMatchSpecifier::StringMatch(m)) => HeaderValue::Text(text(m, &format!("{at}.string_match"))?),
        Some(HeaderMatchSpecifier::PresentMatch(p)) => HeaderValue::Present(*p),
        // The deprecated forms and ranges: the string_match form says the same.
        _ => return refuse(at, "only string_match and present_match are supported"),
    };
    Ok(HeaderMatch { name: h.name.to_ascii_lowercase(), value, invert: h.invert_match })
}

fn path(m: &PathMatcher, at: &str) -> Result<TextMatch, Refusal> {
    match &m.rule {
        Some(PathRule::Path(s)) => text(s, &format!("{at}.path")),
        None => refuse(at, "a path matcher is required"),
    }
}

pub(super) fn text(m: &StringMatcher, at: &str) -> Result<TextMatch, Refusal> {
    let pattern = match &m.match_pattern {
        Some(MatchPattern::Exact(s)) => TextPattern::Exact(s.clone()),
        Some(MatchPattern::Prefix(s)) => TextPattern::Prefix(s.clone()),
        Some(MatchPattern::Suffix(s)) => TextPattern::Suffix(s.clone()),
        Some(MatchPattern::Contains(s)) => TextPattern::Contains(s.clone()),
        Some(MatchPattern::SafeRegex(r)) => {
            regex::Regex::new(&r.regex).or_else(|e| refuse(&format!("{at}.safe_regex"), e.to_string()))?;
            TextPattern::Regex(r.regex.clone())
        }
        other => return refuse(at, format!("{} is not supported", variant(other))),
    };
    Ok(TextMatch { pattern, ignore_case: m.ignore_case })
}

fn cidr(c: &CidrRange, at: &str) -> Result<IpNet, Refusal> {
    let len = c.prefix_len.as_ref().map(|l| l.value);
    let ip: std::net::IpAddr =
        c.address_prefix.parse().or_else(|_| refuse(&format!("{at}.address_prefix"), "not an IP address"))?;
    // Envoy reads an absent length as 0: the whole address family.
    let len = u8::try_from(len.unwrap_or(0)).unwrap_or(u8::MAX);
    IpNet::new(ip, len).map(|n| n.trunc()).or_else(|_| refuse(&format!("{at}.prefix_len"), "out of range"))
}
