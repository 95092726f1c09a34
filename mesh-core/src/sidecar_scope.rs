//! The Sidecar resource that applies to a sidecar proxy, picked as Istio
//! picks it (one selecting the workload beats its namespace's default,
//! which beats MeshConfig's root namespace's), and what it decides: which services
//! the proxy sees (`egress` hosts) and where connections to anything else
//! go (`outboundTrafficPolicy`, else MeshConfig's).

use std::collections::BTreeMap;

use crate::config::networking::Sidecar;
use crate::config::{Kind, Spec};
use crate::mesh_config::{MeshConfig, OutboundMode};
use crate::model::{labels_match, Service};
use crate::store::{of_kind, ConfigSnapshot};
use crate::translate::{host_matches, ProxyIdentity, ProxyKind};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarScope {
    /// `egress` hosts as (namespace, host) patterns; `None`: all visible.
    egress: Option<Vec<(String, String)>>,
    pub outbound_mode: OutboundMode,
}

impl SidecarScope {
    pub fn of(config: &ConfigSnapshot, proxy: &ProxyIdentity, mesh_config: &MeshConfig) -> SidecarScope {
        let mesh_mode = mesh_config.outbound_traffic_policy.mode;
        let Some(sidecar) = applicable(config, proxy, &mesh_config.root_namespace) else {
            return SidecarScope { egress: None, outbound_mode: mesh_mode };
        };
        let outbound_mode = match sidecar.outbound_traffic_policy.as_ref().and_then(|o| o.mode.as_deref()) {
            None => mesh_mode,
            Some("ALLOW_ANY") => OutboundMode::AllowAny,
            // Validation refuses other words; were one to come, fail closed.
            Some(_) => OutboundMode::RegistryOnly,
        };
        SidecarScope { egress: egress_hosts(sidecar, &proxy.namespace), outbound_mode }
    }

    /// The proxy may reach `service`.
    pub fn sees(&self, service: &Service) -> bool {
        match &self.egress {
            None => true,
            Some(patterns) => patterns
                .iter()
                .any(|(ns, host)| (ns == "*" || *ns == service.namespace) && host_matches(host, &service.hostname)),
        }
    }
}

/// The Sidecar resource for this proxy, if any (gateways have none).
fn applicable<'c>(config: &'c ConfigSnapshot, proxy: &ProxyIdentity, root: &str) -> Option<&'c Sidecar> {
    if proxy.kind != ProxyKind::Sidecar {
        return None;
    }
    of_kind(config, Kind::Sidecar)
        .filter(|r| r.meta.namespace == proxy.namespace || r.meta.namespace == root)
        .filter_map(|r| match &r.spec {
            Spec::Sidecar(s) => Some((r, s)),
            _ => None,
        })
        .filter(|(_, s)| s.workload_selector.as_ref().is_none_or(|sel| labels_match(&sel.labels, &proxy.labels)))
        .map(|(r, s)| {
            let rank = u8::from(s.workload_selector.is_none()) * 2
                + u8::from(r.meta.namespace == root && proxy.namespace != root);
            (rank, s)
        })
        .collect::<BTreeMap<u8, &Sidecar>>()
        .into_values()
        .next()
}

/// `ns/host` patterns: `.` is the proxy's namespace, `~` none at all.
fn egress_hosts(sidecar: &Sidecar, proxy_namespace: &str) -> Option<Vec<(String, String)>> {
    if sidecar.egress.is_empty() {
        return None;
    }
    let patterns = sidecar.egress.iter().flat_map(|e| &e.hosts).map(|h| {
        let (ns, host) = h.split_once('/').unwrap_or(("*", h));
        let ns = match ns {
            "." => proxy_namespace.to_string(),
            "~" => "\u{0}".into(),
            other => other.to_string(),
        };
        (ns, host.to_string())
    });
    Some(patterns.collect())
}
