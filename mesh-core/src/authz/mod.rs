//! Authorization policy evaluation, with Istio's semantics: DENY policies
//! first (any match denies), then ALLOW policies (if there are any, one must
//! match). Policies are compiled once. A TCP connection is judged by the
//! same policies narrowed to what a connection has (`tcp`).

mod matchers;
mod tcp;

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::security::{AuthorizationAction, Condition, Operation, Rule, Source};
use crate::jwt::VerifiedJwt;
use crate::proxy_config::AuthorizationPolicyRef;
use matchers::{
    nets, request_principals, service_accounts, strs, trust_domains, Field, PrincipalMatch, ServiceAccountMatch,
    StrMatch, TrustDomainMatch,
};

/// What authorization sees of a request.
#[derive(Clone, Copy, Debug)]
pub struct AuthzRequest<'a> {
    /// The peer's IP (Istio `source.ip`, `ipBlocks`).
    pub source_ip: Option<IpAddr>,
    /// The original client IP, from X-Forwarded-For (`remoteIpBlocks`).
    pub remote_ip: Option<IpAddr>,
    /// The peer's mTLS identity: `cluster.local/ns/default/sa/sleep`.
    pub source_principal: Option<&'a str>,
    /// The same as its certificate's URI SAN (`spiffe://...`), which
    /// Envoy's RBAC matches.
    pub peer_uri: Option<&'a str>,
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
        "source.service_account",
        "source.trust_domain",
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
struct CompiledSource {
    principals: Field<StrMatch>,
    service_accounts: Field<ServiceAccountMatch>,
    trust_domains: Field<TrustDomainMatch>,
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

/// A `when` condition: its attribute, with values of that attribute's kind.
#[derive(Clone, Debug)]
enum CompiledCondition {
    Header(http::HeaderName, Field<StrMatch>),
    SourceIp(Field<IpNet>),
    RemoteIp(Field<IpNet>),
    SourceNamespace(Field<StrMatch>),
    SourcePrincipal(Field<StrMatch>),
    SourceServiceAccount(Field<ServiceAccountMatch>),
    SourceTrustDomain(Field<TrustDomainMatch>),
    RequestPrincipal(Field<PrincipalMatch>),
    RequestAudiences(Field<StrMatch>),
    RequestPresenter(Field<StrMatch>),
    /// `request.auth.claims[a][b]`: the claim path.
    RequestClaim(Vec<String>, Field<StrMatch>),
    DestinationIp(Field<IpNet>),
    DestinationPort(Field<u16>),
    Sni(Field<StrMatch>),
    /// A key this data plane has no value for: it narrows fail-closed, as
    /// istiod narrows a field Envoy cannot check (an ALLOW rule holding
    /// it matches nothing; a DENY rule matches as if it were not there).
    Unavailable {
        matches: bool,
    },
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

/// DENY policies (any match denies), then ALLOW policies.
#[derive(Clone, Debug, Default)]
struct Policies {
    deny: Vec<CompiledPolicy>,
    allow: Vec<CompiledPolicy>,
}

/// The compiled AuthorizationPolicies of one proxy: as they apply to
/// HTTP requests, and as they apply to TCP connections (see `tcp`).
#[derive(Clone, Debug, Default)]
pub struct Authorizer {
    http: Policies,
    tcp: Policies,
    /// The rules narrowed for connections, saying how.
    narrowed: Vec<String>,
}

impl Authorizer {
    pub fn new(policies: &[AuthorizationPolicyRef]) -> Authorizer {
        let mut a = Authorizer::default();
        for p in policies {
            let action = p.policy.action;
            let compile = |rules: Vec<Rule>| CompiledPolicy {
                name: format!("{}/{}", p.namespace, p.name),
                rules: rules.iter().map(|r| compile_rule(r, &p.namespace, action)).collect(),
            };
            for (i, _) in p.policy.rules.iter().enumerate().filter(|(_, r)| tcp::names_http(r)) {
                let how = match action {
                    AuthorizationAction::Allow => "it allows no connection",
                    _ => "it applies to connections without them",
                };
                let name = format!("{}/{}", p.namespace, p.name);
                a.narrowed.push(format!("AuthorizationPolicy {name} rules[{i}] names HTTP-only fields: {how}"));
            }
            let http = compile(p.policy.rules.clone());
            let tcp = compile(p.policy.rules.iter().filter_map(|r| tcp::narrow(r, action)).collect());
            match action {
                // CUSTOM asks an external authorizer, and none is
                // configured: its rules deny, as Istio's do when the
                // provider is unknown.
                AuthorizationAction::Deny | AuthorizationAction::Custom => {
                    a.http.deny.push(http);
                    a.tcp.deny.push(tcp);
                }
                AuthorizationAction::Allow => {
                    a.http.allow.push(http);
                    a.tcp.allow.push(tcp);
                }
                // AUDIT changes no decision.
                AuthorizationAction::Audit => {}
            }
        }
        a
    }

    /// The rules TCP connections see narrowed (HTTP-only fields), and
    /// how, as istiod narrows them for Envoy's network RBAC.
    pub fn narrowed(&self) -> &[String] {
        &self.narrowed
    }

    /// `true` when there is nothing to evaluate.
    pub fn is_empty(&self) -> bool {
        self.http.deny.is_empty() && self.http.allow.is_empty()
    }

    /// An HTTP request.
    pub fn evaluate(&self, req: &AuthzRequest<'_>) -> Decision {
        self.http.evaluate(req)
    }

    /// A TCP connection, as Envoy's network RBAC filter judges it: only
    /// connection attributes count (`req`'s HTTP fields are not read).
    pub fn evaluate_connection(&self, req: &AuthzRequest<'_>) -> Decision {
        self.tcp.evaluate(req)
    }
}

impl Policies {
    fn evaluate(&self, req: &AuthzRequest<'_>) -> Decision {
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

/// `namespace` is the policy's: where a bare service account lives.
fn compile_rule(rule: &Rule, namespace: &str, action: AuthorizationAction) -> CompiledRule {
    CompiledRule {
        from: rule.from.iter().map(|f| compile_source(&f.source, namespace)).collect(),
        to: rule.to.iter().map(|t| compile_operation(&t.operation)).collect(),
        when: rule.when.iter().map(|c| compile_condition(c, namespace, action)).collect(),
    }
}

fn compile_source(s: &Source, namespace: &str) -> CompiledSource {
    CompiledSource {
        principals: strs(&s.principals, &s.not_principals),
        service_accounts: service_accounts(&s.service_accounts, &s.not_service_accounts, namespace),
        trust_domains: trust_domains(&s.trust_domains, &s.not_trust_domains),
        request_principals: request_principals(&s.request_principals, &s.not_request_principals),
        namespaces: strs(&s.namespaces, &s.not_namespaces),
        ip_blocks: nets(&s.ip_blocks, &s.not_ip_blocks),
        remote_ip_blocks: nets(&s.remote_ip_blocks, &s.not_remote_ip_blocks),
    }
}

fn compile_operation(o: &Operation) -> CompiledOperation {
    CompiledOperation {
        hosts: strs(&o.hosts, &o.not_hosts),
        ports: ports(&o.ports, &o.not_ports),
        methods: strs(&o.methods, &o.not_methods),
        paths: strs(&o.paths, &o.not_paths),
    }
}

fn ports(values: &[String], not: &[String]) -> Field<u16> {
    Field {
        values: values.iter().filter_map(|p| p.parse().ok()).collect(),
        not_values: not.iter().filter_map(|p| p.parse().ok()).collect(),
    }
}

fn compile_condition(c: &Condition, namespace: &str, action: AuthorizationAction) -> CompiledCondition {
    let (values, not) = (c.values.as_slice(), c.not_values.as_slice());
    let unavailable = CompiledCondition::Unavailable { matches: action != AuthorizationAction::Allow };
    match c.key.as_str() {
        "source.ip" => CompiledCondition::SourceIp(nets(values, not)),
        "remote.ip" => CompiledCondition::RemoteIp(nets(values, not)),
        "source.namespace" => CompiledCondition::SourceNamespace(strs(values, not)),
        "source.principal" => CompiledCondition::SourcePrincipal(strs(values, not)),
        "source.service_account" => CompiledCondition::SourceServiceAccount(service_accounts(values, not, namespace)),
        "source.trust_domain" => CompiledCondition::SourceTrustDomain(trust_domains(values, not)),
        "request.auth.principal" => CompiledCondition::RequestPrincipal(request_principals(values, not)),
        "request.auth.audiences" => CompiledCondition::RequestAudiences(strs(values, not)),
        "request.auth.presenter" => CompiledCondition::RequestPresenter(strs(values, not)),
        "destination.ip" => CompiledCondition::DestinationIp(nets(values, not)),
        "destination.port" => CompiledCondition::DestinationPort(ports(values, not)),
        "connection.sni" => CompiledCondition::Sni(strs(values, not)),
        k if k.starts_with("request.auth.claims[") => {
            claim_path(k).map_or(unavailable, |path| CompiledCondition::RequestClaim(path, strs(values, not)))
        }
        k => k
            .strip_prefix("request.headers[")
            .and_then(|h| h.strip_suffix(']'))
            .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok())
            .map_or(unavailable, |name| CompiledCondition::Header(name, strs(values, not))),
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

fn str_match(m: &StrMatch, s: &str) -> bool {
    m.matches(s)
}

fn in_net(n: &IpNet, ip: &IpAddr) -> bool {
    n.contains(ip)
}

fn same_port(a: &u16, b: &u16) -> bool {
    a == b
}

fn principal_match(p: &PrincipalMatch, jwt: &VerifiedJwt) -> bool {
    p.matches(jwt)
}

impl CompiledSource {
    fn matches(&self, req: &AuthzRequest<'_>) -> bool {
        let peer = req.source_principal;
        self.principals.check(peer, str_match)
            && self.service_accounts.check(peer, |m: &ServiceAccountMatch, p: &str| m.matches(p))
            && self.trust_domains.check(peer, |m: &TrustDomainMatch, p: &str| m.matches(p))
            && self.request_principals.check(req.request_auth, principal_match)
            && self.namespaces.check(peer.and_then(namespace_of), str_match)
            && self.ip_blocks.check(req.source_ip.as_ref(), in_net)
            && self.remote_ip_blocks.check(req.remote_ip.or(req.source_ip).as_ref(), in_net)
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
        }) && self.ports.check(Some(&req.port), same_port)
            && self.methods.check(Some(req.method), str_match)
            && self.paths.check(Some(req.path), str_match)
    }
}

impl CompiledCondition {
    fn matches(&self, req: &AuthzRequest<'_>) -> bool {
        let peer = req.source_principal;
        let jwt = req.request_auth;
        match self {
            CompiledCondition::Header(name, f) => {
                f.check(req.headers.get(name).and_then(|v| v.to_str().ok()), str_match)
            }
            CompiledCondition::SourceIp(f) => f.check(req.source_ip.as_ref(), in_net),
            CompiledCondition::RemoteIp(f) => f.check(req.remote_ip.or(req.source_ip).as_ref(), in_net),
            CompiledCondition::DestinationIp(f) => f.check(req.destination_ip.as_ref(), in_net),
            CompiledCondition::SourceNamespace(f) => f.check(peer.and_then(namespace_of), str_match),
            CompiledCondition::SourcePrincipal(f) => f.check(peer, str_match),
            CompiledCondition::SourceServiceAccount(f) => {
                f.check(peer, |m: &ServiceAccountMatch, p: &str| m.matches(p))
            }
            CompiledCondition::SourceTrustDomain(f) => f.check(peer, |m: &TrustDomainMatch, p: &str| m.matches(p)),
            CompiledCondition::RequestPrincipal(f) => f.check(jwt, principal_match),
            CompiledCondition::RequestAudiences(f) => {
                let audiences: Vec<&str> = jwt.map_or(vec![], |j| j.audiences.iter().map(String::as_str).collect());
                f.check_any(&audiences, str_match)
            }
            CompiledCondition::RequestPresenter(f) => f.check(jwt.and_then(|j| j.presenter.as_deref()), str_match),
            CompiledCondition::RequestClaim(path, f) => {
                f.check_any(&jwt.map_or(vec![], |j| j.claim_strings(path)), str_match)
            }
            CompiledCondition::DestinationPort(f) => f.check(Some(&req.port), same_port),
            CompiledCondition::Sni(f) => f.check(req.sni, str_match),
            CompiledCondition::Unavailable { matches } => *matches,
        }
    }
}

#[cfg(test)]
mod tests;
