//! The few fields the mesh reads from each Kubernetes object. Watch events
//! are turned into these at once and the full objects dropped, so a large
//! cluster costs what the mesh uses, not what the API server sends
//! (managedFields, status, annotations, container specs...).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mesh_core::model::{Health, Labels, Locality, Protocol, Resolution, Service, ServicePort};

/// `(namespace, name)` of a namespaced object.
pub type ObjectName = (String, String);

pub fn object_name(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectName {
    (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

/// A Service as the mesh model has it, plus what endpoints need from it.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceRecord {
    pub service: Arc<Service>,
    /// ExternalName services resolve this DNS name.
    pub external_name: Option<String>,
}

/// The protocol a Kubernetes port declares: `appProtocol` first (with the
/// `kubernetes.io/` names), then Istio's port-name prefix.
fn port_protocol(port: &core::ServicePort) -> Protocol {
    let app = port.app_protocol.as_deref().map(|p| match p {
        "kubernetes.io/h2c" => "http2",
        "kubernetes.io/ws" => "http",
        "kubernetes.io/wss" => "https",
        other => other,
    });
    Protocol::of_port(app, port.name.as_deref().unwrap_or(""))
}

impl ServiceRecord {
    /// `None` for what the mesh does not route: UDP-only services.
    pub fn from_kube(svc: &core::Service, cluster_domain: &str) -> Option<ServiceRecord> {
        let (namespace, name) = object_name(&svc.metadata);
        let spec = svc.spec.as_ref()?;
        let ports: Vec<ServicePort> = spec
            .ports
            .iter()
            .flatten()
            // Istio leaves UDP to the kernel.
            .filter(|p| p.protocol.as_deref() != Some("UDP"))
            .filter_map(|p| {
                Some(ServicePort {
                    name: p.name.clone().unwrap_or_default(),
                    port: u16::try_from(p.port).ok()?,
                    protocol: port_protocol(p),
                    target_port: match &p.target_port {
                        Some(IntOrString::Int(t)) => u16::try_from(*t).ok(),
                        _ => None,
                    },
                })
            })
            .collect();
        if ports.is_empty() && !spec.ports.as_ref().is_none_or(Vec::is_empty) {
            return None;
        }
        let external_name =
            (spec.type_.as_deref() == Some("ExternalName")).then(|| spec.external_name.clone()).flatten();
        // Headless services keep EDS over their pod endpoints, as Istio
        // does for Kubernetes: only ExternalName resolves by DNS.
        let addresses = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter(|ip| *ip != "None" && !ip.is_empty())
            .fold(Vec::<String>::new(), |mut all, ip| {
                if !all.contains(ip) {
                    all.push(ip.clone());
                }
                all
            });
        Some(ServiceRecord {
            service: Arc::new(Service {
                hostname: format!("{name}.{namespace}.svc.{cluster_domain}"),
                namespace,
                ports,
                labels: svc.metadata.labels.clone().unwrap_or_default(),
                addresses,
                resolution: if external_name.is_some() { Resolution::Dns } else { Resolution::Static },
                mesh_external: external_name.is_some(),
                subject_alt_names: Vec::new(),
            }),
            external_name,
        })
    }
}

/// One address of an EndpointSlice.
#[derive(Clone, Debug, PartialEq)]
pub struct SliceAddress {
    pub address: String,
    pub health: Health,
    pub zone: Option<String>,
    pub node: Option<String>,
    /// The Pod behind the address, for its labels and service account.
    pub pod: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SliceRecord {
    /// The Service it belongs to (`kubernetes.io/service-name`).
    pub service: String,
    /// Port number by service port name.
    pub ports: Arc<BTreeMap<String, u16>>,
    pub addresses: Vec<SliceAddress>,
}

/// The health Istio gives an endpoint from its conditions: ready (or not
/// said) is healthy; not ready but terminating drains; otherwise unhealthy.
fn health(conditions: Option<&discovery::EndpointConditions>) -> Health {
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
    match (ready, terminating) {
        (true, _) => Health::Healthy,
        (false, true) => Health::Draining,
        (false, false) => Health::Unhealthy,
    }
}

impl SliceRecord {
    /// `None` for slices the mesh cannot use: FQDN slices and slices of no
    /// Service.
    pub fn from_kube(slice: &discovery::EndpointSlice) -> Option<SliceRecord> {
        if slice.address_type == "FQDN" {
            return None;
        }
        let service = slice.metadata.labels.as_ref()?.get("kubernetes.io/service-name")?.clone();
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.name.clone().unwrap_or_default(), u16::try_from(p.port?).ok()?)))
            .collect();
        let addresses = slice
            .endpoints
            .iter()
            .flat_map(|e| {
                let pod = e
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref().is_none_or(|k| k == "Pod"))
                    .and_then(|r| r.name.clone());
                e.addresses.iter().map(move |address| SliceAddress {
                    address: address.clone(),
                    health: health(e.conditions.as_ref()),
                    zone: e.zone.clone(),
                    node: e.node_name.clone(),
                    pod: pod.clone(),
                })
            })
            .collect();
        Some(SliceRecord { service, ports: Arc::new(ports), addresses })
    }
}

/// What endpoints take from their Pod.
#[derive(Clone, Debug, PartialEq)]
pub struct PodRecord {
    pub labels: Arc<Labels>,
    pub service_account: Option<String>,
    /// The `istio-locality` label (`region.zone.subzone`), which overrides
    /// the node's.
    pub locality: Option<Locality>,
    /// The pod's IP while it runs and is ready: what a ServiceEntry's
    /// `workloadSelector` can pick.
    pub address: Option<String>,
    /// The workload it belongs to (its Deployment...), for telemetry.
    pub workload: String,
}

impl PodRecord {
    pub fn from_kube(pod: &core::Pod) -> PodRecord {
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let locality = labels.get("istio-locality").map(|l| Locality::parse(&l.replace('.', "/")));
        let status = pod.status.as_ref();
        let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let meta = &pod.metadata;
        let controller = meta.owner_references.iter().flatten().find(|r| r.controller == Some(true));
        let workload = mesh_core::workload::pod_workload_name(
            meta.name.as_deref().unwrap_or_default(),
            meta.generate_name.is_some(),
            controller.map(|r| mesh_core::workload::Controller { kind: &r.kind, name: &r.name }),
            &labels,
        );
        PodRecord {
            workload,
            labels: Arc::new(labels),
            service_account: pod.spec.as_ref().and_then(|s| s.service_account_name.clone()),
            locality,
            address: status.and_then(|s| s.pod_ip.clone()).filter(|_| running && ready),
        }
    }
}

/// A node's place, from the well-known topology labels.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeRecord {
    pub locality: Locality,
}

impl NodeRecord {
    pub fn from_kube(node: &core::Node) -> NodeRecord {
        let labels = node.metadata.labels.as_ref();
        let label = |key: &str| labels.and_then(|l| l.get(key)).cloned().unwrap_or_default();
        NodeRecord {
            locality: Locality {
                region: label("topology.kubernetes.io/region"),
                zone: label("topology.kubernetes.io/zone"),
                subzone: label("topology.istio.io/subzone"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn service_ports_protocols_and_kinds() {
        let svc: core::Service = from_json(serde_json::json!({
            "metadata": {"name": "reviews", "namespace": "default", "labels": {"app": "reviews"}},
            "spec": {"clusterIP": "10.96.0.7", "ports": [
                {"name": "http-web", "port": 9080, "targetPort": 8080},
                {"name": "api", "port": 9090, "appProtocol": "kubernetes.io/h2c", "targetPort": "api"},
                {"name": "grpc", "port": 7070},
                {"name": "dns", "port": 53, "protocol": "UDP"}]}
        }));
        let rec = ServiceRecord::from_kube(&svc, "cluster.local").unwrap();
        let s = &rec.service;
        assert_eq!(s.hostname, "reviews.default.svc.cluster.local");
        assert_eq!(s.addresses, ["10.96.0.7"]);
        let ports: Vec<_> = s.ports.iter().map(|p| (p.name.as_str(), p.port, p.protocol, p.target_port)).collect();
        assert_eq!(
            ports,
            [
                ("http-web", 9080, Protocol::Http, Some(8080)),
                ("api", 9090, Protocol::Http2, None),
                ("grpc", 7070, Protocol::Grpc, None)
            ]
        );

        let headless: core::Service = from_json(serde_json::json!({
            "metadata": {"name": "db", "namespace": "data"},
            "spec": {"clusterIP": "None", "ports": [{"name": "tcp", "port": 5432}]}
        }));
        let rec = ServiceRecord::from_kube(&headless, "example.org").unwrap();
        assert_eq!(rec.service.hostname, "db.data.svc.example.org");
        assert!(rec.service.addresses.is_empty());
        assert_eq!(rec.service.resolution, Resolution::Static);

        let external: core::Service = from_json(serde_json::json!({
            "metadata": {"name": "payments", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "pay.example.com", "ports": [{"name": "https", "port": 443}]}
        }));
        let rec = ServiceRecord::from_kube(&external, "cluster.local").unwrap();
        assert_eq!(rec.external_name.as_deref(), Some("pay.example.com"));
        assert_eq!(rec.service.resolution, Resolution::Dns);
        assert!(rec.service.mesh_external);
    }

    #[test]
    fn slice_conditions_map_to_health() {
        let slice: discovery::EndpointSlice = from_json(serde_json::json!({
            "metadata": {"name": "reviews-abc", "namespace": "default", "labels": {"kubernetes.io/service-name": "reviews"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 9080}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}, "zone": "z1", "nodeName": "n1",
                 "targetRef": {"kind": "Pod", "name": "reviews-v1-1", "namespace": "default"}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.4"]}]
        }));
        let rec = SliceRecord::from_kube(&slice).unwrap();
        assert_eq!(rec.service, "reviews");
        assert_eq!(rec.ports.get("http"), Some(&9080));
        let health: Vec<_> = rec.addresses.iter().map(|a| a.health).collect();
        assert_eq!(health, [Health::Healthy, Health::Draining, Health::Unhealthy, Health::Healthy]);
        assert_eq!(rec.addresses[0].pod.as_deref(), Some("reviews-v1-1"));
        assert_eq!(rec.addresses[0].node.as_deref(), Some("n1"));
    }
}
