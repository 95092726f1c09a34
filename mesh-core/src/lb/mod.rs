//! Load balancing: choosing an endpoint of a cluster. Each algorithm is
//! built once per endpoint set (config time) and picks lock-free per request.
//!
//! The algorithms follow Envoy's, so that one config behaves the same in
//! Envoy and in mesh-proxy: ring hash and Maglev hash the same keys with the
//! same functions and land on the same hosts.

pub mod hash;
pub mod least_request;
pub mod locality;
pub mod maglev;
pub mod random;
pub mod ring_hash;
pub mod round_robin;

use std::sync::atomic::{AtomicU32, Ordering};

use crate::proxy_config::{LbEndpoint, LbPolicy};

/// One endpoint as the balancer sees it.
#[derive(Debug)]
pub struct Host {
    /// `10.0.0.1:9080`: what Envoy hashes for ring hash and Maglev.
    pub hash_key: String,
    pub weight: u32,
    /// Requests in flight, for least-request.
    pub active_requests: AtomicU32,
}

impl Host {
    pub fn new(address: &str, port: u16, weight: u32) -> Host {
        let hash_key = if address.contains(':') { format!("[{address}]:{port}") } else { format!("{address}:{port}") };
        Host { hash_key, weight: weight.max(1), active_requests: AtomicU32::new(0) }
    }

    pub fn from_endpoint(e: &LbEndpoint) -> Host {
        Host::new(&e.address, e.port, e.weight)
    }

    pub fn active(&self) -> u32 {
        self.active_requests.load(Ordering::Relaxed)
    }
}

/// A built balancer over a fixed list of hosts. `pick` returns an index
/// into that list.
pub trait LoadBalancer: Send + Sync {
    /// `hash` is the request's hash for consistent-hash policies (see
    /// [`hash::request_hash`]); others ignore it.
    fn pick(&self, hosts: &[Host], hash: Option<u64>) -> Option<usize>;
}

/// Build the balancer a cluster's policy names.
pub fn build(policy: &LbPolicy, hosts: &[Host]) -> Box<dyn LoadBalancer> {
    match policy {
        LbPolicy::RoundRobin => Box::new(round_robin::RoundRobin::new(hosts)),
        LbPolicy::Random | LbPolicy::Passthrough => Box::new(random::Random::new(hosts)),
        LbPolicy::LeastRequest { choice_count } => Box::new(least_request::LeastRequest::new(hosts, *choice_count)),
        LbPolicy::RingHash { minimum_ring_size, .. } => {
            Box::new(ring_hash::RingHash::new(hosts, *minimum_ring_size, ring_hash::DEFAULT_MAX_RING_SIZE))
        }
        LbPolicy::Maglev { table_size, .. } => Box::new(maglev::Maglev::new(hosts, *table_size)),
    }
}

/// `true` when all hosts have the same weight (the unweighted fast paths).
fn uniform_weights(hosts: &[Host]) -> bool {
    hosts.windows(2).all(|w| w[0].weight == w[1].weight)
}

/// Running totals of the hosts' weights for weighted draws; empty when all
/// weights are equal (draw uniformly instead).
fn cumulative_weights(hosts: &[Host]) -> Vec<u64> {
    if uniform_weights(hosts) {
        return Vec::new();
    }
    hosts
        .iter()
        .scan(0u64, |sum, h| {
            *sum += u64::from(h.weight);
            Some(*sum)
        })
        .collect()
}

#[cfg(test)]
pub(crate) fn hosts(n: usize) -> Vec<Host> {
    (0..n).map(|i| Host::new(&format!("10.0.{}.{}", i / 250, i % 250 + 1), 8080, 1)).collect()
}
