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

/// One named resource, held only as it goes on the wire: every push of it,
/// to any number of streams, shares these bytes, and nothing else keeps a
/// second copy of the message.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub name: String,
    /// A digest of the encoded message.
    pub version: String,
    /// The resource as a `resources` field of a `DiscoveryResponse`: the
    /// field's key and length, then an `Any` (type URL, then the message).
    pub wire: bytes::Bytes,
    /// Where the `Any` starts in `wire`, and where the message does.
    any_at: u8,
    value_at: u32,
}

impl Resource {
    pub fn new<T: Message + Name>(name: String, msg: &T) -> Resource {
        Resource::encode(name, &T::type_url(), msg.encoded_len(), |wire| msg.encode_raw(wire))
    }

    pub fn from_any(name: String, body: Any) -> Resource {
        Resource::from_encoded(name, &body.type_url, &body.value)
    }

    /// A message encoded elsewhere (piece by piece, say).
    pub fn from_encoded(name: String, type_url: &str, value: &[u8]) -> Resource {
        Resource::encode(name, type_url, value.len(), |wire| wire.extend_from_slice(value))
    }

    /// Encode straight into the wire form, in one allocation of its exact
    /// size.
    fn encode(name: String, type_url: &str, value_len: usize, value: impl FnOnce(&mut Vec<u8>)) -> Resource {
        use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
        let any_len = key_len(1)
            + encoded_len_varint(type_url.len() as u64)
            + type_url.len()
            + key_len(2)
            + encoded_len_varint(value_len as u64)
            + value_len;
        let mut wire = Vec::with_capacity(key_len(2) + encoded_len_varint(any_len as u64) + any_len);
        encode_key(2, WireType::LengthDelimited, &mut wire);
        encode_varint(any_len as u64, &mut wire);
        let any_at = wire.len() as u8;
        encode_key(1, WireType::LengthDelimited, &mut wire);
        encode_varint(type_url.len() as u64, &mut wire);
        wire.extend_from_slice(type_url.as_bytes());
        encode_key(2, WireType::LengthDelimited, &mut wire);
        encode_varint(value_len as u64, &mut wire);
        let value_at = wire.len() as u32;
        value(&mut wire);
        debug_assert_eq!(wire.len(), value_at as usize + value_len, "encoded_len disagrees with encode_raw");
        let version = format!("{:016x}", xxhash_rust::xxh64::xxh64(&wire[value_at as usize..], 0));
        Resource { name, version, wire: wire.into(), any_at, value_at }
    }

    /// The encoded message.
    pub fn value(&self) -> &[u8] {
        &self.wire[self.value_at as usize..]
    }

    /// The resource as an `Any` (a copy: for delta responses and tests).
    pub fn body(&self) -> Any {
        Any::decode(&self.wire[self.any_at as usize..]).expect("a resource decodes as `encode` wrote it")
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
