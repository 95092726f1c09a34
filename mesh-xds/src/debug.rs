//! Debug views as JSON, for a control plane's debug endpoints (Istio's
//! `/debug/syncz` and `/debug/config_dump?proxyID=`).

use mesh_core::model::Labels;
use serde_json::{json, Value};

use crate::generator::{build, Generator};
use crate::node::{self, NodeInfo};
use crate::resources::short_name;
use crate::status::SyncStatus;

/// Every connected node: what it was sent, ACKed and NACKed, per type.
pub fn syncz(status: &SyncStatus) -> Value {
    json!({ "totals": status.totals(), "nodes": status.nodes() })
}

/// The config a node is sent: the node connected with this id, or else
/// the node this id names (Istio's id format) with `labels`, built from the
/// current mesh. An id does not carry the workload's labels, which Gateway
/// and workload selectors match: a gateway not connected needs them given.
pub fn config_dump(
    generator: &Generator,
    status: &SyncStatus,
    proxy_id: &str,
    labels: &Labels,
) -> Result<Value, String> {
    let connected =
        status.nodes().into_iter().find(|n| n.node_id == proxy_id).and_then(|n| generator.node_for_key(&n.key));
    let node: NodeInfo = match connected {
        Some(n) => n,
        None => node::parse(Some(&envoy_types::pb::envoy::config::core::v3::Node {
            id: proxy_id.into(),
            ..Default::default()
        }))
        .map(|mut n| {
            n.identity.labels = labels.clone();
            n
        })
        .map_err(|e| format!("proxyID {proxy_id:?} is not connected and {e}"))?,
    };
    let mesh = generator.mesh().ok_or("no mesh yet: the sources have not synced")?;
    let (config, snapshot) = build(&mesh, &node, generator.options());
    let resources: serde_json::Map<String, Value> = snapshot
        .resources
        .types
        .iter()
        .map(|(t, items)| {
            let list: Vec<Value> = items.values().map(|r| json!({ "name": r.name, "version": r.version })).collect();
            (short_name(t).to_string(), Value::Array(list))
        })
        .collect();
    Ok(json!({
        "node_id": proxy_id,
        "key": node.key(),
        "flavor": format!("{:?}", node.flavor),
        "identity": node.identity,
        "config": config,
        "resources": resources,
    }))
}
