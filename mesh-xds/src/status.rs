//! What every connected node has been sent, ACKed and NACKed (Istio's
//! `syncz`), kept up to date by the streams and read by debug endpoints.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// One type on one stream.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TypeSync {
    pub sent_version: Option<String>,
    pub sent_nonce: Option<String>,
    pub acked_version: Option<String>,
    pub last_nack: Option<Nack>,
    pub pushes: u64,
    pub nacks: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Nack {
    /// The version the node kept (the last it accepted).
    pub kept_version: String,
    pub nonce: String,
    pub message: String,
    pub unix_time: u64,
}

impl Nack {
    pub fn new(kept_version: &str, nonce: &str, message: &str) -> Nack {
        Nack {
            kept_version: kept_version.to_string(),
            nonce: nonce.to_string(),
            message: message.to_string(),
            unix_time: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        }
    }
}

/// One connected stream.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeSync {
    pub node_id: String,
    /// The snapshot key the node shares with identical nodes.
    pub key: String,
    pub flavor: String,
    /// `sotw` or `delta`.
    pub protocol: &'static str,
    pub connected_unix_time: u64,
    /// By short type name (`CDS`, `EDS`, `LDS`, `RDS`).
    pub types: BTreeMap<String, TypeSync>,
    /// What of its config the node's resources cannot express.
    pub unsupported: Vec<String>,
}

/// All connected streams, with totals that survive disconnects.
#[derive(Default)]
pub struct SyncStatus {
    next_id: AtomicU64,
    nodes: Mutex<BTreeMap<u64, NodeSync>>,
    pushes: AtomicU64,
    nacks: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub connected: u64,
    pub pushes: u64,
    pub nacks: u64,
}

impl SyncStatus {
    pub fn connect(&self, node: NodeSync) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, node);
        id
    }

    pub fn disconnect(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Record a type's state after a request or a push.
    pub fn update(&self, id: u64, short_type: &str, sync: &TypeSync) {
        if let Some(node) = self.lock().get_mut(&id) {
            let old = node.types.insert(short_type.to_string(), sync.clone()).unwrap_or_default();
            self.pushes.fetch_add(sync.pushes.saturating_sub(old.pushes), Ordering::Relaxed);
            self.nacks.fetch_add(sync.nacks.saturating_sub(old.nacks), Ordering::Relaxed);
        }
    }

    /// Record what the node's current config leaves out.
    pub fn set_unsupported(&self, id: u64, unsupported: &[String]) {
        if let Some(node) = self.lock().get_mut(&id) {
            if node.unsupported != unsupported {
                node.unsupported = unsupported.to_vec();
            }
        }
    }

    pub fn nodes(&self) -> Vec<NodeSync> {
        self.lock().values().cloned().collect()
    }

    pub fn totals(&self) -> Totals {
        Totals {
            connected: self.lock().len() as u64,
            pushes: self.pushes.load(Ordering::Relaxed),
            nacks: self.nacks.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, NodeSync>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }
}
