//! Resources as the cache holds them: named, encoded once, and hashed so
//! that versions follow content.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// Make before break: a cluster exists (and has endpoints) before a route
/// can point at it, and a listener before its routes.
pub const PUSH_ORDER: [&str; 4] = [CLUSTER, ENDPOINT, LISTENER, ROUTE];

/// `LDS` and `CDS` subscribe to everything; `RDS` and `EDS` name what
/// they want.
pub fn is_wildcard_type(type_url: &str) -> bool {
    type_url == LISTENER || type_url == CLUSTER
}

/// A short name for logs and debug pages (`CDS`, `EDS`, ...).
pub fn short_name(type_url: &str) -> &str {
    match type_url {
        LISTENER => "LDS",
        ROUTE => "RDS",
        CLUSTER => "CDS",
        ENDPOINT => "EDS",
        SECRET => "SDS",
        other => other.rsplit('.').next().unwrap_or(other),
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub name: String,
    /// A digest of the encoded resource.
    pub version: String,
    pub body: Any,
    /// The resource as a `resources` field of a `DiscoveryResponse`, encoded
    /// once: every state-of-the-world push of it, to any number of
    /// streams, shares these bytes.
    pub wire: bytes::Bytes,
}

impl Resource {
    pub fn new<T: Message + Name>(name: String, msg: &T) -> Resource {
        Resource::from_any(name, Any { type_url: T::type_url(), value: msg.encode_to_vec() })
    }

    pub fn from_any(name: String, body: Any) -> Resource {
        let version = format!("{:016x}", xxhash_rust::xxh64::xxh64(&body.value, 0));
        let mut wire = Vec::with_capacity(body.encoded_len() + 8);
        prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut wire);
        prost::encoding::encode_varint(body.encoded_len() as u64, &mut wire);
        body.encode_raw(&mut wire);
        Resource { name, version, body, wire: wire.into() }
    }
}

/// The resources of one type, by name.
pub type TypeMap = BTreeMap<String, Arc<Resource>>;

/// Resources of every type, by type URL then name. Each type's map is
/// shared: a snapshot that changes only endpoints shares the other maps
/// with its predecessor, and streams see in O(1) that they did not change.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResourceSet {
    pub types: BTreeMap<String, Arc<TypeMap>>,
}

impl ResourceSet {
    pub fn insert(&mut self, type_url: &str, resource: Resource) {
        self.insert_shared(type_url, Arc::new(resource));
    }

    pub fn insert_shared(&mut self, type_url: &str, resource: Arc<Resource>) {
        Arc::make_mut(self.types.entry(type_url.to_string()).or_default()).insert(resource.name.clone(), resource);
    }

    pub fn of_type(&self, type_url: &str) -> Option<&Arc<TypeMap>> {
        self.types.get(type_url)
    }

    pub fn get(&self, type_url: &str, name: &str) -> Option<&Arc<Resource>> {
        self.types.get(type_url)?.get(name)
    }
}

/// The version after `changed` replaced resources of a set at `base`.
pub fn next_version(base: &str, changed: &[Arc<Resource>]) -> String {
    let mut h = xxhash_rust::xxh64::Xxh64::new(0);
    h.update(base.as_bytes());
    for r in changed {
        h.update(r.name.as_bytes());
        h.update(&[0]);
        h.update(r.version.as_bytes());
    }
    format!("{:016x}", h.digest())
}

/// The version of a set of resources: a digest of their names and
/// versions, so it changes exactly when one of them does.
pub fn version_of<'a>(resources: impl IntoIterator<Item = &'a Resource>) -> String {
    let mut h = xxhash_rust::xxh64::Xxh64::new(0);
    for r in resources {
        h.update(r.name.as_bytes());
        h.update(&[0]);
        h.update(r.version.as_bytes());
    }
    format!("{:016x}", h.digest())
}
