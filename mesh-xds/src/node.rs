//! Who is asking: an xDS `Node` read as Istio's agent and gRPC's bootstrap
//! fill it in, turned into the identity translation needs.
//!
//! Istio's node id is `TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.DOMAIN`
//! (`sidecar~10.1.1.7~reviews-v2-5d8f.default~default.svc.cluster.local`,
//! `router~...` for gateways); metadata may add `NAMESPACE`, `LABELS`,
//! `NAME`, `INSTANCE_IPS` and `GENERATOR` (`grpc` for proxyless gRPC).

use envoy_types::pb::envoy::config::core::v3::{Locality as EnvoyLocality, Node};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use mesh_core::model::{Labels, Locality};
use mesh_core::translate::{ProxyIdentity, ProxyKind};

use crate::envoy::Flavor;

/// The user agent mesh-proxy's xDS client sends.
const MESH_PROXY: &str = "mesh-proxy";

/// A node as the control plane serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node id as sent, for debug pages and logs.
    pub id: String,
    pub identity: ProxyIdentity,
    pub flavor: Flavor,
    /// It can do Istio mTLS: its stream proved an identity and is sent
    /// its certificate over SDS, or it is mesh-proxy, which brings its
    /// own (from the CA's CSR API or files).
    pub has_certificate: bool,
}

impl NodeInfo {
    /// Nodes with equal keys get identical config, so they share one
    /// translation and one snapshot.
    pub fn key(&self) -> String {
        let p = &self.identity;
        let labels: Vec<String> = p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let secrets = if self.has_certificate { "/mtls" } else { "" };
        let locality = if p.locality.region.is_empty() { String::new() } else { format!("@{}", p.locality) };
        format!(
            "{:?}{secrets}/{:?}/{}/{}/{}{locality}",
            self.flavor,
            p.kind,
            p.namespace,
            p.ip.as_deref().unwrap_or(""),
            labels.join(",")
        )
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NodeError {
    #[error("the first request of a stream must carry a node")]
    Missing,
    #[error("node id {0:?}: expected TYPE~IP~POD.NAMESPACE~DOMAIN (TYPE sidecar or router), or metadata NAMESPACE")]
    BadId(String),
}

pub fn parse(node: Option<&Node>) -> Result<NodeInfo, NodeError> {
    let node = node.ok_or(NodeError::Missing)?;
    let meta = node.metadata.as_ref();
    let parts: Vec<&str> = node.id.split('~').collect();
    let (kind, ip, pod) = match parts.as_slice() {
        [kind, ip, pod, _domain] => {
            let kind = match *kind {
                "sidecar" => ProxyKind::Sidecar,
                "router" => ProxyKind::Gateway,
                _ => return Err(NodeError::BadId(node.id.clone())),
            };
            (kind, (!ip.is_empty()).then(|| ip.to_string()), Some(*pod))
        }
        _ => (ProxyKind::Sidecar, None, None),
    };
    let namespace = string(meta, "NAMESPACE")
        .or_else(|| pod.and_then(|p| p.split_once('.')).map(|(_, ns)| ns.to_string()))
        .ok_or_else(|| NodeError::BadId(node.id.clone()))?;
    let name = string(meta, "NAME")
        .or_else(|| pod.map(|p| p.split('.').next().unwrap_or(p).to_string()))
        .unwrap_or_else(|| node.id.clone());
    let ip = ip.or_else(|| string(meta, "INSTANCE_IPS").and_then(|ips| ips.split(',').next().map(str::to_string)));
    let grpc = string(meta, "GENERATOR").as_deref() == Some("grpc")
        || node.user_agent_name.to_ascii_lowercase().starts_with("grpc");
    Ok(NodeInfo {
        id: node.id.clone(),
        identity: ProxyIdentity { kind, name, namespace, labels: labels(meta), ip, locality: locality(node) },
        flavor: if grpc { Flavor::ProxylessGrpc } else { Flavor::Envoy },
        has_certificate: node.user_agent_name == MESH_PROXY,
    })
}

/// The node a proxy with this identity presents, in Istio's format (so
/// any Istio-aware control plane can read it).
pub fn node_for(identity: &ProxyIdentity) -> Node {
    let kind = match identity.kind {
        ProxyKind::Sidecar => "sidecar",
        ProxyKind::Gateway => "router",
    };
    let ns = &identity.namespace;
    let text = |s: &str| Value { kind: Some(Kind::StringValue(s.to_string())) };
    let labels = Struct { fields: identity.labels.iter().map(|(k, v)| (k.clone(), text(v))).collect() };
    let mut fields = std::collections::HashMap::from([
        ("NAMESPACE".to_string(), text(ns)),
        ("NAME".to_string(), text(&identity.name)),
        ("LABELS".to_string(), Value { kind: Some(Kind::StructValue(labels)) }),
    ]);
    if let Some(ip) = &identity.ip {
        fields.insert("INSTANCE_IPS".to_string(), text(ip));
    }
    let l = &identity.locality;
    let locality = (!l.region.is_empty()).then(|| EnvoyLocality {
        region: l.region.clone(),
        zone: l.zone.clone(),
        sub_zone: l.subzone.clone(),
    });
    Node {
        id: format!("{kind}~{}~{}.{ns}~{ns}.svc.cluster.local", identity.ip.as_deref().unwrap_or(""), identity.name),
        metadata: Some(Struct { fields }),
        locality,
        user_agent_name: MESH_PROXY.into(),
        ..Default::default()
    }
}

/// The node's locality, or Istio's `topology.kubernetes.io/region` and
/// `zone` labels (and its `topology.istio.io/subzone`) when it sends none.
fn locality(node: &Node) -> Locality {
    if let Some(l) = node.locality.as_ref().filter(|l| !l.region.is_empty()) {
        return Locality { region: l.region.clone(), zone: l.zone.clone(), subzone: l.sub_zone.clone() };
    }
    let labels = labels(node.metadata.as_ref());
    let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
    Locality {
        region: label("topology.kubernetes.io/region"),
        zone: label("topology.kubernetes.io/zone"),
        subzone: label("topology.istio.io/subzone"),
    }
}

fn field<'a>(meta: Option<&'a Struct>, key: &str) -> Option<&'a Kind> {
    meta?.fields.get(key)?.kind.as_ref()
}

fn string(meta: Option<&Struct>, key: &str) -> Option<String> {
    match field(meta, key) {
        Some(Kind::StringValue(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

fn labels(meta: Option<&Struct>) -> Labels {
    let Some(Kind::StructValue(s)) = field(meta, "LABELS") else { return Labels::new() };
    s.fields
        .iter()
        .filter_map(|(k, v): (&String, &Value)| match &v.kind {
            Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn text(s: &str) -> Value {
        Value { kind: Some(Kind::StringValue(s.into())) }
    }

    fn node(id: &str, meta: Vec<(&str, Value)>) -> Node {
        Node {
            id: id.into(),
            metadata: Some(Struct {
                fields: meta.into_iter().map(|(k, v)| (k.to_string(), v)).collect::<HashMap<_, _>>(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn istio_sidecar_id_and_labels() {
        let labels = Value {
            kind: Some(Kind::StructValue(Struct {
                fields: HashMap::from([("app".into(), text("reviews")), ("version".into(), text("v2"))]),
            })),
        };
        let n = parse(Some(&node(
            "sidecar~10.1.1.7~reviews-v2-5d8f.default~default.svc.cluster.local",
            vec![("LABELS", labels)],
        )))
        .unwrap();
        assert_eq!(n.identity.kind, ProxyKind::Sidecar);
        assert_eq!(n.identity.namespace, "default");
        assert_eq!(n.identity.name, "reviews-v2-5d8f");
        assert_eq!(n.identity.ip.as_deref(), Some("10.1.1.7"));
        assert_eq!(n.identity.labels["version"], "v2");
        assert_eq!(n.flavor, Flavor::Envoy);
    }

    #[test]
    fn router_is_a_gateway_and_metadata_wins() {
        let n = parse(Some(&node(
            "router~~gw.istio-system~istio-system.svc.cluster.local",
            vec![("NAMESPACE", text("edge"))],
        )))
        .unwrap();
        assert_eq!(n.identity.kind, ProxyKind::Gateway);
        assert_eq!(n.identity.namespace, "edge");
        assert_eq!(n.identity.ip, None);
    }

    #[test]
    fn grpc_by_generator_or_user_agent() {
        let n =
            parse(Some(&node("sidecar~~client.default~default.svc.cluster.local", vec![("GENERATOR", text("grpc"))])))
                .unwrap();
        assert_eq!(n.flavor, Flavor::ProxylessGrpc);
        let mut plain = node("any-id", vec![("NAMESPACE", text("default"))]);
        plain.user_agent_name = "gRPC Python".into();
        let n = parse(Some(&plain)).unwrap();
        assert_eq!((n.flavor, n.identity.kind), (Flavor::ProxylessGrpc, ProxyKind::Sidecar));
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(parse(None), Err(NodeError::Missing));
        assert!(matches!(parse(Some(&node("gateway~1~a.b~c", vec![]))), Err(NodeError::BadId(_))));
        assert!(matches!(parse(Some(&node("no-namespace", vec![]))), Err(NodeError::BadId(_))));
    }

    #[test]
    fn node_for_is_read_back_as_the_same_identity() {
        let mut identity =
            ProxyIdentity::sidecar("reviews-v2", "shop", [("version".to_string(), "v2".to_string())].into());
        identity.ip = Some("10.0.0.9".into());
        let n = parse(Some(&node_for(&identity))).unwrap();
        assert_eq!((n.identity, n.flavor), (identity, Flavor::Envoy));
        let gw = ProxyIdentity::gateway("ingress", "istio-system", Default::default());
        assert_eq!(parse(Some(&node_for(&gw))).unwrap().identity, gw);
    }

    #[test]
    fn equal_identities_share_a_key() {
        let a = parse(Some(&node("sidecar~10.0.0.1~a-1.default~default.svc.cluster.local", vec![]))).unwrap();
        let mut b = a.clone();
        b.id = "other".into();
        b.identity.name = "a-2".into();
        assert_eq!(a.key(), b.key());
        b.identity.ip = Some("10.0.0.2".into());
        assert_ne!(a.key(), b.key());
    }
}
