//! Authorization policy evaluation, with Istio's semantics: DENY policies
//! first (any match denies), then ALLOW policies (if there are any, one must
//! match). Policies are compiled once; evaluation allocates nothing.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::security::{AuthorizationAction, Condition, Operation, Rule, Source};
use crate::jwt::VerifiedJwt;
use crate::proxy_config::AuthorizationPolicyRef;

/// What authorization sees of a request.
#[derive(Clone, Copy, Debug)]
pub struct AuthzRequest<'a> {
    /// The peer's IP (Istio `source.ip`, `ipBlocks`).
    pub source_ip: Option<IpAddr>,
    /// The original client IP, from X-Forwarded-For (`remoteIpBlocks`).
    pub remote_ip: Option<IpAddr>,
    /// The peer's mTLS identity: `cluster.local/ns/default/sa/sleep`.
    pub source_principal: Option<&'a str>,
    /// The request's verified JWT (RequestAuthentication): its
    /// `issuer/subject` is the request principal.
    pub request_auth: Option<&'a VerifiedJwt>,
    pub host: &'a str,
    pub method: &'a str,
    /// Path without the query string.
    pub path: &'a str,
    pub port: u16,
    pub headers: &'a http::HeaderMap,
    pub destination_ip: Option<IpAddr>,
    pub sni: Option<&'a str>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied, naming the policy (`ns/name`) that decided, or none when no
    /// ALLOW policy matched.
    Deny {
        policy: Option<String>,
    },
}

/// Condition keys Istio supports in `when`.
pub fn is_known_condition_key(key: &str) -> bool {
    const KEYS: &[&str] = &[
        "source.ip",
        "remote.ip",
        "source.namespace",
        "source.principal",
        "request.auth.principal",
        "request.auth.audiences",
        "request.auth.presenter",
        "destination.ip",
        "destination.port",
        "connection.sni",
    ];
    KEYS.contains(&key)
        || (key.starts_with("request.headers[") && key.ends_with(']'))
        || (key.starts_with("request.auth.claims[") && key.ends_with(']'))
        || key.starts_with("experimental.envoy.filters.")
}

#[derive(Clone, Debug)]
enum StrMatch {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl StrMatch {
    fn new(v: &str) -> StrMatch {
        if v == "*" {
            StrMatch::Any
        } else if let Some(p) = v.strip_suffix('*') {
            StrMatch::Prefix(p.to_string())
        } else if let Some(s) = v.strip_prefix('*') {
            StrMatch::Suffix(s.to_string())
        } else {
            StrMatch::Exact(v.to_string())
        }
    }

    fn matches(&self, s: &str) -> bool {
        match self {
            StrMatch::Any => true,
            StrMatch::Exact(e) => e == s,
            StrMatch::Prefix(p) => s.starts_with(p.as_str()),
            StrMatch::Suffix(x) => s.ends_with(x.as_str()),
        }
    }

    fn matches_ignore_case(&self, s: &str) -> bool {
        match self {
            StrMatch::Any => true,
            StrMatch::Exact(e) => e.eq_ignore_ascii_case(s),
            StrMatch::Prefix(p) => {
                s.len() >= p.len() && s.is_char_boundary(p.len()) && s[..p.len()].eq_ignore_ascii_case(p)
            }
            StrMatch::Suffix(x) => {
                s.len() >= x.len()
                    && s.is_char_boundary(s.len() - x.len())
                    && s[s.len() - x.len()..].eq_ignore_ascii_case(x)
            }
        }
    }
}

/// A set-valued field: `values` (any must match) and `not_values` (none may).
/// Empty on both sides means "not constrained".
#[derive(Clone, Debug, Default)]
struct Field<M> {
    values: Vec<M>,
    not_values: Vec<M>,
}

impl<M> Field<M> {
    fn is_set(&self) -> bool {
        !self.values.is_empty() || !self.not_values.is_empty()
    }

    /// `value` is `None` when the request lacks the attribute: `values`
    /// then cannot match (`principals` needs mTLS), and `not_values` has
    /// nothing to exclude, as Envoy's RBAC evaluates Istio's policies.
    fn check<T: ?Sized>(&self, value: Option<&T>, test: impl Fn(&M, &T) -> bool) -> bool {
        if !self.is_set() {
            return true;
        }
        let Some(value) = value else { return self.values.is_empty() };
        (self.values.is_empty() || self.values.iter().any(|m| test(m, value)))
            && !self.not_values.iter().any(|m| test(m, value))
    }

    /// [`Field::check`] for a list-valued attribute (a JWT claim that is a
    /// string or a list of strings): a value matches when any element
    /// does; no element at all is a missing attribute.
    fn check_any(&self, elements: &[&str], test: impl Fn(&M, &str) -> bool) -> bool {
        if elements.is_empty() {
            return self.check(None::<&str>, |m, v| test(m, v));
        }
        let hit = |m: &M| elements.iter().any(|e| test(m, e));
        !self.is_set() || ((self.values.is_empty() || self.values.iter().any(hit)) && !self.not_values.iter().any(hit))
    }
}

/// A `requestPrincipals` value, matched as Istio matches it: issuer and
/// subject apart (split at the last `/`, as issuers are URLs), `*` as
/// "present", and a leading or trailing `*` on the issuer or subject side.
#[derive(Clone, Debug)]
struct PrincipalMatch {
    issuer: StrMatch,
    subject: StrMatch,
}

impl PrincipalMatch {
    fn new(value: &str) -> PrincipalMatch {
        let split = value.rsplit_once('/');
        let (issuer, subject) = match (value, split) {
            ("*", _) => (StrMatch::Any, StrMatch::Any),
            (v, Some((iss, sub))) if v.starts_with('*') => {
                let issuer = if iss == "*" { StrMatch::Any } else { StrMatch::Suffix(iss[1..].to_string()) };
                (issuer, StrMatch::Exact(sub.to_string()))
            }
            (v, None) if v.starts_with('*') => (StrMatch::Any, StrMatch::Suffix(v[1..].to_string())),
            (v, Some((iss, sub))) if v.ends_with('*') => {
                let subject =
                    if sub == "*" { StrMatch::Any } else { StrMatch::Prefix(sub[..sub.len() - 1].to_string()) };
                (StrMatch::Exact(iss.to_string()), subject)
            }
            (v, None) if v.ends_with('*') => (StrMatch::Prefix(v[..v.len() - 1].to_string()), StrMatch::Any),
            (_, Some((iss, sub))) => (StrMatch::Exact(iss.to_string()), StrMatch::Exact(sub.to_string())),
            (v, None) => (StrMatch::Exact(v.to_string()), StrMatch::Exact(String::new())),
        };
        PrincipalMatch { issuer, subject }
    }

    /// `*` is Envoy's `.+`: present and not empty.
    fn matches(&self, jwt: &VerifiedJwt) -> bool {
        let side = |m: &StrMatch, s: &str| match m {
            StrMatch::Any => !s.is_empty(),
            m => m.matches(s),
        };
        side(&self.issuer, &jwt.issuer) && side(&self.subject, &jwt.subject)
    }
}

fn request_principals(values: &[String], not: &[String]) -> Field<PrincipalMatch> {
    Field {
        values: values.iter().map(|v| PrincipalMatch::new(v)).collect(),
        not_values: not.iter().map(|v| PrincipalMatch::new(v)).collect(),
    }
}

fn strs(values: &[String], not: &[String]) -> Field<StrMatch> {
    Field {
        values: values.iter().map(|v| StrMatch::new(v)).collect(),
        not_values: not.iter().map(|v| StrMatch::new(v)).collect(),
    }
}

fn nets(values: &[String], not: &[String]) -> Field<IpNet> {
    let parse = |v: &String| v.parse::<IpNet>().ok().or_else(|| v.parse::<IpAddr>().ok().map(IpNet::from));
    Field { values: values.iter().filter_map(parse).collect(), not_values: not.iter().filter_map(parse).collect() }
}

#[derive(Clone, Debug)]
struct CompiledSource {
    principals: Field<StrMatch>,
    request_principals: Field<PrincipalMatch>,
    namespaces: Field<StrMatch>,
    ip_blocks: Field<IpNet>,
    remote_ip_blocks: Field<IpNet>,
}

#[derive(Clone, Debug)]
struct CompiledOperation {
    hosts: Field<StrMatch>,
    ports: Field<u16>,
    methods: Field<StrMatch>,
    paths: Field<StrMatch>,
}

#[derive(Clone, Debug)]
enum ConditionKey {
    Header(http::HeaderName),
    SourceIp,
    RemoteIp,
    SourceNamespace,
    SourcePrincipal,
    RequestPrincipal,
    RequestAudiences,
    RequestPresenter,
    /// `request.auth.claims[a][b]`: the claim path.
    RequestClaim(Vec<String>),
    DestinationIp,
    DestinationPort,
    Sni,
    /// A key this data plane has no value for: the condition never
    /// matches.
    Unavailable,
}

#[derive(Clone, Debug)]
struct CompiledCondition {
    key: ConditionKey,
    strings: Field<StrMatch>,
    nets: Field<IpNet>,
    principals: Field<PrincipalMatch>,
}

#[derive(Clone, Debug)]
struct CompiledRule {
    from: Vec<CompiledSource>,
    to: Vec<CompiledOperation>,
    when: Vec<CompiledCondition>,
}

#[derive(Clone, Debug)]
struct CompiledPolicy {
    name: String,
    rules: Vec<CompiledRule>,
}

/// The compiled AuthorizationPolicies of one proxy.
#[derive(Clone, Debug, Default)]
pub struct Authorizer {
    deny: Vec<CompiledPolicy>,
    allow: Vec<CompiledPolicy>,
}

impl Authorizer {
    pub fn new(policies: &[AuthorizationPolicyRef]) -> Authorizer {
        let mut a = Authorizer::default();
        for p in policies {
            let compiled = CompiledPolicy {
                name: format!("{}/{}", p.namespace, p.name),
                rules: p.policy.rules.iter().map(compile_rule).collect(),
            };
            match p.policy.action {
                // CUSTOM asks an external authorizer, and none is
                // configured: its rules deny, as Istio's do when the
                // provider is unknown.
                AuthorizationAction::Deny | AuthorizationAction::Custom => a.deny.push(compiled),
                AuthorizationAction::Allow => a.allow.push(compiled),
                // AUDIT changes no decision.
                AuthorizationAction::Audit => {}
            }
        }
        a
    }

    /// `true` when there is nothing to evaluate.
    pub fn is_empty(&self) -> bool {
        self.deny.is_empty() && self.allow.is_empty()
    }

    pub fn evaluate(&self, req: &AuthzRequest<'_>) -> Decision {
        if let Some(p) = self.deny.iter().find(|p| p.matches(req)) {
            return Decision::Deny { policy: Some(p.name.clone()) };
        }
        if self.allow.is_empty() || self.allow.iter().any(|p| p.matches(req)) {
            Decision::Allow
        } else {
            Decision::Deny { policy: None }
        }
    }
}

impl CompiledPolicy {
    /// A policy with no rules matches nothing (so an ALLOW policy with an
    /// empty spec denies all); a rule with no fields matches everything.
    fn matches(&self, req: &AuthzRequest<'_>) -> bool {
        self.rules.iter().any(|r| r.matches(req))
    }
}

fn compile_rule(rule: &Rule) -> CompiledRule {
    CompiledRule {
        from: rule.from.iter().map(|f| compile_source(&f.source)).collect(),
        to: rule.to.iter().map(|t| compile_operation(&t.operation)).collect(),
        when: rule.when.iter().map(compile_condition).collect(),
    }
}

fn compile_source(s: &Source) -> CompiledSource {
    let mut principals = strs(&s.principals, &s.not_principals);
    // serviceAccounts are principals in the local trust domain form.
    let sa = |v: &String| {
        let (ns, name) = v.split_once('/').unwrap_or(("default", v));
        StrMatch::new(&format!("*/ns/{ns}/sa/{name}"))
    };
    principals.values.extend(s.service_accounts.iter().map(sa));
    principals.not_values.extend(s.not_service_accounts.iter().map(sa));
    CompiledSource {
        principals,
        request_principals: request_principals(&s.request_principals, &s.not_request_principals),
        namespaces: strs(&s.namespaces, &s.not_namespaces),
        ip_blocks: nets(&s.ip_blocks, &s.not_ip_blocks),
        remote_ip_blocks: nets(&s.remote_ip_blocks, &s.not_remote_ip_blocks),
    }
}

fn compile_operation(o: &Operation) -> CompiledOperation {
    CompiledOperation {
        hosts: strs(&o.hosts, &o.not_hosts),
        ports: Field {
            values: o.ports.iter().filter_map(|p| p.parse().ok()).collect(),
            not_values: o.not_ports.iter().filter_map(|p| p.parse().ok()).collect(),
        },
        methods: strs(&o.methods, &o.not_methods),
        paths: strs(&o.paths, &o.not_paths),
    }
}

fn compile_condition(c: &Condition) -> CompiledCondition {
    let key = match c.key.as_str() {
        "source.ip" => ConditionKey::SourceIp,
        "remote.ip" => ConditionKey::RemoteIp,
        "source.namespace" => ConditionKey::SourceNamespace,
        "source.principal" => ConditionKey::SourcePrincipal,
        "request.auth.principal" => ConditionKey::RequestPrincipal,
        "request.auth.audiences" => ConditionKey::RequestAudiences,
        "request.auth.presenter" => ConditionKey::RequestPresenter,
        "destination.ip" => ConditionKey::DestinationIp,
        "destination.port" => ConditionKey::DestinationPort,
        "connection.sni" => ConditionKey::Sni,
        k if k.starts_with("request.auth.claims[") => {
            claim_path(k).map_or(ConditionKey::Unavailable, ConditionKey::RequestClaim)
        }
        k => k
            .strip_prefix("request.headers[")
            .and_then(|h| h.strip_suffix(']'))
            .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok())
            .map_or(ConditionKey::Unavailable, ConditionKey::Header),
    };
    CompiledCondition {
        key,
        strings: strs(&c.values, &c.not_values),
        nets: nets(&c.values, &c.not_values),
        principals: request_principals(&c.values, &c.not_values),
    }
}

/// `request.auth.claims[a][b]` -> `[a, b]`.
pub fn claim_path(key: &str) -> Option<Vec<String>> {
    let inner = key.strip_prefix("request.auth.claims[")?.strip_suffix(']')?;
    let path: Vec<String> = inner.split("][").map(str::to_string).collect();
    (!path.iter().any(|p| p.is_empty() || p.contains(['[', ']']))).then_some(path)
}

/// `cluster.local/ns/foo/sa/bar` -> `foo`.
fn namespace_of(principal: &str) -> Option<&str> {
    let rest = &principal[principal.find("/ns/")? + 4..];
    Some(rest.split('/').next().unwrap_or(rest))
}

impl CompiledRule {
    fn matches(&self, req: &AuthzRequest<'_>) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(req)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(req)))
            && self.when.iter().all(|c| c.matches(req))
    }
}

impl CompiledSource {
    fn matches(&self, req: &AuthzRequest<'_>) -> bool {
        let m = |m: &StrMatch, s: &str| m.matches(s);
        let net = |n: &IpNet, ip: &IpAddr| n.contains(ip);
        self.principals.check(req.source_principal, m)
            && self.request_principals.check(req.request_auth, |p: &PrincipalMatch, jwt: &VerifiedJwt| p.matches(jwt))
            && self.namespaces.check(req.source_principal.and_then(namespace_of), m)
            && self.ip_blocks.check(req.source_ip.as_ref(), net)
            && self.remote_ip_blocks.check(req.remote_ip.or(req.source_ip).as_ref(), net)
    }
}

impl CompiledOperation {
    fn matches(&self, req: &AuthzRequest<'_>) -> bool {
        let host_no_port = req
            .host
            .rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map_or(req.host, |(h, _)| h);
        self.hosts.check(Some(req.host), |m: &StrMatch, h: &str| {
            m.matches_ignore_case(h) || m.matches_ignore_case(host_no_port)
        }) && self.ports.check(Some(&req.port), |p: &u16, v: &u16| p == v)
            && self.methods.check(Some(req.method), |m: &StrMatch, s: &str| m.matches(s))
            && self.paths.check(Some(req.path), |m: &StrMatch, s: &str| m.matches(s))
    }
}

impl CompiledCondition {
    fn matches(&self, req: &AuthzRequest<'_>) -> bool {
        let m = |m: &StrMatch, s: &str| m.matches(s);
        let net = |n: &IpNet, ip: &IpAddr| n.contains(ip);
        match &self.key {
            ConditionKey::Header(name) => {
                let value = req.headers.get(name).and_then(|v| v.to_str().ok());
                self.strings.check(value, m)
            }
            ConditionKey::SourceIp => self.nets.check(req.source_ip.as_ref(), net),
            ConditionKey::RemoteIp => self.nets.check(req.remote_ip.or(req.source_ip).as_ref(), net),
            ConditionKey::DestinationIp => self.nets.check(req.destination_ip.as_ref(), net),
            ConditionKey::SourceNamespace => self.strings.check(req.source_principal.and_then(namespace_of), m),
            ConditionKey::SourcePrincipal => self.strings.check(req.source_principal, m),
            ConditionKey::RequestPrincipal => {
                self.principals.check(req.request_auth, |p: &PrincipalMatch, jwt: &VerifiedJwt| p.matches(jwt))
            }
            ConditionKey::RequestAudiences => {
                let audiences: Vec<&str> =
                    req.request_auth.map_or(vec![], |j| j.audiences.iter().map(String::as_str).collect());
                self.strings.check_any(&audiences, m)
            }
            ConditionKey::RequestPresenter => {
                self.strings.check(req.request_auth.and_then(|j| j.presenter.as_deref()), m)
            }
            ConditionKey::RequestClaim(path) => {
                self.strings.check_any(&req.request_auth.map_or(vec![], |j| j.claim_strings(path)), m)
            }
            ConditionKey::DestinationPort => {
                let port = req.port.to_string();
                self.strings.check(Some(port.as_str()), m)
            }
            ConditionKey::Sni => self.strings.check(req.sni, m),
            ConditionKey::Unavailable => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Resource, Spec};

    fn policies(yaml: &str) -> Vec<AuthorizationPolicyRef> {
        yaml.split("\n---\n")
            .map(|doc| {
                let r = Resource::from_yaml(doc).unwrap();
                let Spec::AuthorizationPolicy(p) = r.spec else { panic!("not a policy") };
                AuthorizationPolicyRef { namespace: r.meta.namespace, name: r.meta.name, policy: p }
            })
            .collect()
    }

    struct Req {
        headers: http::HeaderMap,
    }

    fn request<'a>(
        r: &'a Req,
        method: &'a str,
        path: &'a str,
        principal: Option<&'a str>,
        ip: &str,
    ) -> AuthzRequest<'a> {
        AuthzRequest {
            source_ip: ip.parse().ok(),
            remote_ip: None,
            source_principal: principal,
            request_auth: None,
            host: "httpbin.foo.svc.cluster.local:8000",
            method,
            path,
            port: 8000,
            headers: &r.headers,
            destination_ip: None,
            sni: None,
        }
    }

    const SLEEP: Option<&str> = Some("cluster.local/ns/foo/sa/sleep");

    #[test]
    fn allow_policy_admits_only_matching_requests() {
        let a = Authorizer::new(&policies(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: httpbin, namespace: foo}\nspec:\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/foo/sa/sleep\"]\n    to:\n    - operation:\n        methods: [GET]\n        paths: [\"/info*\"]\n    when:\n    - key: request.headers[version]\n      values: [v1, v2]\n",
        ));
        let mut r = Req { headers: http::HeaderMap::new() };
        r.headers.insert("version", "v1".parse().unwrap());
        assert_eq!(a.evaluate(&request(&r, "GET", "/info/x", SLEEP, "10.0.0.1")), Decision::Allow);
        assert_eq!(a.evaluate(&request(&r, "POST", "/info", SLEEP, "10.0.0.1")), Decision::Deny { policy: None });
        assert_eq!(a.evaluate(&request(&r, "GET", "/admin", SLEEP, "10.0.0.1")), Decision::Deny { policy: None });
        assert_eq!(
            a.evaluate(&request(&r, "GET", "/info", None, "10.0.0.1")),
            Decision::Deny { policy: None },
            "no mTLS identity"
        );
        r.headers.insert("version", "v3".parse().unwrap());
        assert_eq!(a.evaluate(&request(&r, "GET", "/info", SLEEP, "10.0.0.1")), Decision::Deny { policy: None });
    }

    #[test]
    fn deny_wins_over_allow_and_not_forms_work() {
        let a = Authorizer::new(&policies(concat!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-all, namespace: foo}\nspec:\n  rules:\n  - {}\n",
            "\n---\n",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-outside, namespace: foo}\nspec:\n  action: DENY\n  rules:\n  - from:\n    - source:\n        notNamespaces: [foo]\n  - from:\n    - source:\n        ipBlocks: [\"192.168.0.0/16\"]\n",
        )));
        let r = Req { headers: http::HeaderMap::new() };
        assert_eq!(a.evaluate(&request(&r, "GET", "/", SLEEP, "10.0.0.1")), Decision::Allow);
        assert_eq!(
            a.evaluate(&request(&r, "GET", "/", Some("cluster.local/ns/bar/sa/x"), "10.0.0.1")),
            Decision::Deny { policy: Some("foo/deny-outside".into()) }
        );
        assert_eq!(
            a.evaluate(&request(&r, "GET", "/", SLEEP, "192.168.3.4")),
            Decision::Deny { policy: Some("foo/deny-outside".into()) }
        );
    }

    /// As Envoy's RBAC: an attribute the request lacks matches no value,
    /// and so every `not` form (plaintext is "not namespace foo").
    #[test]
    fn a_missing_attribute_matches_not_forms() {
        let a = Authorizer::new(&policies(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny, namespace: foo}\nspec:\n  action: DENY\n  rules:\n  - from:\n    - source:\n        notNamespaces: [foo]\n  - when:\n    - key: request.headers[x-user]\n      notValues: [alice]\n",
        ));
        let mut r = Req { headers: http::HeaderMap::new() };
        r.headers.insert("x-user", "alice".parse().unwrap());
        assert_eq!(a.evaluate(&request(&r, "GET", "/", SLEEP, "10.0.0.1")), Decision::Allow);
        let denied = Decision::Deny { policy: Some("foo/deny".into()) };
        assert_eq!(a.evaluate(&request(&r, "GET", "/", None, "10.0.0.1")), denied, "plaintext");
        let r = Req { headers: http::HeaderMap::new() };
        assert_eq!(a.evaluate(&request(&r, "GET", "/", SLEEP, "10.0.0.1")), denied, "no x-user header");
    }

    #[test]
    fn empty_allow_policy_denies_everything_and_no_policy_allows() {
        let deny_all = Authorizer::new(&policies(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: foo}\nspec: {}\n",
        ));
        let r = Req { headers: http::HeaderMap::new() };
        assert_eq!(deny_all.evaluate(&request(&r, "GET", "/", SLEEP, "10.0.0.1")), Decision::Deny { policy: None });
        assert_eq!(Authorizer::default().evaluate(&request(&r, "GET", "/", None, "10.0.0.1")), Decision::Allow);
    }

    #[test]
    fn hosts_ports_suffix_and_conditions() {
        let a = Authorizer::new(&policies(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo}\nspec:\n  rules:\n  - to:\n    - operation:\n        hosts: [\"*.cluster.local\"]\n        ports: [\"8000\"]\n        notPaths: [\"*.secret\"]\n    when:\n    - key: source.ip\n      values: [\"10.0.0.0/8\"]\n    - key: request.auth.claims[group]\n      notValues: [x]\n",
        ));
        let r = Req { headers: http::HeaderMap::new() };
        // No token: the claim is missing, which no `notValues` excludes.
        assert_eq!(a.evaluate(&request(&r, "GET", "/a", None, "10.1.1.1")), Decision::Allow);
        let a = Authorizer::new(&policies(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo}\nspec:\n  rules:\n  - to:\n    - operation:\n        hosts: [\"*.cluster.local\"]\n        ports: [\"8000\"]\n        notPaths: [\"*.secret\"]\n    when:\n    - key: source.ip\n      values: [\"10.0.0.0/8\"]\n",
        ));
        assert_eq!(a.evaluate(&request(&r, "GET", "/a", None, "10.1.1.1")), Decision::Allow);
        assert_eq!(a.evaluate(&request(&r, "GET", "/a.secret", None, "10.1.1.1")), Decision::Deny { policy: None });
        assert_eq!(a.evaluate(&request(&r, "GET", "/a", None, "11.1.1.1")), Decision::Deny { policy: None });
    }

    fn token(payload: serde_json::Value) -> VerifiedJwt {
        let serde_json::Value::Object(map) = payload else { panic!("an object") };
        VerifiedJwt::from_payload(map, &["scope".into()])
    }

    #[test]
    fn request_principals_match_issuer_and_subject_apart() {
        let jwt = token(serde_json::json!({"iss": "https://issuer.example/a", "sub": "alice"}));
        let no_sub = token(serde_json::json!({"iss": "https://issuer.example/a"}));
        let cases = [
            ("*", Some(&jwt), true),
            ("*", Some(&no_sub), false),
            ("*", None, false),
            ("https://issuer.example/a/alice", Some(&jwt), true),
            ("https://issuer.example/a/*", Some(&jwt), true),
            ("https://issuer.example/a/al*", Some(&jwt), true),
            ("https://issuer.example/*", Some(&jwt), false),
            ("*/alice", Some(&jwt), true),
            ("*example/a/alice", Some(&jwt), true),
            ("*ice", Some(&jwt), true),
            // Split at the last `/`: issuer `https:/`, subject `issuer*`.
            ("https://issuer*", Some(&jwt), false),
            ("https://issuer.example/a/bob", Some(&jwt), false),
        ];
        for (value, jwt, want) in cases {
            let m = PrincipalMatch::new(value);
            assert_eq!(jwt.is_some_and(|j| m.matches(j)), want, "{value}");
        }
    }

    #[test]
    fn conditions_read_audiences_presenter_and_nested_claims() {
        let a = Authorizer::new(&policies(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo}\nspec:\n  rules:\n  - from:\n    - source:\n        requestPrincipals: [\"https://issuer.example/*\"]\n    when:\n    - key: request.auth.audiences\n      values: [api]\n    - key: request.auth.presenter\n      values: [\"web*\"]\n    - key: request.auth.claims[org][team]\n      values: [blue]\n    - key: request.auth.claims[scope]\n      values: [write]\n      notValues: [admin]\n",
        ));
        let r = Req { headers: http::HeaderMap::new() };
        let mut base = serde_json::json!({
            "iss": "https://issuer.example", "sub": "alice", "aud": ["x", "api"], "azp": "web-app",
            "org": {"team": "blue"}, "scope": "read write"
        });
        let ask = |jwt: &VerifiedJwt| {
            let mut req = request(&r, "GET", "/", None, "10.0.0.1");
            req.request_auth = Some(jwt);
            a.evaluate(&req)
        };
        assert_eq!(ask(&token(base.clone())), Decision::Allow);
        base["scope"] = "read write admin".into();
        assert_eq!(ask(&token(base.clone())), Decision::Deny { policy: None }, "a notValues word");
        base["scope"] = "write".into();
        base["org"]["team"] = serde_json::json!(["red", "blue"]);
        assert_eq!(ask(&token(base.clone())), Decision::Allow, "a list claim matches by element");
        base["aud"] = "other".into();
        assert_eq!(ask(&token(base)), Decision::Deny { policy: None });
        assert_eq!(a.evaluate(&request(&r, "GET", "/", None, "10.0.0.1")), Decision::Deny { policy: None }, "no token");
        assert_eq!(claim_path("request.auth.claims[a][b]"), Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(claim_path("request.auth.claims[]"), None);
    }
}
