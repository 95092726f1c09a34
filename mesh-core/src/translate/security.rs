//! What a proxy enforces and reports: the AuthorizationPolicies,
//! RequestAuthentications, EnvoyFilter rate limits and Telemetry that
//! select it.

use super::*;

impl<'a> Translator<'a> {
    /// EnvoyFilters in the proxy's namespace (or the root namespace) whose
    /// selector matches it, that insert Envoy's local rate limit filter.
    pub(super) fn local_rate_limits(&self) -> Vec<crate::rate_limit::LocalRateLimit> {
        of_kind(self.config, Kind::EnvoyFilter)
            .filter(|r| r.meta.namespace == self.proxy.namespace || r.meta.namespace == self.mesh_config.root_namespace)
            .filter_map(|r| match &r.spec {
                Spec::EnvoyFilter(ef) => Some(ef),
                _ => None,
            })
            .filter(|ef| ef.workload_selector.as_ref().is_none_or(|s| labels_match(&s.labels, &self.proxy.labels)))
            .flat_map(|ef| ef.config_patches.iter().filter_map(|p| crate::rate_limit::local_rate_limit_of(p)?.ok()))
            .filter(|l| match l.context.as_str() {
                "GATEWAY" => self.proxy.kind == ProxyKind::Gateway,
                "SIDECAR_INBOUND" | "SIDECAR_OUTBOUND" => self.proxy.kind == ProxyKind::Sidecar,
                _ => true,
            })
            .collect()
    }

    // ------------------------------------------------------------ security

    /// Policies selecting this proxy: those in the root namespace without a
    /// selector apply mesh-wide; others apply in their namespace, to the
    /// workloads their selector matches.
    pub(super) fn authorization_policies(&self) -> Vec<AuthorizationPolicyRef> {
        of_kind(self.config, Kind::AuthorizationPolicy)
            .filter_map(|r| {
                let Spec::AuthorizationPolicy(p) = &r.spec else { return None };
                let targeted = p.target_ref.is_some() || !p.target_refs.is_empty();
                self.policy_selects(&r.meta.namespace, p.selector.as_ref(), targeted).then(|| AuthorizationPolicyRef {
                    namespace: r.meta.namespace.clone(),
                    name: r.meta.name.clone(),
                    policy: with_trust_domain_aliases(p, &self.mesh_config.trust_domains()),
                })
            })
            .collect()
    }
}

impl Translator<'_> {
    /// RequestAuthentications selecting this proxy, as Istio selects
    /// them: all their rules apply together, ordered by issuer.
    pub(super) fn request_authentication(&self) -> Vec<crate::jwt::JwtProvider> {
        crate::jwt::providers(of_kind(self.config, Kind::RequestAuthentication).filter_map(|r| {
            let Spec::RequestAuthentication(ra) = &r.spec else { return None };
            let targeted = ra.target_ref.is_some() || !ra.target_refs.is_empty();
            self.policy_selects(&r.meta.namespace, ra.selector.as_ref(), targeted).then_some((
                r.meta.namespace.as_str(),
                r.meta.name.as_str(),
                ra,
            ))
        }))
    }

    /// The Telemetry resources for this proxy (root namespace's, its
    /// namespace's, then the one selecting it), merged with MeshConfig.
    pub(super) fn telemetry(&self) -> crate::telemetry::TelemetryConfig {
        let root = &self.mesh_config.root_namespace;
        let mut levels: [Vec<(String, &crate::config::telemetry::Telemetry)>; 3] = Default::default();
        for r in of_kind(self.config, Kind::Telemetry) {
            let Spec::Telemetry(t) = &r.spec else { continue };
            let (ns, selector) = (&r.meta.namespace, t.selector.as_ref());
            let level = match (ns == root, ns == &self.proxy.namespace, selector) {
                (true, _, None) => 0,
                (false, true, None) => 1,
                (_, true, Some(sel)) if labels_match(&sel.match_labels, &self.proxy.labels) => 2,
                _ => continue,
            };
            levels[level].push((format!("{ns}/{}", r.meta.name), t));
        }
        // Several at one level: Istio takes one; the first by name here.
        let names: Vec<(String, &crate::config::telemetry::Telemetry)> =
            levels.into_iter().filter_map(|mut l| (!l.is_empty()).then(|| l.swap_remove(0))).collect();
        let scopes = crate::telemetry::Scopes { ordered: names.iter().map(|(n, t)| (n.as_str(), *t)).collect() };
        crate::telemetry::resolve(&scopes, self.mesh_config)
    }

    /// Whether a security policy in `namespace` applies to this proxy: one
    /// in the root namespace without a selector applies mesh-wide; others
    /// in their namespace (or from the root namespace) to the workloads
    /// their selector matches. targetRef(s) attach to Gateway API objects,
    /// which this mesh does not run; such policies do not apply.
    pub(super) fn policy_selects(
        &self,
        namespace: &str,
        selector: Option<&crate::config::networking::WorkloadSelector>,
        targeted: bool,
    ) -> bool {
        let in_scope = namespace == self.mesh_config.root_namespace || namespace == self.proxy.namespace;
        let selected = selector.is_none_or(|sel| labels_match(&sel.match_labels, &self.proxy.labels));
        in_scope && selected && !targeted
    }
}

/// A policy whose principals of the mesh's trust domain (or one of its
/// aliases) name every alias too, as Istio widens them: a mesh renamed
/// from `old.td` still matches `old.td/ns/foo/sa/sleep`.
pub(super) fn with_trust_domain_aliases(
    policy: &AuthorizationPolicy,
    domains: &crate::identity::TrustDomains,
) -> AuthorizationPolicy {
    let mut policy = policy.clone();
    if domains.aliases.is_empty() {
        return policy;
    }
    let widen = |list: &mut Vec<String>| *list = list.iter().flat_map(|p| domains.principals_for(p)).collect();
    for from in policy.rules.iter_mut().flat_map(|r| r.from.iter_mut()) {
        widen(&mut from.source.principals);
        widen(&mut from.source.not_principals);
    }
    policy
}
