//! The fake API server as a child process, kube-rs clients to it, and
//! what the cluster's controllers would do: Pods for a Deployment's
//! replicas, EndpointSlices for a Service's ready pods.

#![allow(dead_code)]

use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::discovery::ApiResource;
use kube::Client;
use mesh_core::model::Labels;
use mesh_testkit::process::{example_binary, example_server, try_announced};
use mesh_testkit::Proc;
use serde_json::{json, Value};

pub use mesh_testkit::eventually;

/// The fake API server, killed and reaped when dropped.
pub struct FakeApi {
    _child: Proc,
    pub addr: String,
}

impl FakeApi {
    pub fn start(args: &[&str]) -> FakeApi {
        let (child, addr) = example_server("fake_apiserver", args);
        FakeApi { _child: child, addr }
    }

    /// A server on the same address, as after a restart.
    pub fn restart(self, args: &[&str]) -> FakeApi {
        let addr = self.addr.clone();
        drop(self);
        let mut all = vec!["--listen", &addr];
        all.extend_from_slice(args);
        // The port was just released; retry while the kernel frees it.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut command = Command::new(example_binary("fake_apiserver"));
            command.args(&all);
            if let Some((child, addr)) = try_announced(command, "listening on ") {
                return FakeApi { _child: child, addr };
            }
            assert!(Instant::now() < deadline, "could not listen on {addr} again");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn client(&self) -> Client {
        let url = format!("http://{}", self.addr).parse().expect("url");
        Client::try_from(kube::Config::new(url)).expect("client")
    }

    /// One of the server's test controls (`stats`, `compact`,
    /// `drop-watches`, `pause-watches`, `resume-watches`); its answer.
    pub async fn control(&self, what: &str) -> Value {
        let r = mesh_testkit::http::request(&self.addr, "POST", &format!("/fake/{what}"), "fake", &[], "")
            .unwrap_or_else(|e| panic!("control {what}: {e}"));
        assert_eq!(r.status, 200, "control {what}: {r:?}");
        serde_json::from_str(&r.body).unwrap_or_default()
    }

    /// Watch requests the server has answered.
    pub async fn watches_served(&self) -> u64 {
        self.control("stats").await["watches_served"].as_u64().unwrap_or(0)
    }
}

/// Logs to the test's output, filtered by `RUST_LOG`.
pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub fn from_json<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("object shape")
}

/// The documents of a fixture file (`bookinfo/kubernetes.yaml`).
pub fn yaml_documents(path: &str) -> Vec<Value> {
    mesh_core::config::parse_documents(&mesh_testkit::fixtures::read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What the cluster's controllers do, done by hand.
pub struct Cluster {
    pub client: Client,
}

impl Cluster {
    pub async fn namespace(&self, name: &str, labels: &[(&str, &str)]) {
        let labels: Labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let ns: Namespace = from_json(json!({"metadata": {"name": name, "labels": labels}}));
        let api = Api::<Namespace>::all(self.client.clone());
        if api.get_opt(name).await.expect("get namespace").is_some() {
            api.replace(name, &PostParams::default(), &ns).await.expect("replace namespace");
        } else {
            api.create(&PostParams::default(), &ns).await.expect("create namespace");
        }
    }

    pub async fn apply_service(&self, ns: &str, svc: Value) {
        let svc: Service = from_json(svc);
        let name = svc.metadata.name.clone().expect("name");
        let api = Api::<Service>::namespaced(self.client.clone(), ns);
        if api.get_opt(&name).await.expect("get service").is_some() {
            api.replace(&name, &PostParams::default(), &svc).await.expect("replace service");
        } else {
            api.create(&PostParams::default(), &svc).await.expect("create service");
        }
    }

    pub async fn delete_service(&self, ns: &str, name: &str) {
        let api = Api::<Service>::namespaced(self.client.clone(), ns);
        api.delete(name, &DeleteParams::default()).await.expect("delete service");
    }

    /// The Deployment's pods, `replicas` of them, named `<deployment>-<i>`,
    /// with addresses from `subnet` (`10.1.2`).
    pub async fn scale(&self, ns: &str, deployment: &Value, replicas: usize, subnet: &str) {
        let name = deployment["metadata"]["name"].as_str().expect("deployment name");
        let template = &deployment["spec"]["template"];
        let api = Api::<Pod>::namespaced(self.client.clone(), ns);
        let existing = api.list(&ListParams::default()).await.expect("list pods");
        for pod in existing.items {
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            let index = pod_name.strip_prefix(&format!("{name}-")).and_then(|i| i.parse::<usize>().ok());
            if index.is_some_and(|i| i >= replicas) {
                api.delete(&pod_name, &DeleteParams::default()).await.expect("delete pod");
            }
        }
        for i in 0..replicas {
            let pod_name = format!("{name}-{i}");
            if api.get_opt(&pod_name).await.expect("get pod").is_some() {
                continue;
            }
            let pod: Pod = from_json(json!({
                "metadata": {"name": pod_name, "namespace": ns, "labels": template["metadata"]["labels"]},
                "spec": {"serviceAccountName": template["spec"]["serviceAccountName"],
                         "nodeName": "node-a", "containers": template["spec"]["containers"]},
                "status": {"phase": "Running", "podIP": format!("{subnet}.{}", i + 1),
                           "conditions": [{"type": "Ready", "status": "True"}]}
            }));
            api.create(&PostParams::default(), &pod).await.expect("create pod");
        }
    }

    pub async fn set_ready(&self, ns: &str, pod: &str, ready: bool) {
        let api = Api::<Pod>::namespaced(self.client.clone(), ns);
        let mut p = api.get(pod).await.expect("get pod");
        let status = p.status.get_or_insert_with(Default::default);
        status.conditions =
            Some(vec![from_json(json!({"type": "Ready", "status": if ready { "True" } else { "False" }}))]);
        api.replace_status(pod, &PostParams::default(), &p).await.expect("status");
    }

    /// The EndpointSlice controller for one Service: one slice with every
    /// pod its selector picks, ready as the pod's Ready condition says.
    pub async fn sync_slice(&self, ns: &str, service: &str) {
        let svc = Api::<Service>::namespaced(self.client.clone(), ns).get(service).await.expect("service");
        let spec = svc.spec.unwrap_or_default();
        let selector = spec.selector.unwrap_or_default();
        let pods = Api::<Pod>::namespaced(self.client.clone(), ns).list(&ListParams::default()).await.expect("pods");
        let endpoints: Vec<Value> = pods
            .items
            .iter()
            .filter(|p| selector.iter().all(|(k, v)| p.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v)))
            .filter_map(|p| {
                let status = p.status.as_ref()?;
                let ready = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
                Some(json!({
                    "addresses": [status.pod_ip.clone()?],
                    "conditions": {"ready": ready, "serving": ready, "terminating": false},
                    "nodeName": p.spec.as_ref().and_then(|s| s.node_name.clone()),
                    "zone": "zone-a",
                    "targetRef": {"kind": "Pod", "name": p.metadata.name, "namespace": ns}
                }))
            })
            .collect();
        let ports: Vec<Value> = spec
            .ports
            .unwrap_or_default()
            .iter()
            .map(|p| {
                let target = match &p.target_port {
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(t)) => *t,
                    _ => p.port,
                };
                json!({"name": p.name.clone().unwrap_or_default(), "port": target, "protocol": "TCP"})
            })
            .collect();
        let slice: EndpointSlice = from_json(json!({
            "metadata": {"name": format!("{service}-abcde"), "namespace": ns,
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "endpoints": endpoints, "ports": ports
        }));
        let api = Api::<EndpointSlice>::namespaced(self.client.clone(), ns);
        let name = format!("{service}-abcde");
        if api.get_opt(&name).await.expect("get slice").is_some() {
            api.replace(&name, &PostParams::default(), &slice).await.expect("replace slice");
        } else {
            api.create(&PostParams::default(), &slice).await.expect("create slice");
        }
    }

    /// The shop from its fixture manifest: Services, one pod per Deployment
    /// (subnets 10.1.<n>), and their EndpointSlices.
    pub async fn bookinfo(&self, ns: &str) -> Vec<Value> {
        let docs = yaml_documents("bookinfo/kubernetes.yaml");
        let deployments: Vec<Value> = docs.iter().filter(|d| d["kind"] == "Deployment").cloned().collect();
        for (i, d) in deployments.iter().enumerate() {
            self.scale(ns, d, 1, &format!("10.1.{}", i + 1)).await;
        }
        for svc in docs.iter().filter(|d| d["kind"] == "Service") {
            self.apply_service(ns, svc.clone()).await;
            self.sync_slice(ns, svc["metadata"]["name"].as_str().expect("name")).await;
        }
        deployments
    }

    /// The `status` of a networking.istio.io/v1 object.
    pub async fn istio_status(&self, plural: &str, ns: &str, name: &str) -> Value {
        let gvk = kube::api::GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService");
        let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
        let api = Api::<DynamicObject>::namespaced_with(self.client.clone(), ns, &ar);
        api.get(name).await.expect("get").data["status"].clone()
    }

    /// An Istio object through the API, at `version` of its group.
    pub async fn apply_istio(&self, ns: &str, object: Value, version: &str) -> Result<(), kube::Error> {
        let kind = object["kind"].as_str().expect("kind").to_string();
        let group = object["apiVersion"].as_str().and_then(|v| v.split_once('/')).expect("group").0.to_string();
        let plural =
            mesh_core::config::Kind::from_type(&format!("{group}/v1beta1"), &kind).expect("Istio kind").plural();
        let gvk = kube::api::GroupVersionKind::gvk(&group, version, &kind);
        let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
        let mut object = object;
        object["apiVersion"] = json!(format!("{group}/{version}"));
        let obj: DynamicObject = from_json(object);
        let name = obj.metadata.name.clone().expect("name");
        let api = Api::<DynamicObject>::namespaced_with(self.client.clone(), ns, &ar);
        if api.get_opt(&name).await?.is_some() {
            api.replace(&name, &PostParams::default(), &obj).await?;
        } else {
            api.create(&PostParams::default(), &obj).await?;
        }
        Ok(())
    }
}
