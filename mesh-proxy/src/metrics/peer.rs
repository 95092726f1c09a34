//! Istio's HTTP metadata exchange: a client proxy tells the server proxy
//! who it is in two request headers, so the server's metrics can name the
//! source workload. `x-envoy-peer-metadata` is a protobuf `Struct` (base64)
//! with Istio's keys; `x-envoy-peer-metadata-id` the sender's node ID.
//! Both are taken off every request before it goes on: an app never sees
//! them, and a client cannot pass its own through a gateway.

use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue};
use mesh_core::workload::WorkloadMeta;
use prost::Message;
use prost_types::{value::Kind, Struct, Value};

pub static PEER_METADATA: HeaderName = HeaderName::from_static("x-envoy-peer-metadata");
pub static PEER_METADATA_ID: HeaderName = HeaderName::from_static("x-envoy-peer-metadata-id");

/// A header that large is no peer's metadata.
const MAX_HEADER: usize = 8 * 1024;

/// What this proxy sends about itself.
#[derive(Clone, Debug)]
pub struct OwnMetadata {
    pub metadata: HeaderValue,
    pub id: HeaderValue,
}

impl OwnMetadata {
    pub fn new(own: &WorkloadMeta) -> OwnMetadata {
        let text = |s: &str| Value { kind: Some(Kind::StringValue(s.to_string())) };
        let mut labels = Struct::default();
        for (key, value) in [
            ("service.istio.io/canonical-name", &own.canonical_service),
            ("service.istio.io/canonical-revision", &own.canonical_revision),
            ("app", &own.app),
            ("version", &own.version),
        ] {
            if !value.is_empty() {
                labels.fields.insert(key.into(), text(value));
            }
        }
        let mut fields = Struct::default();
        for (key, value) in [("NAMESPACE", &own.namespace), ("WORKLOAD_NAME", &own.name), ("CLUSTER_ID", &own.cluster)]
        {
            fields.fields.insert(key.into(), text(value));
        }
        fields.fields.insert("LABELS".into(), Value { kind: Some(Kind::StructValue(labels)) });
        let encoded = base64::engine::general_purpose::STANDARD.encode(fields.encode_to_vec());
        let id = format!("sidecar~0.0.0.0~{}.{}~{}.svc.cluster.local", own.name, own.namespace, own.namespace);
        OwnMetadata {
            // Base64 and these names are always valid header values.
            metadata: HeaderValue::from_str(&encoded).unwrap_or_else(|_| HeaderValue::from_static("")),
            id: HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("unknown")),
        }
    }

    /// Tell the upstream who is calling.
    pub fn insert(&self, headers: &mut HeaderMap) {
        headers.insert(PEER_METADATA.clone(), self.metadata.clone());
        headers.insert(PEER_METADATA_ID.clone(), self.id.clone());
    }
}

/// Take the exchange headers off a request; the metadata's value when it
/// came (the server side reads it).
pub fn take(headers: &mut HeaderMap) -> Option<HeaderValue> {
    headers.remove(&PEER_METADATA_ID);
    headers.remove(&PEER_METADATA)
}

/// The peer a metadata header names; `None` for anything that does not
/// decode as Istio's `Struct`.
pub fn decode(header: &HeaderValue) -> Option<WorkloadMeta> {
    if header.len() > MAX_HEADER {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD.decode(header.as_bytes()).ok()?;
    let top = Struct::decode(bytes.as_slice()).ok()?;
    let string = |s: &Struct, key: &str| match s.fields.get(key).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(v)) => v.clone(),
        _ => String::new(),
    };
    let labels = match top.fields.get("LABELS").and_then(|v| v.kind.as_ref()) {
        Some(Kind::StructValue(labels)) => labels.clone(),
        _ => Struct::default(),
    };
    Some(WorkloadMeta {
        name: string(&top, "WORKLOAD_NAME"),
        namespace: string(&top, "NAMESPACE"),
        canonical_service: string(&labels, "service.istio.io/canonical-name"),
        canonical_revision: string(&labels, "service.istio.io/canonical-revision"),
        app: string(&labels, "app"),
        version: string(&labels, "version"),
        cluster: string(&top, "CLUSTER_ID"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_metadata_decodes_to_the_same_workload_and_garbage_to_none() {
        let labels = [("app".to_string(), "reviews".to_string()), ("version".to_string(), "v2".to_string())].into();
        let own = WorkloadMeta::from_labels("reviews-v2", "default", &labels, "");
        let sent = OwnMetadata::new(&own);
        assert_eq!(decode(&sent.metadata), Some(own));
        let mut headers = HeaderMap::new();
        sent.insert(&mut headers);
        assert_eq!(take(&mut headers), Some(sent.metadata.clone()));
        assert!(headers.is_empty(), "both headers are taken off");
        for junk in ["", "not base64!", "AAAA", &"QUFB".repeat(3000)] {
            let value = HeaderValue::from_str(junk).unwrap();
            assert!(decode(&value).is_none_or(|w| w.name.is_empty()), "{junk:.20}");
        }
    }
}
