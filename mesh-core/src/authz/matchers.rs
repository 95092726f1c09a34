//! The matchers a compiled policy is made of: Istio's string forms
//! (`*`, prefix, suffix), request principals, and a field's values with
//! its `not` values, checked as Envoy's RBAC checks Istio's policies.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::jwt::VerifiedJwt;

#[derive(Clone, Debug)]
pub(super) enum StrMatch {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl StrMatch {
    pub(super) fn new(v: &str) -> StrMatch {
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

    pub(super) fn matches(&self, s: &str) -> bool {
        match self {
            StrMatch::Any => true,
            StrMatch::Exact(e) => e == s,
            StrMatch::Prefix(p) => s.starts_with(p.as_str()),
            StrMatch::Suffix(x) => s.ends_with(x.as_str()),
        }
    }

    pub(super) fn matches_ignore_case(&self, s: &str) -> bool {
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
pub(super) struct Field<M> {
    pub(super) values: Vec<M>,
    pub(super) not_values: Vec<M>,
}

impl<M> Field<M> {
    pub(super) fn is_set(&self) -> bool {
        !self.values.is_empty() || !self.not_values.is_empty()
    }

    /// `value` is `None` when the request lacks the attribute: `values`
    /// then cannot match (`principals` needs mTLS), and `not_values` has
    /// nothing to exclude, as Envoy's RBAC evaluates Istio's policies.
    pub(super) fn check<T: ?Sized>(&self, value: Option<&T>, test: impl Fn(&M, &T) -> bool) -> bool {
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
    pub(super) fn check_any(&self, elements: &[&str], test: impl Fn(&M, &str) -> bool) -> bool {
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
pub(super) struct PrincipalMatch {
    issuer: StrMatch,
    subject: StrMatch,
}

impl PrincipalMatch {
    pub(super) fn new(value: &str) -> PrincipalMatch {
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
    pub(super) fn matches(&self, jwt: &VerifiedJwt) -> bool {
        let side = |m: &StrMatch, s: &str| match m {
            StrMatch::Any => !s.is_empty(),
            m => m.matches(s),
        };
        side(&self.issuer, &jwt.issuer) && side(&self.subject, &jwt.subject)
    }
}

pub(super) fn request_principals(values: &[String], not: &[String]) -> Field<PrincipalMatch> {
    Field {
        values: values.iter().map(|v| PrincipalMatch::new(v)).collect(),
        not_values: not.iter().map(|v| PrincipalMatch::new(v)).collect(),
    }
}

pub(super) fn strs(values: &[String], not: &[String]) -> Field<StrMatch> {
    Field {
        values: values.iter().map(|v| StrMatch::new(v)).collect(),
        not_values: not.iter().map(|v| StrMatch::new(v)).collect(),
    }
}

pub(super) fn nets(values: &[String], not: &[String]) -> Field<IpNet> {
    let parse = |v: &String| v.parse::<IpNet>().ok().or_else(|| v.parse::<IpAddr>().ok().map(IpNet::from));
    Field { values: values.iter().filter_map(parse).collect(), not_values: not.iter().filter_map(parse).collect() }
}

/// A `serviceAccounts` value (`NAMESPACE/NAME`, or `NAME` in the
/// policy's namespace), matched as istiod's regex
/// `spiffe://.+/ns/NS/(.+/|)sa/NAME(/.+)?` matches the peer's URI SAN.
#[derive(Clone, Debug)]
pub(super) struct ServiceAccountMatch {
    namespace: String,
    name: String,
}

impl ServiceAccountMatch {
    pub(super) fn new(value: &str, policy_namespace: &str) -> ServiceAccountMatch {
        let (namespace, name) = value.split_once('/').unwrap_or((policy_namespace, value));
        ServiceAccountMatch { namespace: namespace.to_string(), name: name.to_string() }
    }

    /// `principal` without its `spiffe://`: `cluster.local/ns/foo/sa/bar`.
    pub(super) fn matches(&self, principal: &str) -> bool {
        let segments: Vec<&str> = principal.split('/').collect();
        let at = |i: usize, s: &str| segments.get(i) == Some(&s);
        (1..segments.len()).any(|i| {
            at(i, "ns")
                && at(i + 1, &self.namespace)
                && (i + 2..segments.len()).any(|j| {
                    at(j, "sa") && at(j + 1, &self.name) && segments.get(j + 2).is_none_or(|rest| !rest.is_empty())
                })
        })
    }
}

/// A `trustDomains` value: the principal's trust domain, exactly, or
/// around one `*` (`*` alone: any).
#[derive(Clone, Debug)]
pub(super) struct TrustDomainMatch(String);

impl TrustDomainMatch {
    pub(super) fn matches(&self, principal: &str) -> bool {
        let Some((domain, _)) = principal.split_once('/') else { return false };
        match self.0.split_once('*') {
            None => domain == self.0,
            Some((before, after)) => {
                domain.len() >= before.len() + after.len() && domain.starts_with(before) && domain.ends_with(after)
            }
        }
    }
}

pub(super) fn service_accounts(values: &[String], not: &[String], namespace: &str) -> Field<ServiceAccountMatch> {
    Field {
        values: values.iter().map(|v| ServiceAccountMatch::new(v, namespace)).collect(),
        not_values: not.iter().map(|v| ServiceAccountMatch::new(v, namespace)).collect(),
    }
}

pub(super) fn trust_domains(values: &[String], not: &[String]) -> Field<TrustDomainMatch> {
    Field {
        values: values.iter().map(|v| TrustDomainMatch(v.clone())).collect(),
        not_values: not.iter().map(|v| TrustDomainMatch(v.clone())).collect(),
    }
}
