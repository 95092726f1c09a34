//! A cluster as the proxy runs it: its endpoints as socket addresses, the
//! balancer over them, and the circuit breaker and outlier detector that
//! admit and judge requests. Built once per config; a new config reuses the
//! state of a cluster whose definition and endpoints did not change.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_core::lb::{self, Host, LoadBalancer};
use mesh_core::model::Health;
use mesh_core::proxy_config::{Cluster, ClusterLoadAssignment};
use mesh_core::resilience::circuit_breaker::CircuitBreaker;
use mesh_core::resilience::outlier::OutlierDetector;
use mesh_core::workload::WorkloadMeta;

use crate::upstream::{ClusterConnections, Upstreams};

pub struct ClusterState {
    pub config: Cluster,
    pub assignment: ClusterLoadAssignment,
    /// Endpoints that can take traffic, parallel to `hosts`.
    pub addresses: Vec<SocketAddr>,
    pub hosts: Vec<Host>,
    /// Who runs each endpoint (from the registry) and its key for the
    /// metrics' series, parallel to `hosts`.
    pub workloads: Vec<Option<(Arc<WorkloadMeta>, u64)>>,
    /// Some endpoint is a mesh workload: requests carry Istio's metadata
    /// exchange header, so its proxy can name the caller.
    pub in_mesh: bool,
    balancer: Box<dyn LoadBalancer>,
    pub breaker: Arc<CircuitBreaker>,
    pub outlier: Option<OutlierDetector>,
    /// When the detector started: its clock.
    pub started: Instant,
    /// Milliseconds (on that clock) of the last outlier sweep.
    last_sweep_ms: AtomicU64,
    /// The connection pools for this cluster's settings.
    pub connections: ClusterConnections,
}

impl ClusterState {
    pub fn new(config: &Cluster, assignment: Option<&ClusterLoadAssignment>, upstreams: &Upstreams) -> ClusterState {
        let assignment = assignment
            .cloned()
            .unwrap_or_else(|| ClusterLoadAssignment { cluster_name: config.name.clone(), endpoints: vec![] });
        let usable: Vec<_> = assignment
            .endpoints
            .iter()
            .filter(|e| e.health == Health::Healthy)
            .filter_map(|e| Some((e, e.address.parse::<std::net::IpAddr>().ok()?)))
            .collect();
        let addresses: Vec<SocketAddr> = usable.iter().map(|(e, ip)| SocketAddr::new(*ip, e.port)).collect();
        let hosts: Vec<Host> = usable.iter().map(|(e, _)| Host::from_endpoint(e)).collect();
        let workloads: Vec<_> = usable
            .iter()
            .map(|(e, _)| e.workload.as_ref().map(|w| (Arc::clone(w), crate::metrics::series_key(w))))
            .collect();
        let balancer = lb::build(&config.lb, &hosts);
        let endpoints: Vec<(SocketAddr, bool)> =
            usable.iter().zip(&addresses).map(|((e, _), addr)| (*addr, e.mtls_ready)).collect();
        let connections = upstreams.connections_for(config, &endpoints);
        ClusterState {
            breaker: CircuitBreaker::new(config.circuit_breakers, config.retry_budget.clone()),
            outlier: config.outlier_detection.clone().map(|od| OutlierDetector::new(od, hosts.len())),
            config: config.clone(),
            assignment,
            addresses,
            hosts,
            in_mesh: workloads.iter().any(Option::is_some),
            workloads,
            balancer,
            started: Instant::now(),
            last_sweep_ms: AtomicU64::new(0),
            connections,
        }
    }

    /// Run the outlier detector's interval sweep if its interval has
    /// passed: ejected hosts whose time is up come back. Returns when the
    /// next sweep is due (`None`: no outlier detection).
    pub fn sweep_if_due(&self) -> Option<Instant> {
        let outlier = self.outlier.as_ref()?;
        let now = self.now();
        let now_ms = now.as_millis() as u64;
        let interval = (outlier.config().interval.as_millis() as u64).max(1);
        let mut last = self.last_sweep_ms.load(Ordering::Acquire);
        if now_ms.saturating_sub(last) >= interval
            && self.last_sweep_ms.compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            last = now_ms;
            for host in outlier.sweep(now) {
                tracing::info!(cluster = %self.config.name, endpoint = %self.addresses[host], "outlier detection: host returned");
            }
        }
        self.started.checked_add(Duration::from_millis(last.saturating_add(interval)))
    }

    /// The same cluster with the same endpoints: keep the live state.
    pub fn unchanged(&self, config: &Cluster, assignment: Option<&ClusterLoadAssignment>) -> bool {
        self.config == *config && assignment.is_none_or(|a| *a == self.assignment)
    }

    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Pick an endpoint: skips ejected hosts (unless in panic) and, for a
    /// retry, the hosts already tried when another is available.
    pub fn pick(&self, hash: Option<u64>, avoid: &[usize]) -> Option<usize> {
        if self.hosts.is_empty() {
            return None;
        }
        let ejected = |i: usize| self.outlier.as_ref().is_some_and(|o| o.is_ejected(i));
        let panic = self.outlier.as_ref().is_some_and(|o| o.in_panic(0));
        let mut fallback = None;
        // A few draws are enough: balancers spread picks, and ejections are
        // capped at max_ejection_percent.
        for _ in 0..4 {
            let i = self.balancer.pick(&self.hosts, hash)?;
            if !panic && ejected(i) {
                continue;
            }
            if avoid.contains(&i) {
                fallback.get_or_insert(i);
                continue;
            }
            return Some(i);
        }
        if let Some(i) = fallback {
            return Some(i);
        }
        // Hash policies keep landing on the same host: walk to the next
        // usable one.
        let start = self.balancer.pick(&self.hosts, hash)?;
        (0..self.hosts.len()).map(|k| (start + k) % self.hosts.len()).find(|i| panic || !ejected(*i))
    }
}
