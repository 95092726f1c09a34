//! AuthorizationPolicy as Envoy's RBAC filters, as istiod builds them: one
//! filter per action (AUDIT as `LOG`, CUSTOM, DENY, then ALLOW), one Envoy
//! policy per rule (`ns[NS]-policy[NAME]-rule[I]`), each `to` a
//! permission and each `from` a principal, `when` conditions joining the
//! side their attribute belongs to.
//!
//! Request principals and `request.auth.*` conditions read the payload
//! the JWT filter (see `jwt`) leaves in its metadata.
//!
//! A field Envoy cannot check for this kind of traffic (an HTTP attribute
//! on a TCP chain, a JWT claim there) narrows as Istio does:
//! an ALLOW rule holding it is dropped (it allows less), a DENY or AUDIT
//! rule loses just that field (it denies more). Each is reported.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::rbac::v3::{
    permission::{Rule as PermissionRule, Set as PermissionSet},
    principal::{Authenticated, Identifier, Set as PrincipalSet},
    rbac::Action,
    Permission, Policy, Principal, Rbac,
};
use envoy_types::pb::envoy::config::route::v3::{header_matcher::HeaderMatchSpecifier, HeaderMatcher};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    path_matcher::Rule as PathRule, string_matcher::MatchPattern, PathMatcher, RegexMatcher, StringMatcher,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use mesh_core::config::security::{AuthorizationAction, Condition, Operation, Rule, Source};
use mesh_core::proxy_config::AuthorizationPolicyRef;

pub(super) const HTTP_FILTER: &str = "envoy.filters.http.rbac";
pub(super) const NETWORK_FILTER: &str = "envoy.filters.network.rbac";

/// The RBAC configs of one chain, in the order they run; what could not
/// be expressed is added to `unsupported`.
pub(super) fn filters(
    policies: &[AuthorizationPolicyRef],
    tcp: bool,
    unsupported: &mut Vec<String>,
) -> Vec<(&'static str, Rbac)> {
    // CUSTOM asks an external authorizer, and none is configured: its
    // rules deny what they match, as Istio does for an unknown provider.
    let order = [
        (AuthorizationAction::Audit, Action::Log, "AUDIT"),
        (AuthorizationAction::Custom, Action::Deny, "CUSTOM"),
        (AuthorizationAction::Deny, Action::Deny, "DENY"),
        (AuthorizationAction::Allow, Action::Allow, "ALLOW"),
    ];
    for p in policies.iter().filter(|p| p.policy.action == AuthorizationAction::Custom) {
        unsupported.push(format!(
            "AuthorizationPolicy {}/{}: action CUSTOM needs an external authorizer, which is not supported: the requests its rules match are denied",
            p.namespace, p.name
        ));
    }
    let mut out = Vec::new();
    for (action, envoy_action, name) in order {
        let of_action: Vec<&AuthorizationPolicyRef> = policies.iter().filter(|p| p.policy.action == action).collect();
        if of_action.is_empty() {
            continue;
        }
        let mut rules = HashMap::new();
        for p in of_action {
            for (i, rule) in p.policy.rules.iter().enumerate() {
                let suffix = if action == AuthorizationAction::Custom { "-bad-custom-action" } else { "" };
                let id = format!("ns[{}]-policy[{}]-rule[{i}]{suffix}", p.namespace, p.name);
                let mut gen = Generator {
                    tcp,
                    strict: action == AuthorizationAction::Allow,
                    namespace: p.namespace.clone(),
                    problems: Vec::new(),
                    claim: None,
                };
                let policy = gen.rule(rule);
                for problem in gen.problems {
                    let outcome = if policy.is_some() { "the field is ignored" } else { "the rule is dropped" };
                    unsupported
                        .push(format!("AuthorizationPolicy {}/{} rule {i}: {problem}: {outcome}", p.namespace, p.name));
                }
                if let Some(policy) = policy {
                    rules.insert(id, policy);
                }
            }
        }
        // An ALLOW filter with no policy left denies everything, as a
        // policy with no rules does in Istio.
        out.push((name, Rbac { action: envoy_action as i32, policies: rules, ..Default::default() }));
    }
    out
}

pub(super) fn http_config(rules: Rbac) -> HttpRbac {
    HttpRbac { rules: Some(rules), ..Default::default() }
}

pub(super) fn network_config(stat_prefix: &str, rules: Rbac) -> NetworkRbac {
    NetworkRbac { rules: Some(rules), stat_prefix: stat_prefix.to_string(), ..Default::default() }
}

struct Generator {
    tcp: bool,
    /// The policy's: where a bare `serviceAccounts` name lives.
    namespace: String,
    /// ALLOW: a field that cannot be checked drops its rule.
    strict: bool,
    problems: Vec<String>,
    /// The claim path of the `request.auth.claims[...]` condition being
    /// generated.
    claim: Option<Vec<String>>,
}

/// A field's matcher, or why Envoy cannot check it here.
type Gen<T> = Result<T, String>;

/// How one value of a field becomes a matcher.
type ValueGen<T> = fn(&Generator, &str) -> Gen<T>;

/// A field of a source or operation: its name, values and `not` values,
/// and how a value becomes a matcher.
type FieldSpec<'a, T> = (&'a str, &'a [String], &'a [String], ValueGen<T>);

impl Generator {
    fn rule(&mut self, rule: &Rule) -> Option<Policy> {
        let mut base_permission: Vec<Permission> = Vec::new();
        let mut base_principal: Vec<Principal> = Vec::new();
        for c in &rule.when {
            self.condition(c, &mut base_permission, &mut base_principal)?;
        }
        let mut principals = Vec::new();
        for from in &rule.from {
            let mut and = self.source(&from.source)?;
            and.extend(base_principal.iter().cloned());
            principals.push(principal_and(and));
        }
        if rule.from.is_empty() {
            principals.push(principal_and(base_principal));
        }
        let mut permissions = Vec::new();
        for to in &rule.to {
            let mut and = self.operation(&to.operation)?;
            and.extend(base_permission.iter().cloned());
            permissions.push(permission_and(and));
        }
        if rule.to.is_empty() {
            permissions.push(permission_and(base_permission));
        }
        Some(Policy { permissions, principals, ..Default::default() })
    }

    /// `Some(())` unless the rule must be dropped.
    fn keep<T>(&mut self, what: &str, generated: Gen<T>, into: impl FnOnce(T)) -> Option<()> {
        match generated {
            Ok(t) => into(t),
            Err(reason) => {
                self.problems.push(format!("{what}: {reason}"));
                if self.strict {
                    return None;
                }
            }
        }
        Some(())
    }

    fn http_only(&self, what: &str) -> Gen<()> {
        if self.tcp {
            Err(format!("{what} is HTTP only and this is a TCP port"))
        } else {
            Ok(())
        }
    }

    fn source(&mut self, s: &Source) -> Option<Vec<Principal>> {
        let mut and = Vec::new();
        let fields: [FieldSpec<'_, Principal>; 7] = [
            ("principals", &s.principals, &s.not_principals, |_, v| Ok(authenticated(spiffe_matcher(v)))),
            ("requestPrincipals", &s.request_principals, &s.not_request_principals, |g, v| {
                g.http_only("requestPrincipals")?;
                Ok(request_principal(v))
            }),
            ("serviceAccounts", &s.service_accounts, &s.not_service_accounts, |g, v| {
                Ok(service_account(v, &g.namespace))
            }),
            ("trustDomains", &s.trust_domains, &s.not_trust_domains, |_, v| Ok(trust_domain(v))),
            ("namespaces", &s.namespaces, &s.not_namespaces, |_, v| Ok(namespace(v))),
            ("remoteIpBlocks", &s.remote_ip_blocks, &s.not_remote_ip_blocks, |_, v| cidr(v).map(remote_ip)),
            ("ipBlocks", &s.ip_blocks, &s.not_ip_blocks, |_, v| cidr(v).map(direct_remote_ip)),
        ];
        for (what, values, not_values, gen) in fields {
            self.principal_field(what, values, not_values, gen, &mut and)?;
        }
        Some(and)
    }

    fn principal_field(
        &mut self,
        what: &str,
        values: &[String],
        not_values: &[String],
        gen: ValueGen<Principal>,
        and: &mut Vec<Principal>,
    ) -> Option<()> {
        let generated: Gen<(Vec<Principal>, Vec<Principal>)> = (|| {
            let yes = values.iter().map(|v| gen(self, v)).collect::<Gen<Vec<_>>>()?;
            let no = not_values.iter().map(|v| gen(self, v)).collect::<Gen<Vec<_>>>()?;
            Ok((yes, no))
        })();
        self.keep(what, generated, |(yes, no)| {
            if !yes.is_empty() {
                and.push(principal_or(yes));
            }
            if !no.is_empty() {
                and.push(Principal { identifier: Some(Identifier::NotId(Box::new(principal_or(no)))) });
            }
        })
    }

    fn operation(&mut self, o: &Operation) -> Option<Vec<Permission>> {
        let mut and = Vec::new();
        let fields: [FieldSpec<'_, Permission>; 4] = [
            ("hosts", &o.hosts, &o.not_hosts, |g, v| {
                g.http_only("hosts")?;
                Ok(permission(PermissionRule::Header(header_matcher(":authority", v, true))))
            }),
            ("methods", &o.methods, &o.not_methods, |g, v| {
                g.http_only("methods")?;
                Ok(permission(PermissionRule::Header(header_matcher(":method", v, false))))
            }),
            ("paths", &o.paths, &o.not_paths, |g, v| {
                g.http_only("paths")?;
                path(v)
            }),
            ("ports", &o.ports, &o.not_ports, |_, v| port(v)),
        ];
        for (what, values, not_values, gen) in fields {
            self.permission_field(what, values, not_values, gen, &mut and)?;
        }
        Some(and)
    }

    fn permission_field(
        &mut self,
        what: &str,
        values: &[String],
        not_values: &[String],
        gen: ValueGen<Permission>,
        and: &mut Vec<Permission>,
    ) -> Option<()> {
        let generated: Gen<(Vec<Permission>, Vec<Permission>)> = (|| {
            let yes = values.iter().map(|v| gen(self, v)).collect::<Gen<Vec<_>>>()?;
            let no = not_values.iter().map(|v| gen(self, v)).collect::<Gen<Vec<_>>>()?;
            Ok((yes, no))
        })();
        self.keep(what, generated, |(yes, no)| {
            if !yes.is_empty() {
                and.push(permission(PermissionRule::OrRules(PermissionSet { rules: yes })));
            }
            if !no.is_empty() {
                let any_of = permission(PermissionRule::OrRules(PermissionSet { rules: no }));
                and.push(permission(PermissionRule::NotRule(Box::new(any_of))));
            }
        })
    }

    /// A `when` condition joins the permissions (destination attributes)
    /// or the principals (source and request attributes).
    fn condition(
        &mut self,
        c: &Condition,
        permissions: &mut Vec<Permission>,
        principals: &mut Vec<Principal>,
    ) -> Option<()> {
        let key = c.key.as_str();
        let (values, not_values) = (c.values.as_slice(), c.not_values.as_slice());
        let what = format!("when {key}");
        let on_permission: Option<ValueGen<Permission>> = match key {
            "destination.ip" => Some(|_, v| cidr(v).map(|c| permission(PermissionRule::DestinationIp(c)))),
            "destination.port" => Some(|_, v| port(v)),
            "connection.sni" => {
                Some(|_, v| Ok(permission(PermissionRule::RequestedServerName(string_matcher(v, "", false)))))
            }
            _ => None,
        };
        if let Some(gen) = on_permission {
            return self.permission_field(&what, values, not_values, gen, permissions);
        }
        let on_principal: ValueGen<Principal> = match key {
            "source.ip" => |_, v| cidr(v).map(direct_remote_ip),
            "remote.ip" => |_, v| cidr(v).map(remote_ip),
            "source.namespace" => |_, v| Ok(namespace(v)),
            "source.principal" => |_, v| Ok(authenticated(spiffe_matcher(v))),
            "source.service_account" => |g, v| Ok(service_account(v, &g.namespace)),
            "source.trust_domain" => |_, v| Ok(trust_domain(v)),
            k if k.starts_with("request.headers[") => |g, _| g.http_only("request.headers").map(|_| any_principal()),
            "request.auth.principal" => |g, v| {
                g.http_only("request.auth.principal")?;
                Ok(request_principal(v))
            },
            "request.auth.audiences" => |g, v| jwt_claim(g, &["aud"], v),
            "request.auth.presenter" => |g, v| jwt_claim(g, &["azp"], v),
            k if k.starts_with("request.auth.claims[") => match mesh_core::authz::claim_path(k) {
                // The path is in `what`; the generator gets only the value.
                Some(_) => |g, v| jwt_claim(g, &[], v),
                None => |_, _| Err("a claim key that is not request.auth.claims[NAME]...".into()),
            },
            _ => |_, _| Err("an attribute Istio does not have".into()),
        };
        self.claim = mesh_core::authz::claim_path(key);
        if let Some(name) = key.strip_prefix("request.headers[").and_then(|k| k.strip_suffix(']')) {
            if self.tcp {
                return self.principal_field(&what, values, not_values, on_principal, principals);
            }
            let header =
                |v: &String| Principal { identifier: Some(Identifier::Header(header_matcher(name, v, false))) };
            if !values.is_empty() {
                principals.push(principal_or(values.iter().map(header).collect()));
            }
            if !not_values.is_empty() {
                let any_of = principal_or(not_values.iter().map(header).collect());
                principals.push(Principal { identifier: Some(Identifier::NotId(Box::new(any_of))) });
            }
            return Some(());
        }
        self.principal_field(&what, values, not_values, on_principal, principals)
    }
}

fn metadata(m: envoy_types::pb::envoy::r#type::matcher::v3::MetadataMatcher) -> Principal {
    use envoy_types::pb::envoy::config::rbac::v3::{MetadataSource, SourcedMetadata};
    let sourced = SourcedMetadata { metadata_matcher: Some(m), metadata_source: MetadataSource::Dynamic as i32 };
    Principal { identifier: Some(Identifier::SourcedMetadata(sourced)) }
}

fn request_principal(v: &str) -> Principal {
    principal_and(super::jwt::request_principal(v).into_iter().map(metadata).collect())
}

fn jwt_claim(g: &Generator, claims: &[&str], v: &str) -> Gen<Principal> {
    g.http_only("JWT claims")?;
    let claims: Vec<String> = match claims {
        [] => g.claim.clone().unwrap_or_default(),
        some => some.iter().map(|c| c.to_string()).collect(),
    };
    Ok(metadata(super::jwt::claim_matcher(&claims, string_matcher(v, "", false))))
}

fn permission(rule: PermissionRule) -> Permission {
    Permission { rule: Some(rule) }
}

fn permission_and(rules: Vec<Permission>) -> Permission {
    if rules.is_empty() {
        return permission(PermissionRule::Any(true));
    }
    permission(PermissionRule::AndRules(PermissionSet { rules }))
}

fn principal_and(ids: Vec<Principal>) -> Principal {
    if ids.is_empty() {
        return any_principal();
    }
    Principal { identifier: Some(Identifier::AndIds(PrincipalSet { ids })) }
}

fn principal_or(ids: Vec<Principal>) -> Principal {
    Principal { identifier: Some(Identifier::OrIds(PrincipalSet { ids })) }
}

fn any_principal() -> Principal {
    Principal { identifier: Some(Identifier::Any(true)) }
}

fn authenticated(m: StringMatcher) -> Principal {
    Principal { identifier: Some(Identifier::Authenticated(Authenticated { principal_name: Some(m) })) }
}

fn direct_remote_ip(c: CidrRange) -> Principal {
    Principal { identifier: Some(Identifier::DirectRemoteIp(c)) }
}

fn remote_ip(c: CidrRange) -> Principal {
    Principal { identifier: Some(Identifier::RemoteIp(c)) }
}

/// Istio's value syntax (`*` alone, `*suffix`, `prefix*`, exact), with
/// `prefix` before the value (`spiffe://` for principals).
fn string_matcher(v: &str, prefix: &str, ignore_case: bool) -> StringMatcher {
    let pattern = if v == "*" {
        MatchPattern::SafeRegex(regex(".+"))
    } else if let Some(suffix) = v.strip_prefix('*') {
        if prefix.is_empty() {
            MatchPattern::Suffix(suffix.to_string())
        } else {
            MatchPattern::SafeRegex(regex(&format!("{}.*{}", regex_quote(prefix), regex_quote(suffix))))
        }
    } else if let Some(start) = v.strip_suffix('*') {
        MatchPattern::Prefix(format!("{prefix}{start}"))
    } else {
        MatchPattern::Exact(format!("{prefix}{v}"))
    };
    StringMatcher { match_pattern: Some(pattern), ignore_case }
}

fn spiffe_matcher(v: &str) -> StringMatcher {
    string_matcher(v, "spiffe://", false)
}

fn regex(r: &str) -> RegexMatcher {
    RegexMatcher { regex: r.to_string(), ..Default::default() }
}

fn regex_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn namespace(v: &str) -> Principal {
    let ns = v.split('*').map(regex_quote).collect::<Vec<_>>().join(".*");
    authenticated(StringMatcher {
        match_pattern: Some(MatchPattern::SafeRegex(regex(&format!(".*/ns/{ns}/.*")))),
        ignore_case: false,
    })
}

/// `NAMESPACE/NAME`, or `NAME` in the policy's namespace.
fn service_account(v: &str, policy_namespace: &str) -> Principal {
    let (ns, sa) = v.split_once('/').unwrap_or((policy_namespace, v));
    let r = format!("spiffe://.+/ns/{}/(.+/|)sa/{}(/.+)?", regex_quote(ns), regex_quote(sa));
    authenticated(StringMatcher { match_pattern: Some(MatchPattern::SafeRegex(regex(&r))), ignore_case: false })
}

fn trust_domain(v: &str) -> Principal {
    let pattern = match v.split_once('*') {
        None => MatchPattern::Prefix(format!("spiffe://{v}/")),
        Some(("", "")) => MatchPattern::Prefix("spiffe://".into()),
        Some((before, after)) => {
            MatchPattern::SafeRegex(regex(&format!("spiffe://{}[^/]*{}/.*", regex_quote(before), regex_quote(after))))
        }
    };
    authenticated(StringMatcher { match_pattern: Some(pattern), ignore_case: false })
}

/// Istio's header matcher: `*` is presence, `*x` suffix, `x*` prefix.
fn header_matcher(name: &str, v: &str, ignore_case: bool) -> HeaderMatcher {
    let specifier = if v == "*" {
        HeaderMatchSpecifier::PresentMatch(true)
    } else {
        HeaderMatchSpecifier::StringMatch(string_matcher(v, "", ignore_case))
    };
    HeaderMatcher { name: name.to_string(), header_match_specifier: Some(specifier), ..Default::default() }
}

fn path(v: &str) -> Gen<Permission> {
    if v.contains('{') {
        return Err(format!("path template {v:?} is not supported"));
    }
    let m = PathMatcher { rule: Some(PathRule::Path(string_matcher(v, "", false))) };
    Ok(permission(PermissionRule::UrlPath(m)))
}

fn port(v: &str) -> Gen<Permission> {
    let port: u32 = v.parse().map_err(|_| format!("{v:?} is not a port"))?;
    Ok(permission(PermissionRule::DestinationPort(port)))
}

fn cidr(v: &str) -> Gen<CidrRange> {
    let (address, len) = match v.split_once('/') {
        Some((a, l)) => (a, Some(l.parse::<u32>().map_err(|_| format!("{v:?} is not a CIDR"))?)),
        None => (v, None),
    };
    let ip: std::net::IpAddr = address.parse().map_err(|_| format!("{v:?} is not an IP or CIDR"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    Ok(CidrRange {
        address_prefix: ip.to_string(),
        prefix_len: Some(UInt32Value { value: len.unwrap_or(max).min(max) }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::config::{Resource, Spec};

    fn policies(docs: &[&str]) -> Vec<AuthorizationPolicyRef> {
        docs.iter()
            .map(|doc| {
                let r = Resource::from_yaml(doc).unwrap();
                let Spec::AuthorizationPolicy(p) = r.spec else { panic!("not a policy") };
                AuthorizationPolicyRef { namespace: r.meta.namespace, name: r.meta.name, policy: p }
            })
            .collect()
    }

    const HEAD: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n";

    #[test]
    fn on_tcp_an_allow_rule_with_http_fields_is_dropped_and_a_deny_rule_loses_them() {
        let allow = format!("{HEAD}metadata: {{name: allow, namespace: foo}}\nspec:\n  rules:\n  - to: [{{operation: {{paths: [/a]}}}}]\n  - to: [{{operation: {{ports: [\"9000\"]}}}}]\n");
        let deny = format!("{HEAD}metadata: {{name: deny, namespace: foo}}\nspec:\n  action: DENY\n  rules:\n  - to: [{{operation: {{methods: [GET], ports: [\"9001\"]}}}}]\n");
        let custom = format!("{HEAD}metadata: {{name: ext, namespace: foo}}\nspec:\n  action: CUSTOM\n  provider: {{name: opa}}\n  rules: [{{}}]\n");
        let mut unsupported = Vec::new();
        let filters = filters(&policies(&[&allow, &deny, &custom]), true, &mut unsupported);
        let actions: Vec<&str> = filters.iter().map(|(a, _)| *a).collect();
        assert_eq!(actions, ["CUSTOM", "DENY", "ALLOW"]);
        assert_eq!(filters[0].1.action, Action::Deny as i32, "no authorizer: CUSTOM rules deny");
        let allowed: Vec<&String> = filters[2].1.policies.keys().collect();
        assert_eq!(allowed, ["ns[foo]-policy[allow]-rule[1]"], "the paths rule allows nothing on TCP");
        let deny_rule = &filters[1].1.policies["ns[foo]-policy[deny]-rule[0]"];
        let Some(PermissionRule::AndRules(and)) = &deny_rule.permissions[0].rule else { panic!("{deny_rule:?}") };
        assert_eq!(and.rules.len(), 1, "only the port is left to match: {and:?}");
        assert_eq!(unsupported.len(), 3, "{unsupported:#?}");
        assert!(unsupported[0].contains("CUSTOM"));
        assert!(unsupported.iter().any(|u| u.contains("allow rule 0: paths") && u.contains("dropped")));
        assert!(unsupported.iter().any(|u| u.contains("deny rule 0: methods") && u.contains("ignored")));
    }

    #[test]
    fn an_allow_policy_without_rules_denies_everything() {
        let nothing = format!("{HEAD}metadata: {{name: allow-nothing, namespace: foo}}\nspec: {{}}\n");
        let filters = filters(&policies(&[&nothing]), false, &mut Vec::new());
        assert_eq!(filters.len(), 1);
        assert_eq!(filters[0].1.action, Action::Allow as i32);
        assert!(filters[0].1.policies.is_empty());
    }

    #[test]
    fn values_follow_istio_syntax() {
        let exact = spiffe_matcher("cluster.local/ns/foo/sa/sleep");
        assert_eq!(exact.match_pattern, Some(MatchPattern::Exact("spiffe://cluster.local/ns/foo/sa/sleep".into())));
        let suffix = spiffe_matcher("*/sa/sleep");
        assert_eq!(suffix.match_pattern, Some(MatchPattern::SafeRegex(regex("spiffe://.*/sa/sleep"))));
        assert_eq!(string_matcher("/api/*", "", false).match_pattern, Some(MatchPattern::Prefix("/api/".into())));
        assert_eq!(cidr("10.0.0.0/8").unwrap().prefix_len, Some(UInt32Value { value: 8 }));
        assert_eq!(cidr("::1").unwrap().prefix_len, Some(UInt32Value { value: 128 }));
        assert!(cidr("nonsense").is_err());
    }
}
