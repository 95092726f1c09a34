//! Envoy's RBAC filter as a proxy receives it over xDS: the policies of
//! one filter (ALLOW, DENY or LOG), each a list of permissions and a list
//! of principals, and how Envoy judges a request or connection with them.
//! istiod (and `mesh-xds`) write AuthorizationPolicies this way; a proxy
//! fed over xDS enforces them as Envoy would, not by reading Istio's
//! policies back. What this model has no room for is refused where the
//! config is imported.
//!
//! A policy matches when any of its permissions and any of its principals
//! do. DENY denies on a match, ALLOW denies without one, LOG changes
//! nothing; a chain's filters run in order and the first denial decides.

use std::net::IpAddr;

use ipnet::IpNet;
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::authz::{AuthzRequest, Decision};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RbacAction {
    Allow,
    Deny,
    Log,
}

/// One RBAC filter's rules.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RbacFilter {
    pub action: RbacAction,
    /// By name, as Envoy orders its policy map.
    pub policies: Vec<RbacPolicy>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RbacPolicy {
    pub name: String,
    pub permissions: Vec<Permission>,
    pub principals: Vec<Principal>,
}

/// What the request or connection is for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Permission {
    Any,
    And(Vec<Permission>),
    Or(Vec<Permission>),
    Not(Box<Permission>),
    Header(HeaderMatch),
    /// The path without its query.
    UrlPath(TextMatch),
    DestinationIp(IpNet),
    DestinationPort(u16),
    /// `[start, end)`, as Envoy's `Int32Range`.
    DestinationPortRange(u16, u16),
    RequestedServerName(TextMatch),
}

/// Who sends it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Principal {
    Any,
    And(Vec<Principal>),
    Or(Vec<Principal>),
    Not(Box<Principal>),
    /// The peer's certificate: its URI SAN against the matcher; `None`:
    /// any peer with a verified certificate.
    Authenticated(Option<TextMatch>),
    /// The connection's peer address.
    DirectRemoteIp(IpNet),
    /// The original client's address (X-Forwarded-For), else the peer's.
    RemoteIp(IpNet),
    Header(HeaderMatch),
    UrlPath(TextMatch),
    /// A claim of the request's verified JWT (Envoy: the jwt_authn
    /// filter's payload in the request's metadata): a string claim that
    /// `string` matches, or a list claim with an element `element`
    /// matches; a missing claim matches neither (`invert` flips it all).
    JwtClaim {
        path: Vec<String>,
        string: Option<TextMatch>,
        element: Option<TextMatch>,
        invert: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeaderMatch {
    /// Lower case; `:authority`, `:method` and `:path` are the request's.
    pub name: String,
    pub value: HeaderValue,
    pub invert: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum HeaderValue {
    Text(TextMatch),
    /// `present_match`: whether the header must be there.
    Present(bool),
}

/// Envoy's `StringMatcher`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextMatch {
    pub pattern: TextPattern,
    pub ignore_case: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TextPattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    /// RE2 syntax, matched against the whole value.
    Regex(String),
}

/// A chain's RBAC filters, regexes compiled, ready to judge.
#[derive(Clone, Debug, Default)]
pub struct Rbac {
    filters: Vec<(RbacAction, Vec<CompiledPolicy>)>,
}

/// A policy's name, permissions and principals.
type CompiledPolicy = (String, Vec<Perm>, Vec<Prin>);

impl Rbac {
    pub fn new(filters: &[RbacFilter]) -> Result<Rbac, regex::Error> {
        let filters = filters
            .iter()
            .map(|f| {
                let policies = f
                    .policies
                    .iter()
                    .map(|p| {
                        let permissions = p.permissions.iter().map(Perm::new).collect::<Result<_, _>>()?;
                        let principals = p.principals.iter().map(Prin::new).collect::<Result<_, _>>()?;
                        Ok((p.name.clone(), permissions, principals))
                    })
                    .collect::<Result<_, regex::Error>>()?;
                Ok((f.action, policies))
            })
            .collect::<Result<_, regex::Error>>()?;
        Ok(Rbac { filters })
    }

    /// One ALLOW filter with no policy: nothing passes.
    pub fn deny_all() -> Rbac {
        Rbac { filters: vec![(RbacAction::Allow, Vec::new())] }
    }

    pub fn is_empty(&self) -> bool {
        self.filters.iter().all(|(action, _)| *action == RbacAction::Log)
    }

    pub fn evaluate(&self, req: &AuthzRequest<'_>) -> Decision {
        for (action, policies) in &self.filters {
            let matched = policies
                .iter()
                .find(|(_, permissions, principals)| {
                    permissions.iter().any(|p| p.matches(req)) && principals.iter().any(|p| p.matches(req))
                })
                .map(|(name, _, _)| name);
            match (action, matched) {
                (RbacAction::Deny, Some(name)) => return Decision::Deny { policy: Some(name.clone()) },
                (RbacAction::Allow, None) => return Decision::Deny { policy: None },
                _ => {}
            }
        }
        Decision::Allow
    }
}

#[derive(Clone, Debug)]
enum Text {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Regex),
}

/// A compiled [`TextMatch`]; with `ignore_case` the literals are lower
/// case and compared with the value ASCII-case-insensitively (Envoy's
/// rule), without a folded copy of the value.
#[derive(Clone, Debug)]
struct CompiledText {
    text: Text,
    ignore_case: bool,
}

impl CompiledText {
    fn new(m: &TextMatch) -> Result<CompiledText, regex::Error> {
        let fold = |s: &String| if m.ignore_case { s.to_ascii_lowercase() } else { s.clone() };
        let text = match &m.pattern {
            TextPattern::Exact(s) => Text::Exact(fold(s)),
            TextPattern::Prefix(s) => Text::Prefix(fold(s)),
            TextPattern::Suffix(s) => Text::Suffix(fold(s)),
            TextPattern::Contains(s) => Text::Contains(fold(s)),
            TextPattern::Regex(r) => Text::Regex(Regex::new(&format!("^(?:{r})$"))?),
        };
        Ok(CompiledText { text, ignore_case: m.ignore_case })
    }

    fn matches(&self, value: &str) -> bool {
        let eq: fn(&[u8], &[u8]) -> bool =
            if self.ignore_case { |a, b| a.eq_ignore_ascii_case(b) } else { |a, b| a == b };
        let bytes = value.as_bytes();
        let at = |start: usize, s: &str| bytes.get(start..start + s.len()).is_some_and(|v| eq(v, s.as_bytes()));
        match &self.text {
            Text::Exact(s) => bytes.len() == s.len() && at(0, s),
            Text::Prefix(s) => at(0, s),
            Text::Suffix(s) => bytes.len() >= s.len() && at(bytes.len() - s.len(), s),
            Text::Contains(s) => s.is_empty() || bytes.windows(s.len()).any(|w| eq(w, s.as_bytes())),
            Text::Regex(r) => r.is_match(value),
        }
    }
}

/// Where a header matcher looks: the request's pseudo headers, or a
/// header (`None`: a name no request can carry, so always absent).
#[derive(Clone, Debug)]
enum HeaderSource {
    Authority,
    Method,
    Path,
    Named(Option<http::HeaderName>),
}

#[derive(Clone, Debug)]
struct CompiledHeader {
    source: HeaderSource,
    value: Option<CompiledText>,
    present: bool,
    invert: bool,
}

impl CompiledHeader {
    fn new(h: &HeaderMatch) -> Result<CompiledHeader, regex::Error> {
        let source = match h.name.as_str() {
            ":authority" | "host" => HeaderSource::Authority,
            ":method" => HeaderSource::Method,
            ":path" => HeaderSource::Path,
            name => HeaderSource::Named(http::HeaderName::from_bytes(name.as_bytes()).ok()),
        };
        let (value, present) = match &h.value {
            HeaderValue::Text(t) => (Some(CompiledText::new(t)?), true),
            HeaderValue::Present(p) => (None, *p),
        };
        Ok(CompiledHeader { source, value, present, invert: h.invert })
    }

    /// As Envoy's `HeaderUtility::matchHeaders`: several values are one,
    /// joined by commas; an absent header matches only a `present_match`
    /// that wants it absent (or, inverted, one that wants it present).
    fn matches(&self, req: &AuthzRequest<'_>) -> bool {
        let joined;
        let value = match &self.source {
            HeaderSource::Authority => Some(req.host),
            HeaderSource::Method => Some(req.method),
            HeaderSource::Path => Some(req.path),
            HeaderSource::Named(None) => None,
            HeaderSource::Named(Some(name)) => {
                let mut values = req.headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
                match (values.next(), values.next()) {
                    (None, _) => None,
                    (Some(one), None) => Some(one),
                    (Some(first), Some(second)) => {
                        joined = [first, second].into_iter().chain(values).collect::<Vec<_>>().join(",");
                        Some(joined.as_str())
                    }
                }
            }
        };
        let Some(value) = value else {
            return self.value.is_none() && (self.present == self.invert);
        };
        let matched = match &self.value {
            Some(text) => text.matches(value),
            None => self.present,
        };
        matched != self.invert
    }
}

#[derive(Clone, Debug)]
enum Perm {
    Any,
    And(Vec<Perm>),
    Or(Vec<Perm>),
    Not(Box<Perm>),
    Header(CompiledHeader),
    UrlPath(CompiledText),
    DestinationIp(IpNet),
    DestinationPort(u16),
    DestinationPortRange(u16, u16),
    ServerName(CompiledText),
}

impl Perm {
    fn new(p: &Permission) -> Result<Perm, regex::Error> {
        let all = |v: &[Permission]| v.iter().map(Perm::new).collect::<Result<Vec<_>, _>>();
        Ok(match p {
            Permission::Any => Perm::Any,
            Permission::And(v) => Perm::And(all(v)?),
            Permission::Or(v) => Perm::Or(all(v)?),
            Permission::Not(p) => Perm::Not(Box::new(Perm::new(p)?)),
            Permission::Header(h) => Perm::Header(CompiledHeader::new(h)?),
            Permission::UrlPath(t) => Perm::UrlPath(CompiledText::new(t)?),
            Permission::DestinationIp(n) => Perm::DestinationIp(*n),
            Permission::DestinationPort(p) => Perm::DestinationPort(*p),
            Permission::DestinationPortRange(a, b) => Perm::DestinationPortRange(*a, *b),
            Permission::RequestedServerName(t) => Perm::ServerName(CompiledText::new(t)?),
        })
    }

    fn matches(&self, req: &AuthzRequest<'_>) -> bool {
        match self {
            Perm::Any => true,
            Perm::And(v) => v.iter().all(|p| p.matches(req)),
            Perm::Or(v) => v.iter().any(|p| p.matches(req)),
            Perm::Not(p) => !p.matches(req),
            Perm::Header(h) => h.matches(req),
            Perm::UrlPath(t) => t.matches(req.path),
            Perm::DestinationIp(n) => req.destination_ip.is_some_and(|ip| n.contains(&ip)),
            Perm::DestinationPort(p) => req.port == *p,
            Perm::DestinationPortRange(a, b) => (*a..*b).contains(&req.port),
            Perm::ServerName(t) => t.matches(req.sni.unwrap_or("")),
        }
    }
}

#[derive(Clone, Debug)]
enum Prin {
    Any,
    And(Vec<Prin>),
    Or(Vec<Prin>),
    Not(Box<Prin>),
    Authenticated(Option<CompiledText>),
    DirectRemoteIp(IpNet),
    RemoteIp(IpNet),
    Header(CompiledHeader),
    UrlPath(CompiledText),
    JwtClaim { path: Vec<String>, string: Option<CompiledText>, element: Option<CompiledText>, invert: bool },
}

impl Prin {
    fn new(p: &Principal) -> Result<Prin, regex::Error> {
        let all = |v: &[Principal]| v.iter().map(Prin::new).collect::<Result<Vec<_>, _>>();
        Ok(match p {
            Principal::Any => Prin::Any,
            Principal::And(v) => Prin::And(all(v)?),
            Principal::Or(v) => Prin::Or(all(v)?),
            Principal::Not(p) => Prin::Not(Box::new(Prin::new(p)?)),
            Principal::Authenticated(t) => Prin::Authenticated(t.as_ref().map(CompiledText::new).transpose()?),
            Principal::DirectRemoteIp(n) => Prin::DirectRemoteIp(*n),
            Principal::RemoteIp(n) => Prin::RemoteIp(*n),
            Principal::Header(h) => Prin::Header(CompiledHeader::new(h)?),
            Principal::UrlPath(t) => Prin::UrlPath(CompiledText::new(t)?),
            Principal::JwtClaim { path, string, element, invert } => Prin::JwtClaim {
                path: path.clone(),
                string: string.as_ref().map(CompiledText::new).transpose()?,
                element: element.as_ref().map(CompiledText::new).transpose()?,
                invert: *invert,
            },
        })
    }

    fn matches(&self, req: &AuthzRequest<'_>) -> bool {
        let within = |n: &IpNet, ip: Option<IpAddr>| ip.is_some_and(|ip| n.contains(&ip));
        match self {
            Prin::Any => true,
            Prin::And(v) => v.iter().all(|p| p.matches(req)),
            Prin::Or(v) => v.iter().any(|p| p.matches(req)),
            Prin::Not(p) => !p.matches(req),
            // The URI SAN: `spiffe://` and the principal.
            Prin::Authenticated(t) => req
                .source_principal
                .is_some_and(|principal| t.as_ref().is_none_or(|t| t.matches(&format!("spiffe://{principal}")))),
            Prin::DirectRemoteIp(n) => within(n, req.source_ip),
            Prin::RemoteIp(n) => within(n, req.remote_ip.or(req.source_ip)),
            Prin::Header(h) => h.matches(req),
            Prin::UrlPath(t) => t.matches(req.path),
            Prin::JwtClaim { path, string, element, invert } => {
                let matched = match req.request_auth.and_then(|jwt| jwt.claim(path)) {
                    Some(serde_json::Value::String(s)) => string.as_ref().is_some_and(|t| t.matches(s)),
                    Some(serde_json::Value::Array(list)) => element
                        .as_ref()
                        .is_some_and(|t| list.iter().filter_map(serde_json::Value::as_str).any(|s| t.matches(s))),
                    _ => false,
                };
                matched != *invert
            }
        }
    }
}

#[cfg(test)]
mod tests;
