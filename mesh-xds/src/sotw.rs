//! The state-of-the-world protocol of one ADS stream, as a state machine
//! without I/O: requests and snapshots in, responses out.
//!
//! Rules (Envoy's xDS protocol docs): a request whose nonce is not the
//! latest sent for its type is stale and ignored; a request carrying
//! `error_detail` is a NACK of that nonce, after which the same version
//! is not sent again (only a new one is); a change of subscribed names, a
//! first request and a new version are answered. Snapshots are pushed in
//! make-before-break order. LDS and CDS responses carry every resource
//! (one left out is deleted); RDS and EDS responses carry only the
//! resources that changed since they were last sent, as the protocol
//! allows, so one endpoint change does not resend every endpoint.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use crate::cache::{Snapshot, Subscription};
use crate::resources::{is_wildcard_type, next_version, Resource, TypeMap, PUSH_ORDER};
use crate::status::{Nack, TypeSync};

/// A response to send: a `DiscoveryResponse` whose resources are shared
/// with the cache rather than copied (see [`Resource::wire`]).
#[derive(Clone, Debug, PartialEq)]
pub struct SotwResponse {
    pub version_info: String,
    pub type_url: String,
    pub nonce: String,
    pub resources: Vec<Arc<Resource>>,
}

impl SotwResponse {
    /// The protobuf message (a copy, for tests and clients in process).
    pub fn to_message(&self) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: self.version_info.clone(),
            resources: self.resources.iter().map(|r| r.body()).collect(),
            type_url: self.type_url.clone(),
            nonce: self.nonce.clone(),
            ..Default::default()
        }
    }
}

/// How a request was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// The first request of a type on this stream.
    Subscribe,
    Ack,
    Nack(String),
    /// The nonce is not the latest sent: ignored.
    Stale,
}

struct TypeState {
    sub: Subscription,
    sync: TypeSync,
    /// The snapshot's map of this type when last answered: unchanged
    /// (the same `Arc`) means nothing to send, found in O(1); for RDS and
    /// EDS it is also what the next push is diffed against.
    seen: Option<Arc<TypeMap>>,
}

#[derive(Default)]
pub struct SotwStream {
    nonce: u64,
    types: BTreeMap<String, TypeState>,
}

impl SotwStream {
    pub fn new() -> SotwStream {
        SotwStream::default()
    }

    pub fn sync(&self, type_url: &str) -> Option<&TypeSync> {
        self.types.get(type_url).map(|t| &t.sync)
    }

    pub fn on_request(
        &mut self,
        req: &DiscoveryRequest,
        snapshot: Option<&Snapshot>,
    ) -> (Received, Option<SotwResponse>) {
        let sub = Subscription::from_names(&req.type_url, &req.resource_names);
        let first = !self.types.contains_key(&req.type_url);
        let state = self.types.entry(req.type_url.clone()).or_insert_with(|| TypeState {
            sub: sub.clone(),
            sync: TypeSync::default(),
            seen: None,
        });
        let received = if first || req.response_nonce.is_empty() {
            Received::Subscribe
        } else if state.sync.sent_nonce.as_deref() != Some(req.response_nonce.as_str()) {
            return (Received::Stale, None);
        } else if let Some(err) = &req.error_detail {
            state.sync.nacks += 1;
            state.sync.last_nack = Some(Nack::new(&req.version_info, &req.response_nonce, &err.message));
            Received::Nack(err.message.clone())
        } else {
            state.sync.acked_version = Some(req.version_info.clone());
            Received::Ack
        };
        let resubscribed = state.sub != sub;
        state.sub = sub;
        let force = received == Received::Subscribe || resubscribed;
        let response = snapshot.and_then(|s| self.respond(&req.type_url, s, force));
        (received, response)
    }

    /// A new snapshot: the responses it calls for, clusters first.
    pub fn on_snapshot(&mut self, snapshot: &Snapshot) -> Vec<SotwResponse> {
        let mut order: Vec<String> = PUSH_ORDER.iter().map(|t| t.to_string()).collect();
        order.extend(self.types.keys().filter(|t| !PUSH_ORDER.contains(&t.as_str())).cloned());
        order.iter().filter_map(|t| self.respond(t, snapshot, false)).collect()
    }

    fn respond(&mut self, type_url: &str, snapshot: &Snapshot, force: bool) -> Option<SotwResponse> {
        let state = self.types.get_mut(type_url)?;
        let current = snapshot.resources.of_type(type_url).cloned().unwrap_or_default();
        if !force && state.seen.as_ref().is_some_and(|seen| Arc::ptr_eq(seen, &current)) {
            return None;
        }
        let seen = state.seen.replace(current);
        let (version, mut resources) = match (&seen, snapshot.changes.get(type_url)) {
            // The snapshot says what changed since the map this stream
            // last answered from: send just that.
            (Some(seen), Some(change)) if !force && !is_wildcard_type(type_url) && Arc::ptr_eq(seen, &change.from) => {
                let changed: Vec<Arc<Resource>> = change
                    .names
                    .iter()
                    .filter(|n| state.sub.wants(n))
                    .filter_map(|n| snapshot.resources.get(type_url, n).cloned())
                    .collect();
                if changed.is_empty() {
                    return None;
                }
                let version = next_version(state.sync.sent_version.as_deref().unwrap_or(""), &changed);
                (version, changed)
            }
            _ => snapshot.sotw(type_url, &state.sub),
        };
        if !force && state.sync.sent_version.as_deref() == Some(version.as_str()) {
            return None;
        }
        if !force && !is_wildcard_type(type_url) {
            if let Some(seen) = seen {
                resources.retain(|r| seen.get(&r.name).is_none_or(|old| old.version != r.version));
            }
        }
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        state.sync.sent_version = Some(version.clone());
        state.sync.sent_nonce = Some(nonce.clone());
        state.sync.pushes += 1;
        Some(SotwResponse { version_info: version, type_url: type_url.to_string(), nonce, resources })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
    use envoy_types::pb::google::protobuf::Any;
    use envoy_types::pb::google::rpc::Status;

    fn snapshot(items: &[(&str, &str, &[u8])]) -> Snapshot {
        let mut s = Snapshot::default();
        for (t, n, b) in items {
            s.resources
                .insert(t, Resource::from_any(n.to_string(), Any { type_url: t.to_string(), value: b.to_vec() }));
        }
        s
    }

    fn request(type_url: &str, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: type_url.into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    #[test]
    fn subscribe_ack_and_push_only_on_change() {
        let s1 = snapshot(&[(CLUSTER, "a", b"1"), (CLUSTER, "b", b"1")]);
        let mut st = SotwStream::new();
        let (r, resp) = st.on_request(&request(CLUSTER, &[], "", ""), Some(&s1));
        assert_eq!(r, Received::Subscribe);
        let resp = resp.unwrap();
        assert_eq!(resp.resources.len(), 2);
        let (r, again) = st.on_request(&request(CLUSTER, &[], &resp.version_info, &resp.nonce), Some(&s1));
        assert_eq!((r, again), (Received::Ack, None));
        assert_eq!(st.sync(CLUSTER).unwrap().acked_version.as_deref(), Some(resp.version_info.as_str()));
        assert!(st.on_snapshot(&s1).is_empty(), "same content, no push");
        let s2 = snapshot(&[(CLUSTER, "a", b"2"), (CLUSTER, "b", b"1")]);
        let pushed = st.on_snapshot(&s2);
        assert_eq!(pushed.len(), 1);
        assert_ne!(pushed[0].version_info, resp.version_info);
        assert_ne!(pushed[0].nonce, resp.nonce);
    }

    #[test]
    fn nack_is_recorded_and_not_answered_with_the_same_version() {
        let s1 = snapshot(&[(LISTENER, "l", b"good")]);
        let s2 = snapshot(&[(LISTENER, "l", b"bad")]);
        let mut st = SotwStream::new();
        let first = st.on_request(&request(LISTENER, &[], "", ""), Some(&s1)).1.unwrap();
        st.on_request(&request(LISTENER, &[], &first.version_info, &first.nonce), Some(&s1));
        let bad = st.on_snapshot(&s2).remove(0);
        let mut nack = request(LISTENER, &[], &first.version_info, &bad.nonce);
        nack.error_detail = Some(Status { code: 3, message: "invalid listener l".into(), details: vec![] });
        let (r, resp) = st.on_request(&nack, Some(&s2));
        assert_eq!(r, Received::Nack("invalid listener l".into()));
        assert_eq!(resp, None, "the rejected version is not resent");
        let sync = st.sync(LISTENER).unwrap();
        assert_eq!(sync.nacks, 1);
        assert_eq!(sync.acked_version.as_deref(), Some(first.version_info.as_str()));
        assert_eq!(sync.last_nack.as_ref().unwrap().message, "invalid listener l");
        // A fix is pushed.
        let fixed = snapshot(&[(LISTENER, "l", b"fixed")]);
        assert_eq!(st.on_snapshot(&fixed).len(), 1);
    }

    #[test]
    fn stale_nonces_are_ignored() {
        let s1 = snapshot(&[(CLUSTER, "a", b"1")]);
        let mut st = SotwStream::new();
        let first = st.on_request(&request(CLUSTER, &[], "", ""), Some(&s1)).1.unwrap();
        let second = st.on_snapshot(&snapshot(&[(CLUSTER, "a", b"2")])).remove(0);
        let (r, resp) = st.on_request(&request(CLUSTER, &[], &first.version_info, &first.nonce), Some(&s1));
        assert_eq!((r, resp), (Received::Stale, None));
        assert_eq!(st.sync(CLUSTER).unwrap().sent_nonce.as_deref(), Some(second.nonce.as_str()));
    }

    #[test]
    fn named_subscriptions_follow_their_names() {
        let s1 = snapshot(&[(ENDPOINT, "a", b"1"), (ENDPOINT, "b", b"1")]);
        let mut st = SotwStream::new();
        let first = st.on_request(&request(ENDPOINT, &["a"], "", ""), Some(&s1)).1.unwrap();
        assert_eq!(first.resources.len(), 1);
        st.on_request(&request(ENDPOINT, &["a"], &first.version_info, &first.nonce), Some(&s1));
        // b changes: not this client's business.
        assert!(st.on_snapshot(&snapshot(&[(ENDPOINT, "a", b"1"), (ENDPOINT, "b", b"2")])).is_empty());
        // Subscribing to b as well is answered at once, in the ACK.
        let (_, resp) = st.on_request(&request(ENDPOINT, &["a", "b"], &first.version_info, &first.nonce), Some(&s1));
        assert_eq!(resp.unwrap().resources.len(), 2);
    }

    #[test]
    fn endpoint_and_route_pushes_carry_only_what_changed() {
        let s1 = snapshot(&[(ENDPOINT, "a", b"1"), (ENDPOINT, "b", b"1"), (CLUSTER, "a", b"1"), (CLUSTER, "b", b"1")]);
        let mut st = SotwStream::new();
        let eds = st.on_request(&request(ENDPOINT, &["a", "b"], "", ""), Some(&s1)).1.unwrap();
        let cds = st.on_request(&request(CLUSTER, &[], "", ""), Some(&s1)).1.unwrap();
        assert_eq!((eds.resources.len(), cds.resources.len()), (2, 2));
        let s2 = snapshot(&[(ENDPOINT, "a", b"1"), (ENDPOINT, "b", b"2"), (CLUSTER, "a", b"1"), (CLUSTER, "b", b"2")]);
        let pushed = st.on_snapshot(&s2);
        let sizes: Vec<(String, usize)> = pushed.iter().map(|r| (r.type_url.clone(), r.resources.len())).collect();
        // CDS is the whole state of the world; EDS only the changed set.
        assert_eq!(sizes, [(CLUSTER.to_string(), 2), (ENDPOINT.to_string(), 1)]);
        // Re-subscribing sends the whole set again.
        let (_, again) = st.on_request(&request(ENDPOINT, &["a", "b"], "", ""), Some(&s2));
        assert_eq!(again.unwrap().resources.len(), 2);
    }

    #[test]
    fn a_snapshot_that_names_its_changes_is_pushed_without_a_full_diff() {
        let s1 = snapshot(&[(ENDPOINT, "a", b"1"), (ENDPOINT, "b", b"1"), (ENDPOINT, "c", b"1")]);
        let mut st = SotwStream::new();
        let first = st.on_request(&request(ENDPOINT, &["a", "b"], "", ""), Some(&s1)).1.unwrap();
        st.on_request(&request(ENDPOINT, &["a", "b"], &first.version_info, &first.nonce), Some(&s1));
        let mut s2 = s1.clone();
        let mut change = crate::cache::TypeChange {
            from: s1.resources.of_type(ENDPOINT).unwrap().clone(),
            names: Default::default(),
        };
        for (name, body) in [("b", b"2"), ("c", b"2")] {
            s2.resources.insert(
                ENDPOINT,
                Resource::from_any(name.into(), Any { type_url: ENDPOINT.into(), value: body.to_vec() }),
            );
            change.names.insert(name.to_string());
        }
        s2.changes.insert(ENDPOINT.to_string(), change);
        let pushed = st.on_snapshot(&s2);
        assert_eq!(pushed.len(), 1);
        let names: Vec<_> = pushed[0].resources.iter().map(|r| r.value().to_vec()).collect();
        assert_eq!(names, [b"2".to_vec()], "only b: c is not subscribed");
        assert_ne!(pushed[0].version_info, first.version_info);
        // Nothing this stream wants changed: no push at all.
        let mut s3 = s2.clone();
        s3.resources
            .insert(ENDPOINT, Resource::from_any("c".into(), Any { type_url: ENDPOINT.into(), value: b"3".to_vec() }));
        s3.changes.insert(
            ENDPOINT.to_string(),
            crate::cache::TypeChange {
                from: s2.resources.of_type(ENDPOINT).unwrap().clone(),
                names: ["c".to_string()].into(),
            },
        );
        assert!(st.on_snapshot(&s3).is_empty());
    }

    #[test]
    fn pushes_go_clusters_endpoints_listeners_routes() {
        let s1 = snapshot(&[(CLUSTER, "c", b"1"), (ENDPOINT, "c", b"1"), (LISTENER, "l", b"1"), (ROUTE, "r", b"1")]);
        let mut st = SotwStream::new();
        for (t, names) in [(ROUTE, vec!["r"]), (LISTENER, vec![]), (ENDPOINT, vec!["c"]), (CLUSTER, vec![])] {
            st.on_request(&request(t, &names, "", ""), None);
        }
        let order: Vec<String> = st.on_snapshot(&s1).into_iter().map(|r| r.type_url).collect();
        assert_eq!(order, [CLUSTER, ENDPOINT, LISTENER, ROUTE]);
    }
}
