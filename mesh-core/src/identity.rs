//! Workload identities as Istio names them: SPIFFE IDs
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`, and the
//! trust domains a proxy accepts (its own and its aliases).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Istio's trust domain when none is set.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// A workload's identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// Why a text is no Istio SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a SPIFFE ID spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>: {why}")]
pub struct InvalidSpiffeId {
    pub text: String,
    pub why: &'static str,
}

impl SpiffeId {
    /// The identity of `service_account` in `namespace`, checked as
    /// SPIFFE's grammar says.
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Result<SpiffeId, InvalidSpiffeId> {
        let id = SpiffeId {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        };
        let invalid = |why| Err(InvalidSpiffeId { text: id.to_string(), why });
        if !is_trust_domain(trust_domain) {
            return invalid("the trust domain is lower-case letters, digits, `.`, `-` and `_`");
        }
        if !is_segment(namespace) || !is_segment(service_account) {
            return invalid("a namespace or service account is letters, digits, `.`, `-` and `_`, not `.` or `..`");
        }
        Ok(id)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The principal AuthorizationPolicy matches (`source.principal`):
    /// the ID without its scheme, `cluster.local/ns/foo/sa/sleep`.
    pub fn principal(&self) -> String {
        format!("{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

impl FromStr for SpiffeId {
    type Err = InvalidSpiffeId;

    fn from_str(text: &str) -> Result<SpiffeId, InvalidSpiffeId> {
        let invalid = |why| InvalidSpiffeId { text: text.to_string(), why };
        let rest = text.strip_prefix("spiffe://").ok_or_else(|| invalid("it does not start with spiffe://"))?;
        let (trust_domain, path) = rest.split_once('/').ok_or_else(|| invalid("it has no path"))?;
        let parts: Vec<&str> = path.split('/').collect();
        let [ns_key, namespace, sa_key, service_account] = parts.as_slice() else {
            return Err(invalid("its path is not /ns/<namespace>/sa/<service-account>"));
        };
        if *ns_key != "ns" || *sa_key != "sa" {
            return Err(invalid("its path is not /ns/<namespace>/sa/<service-account>"));
        }
        SpiffeId::new(trust_domain, namespace, service_account).map_err(|e| InvalidSpiffeId { text: text.into(), ..e })
    }
}

impl TryFrom<String> for SpiffeId {
    type Error = InvalidSpiffeId;

    fn try_from(text: String) -> Result<SpiffeId, InvalidSpiffeId> {
        text.parse()
    }
}

impl From<SpiffeId> for String {
    fn from(id: SpiffeId) -> String {
        id.to_string()
    }
}

/// SPIFFE: a trust domain is lower-case letters, digits, `.`, `-`, `_`.
fn is_trust_domain(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
}

/// SPIFFE: a path segment is letters, digits, `.`, `-`, `_`, and not a
/// dot segment.
fn is_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// The trust domains a proxy accepts peers from: its own, and the aliases
/// of Istio's `meshConfig.trustDomainAliases` (a renamed or merged mesh).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustDomains {
    pub own: String,
    pub aliases: Vec<String>,
}

impl Default for TrustDomains {
    fn default() -> Self {
        TrustDomains { own: DEFAULT_TRUST_DOMAIN.to_string(), aliases: Vec::new() }
    }
}

impl TrustDomains {
    /// Is `id` from one of these trust domains?
    pub fn accepts(&self, id: &SpiffeId) -> bool {
        id.trust_domain == self.own || self.aliases.contains(&id.trust_domain)
    }

    /// `principal` (`td/ns/x/sa/y`) with each trust domain these accept,
    /// as Istio widens an AuthorizationPolicy's `principals` to the
    /// aliases.
    pub fn principals_for(&self, principal: &str) -> Vec<String> {
        let Some((domain, path)) = principal.split_once('/') else { return vec![principal.to_string()] };
        let ours = domain == self.own || self.aliases.iter().any(|a| a == domain);
        if !ours {
            return vec![principal.to_string()];
        }
        std::iter::once(&self.own).chain(&self.aliases).map(|d| format!("{d}/{path}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_ids_parse_and_print_the_same() {
        let id: SpiffeId = "spiffe://cluster.local/ns/foo/sa/sleep".parse().unwrap();
        assert_eq!((id.trust_domain(), id.namespace(), id.service_account()), ("cluster.local", "foo", "sleep"));
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/foo/sa/sleep");
        assert_eq!(id.principal(), "cluster.local/ns/foo/sa/sleep");
        assert_eq!(SpiffeId::new("cluster.local", "foo", "sleep").unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"spiffe://cluster.local/ns/foo/sa/sleep\"");
        assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id);
    }

    #[test]
    fn what_is_no_istio_spiffe_id_is_refused_saying_why() {
        for bad in [
            "cluster.local/ns/foo/sa/sleep",
            "spiffe://",
            "spiffe://cluster.local",
            "spiffe://cluster.local/ns/foo",
            "spiffe://cluster.local/ns/foo/sa/sleep/extra",
            "spiffe://cluster.local/sa/sleep/ns/foo",
            "spiffe://Cluster.Local/ns/foo/sa/sleep",
            "spiffe://cluster local/ns/foo/sa/sleep",
            "spiffe://cluster.local/ns//sa/sleep",
            "spiffe://cluster.local/ns/../sa/sleep",
            "spiffe://cluster.local/ns/foo/sa/sl%65ep",
            "spiffe://user@cluster.local/ns/foo/sa/sleep",
        ] {
            let err = bad.parse::<SpiffeId>().expect_err(bad);
            assert_eq!(err.text, bad);
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn trust_domain_aliases_are_accepted_and_widen_principals() {
        let domains = TrustDomains { own: "new.example".into(), aliases: vec!["cluster.local".into()] };
        assert!(domains.accepts(&"spiffe://new.example/ns/a/sa/b".parse().unwrap()));
        assert!(domains.accepts(&"spiffe://cluster.local/ns/a/sa/b".parse().unwrap()));
        assert!(!domains.accepts(&"spiffe://other.example/ns/a/sa/b".parse().unwrap()));
        assert_eq!(
            domains.principals_for("cluster.local/ns/a/sa/b"),
            ["new.example/ns/a/sa/b", "cluster.local/ns/a/sa/b"]
        );
        assert_eq!(domains.principals_for("other.example/ns/a/sa/b"), ["other.example/ns/a/sa/b"]);
        assert_eq!(TrustDomains::default().own, "cluster.local");
    }
}
