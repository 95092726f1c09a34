//! A workload as Istio's telemetry names it: the name of what runs the
//! pods (a Deployment, not a pod), its namespace, its canonical service
//! and revision, its `app` and `version` labels, and its cluster. Metrics
//! label both ends of every request with these; endpoints carry them so a
//! client knows whom it called.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::{Endpoint, Labels};

/// Istio's cluster ID when none is configured.
pub const DEFAULT_CLUSTER: &str = "Kubernetes";

/// Labels that name the canonical service, the first present wins.
const NAME_LABELS: [&str; 3] = ["service.istio.io/canonical-name", "app.kubernetes.io/name", "app"];
/// Labels that name the canonical revision, the first present wins.
const REVISION_LABELS: [&str; 3] = ["service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"];
/// Overrides the workload name derived from a pod's controller.
pub const WORKLOAD_NAME_LABEL: &str = "service.istio.io/workload-name";

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WorkloadMeta {
    /// The workload (`reviews-v1` for the pods of Deployment `reviews-v1`).
    pub name: String,
    pub namespace: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    /// The `app` and `version` labels, empty when absent.
    pub app: String,
    pub version: String,
    pub cluster: String,
}

impl WorkloadMeta {
    /// Istio's view of workload `name` with `labels`: the canonical
    /// service from `service.istio.io/canonical-name`,
    /// `app.kubernetes.io/name` or `app` (else the workload's name), the
    /// revision from `service.istio.io/canonical-revision`,
    /// `app.kubernetes.io/version` or `version` (else `latest`).
    pub fn from_labels(name: &str, namespace: &str, labels: &Labels, cluster: &str) -> WorkloadMeta {
        let first = |keys: &[&str]| keys.iter().find_map(|k| labels.get(*k)).cloned();
        WorkloadMeta {
            name: name.to_string(),
            namespace: namespace.to_string(),
            canonical_service: first(&NAME_LABELS).unwrap_or_else(|| name.to_string()),
            canonical_revision: first(&REVISION_LABELS).unwrap_or_else(|| "latest".into()),
            app: labels.get("app").cloned().unwrap_or_default(),
            version: labels.get("version").cloned().unwrap_or_default(),
            cluster: if cluster.is_empty() { DEFAULT_CLUSTER.into() } else { cluster.to_string() },
        }
    }

    /// The workload behind endpoint `e` of a service in `namespace`, when
    /// its platform named it.
    pub fn of_endpoint(e: &Endpoint, namespace: &str) -> Option<Arc<WorkloadMeta>> {
        let name = e.workload.as_deref()?;
        Some(Arc::new(WorkloadMeta::from_labels(name, namespace, &e.labels, DEFAULT_CLUSTER)))
    }

    /// Istio's `istio.workload` endpoint metadata:
    /// `name;namespace;canonical service;canonical revision;cluster`.
    pub fn endpoint_encoding(&self) -> String {
        [&self.name, &self.namespace, &self.canonical_service, &self.canonical_revision, &self.cluster]
            .map(String::as_str)
            .join(";")
    }

    /// The inverse of [`WorkloadMeta::endpoint_encoding`]; `app` and
    /// `version` are not in it.
    pub fn from_endpoint_encoding(text: &str) -> Option<WorkloadMeta> {
        let parts: Vec<&str> = text.split(';').collect();
        let [name, namespace, service, revision, cluster, ..] = parts[..] else { return None };
        Some(WorkloadMeta {
            name: name.into(),
            namespace: namespace.into(),
            canonical_service: service.into(),
            canonical_revision: revision.into(),
            cluster: cluster.into(),
            ..WorkloadMeta::default()
        })
    }
}

/// The workload at `address` in the registry, and its labels: how a
/// sidecar told only its pod's IP learns its own name.
pub fn at_address(services: &crate::registry::RegistrySnapshot, address: &str) -> Option<(String, Labels)> {
    services
        .values()
        .flat_map(|state| state.endpoints.iter())
        .find(|e| e.address == address && e.workload.is_some())
        .map(|e| (e.workload.clone().unwrap_or_default(), e.labels.clone()))
}

/// The controller a pod names as its owner (`ownerReferences` with
/// `controller: true`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Controller<'a> {
    pub kind: &'a str,
    pub name: &'a str,
}

/// The workload name of a pod, as Istio derives it: the
/// `service.istio.io/workload-name` label; else for a pod whose name was
/// generated, its controller, with a ReplicaSet's `pod-template-hash`
/// trimmed to its Deployment and a Job's timestamp trimmed to its CronJob;
/// else the pod's own name.
pub fn pod_workload_name(pod: &str, generated: bool, controller: Option<Controller<'_>>, labels: &Labels) -> String {
    if let Some(name) = labels.get(WORKLOAD_NAME_LABEL) {
        return name.clone();
    }
    let Some(owner) = controller.filter(|_| generated) else { return pod.to_string() };
    let label = |key: &str| labels.get(key).filter(|v| !v.is_empty());
    let trimmed = |hash: &String| owner.name.strip_suffix(hash.as_str()).and_then(|n| n.strip_suffix('-'));
    let name = match owner.kind {
        "ReplicaSet" => label("pod-template-hash")
            .and_then(trimmed)
            .or_else(|| label("rollouts-pod-template-hash").and_then(trimmed))
            .unwrap_or(owner.name),
        "ReplicationController" => label("deploymentconfig").map_or(owner.name, String::as_str),
        "Job" => cron_job_of(owner.name).unwrap_or(owner.name),
        _ => owner.name,
    };
    if name.is_empty() {
        pod.to_string()
    } else {
        name.to_string()
    }
}

/// `nightly` of Job `nightly-28419840`: a CronJob's Jobs end in an 8 to 10
/// digit timestamp.
fn cron_job_of(job: &str) -> Option<&str> {
    let (base, stamp) = job.rsplit_once('-')?;
    ((8..=10).contains(&stamp.len()) && stamp.bytes().all(|b| b.is_ascii_digit()) && !base.is_empty()).then_some(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn canonical_names_fall_back_as_istio_does() {
        let w =
            WorkloadMeta::from_labels("reviews-v2", "default", &labels(&[("app", "reviews"), ("version", "v2")]), "");
        assert_eq!(
            (w.canonical_service.as_str(), w.canonical_revision.as_str(), w.app.as_str(), w.cluster.as_str()),
            ("reviews", "v2", "reviews", "Kubernetes")
        );
        let k8s = labels(&[("app", "a"), ("app.kubernetes.io/name", "b"), ("app.kubernetes.io/version", "3")]);
        let w = WorkloadMeta::from_labels("w", "ns", &k8s, "east");
        assert_eq!((w.canonical_service.as_str(), w.canonical_revision.as_str()), ("b", "3"));
        let bare = WorkloadMeta::from_labels("w", "ns", &Labels::new(), "");
        assert_eq!((bare.canonical_service.as_str(), bare.canonical_revision.as_str()), ("w", "latest"));
        assert_eq!(bare.endpoint_encoding(), "w;ns;w;latest;Kubernetes");
        let back = WorkloadMeta::from_endpoint_encoding(&w.endpoint_encoding()).unwrap();
        assert_eq!((back.name, back.canonical_service, back.cluster), ("w".into(), "b".into(), "east".into()));
        assert_eq!(WorkloadMeta::from_endpoint_encoding("a;b;c"), None);
    }

    #[test]
    fn pods_are_named_by_their_controllers() {
        let rs = Some(Controller { kind: "ReplicaSet", name: "reviews-v1-545db77b95" });
        let hash = labels(&[("pod-template-hash", "545db77b95")]);
        assert_eq!(pod_workload_name("reviews-v1-545db77b95-x2x", true, rs.clone(), &hash), "reviews-v1");
        assert_eq!(
            pod_workload_name("reviews-v1-545db77b95-x2x", true, rs.clone(), &Labels::new()),
            "reviews-v1-545db77b95"
        );
        assert_eq!(
            pod_workload_name("reviews-v1-545db77b95-x2x", false, rs.clone(), &hash),
            "reviews-v1-545db77b95-x2x"
        );
        let job = Some(Controller { kind: "Job", name: "nightly-28419840" });
        assert_eq!(pod_workload_name("nightly-28419840-abc", true, job, &Labels::new()), "nightly");
        let sts = Some(Controller { kind: "StatefulSet", name: "db" });
        assert_eq!(pod_workload_name("db-0", true, sts, &Labels::new()), "db");
        let named = labels(&[(WORKLOAD_NAME_LABEL, "custom"), ("pod-template-hash", "545db77b95")]);
        assert_eq!(pod_workload_name("reviews-v1-545db77b95-x2x", true, rs, &named), "custom");
        assert_eq!(pod_workload_name("standalone", false, None, &Labels::new()), "standalone");
    }
}
