//! Cross-resource checks in the spirit of `istioctl analyze`: config that
//! validates on its own but does not fit the rest of the mesh.
//!
//! - a route to a host no registry knows, or to a subset no DestinationRule
//!   defines;
//! - a DestinationRule subset that selects no endpoint;
//! - a Gateway no workload serves, or a VirtualService bound to a Gateway
//!   that does not exist;
//! - two VirtualServices for one host on the mesh (only one is used);
//! - a route that can never match, because an earlier one catches every
//!   request or has the same match;
//! - settings a proxy does not carry out as written (CUSTOM authorization,
//!   JWT attributes, TLS origination from a credential, locality settings,
//!   the Sidecar fields beyond egress hosts and the outbound policy).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::networking::{Destination, HttpMatchRequest, VirtualService};
use crate::config::{Kind, ResourceKey, Spec};
use crate::mesh::MeshSnapshot;
use crate::model::{labels_match, Labels};
use crate::store::of_kind;
use crate::translate::{host_matches, resolve_host};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub resource: ResourceKey,
    pub field: String,
    pub message: String,
}

/// A workload's namespace and labels, for selectors.
pub type WorkloadLabels = (String, Labels);

/// Every finding for the mesh, in resource order.
pub fn analyze(mesh: &MeshSnapshot, workloads: &[WorkloadLabels]) -> Vec<Finding> {
    let mut a = Analysis { mesh, workloads, findings: Vec::new() };
    a.virtual_services();
    a.destination_rules();
    a.gateways();
    a.envoy_filters();
    a.sidecars();
    a.authorization_policies();
    a.findings.sort_by_cached_key(|f| (f.resource.to_string(), f.field.clone(), f.message.clone()));
    a.findings
}

struct Analysis<'a> {
    mesh: &'a MeshSnapshot,
    workloads: &'a [WorkloadLabels],
    findings: Vec<Finding>,
}

impl Analysis<'_> {
    fn add(&mut self, severity: Severity, resource: &ResourceKey, field: String, message: String) {
        self.findings.push(Finding { severity, resource: resource.clone(), field, message });
    }

    fn host_known(&self, host: &str) -> bool {
        self.mesh.services.contains_key(host)
            || (host.contains('*') && self.mesh.services.keys().any(|s| host_matches(host, s)))
    }

    /// Subset names the DestinationRules for `host` define.
    fn subsets_for(&self, host: &str) -> Vec<String> {
        of_kind(&self.mesh.config, Kind::DestinationRule)
            .filter_map(|r| match &r.spec {
                Spec::DestinationRule(dr) if host_matches(&resolve_host(&dr.host, &r.meta.namespace), host) => {
                    Some(dr.subsets.iter().map(|s| s.name.clone()).collect::<Vec<_>>())
                }
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn destination(&mut self, key: &ResourceKey, field: String, d: &Destination) {
        let host = resolve_host(&d.host, &key.namespace);
        if !self.host_known(&host) {
            self.add(Severity::Error, key, format!("{field}.host"), format!("no service in the registry is `{host}`"));
            return;
        }
        if let Some(subset) = &d.subset {
            if !self.subsets_for(&host).contains(subset) {
                self.add(
                    Severity::Error,
                    key,
                    format!("{field}.subset"),
                    format!("no DestinationRule for `{host}` defines subset `{subset}`"),
                );
            }
        }
    }

    fn virtual_services(&mut self) {
        let vss: Vec<(ResourceKey, &VirtualService)> = of_kind(&self.mesh.config, Kind::VirtualService)
            .filter_map(|r| match &r.spec {
                Spec::VirtualService(vs) => Some((r.key(), vs)),
                _ => None,
            })
            .collect();
        let gateways: Vec<String> = of_kind(&self.mesh.config, Kind::Gateway)
            .map(|r| format!("{}/{}", r.meta.namespace, r.meta.name))
            .collect();
        let mut mesh_hosts: BTreeMap<String, ResourceKey> = BTreeMap::new();
        for (key, vs) in vss {
            for (i, route) in vs.http.iter().enumerate() {
                for (j, d) in route.route.iter().enumerate() {
                    self.destination(&key, format!("spec.http[{i}].route[{j}].destination"), &d.destination);
                }
                if let Some(m) = &route.mirror {
                    self.destination(&key, format!("spec.http[{i}].mirror"), m);
                }
                for (j, m) in route.mirrors.iter().enumerate() {
                    self.destination(&key, format!("spec.http[{i}].mirrors[{j}].destination"), &m.destination);
                }
            }
            for (kind, routes) in [
                ("tcp", vs.tcp.iter().map(|r| &r.route).collect::<Vec<_>>()),
                ("tls", vs.tls.iter().map(|r| &r.route).collect()),
            ] {
                for (i, route) in routes.into_iter().enumerate() {
                    for (j, d) in route.iter().enumerate() {
                        self.destination(&key, format!("spec.{kind}[{i}].route[{j}].destination"), &d.destination);
                    }
                }
            }
            for (i, g) in vs.gateways.iter().enumerate() {
                let qualified = if g.contains('/') { g.clone() } else { format!("{}/{g}", key.namespace) };
                if g != "mesh" && !gateways.contains(&qualified) {
                    self.add(
                        Severity::Error,
                        &key,
                        format!("spec.gateways[{i}]"),
                        format!("no Gateway `{qualified}` exists"),
                    );
                }
            }
            self.unreachable_routes(&key, vs);
            if vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh") {
                for (i, h) in vs.hosts.iter().enumerate() {
                    let host = resolve_host(h, &key.namespace);
                    match mesh_hosts.get(&host) {
                        Some(first) => self.add(
                            Severity::Error,
                            &key,
                            format!("spec.hosts[{i}]"),
                            format!(
                                "`{host}` is also routed by VirtualService {}/{}; sidecars use only one of them",
                                first.namespace, first.name
                            ),
                        ),
                        None => {
                            mesh_hosts.insert(host, key.clone());
                        }
                    }
                }
            }
        }
    }

    fn unreachable_routes(&mut self, key: &ResourceKey, vs: &VirtualService) {
        let mut catch_all: Option<usize> = None;
        let mut seen: Vec<(usize, &HttpMatchRequest)> = Vec::new();
        for (i, route) in vs.http.iter().enumerate() {
            if let Some(earlier) = catch_all {
                self.add(
                    Severity::Warning,
                    key,
                    format!("spec.http[{i}]"),
                    format!("this route never matches: spec.http[{earlier}] before it matches every request"),
                );
                continue;
            }
            if !route.matches.is_empty() && route.matches.iter().all(|m| seen.iter().any(|(_, s)| *s == m)) {
                let (earlier, _) = seen
                    .iter()
                    .find(|(_, s)| route.matches.iter().any(|m| *s == m))
                    .copied()
                    .unwrap_or((0, &route.matches[0]));
                self.add(
                    Severity::Warning,
                    key,
                    format!("spec.http[{i}].match"),
                    format!("this route never matches: spec.http[{earlier}] has the same match"),
                );
            }
            if route.matches.is_empty() || route.matches.iter().any(matches_everything) {
                catch_all = Some(i);
            }
            seen.extend(route.matches.iter().map(|m| (i, m)));
        }
    }

    fn destination_rules(&mut self) {
        for r in of_kind(&self.mesh.config, Kind::DestinationRule) {
            let Spec::DestinationRule(dr) = &r.spec else { continue };
            let key = r.key();
            let policies = std::iter::once(("spec.trafficPolicy".to_string(), dr.traffic_policy.as_ref())).chain(
                dr.subsets
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (format!("spec.subsets[{i}].trafficPolicy"), s.traffic_policy.as_ref())),
            );
            for (at, policy) in policies {
                if let Some(policy) = policy {
                    self.traffic_policy(&key, &at, policy);
                }
            }
            let host = resolve_host(&dr.host, &r.meta.namespace);
            let Some(state) = self.mesh.services.get(&host) else {
                if !self.host_known(&host) {
                    self.add(
                        Severity::Warning,
                        &key,
                        "spec.host".into(),
                        format!("no service in the registry is `{host}`"),
                    );
                }
                continue;
            };
            for (i, subset) in dr.subsets.iter().enumerate() {
                if !state.endpoints.iter().any(|e| labels_match(&subset.labels, &e.labels)) {
                    self.add(
                        Severity::Warning,
                        &key,
                        format!("spec.subsets[{i}]"),
                        format!(
                            "subset `{}` selects none of the {} endpoints of `{host}`",
                            subset.name,
                            state.endpoints.len()
                        ),
                    );
                }
            }
        }
    }

    /// What one proxy or the other does not do as written.
    fn traffic_policy(&mut self, key: &ResourceKey, at: &str, policy: &crate::config::networking::TrafficPolicy) {
        if policy.tls.as_ref().is_some_and(|t| t.credential_name.is_some()) {
            let message = "TLS origination from a credential: Envoy is sent it over SDS from the Kubernetes Secret; mesh-proxy refuses this cluster's connections (give it caCertificates, clientCertificate and privateKey files)";
            self.add(Severity::Warning, key, format!("{at}.tls.credentialName"), message.into());
        }
        let locality = policy.load_balancer.as_ref().and_then(|l| l.locality_lb_setting.as_ref());
        if let Some(l) = locality.filter(|l| l.enabled != Some(false)) {
            let message = if !l.distribute.is_empty() || !l.failover_priority.is_empty() {
                "distribute and failoverPriority are not applied: neither Envoy over xDS nor mesh-proxy gets them"
            } else {
                "mesh-proxy does not balance by locality yet; Envoy over xDS fails over by it (with outlierDetection)"
            };
            self.add(Severity::Warning, key, format!("{at}.loadBalancer.localityLbSetting"), message.into());
        }
    }

    fn envoy_filters(&mut self) {
        for r in of_kind(&self.mesh.config, Kind::EnvoyFilter) {
            let Spec::EnvoyFilter(ef) = &r.spec else { continue };
            for (i, p) in ef.config_patches.iter().enumerate() {
                if crate::rate_limit::local_rate_limit_of(p).is_none() {
                    self.add(
                        Severity::Warning,
                        &r.key(),
                        format!("spec.configPatches[{i}]"),
                        "this mesh reads EnvoyFilter only for Envoy's local rate limit filter; this patch is ignored"
                            .into(),
                    );
                }
            }
        }
    }

    /// A Sidecar's egress hosts scope what its proxies see and its
    /// outbound policy is kept; the rest is not built.
    fn sidecars(&mut self) {
        for r in of_kind(&self.mesh.config, Kind::Sidecar) {
            let Spec::Sidecar(sc) = &r.spec else { continue };
            let mut ignored = Vec::new();
            for (i, e) in sc.egress.iter().enumerate() {
                let set =
                    [("port", e.port.is_some()), ("bind", e.bind.is_some()), ("captureMode", e.capture_mode.is_some())];
                ignored.extend(set.iter().filter(|(_, set)| *set).map(|(f, _)| {
                    (
                        format!("spec.egress[{i}].{f}"),
                        "egress listeners are merged: their hosts apply on every port, and this field is ignored",
                    )
                }));
            }
            if !sc.ingress.is_empty() {
                ignored.push((
                    "spec.ingress".into(),
                    "ingress listeners are not built: inbound traffic follows the workload's Services",
                ));
            }
            if sc.outbound_traffic_policy.as_ref().is_some_and(|o| o.egress_proxy.is_some()) {
                ignored.push((
                    "spec.outboundTrafficPolicy.egressProxy".into(),
                    "ignored: with ALLOW_ANY, unknown destinations are reached directly, not through this proxy",
                ));
            }
            if sc.inbound_connection_pool.is_some() {
                ignored.push(("spec.inboundConnectionPool".into(), "ignored: inbound connections take the defaults"));
            }
            for (field, message) in ignored {
                self.add(Severity::Warning, &r.key(), field, message.into());
            }
        }
    }

    /// What does not work as written: a CUSTOM policy (its rules deny),
    /// and JWT attributes with no RequestAuthentication that could give a
    /// request a token (in the policy's namespace or the root one).
    fn authorization_policies(&mut self) {
        let authn_in = |ns: &str| {
            of_kind(&self.mesh.config, Kind::RequestAuthentication)
                .any(|r| r.meta.namespace == ns || r.meta.namespace == crate::translate::ROOT_NAMESPACE)
        };
        for r in of_kind(&self.mesh.config, Kind::AuthorizationPolicy) {
            let Spec::AuthorizationPolicy(p) = &r.spec else { continue };
            if p.action == crate::config::security::AuthorizationAction::Custom {
                let message = "action CUSTOM needs an external authorizer, which this mesh does not call: the requests its rules match are denied, as Istio does for an unknown provider";
                self.add(Severity::Warning, &r.key(), "spec.action".into(), message.into());
            }
            for (i, rule) in p.rules.iter().enumerate() {
                let jwt_source = rule
                    .from
                    .iter()
                    .any(|f| !f.source.request_principals.is_empty() || !f.source.not_request_principals.is_empty());
                let jwt_condition = rule.when.iter().any(|c| c.key.starts_with("request.auth."));
                if (jwt_source || jwt_condition) && !authn_in(&r.meta.namespace) {
                    let message = "request principals and JWT claims come from RequestAuthentication, and none is in this namespace or the root namespace: no request has them, so the rule matches none";
                    self.add(Severity::Warning, &r.key(), format!("spec.rules[{i}]"), message.into());
                }
            }
        }
    }

    fn gateways(&mut self) {
        for r in of_kind(&self.mesh.config, Kind::Gateway) {
            let Spec::Gateway(gw) = &r.spec else { continue };
            let served = self.workloads.iter().any(|(_, labels)| labels_match(&gw.selector, labels));
            if !served {
                let selector: Vec<String> = gw.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
                self.add(
                    Severity::Error,
                    &r.key(),
                    "spec.selector".into(),
                    format!("no workload matches the selector {{{}}}, so no gateway serves this", selector.join(", ")),
                );
            }
        }
    }
}

/// A match with no condition, or only `uri: {prefix: /}`.
fn matches_everything(m: &HttpMatchRequest) -> bool {
    let bare = HttpMatchRequest { uri: None, name: None, stat_prefix: None, ignore_uri_case: false, ..m.clone() };
    bare == HttpMatchRequest::default()
        && m.uri.as_ref().is_none_or(|u| u.prefix.as_deref() == Some("/") || *u == Default::default())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Resource;
    use crate::model::{Endpoint, Protocol, Resolution, Service, ServicePort, ServiceState};

    fn mesh(yaml: &[&str]) -> MeshSnapshot {
        let mut config = crate::store::ConfigSnapshot::new();
        for y in yaml {
            let r = Resource::from_yaml(y).unwrap();
            config.insert(r.key(), Arc::new(r));
        }
        let mut services = crate::registry::RegistrySnapshot::new();
        let mut ep = Endpoint::new("10.0.0.1");
        ep.labels.insert("version".into(), "v1".into());
        let svc = Service {
            hostname: "reviews.default.svc.cluster.local".into(),
            namespace: "default".into(),
            ports: vec![ServicePort { name: "http".into(), port: 9080, protocol: Protocol::Http, target_port: None }],
            labels: Default::default(),
            addresses: vec![],
            resolution: Resolution::Static,
            mesh_external: false,
            subject_alt_names: Vec::new(),
        };
        services.insert(svc.hostname.clone(), ServiceState { service: Arc::new(svc), endpoints: vec![ep].into() });
        MeshSnapshot { config: Arc::new(config), services: Arc::new(services) }
    }

    fn messages(findings: &[Finding]) -> Vec<String> {
        findings.iter().map(|f| format!("{} {}: {}", f.resource, f.field, f.message)).collect()
    }

    const DR: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n";

    #[test]
    fn unknown_hosts_missing_subsets_and_empty_subsets() {
        let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v3}\n      weight: 50\n    - destination: {host: ratings}\n      weight: 50\n";
        let found = messages(&analyze(&mesh(&[vs, DR]), &[]));
        assert_eq!(
            found,
            [
                "DestinationRule default/reviews spec.subsets[1]: subset `v2` selects none of the 1 endpoints of `reviews.default.svc.cluster.local`",
                "VirtualService default/reviews spec.http[0].route[0].destination.subset: no DestinationRule for `reviews.default.svc.cluster.local` defines subset `v3`",
                "VirtualService default/reviews spec.http[0].route[1].destination.host: no service in the registry is `ratings.default.svc.cluster.local`",
            ]
        );
    }

    #[test]
    fn conflicting_hosts_and_unreachable_routes() {
        let a = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec:\n  hosts: [reviews]\n  http:\n  - match: [{uri: {prefix: /api}}]\n    route: [{destination: {host: reviews}}]\n  - match: [{uri: {prefix: /api}}]\n    route: [{destination: {host: reviews}}]\n  - route: [{destination: {host: reviews}}]\n  - match: [{headers: {end-user: {exact: jason}}}]\n    route: [{destination: {host: reviews}}]\n";
        let b = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: b}\nspec:\n  hosts: [reviews.default.svc.cluster.local]\n  http:\n  - route: [{destination: {host: reviews}}]\n";
        let found = messages(&analyze(&mesh(&[a, b]), &[]));
        assert_eq!(
            found,
            [
                "VirtualService default/a spec.http[1].match: this route never matches: spec.http[0] has the same match",
                "VirtualService default/a spec.http[3]: this route never matches: spec.http[2] before it matches every request",
                "VirtualService default/b spec.hosts[0]: `reviews.default.svc.cluster.local` is also routed by VirtualService default/a; sidecars use only one of them",
            ]
        );
    }

    #[test]
    fn gateways_need_a_workload_and_must_exist() {
        let gw = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n";
        let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [\"*\"]\n  gateways: [gw, missing]\n  http:\n  - route: [{destination: {host: reviews}}]\n";
        let found = messages(&analyze(&mesh(&[gw, vs]), &[]));
        assert_eq!(
            found,
            [
                "Gateway default/gw spec.selector: no workload matches the selector {istio=ingressgateway}, so no gateway serves this",
                "VirtualService default/r spec.gateways[1]: no Gateway `default/missing` exists",
            ]
        );
        let ingress: Labels = [("istio".to_string(), "ingressgateway".to_string())].into();
        let found = analyze(&mesh(&[gw, vs]), &[("istio-system".into(), ingress)]);
        assert_eq!(found.len(), 1, "{found:?}");
    }

    #[test]
    fn policies_this_mesh_cannot_enforce_are_named() {
        let custom = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ext, namespace: default}\nspec:\n  action: CUSTOM\n  provider: {name: opa}\n  rules: [{}]\n";
        let jwt = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: jwt, namespace: default}\nspec:\n  rules:\n  - from: [{source: {requestPrincipals: [\"*\"]}}]\n";
        let found = messages(&analyze(&mesh(&[custom, jwt]), &[]));
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(found.iter().any(|m| m.contains("CUSTOM")));
        assert!(found.iter().any(|m| m.contains("spec.rules[0]") && m.contains("RequestAuthentication")));
        let authn = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: istio-system}\nspec:\n  jwtRules: [{issuer: i, jwks: '{}'}]\n";
        let found = messages(&analyze(&mesh(&[custom, jwt, authn]), &[]));
        assert_eq!(found.len(), 1, "a mesh-wide RequestAuthentication gives tokens: {found:#?}");
    }

    #[test]
    fn sidecar_fields_beyond_egress_hosts_and_the_outbound_policy_are_named() {
        let scoped = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: scoped}\nspec:\n  egress: [{hosts: [./*]}]\n  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n";
        assert_eq!(messages(&analyze(&mesh(&[scoped]), &[])), Vec::<String>::new(), "all of it is carried out");
        let more = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: more}\nspec:\n  ingress: [{port: {number: 9080, protocol: HTTP, name: http}, defaultEndpoint: 127.0.0.1:8080}]\n  egress: [{port: {number: 9080, protocol: HTTP, name: http}, bind: 127.0.0.1, hosts: [./*]}]\n  outboundTrafficPolicy: {mode: ALLOW_ANY, egressProxy: {host: egress.istio-system.svc.cluster.local}}\n";
        let found = messages(&analyze(&mesh(&[more]), &[]));
        let fields: Vec<&str> =
            found.iter().filter_map(|m| m.split(' ').nth(2)).map(|f| f.trim_end_matches(':')).collect();
        assert_eq!(
            fields,
            ["spec.egress[0].bind", "spec.egress[0].port", "spec.ingress", "spec.outboundTrafficPolicy.egressProxy"],
            "{found:#?}"
        );
    }

    #[test]
    fn destination_rule_settings_a_proxy_does_not_carry_out_are_named() {
        let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n  trafficPolicy:\n    tls: {mode: MUTUAL, credentialName: client-cert}\n    loadBalancer:\n      localityLbSetting: {distribute: [{from: us-east/*, to: {\"us-east/*\": 100}}]}\n  subsets:\n  - name: v1\n    labels: {version: v1}\n    trafficPolicy:\n      loadBalancer:\n        localityLbSetting: {failover: [{from: us-east, to: eu-west}]}\n";
        let found: Vec<String> =
            messages(&analyze(&mesh(&[dr]), &[])).into_iter().filter(|m| m.contains("trafficPolicy")).collect();
        assert_eq!(found.len(), 3, "{found:#?}");
        assert!(found[0].contains(
            "spec.subsets[0].trafficPolicy.loadBalancer.localityLbSetting: mesh-proxy does not balance by locality"
        ));
        assert!(found[1].contains("spec.trafficPolicy.loadBalancer.localityLbSetting: distribute and failoverPriority"));
        assert!(found[2].contains("spec.trafficPolicy.tls.credentialName: TLS origination from a credential"));
    }
}
