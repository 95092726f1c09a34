//! A Consul service's health entries as a mesh service and its endpoints,
//! the way Istio's Consul adapter named and labelled them.

use std::collections::BTreeMap;

use mesh_core::model::{Endpoint, Health, Labels, Locality, Protocol, Resolution, Service, ServicePort};

use crate::api::{Check, HealthEntry};

/// How Consul services are named in the mesh.
#[derive(Clone, Debug)]
pub struct Naming {
    /// Hostnames are `<service>.<domain>`: `reviews.service.consul`.
    pub domain: String,
    /// The namespace the services belong to (for Sidecar visibility and
    /// where DestinationRules are looked up).
    pub namespace: String,
}

impl Default for Naming {
    fn default() -> Self {
        Naming { domain: "service.consul".into(), namespace: "default".into() }
    }
}

impl Naming {
    pub fn hostname(&self, service: &str) -> String {
        format!("{service}.{}", self.domain)
    }
}

/// An instance's health from its checks and the node's: maintenance mode
/// drains, any other critical check fails it, `warning` still serves.
fn health(checks: &[Check]) -> (Health, bool) {
    let maintenance = |c: &&Check| c.check_id == "_node_maintenance" || c.check_id.starts_with("_service_maintenance");
    if checks.iter().filter(maintenance).any(|c| c.status == "critical" || c.status == "maintenance") {
        return (Health::Draining, false);
    }
    if checks.iter().any(|c| c.status == "critical") {
        return (Health::Unhealthy, false);
    }
    (Health::Healthy, checks.iter().any(|c| c.status == "warning"))
}

/// Tags (`version=v2`, Istio's older `version|v2`, or a bare `canary`) and
/// service meta as labels; meta wins over a tag of the same key.
fn labels(tags: &[String], meta: Option<&BTreeMap<String, String>>) -> Labels {
    let mut labels = Labels::new();
    for tag in tags {
        let (key, value) = tag.split_once('=').or_else(|| tag.split_once('|')).unwrap_or((tag, ""));
        labels.insert(key.to_string(), value.to_string());
    }
    for (k, v) in meta.into_iter().flatten() {
        labels.insert(k.clone(), v.clone());
    }
    labels
}

/// The protocol of a service: its instances' `protocol` meta, else a tag
/// naming one (`http`, `grpc`, ...), else TCP.
fn protocol(entries: &[HealthEntry]) -> Protocol {
    let declared = entries.iter().find_map(|e| e.service.meta.as_ref()?.get("protocol").map(|p| Protocol::parse(p)));
    let tagged = || {
        entries
            .iter()
            .flat_map(|e| e.service.tags.iter().flatten())
            .map(|t| Protocol::parse(t))
            .find(|p| *p != Protocol::Unknown)
    };
    match declared.filter(|p| *p != Protocol::Unknown).or_else(tagged) {
        Some(p) => p,
        None => Protocol::Tcp,
    }
}

/// The service and its serving endpoints. The service port is the port
/// most instances use; each endpoint keeps its own (as SRV records do).
/// Instances failing a check are left out; ones in maintenance drain.
pub fn service_of(name: &str, entries: &[HealthEntry], naming: &Naming) -> (Service, Vec<Endpoint>) {
    let protocol = protocol(entries);
    let port_name = format!("{protocol:?}").to_lowercase();
    let mut counts: BTreeMap<u16, usize> = BTreeMap::new();
    for e in entries {
        *counts.entry(e.service.port).or_default() += 1;
    }
    let port = counts.iter().max_by_key(|(port, n)| (**n, std::cmp::Reverse(**port))).map_or(0, |(p, _)| *p);
    let service = Service {
        hostname: naming.hostname(name),
        namespace: naming.namespace.clone(),
        ports: vec![ServicePort { name: port_name.clone(), port, protocol, target_port: None }],
        labels: Labels::new(),
        addresses: Vec::new(),
        resolution: Resolution::Static,
        mesh_external: false,
        subject_alt_names: Vec::new(),
    };
    let mut endpoints = Vec::new();
    for e in entries {
        let (health, warning) = health(&e.checks);
        if health == Health::Unhealthy {
            continue;
        }
        let address = if e.service.address.is_empty() { &e.node.address } else { &e.service.address };
        if address.is_empty() {
            continue;
        }
        let mut endpoint = Endpoint::new(address.clone());
        endpoint.ports.insert(port_name.clone(), e.service.port);
        endpoint.health = health;
        endpoint.labels = labels(e.service.tags.as_deref().unwrap_or_default(), e.service.meta.as_ref());
        endpoint.weight = match e.service.weights {
            Some(w) if warning => w.warning.max(1),
            Some(w) => w.passing.max(1),
            None => 1,
        };
        let node_meta = |key: &str| e.node.meta.as_ref().and_then(|m| m.get(key)).cloned().unwrap_or_default();
        endpoint.locality =
            Locality { region: e.node.datacenter.clone(), zone: node_meta("zone"), subzone: node_meta("subzone") };
        endpoint.service_account = e.service.meta.as_ref().and_then(|m| m.get("service-account")).cloned();
        endpoints.push(endpoint);
    }
    (service, endpoints)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AgentService, Node, Weights};

    fn entry(address: &str, port: u16, tags: &[&str], checks: &[(&str, &str)]) -> HealthEntry {
        HealthEntry {
            node: Node {
                node: "node-1".into(),
                address: "10.1.0.1".into(),
                datacenter: "dc1".into(),
                meta: Some([("zone".to_string(), "a".to_string())].into()),
                ..Node::default()
            },
            service: AgentService {
                id: format!("reviews-{address}"),
                service: "reviews".into(),
                tags: Some(tags.iter().map(|t| t.to_string()).collect()),
                address: address.into(),
                port,
                weights: Some(Weights { passing: 10, warning: 1 }),
                ..AgentService::default()
            },
            checks: checks
                .iter()
                .map(|(id, status)| Check { check_id: id.to_string(), status: status.to_string(), ..Check::default() })
                .collect(),
        }
    }

    #[test]
    fn entries_to_service_and_endpoints() {
        let entries = vec![
            entry("10.0.0.1", 9080, &["http", "version=v1"], &[("serfHealth", "passing")]),
            entry("10.0.0.2", 9080, &["version|v2"], &[("serfHealth", "passing"), ("svc", "warning")]),
            entry("10.0.0.3", 9081, &["version=v3"], &[("svc", "critical")]),
            entry("", 9080, &["version=v1"], &[("_node_maintenance", "critical")]),
        ];
        let (service, endpoints) = service_of("reviews", &entries, &Naming::default());
        assert_eq!(service.hostname, "reviews.service.consul");
        assert_eq!(service.ports[0].port, 9080);
        assert_eq!(service.ports[0].protocol, Protocol::Http);
        let got: Vec<_> = endpoints
            .iter()
            .map(|e| {
                (e.address.as_str(), e.labels["version"].as_str(), e.health, e.weight, e.port_for(&service.ports[0]))
            })
            .collect();
        assert_eq!(
            got,
            [
                ("10.0.0.1", "v1", Health::Healthy, 10, 9080),
                ("10.0.0.2", "v2", Health::Healthy, 1, 9080),
                // The node's address when the service has none; drains.
                ("10.1.0.1", "v1", Health::Draining, 10, 9080),
            ]
        );
        assert_eq!(endpoints[0].locality, Locality { region: "dc1".into(), zone: "a".into(), subzone: String::new() });
    }

    #[test]
    fn protocol_from_meta_then_tags_then_tcp() {
        let mut e = entry("10.0.0.1", 7070, &["grpc"], &[]);
        assert_eq!(service_of("x", std::slice::from_ref(&e), &Naming::default()).0.ports[0].protocol, Protocol::Grpc);
        e.service.meta = Some([("protocol".to_string(), "http2".to_string())].into());
        assert_eq!(service_of("x", std::slice::from_ref(&e), &Naming::default()).0.ports[0].protocol, Protocol::Http2);
        let plain = entry("10.0.0.1", 5432, &["primary"], &[]);
        let (svc, eps) = service_of("db", &[plain], &Naming::default());
        assert_eq!(svc.ports[0].protocol, Protocol::Tcp);
        assert_eq!(eps[0].labels.get("primary").map(String::as_str), Some(""));
    }
}
