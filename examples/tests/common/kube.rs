//! The fake API server's side of tests: objects applied as `kubectl
//! apply` would, and a kubeconfig that points at it.

use std::path::Path;

use super::send;

/// Create or replace an object through the API, as `kubectl apply` would.
pub fn apply(api: &str, object: &serde_json::Value) {
    let kind = object["kind"].as_str().expect("kind");
    let ns = object["metadata"]["namespace"].as_str().unwrap_or("default");
    let name = object["metadata"]["name"].as_str().expect("name");
    let collection = match kind {
        "Service" => format!("/api/v1/namespaces/{ns}/services"),
        "Pod" => format!("/api/v1/namespaces/{ns}/pods"),
        "Secret" => format!("/api/v1/namespaces/{ns}/secrets"),
        "EndpointSlice" => format!("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"),
        _ => {
            let api_version = object["apiVersion"].as_str().expect("apiVersion");
            let istio = mesh_core::config::Kind::from_type(api_version, kind).expect("an Istio kind");
            format!("/apis/{api_version}/namespaces/{ns}/{}", istio.plural())
        }
    };
    let body = object.to_string();
    let created = send(api, "POST", &collection, &body);
    if created.status == 409 {
        let replaced = send(api, "PUT", &format!("{collection}/{name}"), &body);
        assert_eq!(replaced.status, 200, "replace {kind} {name}: {replaced:?}");
    } else {
        assert_eq!(created.status, 201, "create {kind} {name}: {created:?}");
    }
}

pub fn apply_yaml(api: &str, text: &str) {
    for doc in mesh_core::config::parse_documents(text).expect("yaml") {
        apply(api, &doc);
    }
}

/// A kubeconfig in `dir` for the fake API server at `api`: its path.
pub fn kubeconfig(dir: &Path, api: &str) -> String {
    let path = dir.join("kubeconfig");
    let text = format!("apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://{api}\"}}\nusers:\n- name: tester\n  user: {{}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: tester}}\ncurrent-context: fake\n");
    std::fs::write(&path, text).expect("kubeconfig written");
    path.to_string_lossy().into_owned()
}
