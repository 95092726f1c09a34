//! Kubernetes objects saved as YAML (`kubectl get svc,endpointslices,pods
//! -A -o yaml`) read into the service model, as Istio's Kubernetes
//! controller reads them live: a Service is a service, its EndpointSlices
//! (or, when it has none, the Pods its selector matches) its endpoints.

use std::collections::BTreeMap;

use mesh_core::model::{Endpoint, Health, Labels, Locality, Protocol, Resolution, Service, ServicePort};
use mesh_core::translate::DOMAIN_SUFFIX;
use serde::Deserialize;

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Meta {
    pub name: String,
    pub namespace: Option<String>,
    pub labels: Labels,
    /// Set on pods a controller made: their workload is the controller's.
    pub generate_name: Option<String>,
    pub owner_references: Vec<OwnerReference>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OwnerReference {
    pub kind: String,
    pub name: String,
    pub controller: Option<bool>,
}

impl Pod {
    /// The workload the pod belongs to, as Istio names it (its
    /// Deployment, CronJob, ... or itself).
    pub fn workload_name(&self) -> String {
        let m = &self.metadata;
        let controller = m
            .owner_references
            .iter()
            .find(|r| r.controller == Some(true))
            .map(|r| mesh_core::workload::Controller { kind: &r.kind, name: &r.name });
        mesh_core::workload::pod_workload_name(&m.name, m.generate_name.is_some(), controller, &m.labels)
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(u16),
    String(String),
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct KubeServicePort {
    pub name: Option<String>,
    pub port: u16,
    pub target_port: Option<IntOrString>,
    pub protocol: Option<String>,
    pub app_protocol: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct KubeServiceSpec {
    pub ports: Vec<KubeServicePort>,
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    #[serde(rename = "type")]
    pub service_type: Option<String>,
    pub external_name: Option<String>,
    pub selector: Option<Labels>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct KubeService {
    pub metadata: Meta,
    pub spec: KubeServiceSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Conditions {
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ObjectReference {
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SliceEndpoint {
    pub addresses: Vec<String>,
    pub conditions: Conditions,
    pub zone: Option<String>,
    pub target_ref: Option<ObjectReference>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SlicePort {
    pub name: Option<String>,
    pub port: Option<u16>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EndpointSlice {
    pub metadata: Meta,
    pub address_type: String,
    pub endpoints: Vec<SliceEndpoint>,
    pub ports: Vec<SlicePort>,
}

impl EndpointSlice {
    /// The Service this slice belongs to (the `kubernetes.io/service-name`
    /// label).
    pub fn service_name(&self) -> Option<&str> {
        self.metadata.labels.get("kubernetes.io/service-name").map(String::as_str)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub container_port: u16,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Container {
    pub ports: Vec<ContainerPort>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PodSpec {
    pub containers: Vec<Container>,
    pub service_account_name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PodStatus {
    #[serde(rename = "podIP")]
    pub pod_ip: Option<String>,
    pub phase: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Pod {
    pub metadata: Meta,
    pub spec: PodSpec,
    pub status: PodStatus,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct PodTemplate {
    pub metadata: Meta,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct DeploymentSpec {
    pub template: PodTemplate,
}

/// A Deployment, read only for the labels of the pods it makes (so that
/// analysis knows which workloads exist).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Deployment {
    pub metadata: Meta,
    pub spec: DeploymentSpec,
}

/// The service a Kubernetes Service is.
pub fn service(svc: &KubeService, namespace: &str) -> Service {
    let external = svc.spec.service_type.as_deref() == Some("ExternalName");
    Service {
        hostname: format!("{}.{namespace}.svc.{DOMAIN_SUFFIX}", svc.metadata.name),
        namespace: namespace.to_string(),
        ports: svc
            .spec
            .ports
            .iter()
            .map(|p| {
                let name = p.name.clone().unwrap_or_default();
                ServicePort {
                    protocol: Protocol::of_port(p.app_protocol.as_deref(), &name),
                    name,
                    port: p.port,
                    target_port: match &p.target_port {
                        Some(IntOrString::Int(t)) => Some(*t),
                        _ => None,
                    },
                }
            })
            .collect(),
        labels: svc.metadata.labels.clone(),
        addresses: svc.spec.cluster_ip.iter().filter(|ip| *ip != "None" && !ip.is_empty()).cloned().collect(),
        resolution: if external { Resolution::Dns } else { Resolution::Static },
        mesh_external: external,
        subject_alt_names: Vec::new(),
    }
}

/// Endpoints of a service from its slices; pod labels (when the Pods are
/// in the files too) label the endpoints, so subsets select them.
pub fn endpoints_from_slices(
    slices: &[&EndpointSlice],
    pods: &BTreeMap<(String, String), &Pod>,
    namespace: &str,
) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for slice in slices {
        let ports: BTreeMap<String, u16> =
            slice.ports.iter().filter_map(|p| Some((p.name.clone().unwrap_or_default(), p.port?))).collect();
        for e in &slice.endpoints {
            let pod = e.target_ref.as_ref().filter(|r| r.kind.as_deref().is_none_or(|k| k == "Pod")).and_then(|r| {
                pods.get(&(r.namespace.clone().unwrap_or_else(|| namespace.to_string()), r.name.clone()))
            });
            for address in &e.addresses {
                let mut ep = Endpoint::new(address.clone());
                ep.ports = ports.clone();
                ep.locality = Locality { zone: e.zone.clone().unwrap_or_default(), ..Locality::default() };
                ep.health = if e.conditions.terminating == Some(true) {
                    Health::Draining
                } else if e.conditions.ready == Some(false) {
                    Health::Unhealthy
                } else {
                    Health::Healthy
                };
                if let Some(pod) = pod {
                    ep.labels = pod.metadata.labels.clone();
                    ep.service_account = pod.spec.service_account_name.clone();
                    ep.workload = Some(pod.workload_name());
                }
                out.push(ep);
            }
        }
    }
    out
}

/// Endpoints of a service from the Pods its selector matches, as the
/// Kubernetes endpoints controller would make them.
pub fn endpoints_from_pods(svc: &KubeService, pods: &[&Pod]) -> Vec<Endpoint> {
    let Some(selector) = svc.spec.selector.as_ref().filter(|s| !s.is_empty()) else { return Vec::new() };
    pods.iter()
        .filter(|p| mesh_core::model::labels_match(selector, &p.metadata.labels))
        .filter(|p| p.status.phase.as_deref().is_none_or(|ph| ph == "Running"))
        .filter_map(|p| {
            let mut ep = Endpoint::new(p.status.pod_ip.clone()?);
            ep.labels = p.metadata.labels.clone();
            ep.service_account = p.spec.service_account_name.clone();
            ep.workload = Some(p.workload_name());
            for sp in &svc.spec.ports {
                let name = sp.name.clone().unwrap_or_default();
                let port = match &sp.target_port {
                    Some(IntOrString::Int(t)) => Some(*t),
                    Some(IntOrString::String(named)) => p
                        .spec
                        .containers
                        .iter()
                        .flat_map(|c| &c.ports)
                        .find(|cp| cp.name.as_deref() == Some(named.as_str()))
                        .map(|cp| cp.container_port),
                    None => Some(sp.port),
                };
                if let Some(port) = port {
                    ep.ports.insert(name, port);
                }
            }
            Some(ep)
        })
        .collect()
}
