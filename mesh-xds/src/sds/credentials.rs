//! Gateway credentials over SDS, as Istio serves a `credentialName`:
//! `kubernetes://NAME` is the Secret's certificate and key,
//! `kubernetes://NAME-cacert` the CA client (or server) certificates
//! must chain to. A node reads credentials of its own namespace only
//! (the namespace it proved), so a workload never gets another
//! namespace's keys.

use std::collections::BTreeSet;

use mesh_core::credentials::CredentialSource;

use super::{certificate_secret, roots_secret};
use crate::resources::TypeMap;

/// How a credential's SDS name starts.
pub const KUBERNETES: &str = "kubernetes://";
/// How the SDS name of a credential's CA ends.
pub const CA_SUFFIX: &str = "-cacert";

/// A credential a node's resources refer to over SDS.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SecretRef {
    /// `kubernetes://NAME`: credential NAME's certificate and key.
    Certificate(String),
    /// `kubernetes://NAME-cacert`: credential NAME's CA.
    Roots(String),
}

impl SecretRef {
    /// The name Envoy asks for.
    pub fn sds_name(&self) -> String {
        match self {
            SecretRef::Certificate(name) => format!("{KUBERNETES}{name}"),
            SecretRef::Roots(name) => format!("{KUBERNETES}{name}{CA_SUFFIX}"),
        }
    }

    /// The credential an SDS name refers to; `None` if it names none.
    pub fn parse(sds_name: &str) -> Option<SecretRef> {
        let name = sds_name.strip_prefix(KUBERNETES).filter(|n| !n.is_empty())?;
        Some(match name.strip_suffix(CA_SUFFIX).filter(|n| !n.is_empty()) {
            Some(credential) => SecretRef::Roots(credential.to_string()),
            None => SecretRef::Certificate(name.to_string()),
        })
    }
}

/// The secrets `refs` name, read from `source` in `namespace`, and one
/// line for each that is not there (its listener or cluster cannot
/// handshake until it is).
pub fn resolve(source: &dyn CredentialSource, namespace: &str, refs: &BTreeSet<SecretRef>) -> (TypeMap, Vec<String>) {
    let mut secrets = TypeMap::new();
    let mut missing = Vec::new();
    for r in refs {
        let sds_name = r.sds_name();
        match r {
            SecretRef::Certificate(name) => match source.credential(namespace, name) {
                Some(c) => {
                    secrets.extend([certificate_secret(&sds_name, &c.certificate_chain, &c.private_key)]);
                }
                None => missing.push(format!(
                    "secret {sds_name}: no Secret {name} with a certificate and key in namespace {namespace}"
                )),
            },
            SecretRef::Roots(name) => match source.ca_certificates(namespace, name) {
                Some(ca) => secrets.extend([roots_secret(&sds_name, &ca)]),
                None => missing.push(format!(
                    "secret {sds_name}: no ca.crt in Secret {name} or {name}{CA_SUFFIX} in namespace {namespace}"
                )),
            },
        }
    }
    (secrets, missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::credentials::{Credential, MemoryCredentials};

    #[test]
    fn names_round_trip() {
        for r in [SecretRef::Certificate("web".into()), SecretRef::Roots("web".into())] {
            assert_eq!(SecretRef::parse(&r.sds_name()), Some(r));
        }
        assert_eq!(SecretRef::parse("default"), None);
        assert_eq!(SecretRef::parse("kubernetes://"), None);
        assert_eq!(SecretRef::parse("kubernetes://-cacert"), Some(SecretRef::Certificate("-cacert".into())));
    }

    fn one_secret() -> MemoryCredentials {
        let source = MemoryCredentials::default();
        let credential = Credential {
            certificate_chain: "CHAIN".into(),
            private_key: "KEY".into(),
            ca_certificates: Some("CA".into()),
        };
        source.put("istio-system", "web", credential);
        source
    }

    #[test]
    fn only_the_namespace_asked_and_what_is_missing_is_named() {
        let refs: BTreeSet<SecretRef> =
            [SecretRef::Certificate("web".into()), SecretRef::Roots("web".into()), SecretRef::Roots("api".into())]
                .into();
        let (secrets, missing) = resolve(&one_secret(), "istio-system", &refs);
        assert_eq!(secrets.keys().collect::<Vec<_>>(), ["kubernetes://web", "kubernetes://web-cacert"]);
        assert_eq!(
            missing,
            ["secret kubernetes://api-cacert: no ca.crt in Secret api or api-cacert in namespace istio-system"]
        );
        let (secrets, missing) = resolve(&one_secret(), "default", &refs);
        assert!(secrets.is_empty(), "another namespace's Secret is not read");
        assert_eq!(missing.len(), 3);
    }
}
