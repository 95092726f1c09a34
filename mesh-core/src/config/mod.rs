//! Istio configuration: the resource kinds users write, decoded from YAML or
//! JSON with errors that name the field, and validated as Istio validates.

pub mod duration;
mod error;
pub mod networking;
pub mod security;
pub mod telemetry;
mod validate;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use error::{ConfigError, ValidationError};
pub use validate::validate;

use networking::{DestinationRule, EnvoyFilter, Gateway, ServiceEntry, Sidecar, VirtualService, WorkloadEntry};
use security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};
use telemetry::Telemetry;

/// The Istio resource kinds the mesh understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    VirtualService,
    DestinationRule,
    Gateway,
    ServiceEntry,
    WorkloadEntry,
    Sidecar,
    AuthorizationPolicy,
    PeerAuthentication,
    RequestAuthentication,
    EnvoyFilter,
    Telemetry,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::Gateway,
        Kind::ServiceEntry,
        Kind::WorkloadEntry,
        Kind::Sidecar,
        Kind::AuthorizationPolicy,
        Kind::PeerAuthentication,
        Kind::RequestAuthentication,
        Kind::EnvoyFilter,
        Kind::Telemetry,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::Gateway => "Gateway",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::Sidecar => "Sidecar",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::RequestAuthentication => "RequestAuthentication",
            Kind::EnvoyFilter => "EnvoyFilter",
            Kind::Telemetry => "Telemetry",
        }
    }

    /// The resource name of the kind's CRD (`virtualservices`), as in
    /// API paths and RBAC rules.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::VirtualService => "virtualservices",
            Kind::DestinationRule => "destinationrules",
            Kind::Gateway => "gateways",
            Kind::ServiceEntry => "serviceentries",
            Kind::WorkloadEntry => "workloadentries",
            Kind::Sidecar => "sidecars",
            Kind::AuthorizationPolicy => "authorizationpolicies",
            Kind::PeerAuthentication => "peerauthentications",
            Kind::RequestAuthentication => "requestauthentications",
            Kind::EnvoyFilter => "envoyfilters",
            Kind::Telemetry => "telemetries",
        }
    }

    pub fn group(self) -> &'static str {
        match self {
            Kind::AuthorizationPolicy | Kind::PeerAuthentication | Kind::RequestAuthentication => "security.istio.io",
            Kind::Telemetry => "telemetry.istio.io",
            _ => "networking.istio.io",
        }
    }

    /// The kind named by an object's `apiVersion` and `kind`, for every API
    /// version Istio serves (`v1`, `v1beta1`, `v1alpha3`).
    pub fn from_type(api_version: &str, kind: &str) -> Option<Kind> {
        let (group, version) = api_version.split_once('/')?;
        let kind = Kind::ALL.into_iter().find(|k| k.name() == kind)?;
        let served = match group {
            "networking.istio.io" => ["v1", "v1beta1", "v1alpha3"].contains(&version),
            "security.istio.io" => ["v1", "v1beta1"].contains(&version),
            "telemetry.istio.io" => ["v1", "v1alpha1"].contains(&version),
            _ => false,
        };
        (served && kind.group() == group).then_some(kind)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The part of Kubernetes' `metadata` the mesh uses.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ObjectMeta {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// RFC 3339, as Kubernetes writes it: where Istio lets the oldest of
    /// several policies win.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
}

/// Which resource: kind, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResourceKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// The `spec` of a resource, typed by kind.
// Resources sit behind an `Arc` once decoded, so the size spread between
// kinds costs nothing worth an extra indirection per field access.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Spec {
    VirtualService(VirtualService),
    DestinationRule(DestinationRule),
    Gateway(Gateway),
    ServiceEntry(ServiceEntry),
    WorkloadEntry(WorkloadEntry),
    Sidecar(Sidecar),
    AuthorizationPolicy(AuthorizationPolicy),
    PeerAuthentication(PeerAuthentication),
    RequestAuthentication(RequestAuthentication),
    EnvoyFilter(EnvoyFilter),
    Telemetry(Telemetry),
}

impl Spec {
    pub fn kind(&self) -> Kind {
        match self {
            Spec::VirtualService(_) => Kind::VirtualService,
            Spec::DestinationRule(_) => Kind::DestinationRule,
            Spec::Gateway(_) => Kind::Gateway,
            Spec::ServiceEntry(_) => Kind::ServiceEntry,
            Spec::WorkloadEntry(_) => Kind::WorkloadEntry,
            Spec::Sidecar(_) => Kind::Sidecar,
            Spec::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Spec::PeerAuthentication(_) => Kind::PeerAuthentication,
            Spec::RequestAuthentication(_) => Kind::RequestAuthentication,
            Spec::EnvoyFilter(_) => Kind::EnvoyFilter,
            Spec::Telemetry(_) => Kind::Telemetry,
        }
    }
}

/// One Istio resource: metadata plus typed spec.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Resource {
    pub meta: ObjectMeta,
    pub spec: Spec,
}

impl Resource {
    pub fn kind(&self) -> Kind {
        self.spec.kind()
    }

    pub fn key(&self) -> ResourceKey {
        ResourceKey { kind: self.kind(), namespace: self.meta.namespace.clone(), name: self.meta.name.clone() }
    }

    /// Decode and validate one YAML document holding one Istio resource.
    pub fn from_yaml(text: &str) -> Result<Resource, ConfigError> {
        let value: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        match decode(value, "default")? {
            Decoded::Istio { resource, .. } => Ok(resource),
            Decoded::Other { api_version, kind, .. } => Err(ConfigError::NotIstio { api_version, kind }),
        }
    }
}

/// What one document turned out to be.
#[allow(clippy::large_enum_variant)] // short-lived, moved once into a store
#[derive(Debug)]
pub enum Decoded {
    /// An Istio resource that decoded and validated. `unknown_fields` lists
    /// the paths of fields the schema does not have (kept out, and worth a
    /// warning: usually a typo).
    Istio { resource: Resource, unknown_fields: Vec<String> },
    /// Any other object (a Kubernetes Service, an EndpointSlice, a kind this
    /// crate does not know): left to the caller.
    Other { api_version: String, kind: String, value: serde_json::Value },
}

/// Decode one document (already parsed from YAML or JSON) and validate it.
/// `default_namespace` fills in a missing `metadata.namespace`.
pub fn decode(value: serde_json::Value, default_namespace: &str) -> Result<Decoded, ConfigError> {
    let serde_json::Value::Object(mut object) = value else {
        return Err(ConfigError::NotAnObject);
    };
    let type_field = |object: &serde_json::Map<String, serde_json::Value>, field: &'static str| match object.get(field)
    {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => Err(ConfigError::MissingType { field, reason: "must be a non-empty string" }),
        None => Err(ConfigError::MissingType { field, reason: "is required" }),
    };
    let api_version = type_field(&object, "apiVersion")?;
    let kind_name = type_field(&object, "kind")?;
    let Some(kind) = Kind::from_type(&api_version, &kind_name) else {
        return Ok(Decoded::Other { api_version, kind: kind_name, value: serde_json::Value::Object(object) });
    };

    let meta_value = object.remove("metadata").unwrap_or_default();
    let mut meta: ObjectMeta = serde_json::from_value(meta_value).map_err(|e| ConfigError::Schema {
        kind,
        name: String::new(),
        path: "metadata".into(),
        reason: e.to_string(),
    })?;
    if meta.name.is_empty() {
        return Err(ConfigError::Schema {
            kind,
            name: String::new(),
            path: "metadata.name".into(),
            reason: "is required".into(),
        });
    }
    if meta.namespace.is_empty() {
        meta.namespace = default_namespace.to_string();
    }
    let spec_value = object.remove("spec").unwrap_or(serde_json::Value::Object(Default::default()));
    let mut unknown_fields = Vec::new();
    let spec = decode_spec(kind, spec_value, &mut unknown_fields).map_err(|(path, reason)| ConfigError::Schema {
        kind,
        name: format!("{}/{}", meta.namespace, meta.name),
        path,
        reason,
    })?;
    let resource = Resource { meta, spec };
    let problems = validate(&resource);
    if !problems.is_empty() {
        return Err(ConfigError::Invalid(problems));
    }
    Ok(Decoded::Istio { resource, unknown_fields })
}

fn decode_spec(kind: Kind, value: serde_json::Value, unknown: &mut Vec<String>) -> Result<Spec, (String, String)> {
    fn typed<T: serde::de::DeserializeOwned>(
        value: serde_json::Value,
        unknown: &mut Vec<String>,
    ) -> Result<T, (String, String)> {
        let mut note_unknown = |path: serde_ignored::Path<'_>| unknown.push(format!("spec{}", field_path(&path)));
        let ignored = serde_ignored::Deserializer::new(value, &mut note_unknown);
        serde_path_to_error::deserialize(ignored).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { "spec".to_string() } else { format!("spec.{path}") };
            (path, e.into_inner().to_string())
        })
    }
    Ok(match kind {
        Kind::VirtualService => Spec::VirtualService(typed(value, unknown)?),
        Kind::DestinationRule => Spec::DestinationRule(typed(value, unknown)?),
        Kind::Gateway => Spec::Gateway(typed(value, unknown)?),
        Kind::ServiceEntry => Spec::ServiceEntry(typed(value, unknown)?),
        Kind::WorkloadEntry => Spec::WorkloadEntry(typed(value, unknown)?),
        Kind::Sidecar => Spec::Sidecar(typed(value, unknown)?),
        Kind::AuthorizationPolicy => Spec::AuthorizationPolicy(typed(value, unknown)?),
        Kind::PeerAuthentication => Spec::PeerAuthentication(typed(value, unknown)?),
        Kind::RequestAuthentication => Spec::RequestAuthentication(typed(value, unknown)?),
        Kind::EnvoyFilter => Spec::EnvoyFilter(typed(value, unknown)?),
        Kind::Telemetry => Spec::Telemetry(typed(value, unknown)?),
    })
}

/// `.http[0].route[0].weight`: the same notation as schema and validation
/// errors use.
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => format!("{}.{key}", field_path(parent)),
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

/// Split a YAML (or JSON) text into its documents, each parsed to a value.
/// Empty documents are dropped, as `kubectl apply` does.
pub fn parse_documents(text: &str) -> Result<Vec<serde_json::Value>, ConfigError> {
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}
