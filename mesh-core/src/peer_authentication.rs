//! PeerAuthentication merged as Istio merges it for one workload: the
//! mesh-wide policy (root namespace, no selector), then its namespace's,
//! then one selecting it, then that one's `portLevelMtls`. `UNSET` takes
//! the level above; with nothing set, PERMISSIVE. When a level has several
//! policies, the oldest wins (by creation time, then name).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::security::{MutualTls, PeerAuthentication};
use crate::config::{Resource, Spec};
use crate::model::Labels;

/// How a workload's port takes inbound connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// mTLS and plaintext alike, told apart by the first bytes.
    #[default]
    Permissive,
    /// mTLS only, with a client certificate from the trust domain.
    Strict,
    /// Plaintext only.
    Disable,
}

/// The effective policy of one workload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectivePeerAuthentication {
    pub mode: MtlsMode,
    /// By the workload's (target) port.
    pub per_port: BTreeMap<u16, MtlsMode>,
}

impl EffectivePeerAuthentication {
    pub fn mode_for_port(&self, port: u16) -> MtlsMode {
        self.per_port.get(&port).copied().unwrap_or(self.mode)
    }
}

/// The mode a policy sets: `None` for UNSET (or no `mtls`), which takes
/// the level above. Validation has refused other words.
fn mode_of(mtls: Option<&MutualTls>) -> Option<MtlsMode> {
    match mtls?.mode.as_deref()? {
        "STRICT" => Some(MtlsMode::Strict),
        "PERMISSIVE" => Some(MtlsMode::Permissive),
        "DISABLE" => Some(MtlsMode::Disable),
        _ => None,
    }
}

/// The policy for a workload in `namespace` with `labels`, from all the
/// PeerAuthentications there are (`root_namespace`: Istio's root, where
/// the mesh-wide policy lives).
pub fn effective(
    root_namespace: &str,
    namespace: &str,
    labels: &Labels,
    policies: &[&Resource],
) -> EffectivePeerAuthentication {
    let (mut mesh, mut ns, mut workload): (Option<Pick>, Option<Pick>, Option<Pick>) = (None, None, None);
    for resource in policies {
        let Spec::PeerAuthentication(spec) = &resource.spec else { continue };
        let selector = spec.selector.as_ref().filter(|s| !s.match_labels.is_empty());
        let level = match selector {
            None if resource.meta.namespace == root_namespace => &mut mesh,
            None if resource.meta.namespace == namespace => &mut ns,
            Some(s)
                if resource.meta.namespace == namespace
                    && namespace != root_namespace
                    && s.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v)) =>
            {
                &mut workload
            }
            _ => continue,
        };
        let pick = Pick { resource, spec };
        if level.as_ref().is_none_or(|held| pick.older_than(held)) {
            *level = Some(pick);
        }
    }
    let mut out = EffectivePeerAuthentication::default();
    for pick in [&mesh, &ns, &workload].into_iter().flatten() {
        if let Some(mode) = mode_of(pick.spec.mtls.as_ref()) {
            out.mode = mode;
        }
    }
    if let Some(pick) = workload {
        for (port, mtls) in &pick.spec.port_level_mtls {
            let Ok(port) = port.parse::<u16>() else { continue };
            out.per_port.insert(port, mode_of(Some(mtls)).unwrap_or(out.mode));
        }
    }
    out
}

/// A policy held for a level.
struct Pick<'a> {
    resource: &'a Resource,
    spec: &'a PeerAuthentication,
}

impl Pick<'_> {
    /// Created before `other` (a policy with no creation time counts as
    /// oldest); equal times go by name.
    fn older_than(&self, other: &Pick<'_>) -> bool {
        let key = |p: &Pick<'_>| {
            (p.resource.meta.creation_timestamp.clone().unwrap_or_default(), p.resource.meta.name.clone())
        };
        key(self) < key(other)
    }
}

#[cfg(test)]
mod tests {
    use super::MtlsMode::{Disable, Permissive, Strict};
    use super::*;

    fn policy(ns: &str, name: &str, created: &str, body: &str) -> Resource {
        let yaml = format!("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}, creationTimestamp: '{created}'}}\nspec:\n{body}");
        Resource::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn merged(policies: &[Resource], ns: &str, workload: &[(&str, &str)]) -> EffectivePeerAuthentication {
        let refs: Vec<&Resource> = policies.iter().collect();
        effective("istio-system", ns, &labels(workload), &refs)
    }

    #[test]
    fn nothing_set_is_permissive() {
        assert_eq!(merged(&[], "foo", &[]), EffectivePeerAuthentication::default());
        assert_eq!(merged(&[], "foo", &[]).mode_for_port(8000), Permissive);
    }

    /// Istio's ComposePeerAuthentication cases: the narrowest level wins,
    /// UNSET inherits, port levels only from a workload policy.
    #[test]
    fn narrower_levels_override_and_unset_inherits() {
        let mesh = policy("istio-system", "default", "2020-01-01T00:00:00Z", "  mtls: {mode: STRICT}\n");
        let ns_permissive = policy("foo", "default", "2020-01-01T00:00:00Z", "  mtls: {mode: PERMISSIVE}\n");
        let ns_unset = policy("foo", "default", "2020-01-01T00:00:00Z", "  mtls: {mode: UNSET}\n");
        let workload = policy(
            "foo",
            "httpbin",
            "2020-01-01T00:00:00Z",
            "  selector: {matchLabels: {app: httpbin}}\n  mtls: {mode: DISABLE}\n  portLevelMtls:\n    '8000': {mode: STRICT}\n    '9000': {mode: UNSET}\n",
        );
        let httpbin = [("app", "httpbin")];
        assert_eq!(merged(std::slice::from_ref(&mesh), "foo", &httpbin).mode, Strict);
        assert_eq!(merged(&[mesh.clone(), ns_permissive.clone()], "foo", &httpbin).mode, Permissive);
        assert_eq!(merged(&[mesh.clone(), ns_unset], "foo", &httpbin).mode, Strict, "UNSET takes the mesh's");
        let all = merged(&[mesh.clone(), ns_permissive.clone(), workload.clone()], "foo", &httpbin);
        assert_eq!(
            (all.mode, all.mode_for_port(8000), all.mode_for_port(9000), all.mode_for_port(1)),
            (Disable, Strict, Disable, Disable)
        );
        // The workload policy selects by label, in its own namespace only.
        assert_eq!(merged(&[mesh.clone(), workload.clone()], "foo", &[("app", "sleep")]).mode, Strict);
        assert_eq!(merged(&[mesh.clone(), workload], "bar", &httpbin).mode, Strict);
        // Another namespace's policy does not apply.
        assert_eq!(merged(&[mesh, ns_permissive], "bar", &[]).mode, Strict);
    }

    #[test]
    fn the_oldest_policy_of_a_level_wins_and_selectors_in_the_root_namespace_are_ignored() {
        let newer = policy("foo", "a-newer", "2021-06-01T00:00:00Z", "  mtls: {mode: DISABLE}\n");
        let older = policy("foo", "z-older", "2020-06-01T00:00:00Z", "  mtls: {mode: STRICT}\n");
        assert_eq!(merged(&[newer.clone(), older.clone()], "foo", &[]).mode, Strict);
        assert_eq!(merged(&[older, newer], "foo", &[]).mode, Strict);
        let rooted = policy(
            "istio-system",
            "selecting",
            "2020-01-01T00:00:00Z",
            "  selector: {matchLabels: {app: httpbin}}\n  mtls: {mode: STRICT}\n",
        );
        assert_eq!(merged(&[rooted], "istio-system", &[("app", "httpbin")]).mode, Permissive);
        // An empty selector is a namespace-wide policy.
        let empty =
            policy("foo", "empty", "2020-01-01T00:00:00Z", "  selector: {matchLabels: {}}\n  mtls: {mode: STRICT}\n");
        assert_eq!(merged(&[empty], "foo", &[("app", "x")]).mode, Strict);
    }
}
