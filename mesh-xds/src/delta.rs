//! The incremental (delta) protocol of one ADS stream, as a state machine
//! without I/O.
//!
//! Per type the stream tracks what the client subscribed to and which
//! version of each resource it holds (from `initial_resource_versions` on
//! reconnect, then from what was sent). Only new or changed resources and
//! the names of removed ones are sent. A NACK is recorded; the rejected
//! versions are not resent until they change.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as PbResource,
};

use crate::cache::{Snapshot, Subscription};
use crate::resources::{is_wildcard_type, TypeMap, PUSH_ORDER};
use crate::sotw::Received;
use crate::status::{Nack, TypeSync};

struct TypeState {
    sub: Subscription,
    known: BTreeMap<String, String>,
    sync: TypeSync,
    /// The snapshot's map of this type when last diffed; the same `Arc`
    /// and no subscription change since means nothing to send.
    seen: Option<Arc<TypeMap>>,
    resubscribed: bool,
}

impl TypeState {
    fn apply_subscription(&mut self, subscribe: &[String], unsubscribe: &[String]) {
        if unsubscribe.iter().any(|n| n == "*") {
            self.sub = Subscription::Names(Default::default());
        }
        if subscribe.iter().any(|n| n == "*") {
            self.sub = Subscription::Wildcard;
        }
        if let Subscription::Names(names) = &mut self.sub {
            let names = Arc::make_mut(names);
            names.extend(subscribe.iter().filter(|n| *n != "*").cloned());
            for n in unsubscribe {
                names.remove(n);
            }
        }
        // The client forgets what it unsubscribed from.
        for n in unsubscribe {
            self.known.remove(n);
        }
    }
}

#[derive(Default)]
pub struct DeltaStream {
    nonce: u64,
    types: BTreeMap<String, TypeState>,
}

impl DeltaStream {
    pub fn new() -> DeltaStream {
        DeltaStream::default()
    }

    pub fn sync(&self, type_url: &str) -> Option<&TypeSync> {
        self.types.get(type_url).map(|t| &t.sync)
    }

    pub fn on_request(
        &mut self,
        req: &DeltaDiscoveryRequest,
        snapshot: Option<&Snapshot>,
    ) -> (Received, Option<DeltaDiscoveryResponse>) {
        let first = !self.types.contains_key(&req.type_url);
        let state = self.types.entry(req.type_url.clone()).or_insert_with(|| TypeState {
            // LDS and CDS with no names: the legacy wildcard.
            sub: if req.resource_names_subscribe.is_empty() && is_wildcard_type(&req.type_url) {
                Subscription::Wildcard
            } else {
                Subscription::Names(Default::default())
            },
            known: req.initial_resource_versions.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            sync: TypeSync::default(),
            seen: None,
            resubscribed: true,
        });
        // Subscription changes count whatever the nonce says.
        state.apply_subscription(&req.resource_names_subscribe, &req.resource_names_unsubscribe);
        state.resubscribed |= !req.resource_names_subscribe.is_empty() || !req.resource_names_unsubscribe.is_empty();
        let received = if first || req.response_nonce.is_empty() {
            Received::Subscribe
        } else if state.sync.sent_nonce.as_deref() != Some(req.response_nonce.as_str()) {
            Received::Stale
        } else if let Some(err) = &req.error_detail {
            state.sync.nacks += 1;
            let kept = state.sync.acked_version.clone().unwrap_or_default();
            state.sync.last_nack = Some(Nack::new(&kept, &req.response_nonce, &err.message));
            Received::Nack(err.message.clone())
        } else {
            state.sync.acked_version = state.sync.sent_version.clone();
            Received::Ack
        };
        let response = snapshot.and_then(|s| self.respond(&req.type_url, s));
        (received, response)
    }

    /// A new snapshot: the changes it makes, clusters first.
    pub fn on_snapshot(&mut self, snapshot: &Snapshot) -> Vec<DeltaDiscoveryResponse> {
        let mut order: Vec<String> = PUSH_ORDER.iter().map(|t| t.to_string()).collect();
        order.extend(self.types.keys().filter(|t| !PUSH_ORDER.contains(&t.as_str())).cloned());
        order.iter().filter_map(|t| self.respond(t, snapshot)).collect()
    }

    fn respond(&mut self, type_url: &str, snapshot: &Snapshot) -> Option<DeltaDiscoveryResponse> {
        let state = self.types.get_mut(type_url)?;
        let current = snapshot.resources.of_type(type_url).cloned().unwrap_or_default();
        if !state.resubscribed && state.seen.as_ref().is_some_and(|seen| Arc::ptr_eq(seen, &current)) {
            return None;
        }
        state.seen = Some(current);
        state.resubscribed = false;
        let change = snapshot.delta(type_url, &state.sub, &state.known);
        if change.is_empty() {
            return None;
        }
        for r in &change.updated {
            state.known.insert(r.name.clone(), r.version.clone());
        }
        for n in &change.removed {
            state.known.remove(n);
        }
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        state.sync.sent_version = Some(snapshot.config_version.clone());
        state.sync.sent_nonce = Some(nonce.clone());
        state.sync.pushes += 1;
        Some(DeltaDiscoveryResponse {
            system_version_info: snapshot.config_version.clone(),
            resources: change
                .updated
                .iter()
                .map(|r| PbResource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.body()),
                    ..Default::default()
                })
                .collect(),
            type_url: type_url.to_string(),
            removed_resources: change.removed,
            nonce,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{Resource, CLUSTER, ENDPOINT};
    use envoy_types::pb::google::protobuf::Any;
    use envoy_types::pb::google::rpc::Status;

    fn snapshot(version: &str, items: &[(&str, &str, &[u8])]) -> Snapshot {
        let mut s = Snapshot { config_version: version.into(), ..Default::default() };
        for (t, n, b) in items {
            s.resources
                .insert(t, Resource::from_any(n.to_string(), Any { type_url: t.to_string(), value: b.to_vec() }));
        }
        s
    }

    fn request(type_url: &str, subscribe: &[&str], unsubscribe: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: type_url.into(),
            resource_names_subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            resource_names_unsubscribe: unsubscribe.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
        r.resources.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn wildcard_then_only_changes_and_removals() {
        let s1 = snapshot("1", &[(CLUSTER, "a", b"1"), (CLUSTER, "b", b"1")]);
        let mut st = DeltaStream::new();
        let (r, first) = st.on_request(&request(CLUSTER, &[], &[], ""), Some(&s1));
        assert_eq!(r, Received::Subscribe);
        let first = first.unwrap();
        assert_eq!(names(&first), ["a", "b"]);
        let (r, none) = st.on_request(&request(CLUSTER, &[], &[], &first.nonce), Some(&s1));
        assert_eq!((r, none), (Received::Ack, None));
        let s2 = snapshot("2", &[(CLUSTER, "a", b"2")]);
        let push = st.on_snapshot(&s2).remove(0);
        assert_eq!(names(&push), ["a"]);
        assert_eq!(push.removed_resources, ["b"]);
        assert_eq!(push.system_version_info, "2");
        assert!(st.on_snapshot(&s2).is_empty());
    }

    #[test]
    fn named_subscribe_and_unsubscribe() {
        let s1 = snapshot("1", &[(ENDPOINT, "a", b"1"), (ENDPOINT, "b", b"1")]);
        let mut st = DeltaStream::new();
        let first = st.on_request(&request(ENDPOINT, &["a"], &[], ""), Some(&s1)).1.unwrap();
        assert_eq!(names(&first), ["a"]);
        let more = st.on_request(&request(ENDPOINT, &["b"], &[], ""), Some(&s1)).1.unwrap();
        assert_eq!(names(&more), ["b"], "only the newly subscribed one");
        st.on_request(&request(ENDPOINT, &[], &["a"], ""), Some(&s1));
        let s2 = snapshot("2", &[(ENDPOINT, "a", b"2"), (ENDPOINT, "b", b"1")]);
        assert!(st.on_snapshot(&s2).is_empty(), "a is no longer subscribed");
    }

    #[test]
    fn reconnect_with_initial_versions_sends_only_what_changed() {
        let s1 = snapshot("1", &[(CLUSTER, "a", b"1"), (CLUSTER, "b", b"1")]);
        let held = s1.resources.get(CLUSTER, "a").unwrap().version.clone();
        let mut req = request(CLUSTER, &[], &[], "");
        req.initial_resource_versions =
            [("a".to_string(), held), ("gone".to_string(), "x".to_string())].into_iter().collect();
        let resp = DeltaStream::new().on_request(&req, Some(&s1)).1.unwrap();
        assert_eq!(names(&resp), ["b"]);
        assert_eq!(resp.removed_resources, ["gone"]);
    }

    #[test]
    fn nack_recorded_without_a_resend() {
        let s1 = snapshot("1", &[(CLUSTER, "a", b"bad")]);
        let mut st = DeltaStream::new();
        let first = st.on_request(&request(CLUSTER, &[], &[], ""), Some(&s1)).1.unwrap();
        let mut nack = request(CLUSTER, &[], &[], &first.nonce);
        nack.error_detail = Some(Status { code: 3, message: "cluster a: bad".into(), details: vec![] });
        let (r, resp) = st.on_request(&nack, Some(&s1));
        assert_eq!((r, resp), (Received::Nack("cluster a: bad".into()), None));
        assert_eq!(st.sync(CLUSTER).unwrap().nacks, 1);
    }
}
