//! Istio's CRDs: which version of each kind the API server serves, and an
//! object of any served version read into a mesh-core resource.

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::Client;
use mesh_core::config::{self, Kind, Resource, ResourceKey};

/// The versions the mesh reads, most preferred first: a cluster that has
/// only older Istio CRDs installed is read at the newest version it has.
const VERSIONS: [&str; 4] = ["v1", "v1beta1", "v1alpha3", "v1alpha1"];

/// Where each Istio kind is served; kinds the server does not serve are
/// left out (their CRDs are not installed). Errors other than "not found"
/// are for the caller to retry.
pub async fn served(client: &Client) -> Result<Vec<(Kind, ApiResource)>, kube::Error> {
    let mut out = Vec::new();
    for group in ["networking.istio.io", "security.istio.io", "telemetry.istio.io"] {
        let api_group = match kube::discovery::oneshot::group(client, group).await {
            Ok(g) => g,
            Err(kube::Error::Discovery(_)) => {
                tracing::warn!(target: "adapter_k8s", group, "Istio API group not served; its kinds are left out");
                continue;
            }
            Err(e) => return Err(e),
        };
        for kind in Kind::ALL.into_iter().filter(|k| k.group() == group) {
            let found = VERSIONS.iter().find_map(|version| {
                api_group.versioned_resources(version).into_iter().find(|(r, _)| r.kind == kind.name()).map(|(r, _)| r)
            });
            match found {
                Some(resource) => out.push((kind, resource)),
                None => tracing::info!(target: "adapter_k8s", kind = kind.name(), "kind not served; left out"),
            }
        }
    }
    Ok(out)
}

/// Why an object was skipped: names the object and the field.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Invalid {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub error: String,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}: {}", self.kind, self.namespace, self.name, self.error)
    }
}

/// Decode and validate one object, as the files adapter does a document.
pub fn resource_of(kind: Kind, api: &ApiResource, mut object: DynamicObject) -> Result<Resource, Invalid> {
    // What the mesh never reads, dropped before the copy into JSON.
    object.metadata.managed_fields = None;
    let namespace = object.metadata.namespace.clone().unwrap_or_default();
    let name = object.metadata.name.clone().unwrap_or_default();
    let invalid = |error: String| Invalid { kind, namespace: namespace.clone(), name: name.clone(), error };
    let mut value = serde_json::to_value(&object).map_err(|e| invalid(e.to_string()))?;
    // Watch events carry their type, but a list's items need not.
    value["apiVersion"] = serde_json::Value::String(api.api_version.clone());
    value["kind"] = serde_json::Value::String(api.kind.clone());
    match config::decode(value, &namespace) {
        Ok(config::Decoded::Istio { resource, unknown_fields }) => {
            if !unknown_fields.is_empty() {
                tracing::info!(target: "adapter_k8s", kind = %kind, namespace, name, ?unknown_fields, "unknown fields ignored");
            }
            Ok(resource)
        }
        Ok(config::Decoded::Other { .. }) => Err(invalid(format!("{} is not an Istio type", api.api_version))),
        Err(e) => Err(invalid(e.to_string())),
    }
}

/// Write what is wrong with an object to its status, or clear it: a
/// `Reconciled` condition and Istio's IST0106 `SchemaValidationError`, as
/// istiod reports invalid config it was given anyway.
pub async fn write_status(
    client: &Client,
    api: &ApiResource,
    key: &ResourceKey,
    invalid: Option<&Invalid>,
) -> Result<(), kube::Error> {
    let status = match invalid {
        Some(invalid) => serde_json::json!({
            "conditions": [{"type": "Reconciled", "status": "False", "reason": "InvalidConfig", "message": invalid.error}],
            "validationMessages": [{"level": "ERROR", "type": {"code": "IST0106", "name": "SchemaValidationError"},
                                    "documentationUrl": "https://istio.io/latest/docs/reference/config/analysis/ist0106/"}]
        }),
        None => serde_json::json!({
            "conditions": [{"type": "Reconciled", "status": "True"}],
            "validationMessages": null
        }),
    };
    let objects = Api::<DynamicObject>::namespaced_with(client.clone(), &key.namespace, api);
    let patch = serde_json::json!({"status": status});
    objects.patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}
