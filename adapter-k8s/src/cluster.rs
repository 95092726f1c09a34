//! What the watches know about the cluster, indexed so that one event
//! recomputes only the services it touches, and the services it makes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use mesh_core::model::{Endpoint, Health, Labels, Locality, ServiceState};

use crate::objects::{NodeRecord, ObjectName, PodRecord, ServiceRecord, SliceRecord};
use crate::selector::LabelSelector;

/// Which services an event may have changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub enum Touched {
    #[default]
    Nothing,
    Services(BTreeSet<ObjectName>),
    Everything,
}

impl Touched {
    fn one(name: ObjectName) -> Touched {
        Touched::Services(BTreeSet::from([name]))
    }

    fn many(names: impl IntoIterator<Item = ObjectName>) -> Touched {
        Touched::Services(names.into_iter().collect())
    }
}

#[derive(Default)]
pub struct ClusterState {
    cluster_domain: String,
    /// Istio's discovery selectors: a namespace is seen when any matches
    /// its labels; none means every namespace.
    selectors: Vec<LabelSelector>,
    namespaces: HashMap<String, Labels>,
    services: BTreeMap<ObjectName, ServiceRecord>,
    slices: HashMap<ObjectName, SliceRecord>,
    slices_by_service: HashMap<ObjectName, BTreeSet<String>>,
    pods: HashMap<ObjectName, PodRecord>,
    /// The services whose slices name a pod, each with how many slice
    /// addresses name it: who to recompute when the pod changes.
    pod_services: HashMap<ObjectName, BTreeMap<String, usize>>,
    nodes: HashMap<String, NodeRecord>,
}

impl ClusterState {
    pub fn new(cluster_domain: &str, selectors: Vec<LabelSelector>) -> ClusterState {
        ClusterState { cluster_domain: cluster_domain.to_string(), selectors, ..ClusterState::default() }
    }

    pub fn hostname(&self, (namespace, name): &ObjectName) -> String {
        format!("{name}.{namespace}.svc.{}", self.cluster_domain)
    }

    /// Whether the mesh sees this namespace.
    pub fn selects(&self, namespace: &str) -> bool {
        self.selectors.is_empty()
            || self.namespaces.get(namespace).is_some_and(|labels| self.selectors.iter().any(|s| s.matches(labels)))
    }

    pub fn counts(&self) -> (usize, usize, usize) {
        (self.services.len(), self.slices.values().map(|s| s.addresses.len()).sum(), self.pods.len())
    }

    pub fn apply_service(&mut self, name: ObjectName, record: Option<ServiceRecord>) -> Touched {
        match record {
            Some(record) => self.services.insert(name.clone(), record),
            None => self.services.remove(&name),
        };
        Touched::one(name)
    }

    pub fn apply_slice(&mut self, (namespace, slice): ObjectName, record: Option<SliceRecord>) -> Touched {
        let key = (namespace.clone(), slice.clone());
        let mut touched = BTreeSet::new();
        if let Some(old) = self.slices.remove(&key) {
            self.unindex_slice(&namespace, &slice, &old);
            touched.insert((namespace.clone(), old.service));
        }
        if let Some(record) = record {
            let service = (namespace.clone(), record.service.clone());
            self.slices_by_service.entry(service.clone()).or_default().insert(slice.clone());
            for pod in record.addresses.iter().filter_map(|a| a.pod.clone()) {
                let services = self.pod_services.entry((namespace.clone(), pod)).or_default();
                *services.entry(record.service.clone()).or_default() += 1;
            }
            self.slices.insert(key, record);
            touched.insert(service);
        }
        Touched::many(touched)
    }

    fn unindex_slice(&mut self, namespace: &str, slice: &str, old: &SliceRecord) {
        let service = (namespace.to_string(), old.service.clone());
        if let Some(names) = self.slices_by_service.get_mut(&service) {
            names.remove(slice);
            if names.is_empty() {
                self.slices_by_service.remove(&service);
            }
        }
        for pod in old.addresses.iter().filter_map(|a| a.pod.as_ref()) {
            let key = (namespace.to_string(), pod.clone());
            let Some(services) = self.pod_services.get_mut(&key) else { continue };
            if let Some(count) = services.get_mut(&old.service) {
                *count -= 1;
                if *count == 0 {
                    services.remove(&old.service);
                }
            }
            if services.is_empty() {
                self.pod_services.remove(&key);
            }
        }
    }

    pub fn apply_pod(&mut self, name: ObjectName, record: Option<PodRecord>) -> Touched {
        let changed = match record {
            Some(record) => self.pods.insert(name.clone(), record.clone()).as_ref() != Some(&record),
            None => self.pods.remove(&name).is_some(),
        };
        match self.pod_services.get(&name) {
            Some(services) if changed => Touched::many(services.keys().map(|s| (name.0.clone(), s.clone()))),
            _ => Touched::Nothing,
        }
    }

    pub fn apply_node(&mut self, name: String, record: Option<NodeRecord>) -> Touched {
        let changed = match record {
            Some(record) => self.nodes.insert(name, record.clone()).as_ref() != Some(&record),
            None => self.nodes.remove(&name).is_some(),
        };
        if changed {
            Touched::Everything
        } else {
            Touched::Nothing
        }
    }

    pub fn apply_namespace(&mut self, name: String, labels: Option<Labels>) -> Touched {
        let before = self.selects(&name);
        match labels {
            Some(labels) => self.namespaces.insert(name.clone(), labels),
            None => self.namespaces.remove(&name),
        };
        if before == self.selects(&name) {
            Touched::Nothing
        } else {
            Touched::many(self.services.keys().filter(|(ns, _)| *ns == name).cloned().collect::<Vec<_>>())
        }
    }

    /// Replace every object of one type after a (re)list.
    pub fn reset_services(&mut self, all: Vec<(ObjectName, ServiceRecord)>) -> Touched {
        self.services = all.into_iter().collect();
        Touched::Everything
    }

    pub fn reset_slices(&mut self, all: Vec<(ObjectName, SliceRecord)>) -> Touched {
        self.slices.clear();
        self.slices_by_service.clear();
        self.pod_services.clear();
        for (name, record) in all {
            self.apply_slice(name, Some(record));
        }
        Touched::Everything
    }

    pub fn reset_pods(&mut self, all: Vec<(ObjectName, PodRecord)>) -> Touched {
        self.pods = all.into_iter().collect();
        Touched::Everything
    }

    pub fn reset_nodes(&mut self, all: Vec<(String, NodeRecord)>) -> Touched {
        self.nodes = all.into_iter().collect();
        Touched::Everything
    }

    pub fn reset_namespaces(&mut self, all: Vec<(String, Labels)>) -> Touched {
        self.namespaces = all.into_iter().collect();
        Touched::Everything
    }

    /// The pods of a namespace.
    pub fn pods_in<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a PodRecord> + 'a {
        self.pods.iter().filter(move |((ns, _), _)| ns == namespace).map(|(_, p)| p)
    }

    /// Every service the mesh sees, by hostname.
    pub fn states(&self) -> impl Iterator<Item = (String, ServiceState)> + '_ {
        self.services.keys().filter_map(|name| Some((self.hostname(name), self.state_of(name)?)))
    }

    /// The service and its endpoints as the mesh sees them; `None` when
    /// there is no such Service or its namespace is not selected.
    pub fn state_of(&self, name: &ObjectName) -> Option<ServiceState> {
        let record = self.services.get(name)?;
        if !self.selects(&name.0) {
            return None;
        }
        let mut endpoints: Vec<Endpoint> = Vec::new();
        if let Some(external) = &record.external_name {
            endpoints.push(Endpoint::new(external.clone()));
        }
        let slices = self.slices_by_service.get(name).into_iter().flatten();
        for slice in slices.filter_map(|s| self.slices.get(&(name.0.clone(), s.clone()))) {
            // A pod that is not ready takes no traffic and is not sent, as
            // Istio does by default; a terminating one drains.
            for a in slice.addresses.iter().filter(|a| a.health != Health::Unhealthy) {
                // During a rollout an endpoint can sit in two slices.
                if endpoints.iter().any(|e| e.address == a.address && e.ports == *slice.ports) {
                    continue;
                }
                let pod = a.pod.as_ref().and_then(|p| self.pods.get(&(name.0.clone(), p.clone())));
                let node = a.node.as_ref().and_then(|n| self.nodes.get(n));
                let mut endpoint = Endpoint::new(a.address.clone());
                endpoint.ports = slice.ports.as_ref().clone();
                endpoint.health = a.health;
                endpoint.locality = pod.and_then(|p| p.locality.clone()).unwrap_or_else(|| Locality {
                    region: node.map(|n| n.locality.region.clone()).unwrap_or_default(),
                    zone: a.zone.clone().or_else(|| node.map(|n| n.locality.zone.clone())).unwrap_or_default(),
                    subzone: node.map(|n| n.locality.subzone.clone()).unwrap_or_default(),
                });
                if let Some(pod) = pod {
                    endpoint.labels = pod.labels.as_ref().clone();
                    endpoint.service_account = pod.service_account.clone();
                    endpoint.workload = Some(pod.workload.clone());
                }
                endpoints.push(endpoint);
            }
        }
        Some(ServiceState { service: Arc::clone(&record.service), endpoints: endpoints.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::SliceAddress;

    fn slice(pods: &[&str]) -> SliceRecord {
        SliceRecord {
            service: "reviews".into(),
            ports: Arc::default(),
            addresses: pods
                .iter()
                .enumerate()
                .map(|(i, p)| SliceAddress {
                    address: format!("10.0.0.{i}"),
                    health: Health::Healthy,
                    zone: None,
                    node: None,
                    pod: Some(p.to_string()),
                })
                .collect(),
        }
    }

    fn name(n: &str) -> ObjectName {
        ("default".into(), n.into())
    }

    fn pod() -> PodRecord {
        PodRecord { labels: Arc::default(), service_account: None, locality: None, address: None, workload: "p".into() }
    }

    /// A pod in two slices of its service (as during a rollout) stays
    /// tied to the service until the last slice naming it goes.
    #[test]
    fn pod_changes_touch_the_services_whose_slices_name_it() {
        let mut state = ClusterState::new("cluster.local", Vec::new());
        state.apply_slice(name("reviews-a"), Some(slice(&["p1", "p2"])));
        state.apply_slice(name("reviews-b"), Some(slice(&["p1"])));
        state.apply_slice(name("reviews-a"), None);
        let mut relabelled = pod();
        relabelled.labels = Arc::new([("version".to_string(), "v2".to_string())].into());
        assert_eq!(state.apply_pod(name("p1"), Some(relabelled.clone())), Touched::one(name("reviews")));
        assert_eq!(state.apply_pod(name("p2"), Some(relabelled.clone())), Touched::Nothing);
        state.apply_slice(name("reviews-b"), None);
        assert_eq!(state.apply_pod(name("p1"), Some(pod())), Touched::Nothing);
        assert!(state.pod_services.is_empty());
    }
}
