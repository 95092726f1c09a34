//! ServiceEntry and WorkloadEntry as registry content, as Istio's
//! ServiceEntry controller reads them: one service per host, endpoints
//! from `endpoints` or from the WorkloadEntries a `workloadSelector` picks.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::networking::{ServiceEntry, WorkloadEntry};
use crate::config::{Resource, Spec};
use crate::model::{labels_match, Endpoint, Locality, Protocol, Resolution, Service, ServicePort, ServiceState};
use crate::registry::merge_states;

/// A WorkloadEntry with the namespace it lives in and the name of its
/// workload (for telemetry).
pub struct NamespacedWorkload<'a> {
    pub namespace: &'a str,
    pub workload: &'a str,
    pub entry: &'a WorkloadEntry,
}

/// The services (one per host) and endpoints a ServiceEntry declares.
/// `workloads` are the WorkloadEntries of the mesh; those in the entry's
/// namespace whose labels match its `workloadSelector` become endpoints.
pub fn services_of(
    se: &ServiceEntry,
    namespace: &str,
    workloads: &[NamespacedWorkload<'_>],
) -> Vec<(Service, Vec<Endpoint>)> {
    let resolution = match se.resolution.as_deref() {
        Some("STATIC") => Resolution::Static,
        Some("DNS") | Some("DNS_ROUND_ROBIN") | Some("DYNAMIC_DNS") => Resolution::Dns,
        _ => Resolution::Passthrough,
    };
    let ports: Vec<ServicePort> = se
        .ports
        .iter()
        .filter_map(|p| {
            Some(ServicePort {
                name: p.name.clone(),
                port: u16::try_from(p.number).ok()?,
                protocol: Protocol::of_port(p.protocol.as_deref(), &p.name),
                target_port: p.target_port.and_then(|t| u16::try_from(t).ok()),
            })
        })
        .collect();
    let mut endpoints: Vec<Endpoint> = se.endpoints.iter().filter_map(|e| endpoint_of(e, None)).collect();
    if let Some(selector) = &se.workload_selector {
        endpoints.extend(
            workloads
                .iter()
                .filter(|w| w.namespace == namespace && labels_match(&selector.labels, &w.entry.labels))
                .filter_map(|w| endpoint_of(w.entry, Some(w.workload))),
        );
    }
    se.hosts
        .iter()
        .map(|host| {
            let service = Service {
                hostname: host.clone(),
                namespace: namespace.to_string(),
                ports: ports.clone(),
                labels: Default::default(),
                addresses: se.addresses.clone(),
                resolution,
                mesh_external: se.location.as_deref() != Some("MESH_INTERNAL"),
                subject_alt_names: se.subject_alt_names.clone(),
            };
            // DNS entries without endpoints resolve the host itself.
            let eps = if endpoints.is_empty() && resolution == Resolution::Dns {
                vec![Endpoint::new(host.clone())]
            } else {
                endpoints.clone()
            };
            (service, eps)
        })
        .collect()
}

/// The services of every ServiceEntry among `resources`, endpoints
/// selected from the WorkloadEntries among them and from `platform`
/// workloads (Kubernetes pods, as Istio's selectors also pick); one state
/// per hostname (entries that share a host are merged as the aggregate
/// registry does).
pub fn services_of_all<'a>(
    resources: impl IntoIterator<Item = &'a Resource>,
    platform: &[NamespacedWorkload<'_>],
) -> Vec<ServiceState> {
    let resources: Vec<&Resource> = resources.into_iter().collect();
    let mut workloads: Vec<NamespacedWorkload<'_>> = resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::WorkloadEntry(entry) => Some(NamespacedWorkload {
                namespace: &r.meta.namespace,
                workload: entry_workload_name(r, entry),
                entry,
            }),
            _ => None,
        })
        .collect();
    workloads.extend(platform.iter().map(|w| NamespacedWorkload {
        namespace: w.namespace,
        workload: w.workload,
        entry: w.entry,
    }));
    let mut by_host: BTreeMap<String, Vec<ServiceState>> = BTreeMap::new();
    for r in &resources {
        if let Spec::ServiceEntry(se) = &r.spec {
            for (service, endpoints) in services_of(se, &r.meta.namespace, &workloads) {
                let state = ServiceState { service: Arc::new(service), endpoints: endpoints.into() };
                by_host.entry(state.service.hostname.clone()).or_default().push(state);
            }
        }
    }
    by_host.into_values().map(|states| merge_states(&states.iter().collect::<Vec<_>>())).collect()
}

/// The workload a WorkloadEntry stands for, as Istio names it: its
/// auto-registration group, else its `service.istio.io/workload-name`
/// label, else its own name.
pub fn entry_workload_name<'a>(r: &'a Resource, entry: &'a WorkloadEntry) -> &'a str {
    let label = crate::workload::WORKLOAD_NAME_LABEL;
    r.meta
        .annotations
        .get("istio.io/autoRegistrationGroup")
        .or_else(|| r.meta.labels.get(label))
        .or_else(|| entry.labels.get(label))
        .map_or(&r.meta.name, |n| n)
}

fn endpoint_of(we: &WorkloadEntry, workload: Option<&str>) -> Option<Endpoint> {
    let mut e = Endpoint::new(we.address.clone()?);
    e.ports = we.ports.iter().filter_map(|(name, p)| Some((name.clone(), u16::try_from(*p).ok()?))).collect();
    e.labels = we.labels.clone();
    e.locality = we.locality.as_deref().map(Locality::parse).unwrap_or_default();
    e.weight = we.weight.unwrap_or(1).max(1);
    e.service_account = we.service_account.clone();
    e.workload = workload.map(str::to_string);
    Some(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<T>(yaml: &str, pick: impl Fn(Spec) -> Option<T>) -> (T, String) {
        let r = Resource::from_yaml(yaml).unwrap();
        let ns = r.meta.namespace.clone();
        (pick(r.spec).unwrap(), ns)
    }

    #[test]
    fn static_entry_with_inline_endpoints() {
        let (se, ns) = spec(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: db, namespace: data}\nspec:\n  hosts: [db.internal, db-alias.internal]\n  addresses: [10.99.0.1]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports:\n  - {number: 5432, name: tcp-pg, protocol: TCP, targetPort: 15432}\n  endpoints:\n  - address: 10.0.0.1\n    labels: {version: v1}\n    locality: us-east/a\n    weight: 3\n  - address: 10.0.0.2\n    ports: {tcp-pg: 25432}\n",
            |s| if let Spec::ServiceEntry(se) = s { Some(se) } else { None },
        );
        let services = services_of(&se, &ns, &[]);
        assert_eq!(services.len(), 2);
        let (svc, eps) = &services[0];
        assert_eq!(
            (svc.hostname.as_str(), svc.namespace.as_str(), svc.resolution, svc.mesh_external),
            ("db.internal", "data", Resolution::Static, false)
        );
        assert_eq!(svc.ports[0].protocol, Protocol::Tcp);
        assert_eq!(eps.len(), 2);
        assert_eq!((eps[0].weight, eps[0].locality.region.as_str()), (3, "us-east"));
        assert_eq!(eps[0].port_for(&svc.ports[0]), 15432);
        assert_eq!(eps[1].port_for(&svc.ports[0]), 25432);
    }

    #[test]
    fn workload_selector_picks_matching_workload_entries_in_the_namespace() {
        let (se, ns) = spec(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: vm, namespace: apps}\nspec:\n  hosts: [vm.apps.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{number: 80, name: http}]\n  workloadSelector: {labels: {app: vm}}\n",
            |s| if let Spec::ServiceEntry(se) = s { Some(se) } else { None },
        );
        let we = |yaml: &str| spec(yaml, |s| if let Spec::WorkloadEntry(w) = s { Some(w) } else { None });
        let (a, a_ns) = we("apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: a, namespace: apps}\nspec: {address: 10.1.0.1, labels: {app: vm}}\n");
        let (b, b_ns) = we("apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: b, namespace: apps}\nspec: {address: 10.1.0.2, labels: {app: other}}\n");
        let (c, c_ns) = we("apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: c, namespace: elsewhere}\nspec: {address: 10.1.0.3, labels: {app: vm}}\n");
        let workloads = [
            NamespacedWorkload { namespace: &a_ns, workload: "a", entry: &a },
            NamespacedWorkload { namespace: &b_ns, workload: "b", entry: &b },
            NamespacedWorkload { namespace: &c_ns, workload: "c", entry: &c },
        ];
        let services = services_of(&se, &ns, &workloads);
        let addresses: Vec<&str> = services[0].1.iter().map(|e| e.address.as_str()).collect();
        assert_eq!(addresses, ["10.1.0.1"]);
        assert_eq!(services[0].1[0].workload.as_deref(), Some("a"), "named for telemetry");
        assert_eq!(services[0].0.ports[0].protocol, Protocol::Http, "protocol from the port name");
    }

    #[test]
    fn dns_entry_without_endpoints_resolves_its_host() {
        let text = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: books-api}\nspec:\n  hosts: [www.googleapis.com]\n  location: MESH_EXTERNAL\n  resolution: DNS\n  ports:\n  - {number: 80, name: http, protocol: HTTP}\n  - {number: 443, name: https, protocol: TLS}\n";
        let ses: Vec<(ServiceEntry, String)> = crate::config::parse_documents(text)
            .unwrap()
            .into_iter()
            .filter_map(|d| match crate::config::decode(d, "default").ok()? {
                crate::config::Decoded::Istio { resource, .. } => match resource.spec {
                    Spec::ServiceEntry(se) => Some((se, resource.meta.namespace)),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        assert!(!ses.is_empty());
        for (se, ns) in &ses {
            for (svc, eps) in services_of(se, ns, &[]) {
                assert!(svc.mesh_external);
                if svc.resolution == Resolution::Dns {
                    assert_eq!(eps.len(), 1);
                    assert_eq!(eps[0].address, svc.hostname);
                }
            }
        }
    }
}
