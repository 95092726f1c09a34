//! Envoy's cluster and listener stats that operators alert on, under
//! Envoy's Prometheus names, read from the config in force at scrape time:
//! requests in flight, circuit breaker overflows, upstream resets, outlier
//! ejections and membership per cluster; connections refused over a
//! listener's limit, protocol errors and header timeouts downstream.
//!
//! Envoy's counters whose names do not end in `_total` go out untyped: as
//! OpenMetrics counters they would gain a `_total`, and an alert written
//! for Envoy would no longer find them.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use mesh_core::resilience::circuit_breaker::Resource;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::DownstreamStats;
use crate::cluster::ClusterState;
use crate::live::SharedConfig;

pub struct EnvoyStats {
    pub live: SharedConfig,
    pub downstream: Arc<DownstreamStats>,
}

/// The collector's `Debug` bound: the config is not worth printing.
impl std::fmt::Debug for EnvoyStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvoyStats").finish_non_exhaustive()
    }
}

type ClusterStat = (&'static str, &'static str, MetricType, fn(&ClusterState) -> i64);

const CLUSTER_STATS: [ClusterStat; 7] = [
    ("envoy_cluster_upstream_rq_active", "Requests in flight", MetricType::Gauge, |c| {
        i64::from(c.breaker.active(Resource::Requests))
    }),
    (
        "envoy_cluster_upstream_rq_pending_overflow",
        "Requests refused by the circuit breaker",
        MetricType::Unknown,
        |c| c.breaker.overflows(Resource::Requests) as i64,
    ),
    (
        "envoy_cluster_upstream_rq_retry_overflow",
        "Retries not made: the retry budget or breaker was full",
        MetricType::Unknown,
        |c| c.breaker.overflows(Resource::Retries) as i64,
    ),
    ("envoy_cluster_upstream_rq_rx_reset", "Responses whose body broke off", MetricType::Unknown, |c| {
        c.connections.upstream_rx_resets.load(Ordering::Relaxed) as i64
    }),
    (
        "envoy_cluster_outlier_detection_ejections_active",
        "Endpoints ejected by outlier detection now",
        MetricType::Gauge,
        |c| c.outlier.as_ref().map_or(0, |o| o.ejected_count() as i64),
    ),
    ("envoy_cluster_membership_total", "Endpoints of the cluster", MetricType::Gauge, |c| {
        c.assignment.endpoints.len() as i64
    }),
    ("envoy_cluster_membership_healthy", "Endpoints that can take traffic", MetricType::Gauge, |c| {
        c.hosts.len() as i64
    }),
];

impl Collector for EnvoyStats {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let live = self.live.load();
        let mut clusters: Vec<(&String, &Arc<ClusterState>)> = live.clusters.iter().collect();
        clusters.sort_by_key(|(name, _)| *name);
        for (name, help, kind, read) in CLUSTER_STATS {
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for (cluster, state) in &clusters {
                let labels = [("cluster_name", cluster.as_str())];
                ConstGauge::new(read(state)).encode(family.encode_family(&labels)?)?;
            }
        }
        let d = &self.downstream;
        let downstream = [
            ("envoy_listener_downstream_cx_overflow", "Connections refused over a listener's limit", &d.overflow),
            ("envoy_http_downstream_cx_protocol_error", "Requests that did not parse", &d.malformed),
            (
                "envoy_http_downstream_rq_header_timeout",
                "Clients too slow with their request headers",
                &d.header_timeouts,
            ),
        ];
        for (name, help, count) in downstream {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Unknown)?;
            ConstGauge::new(count.load(Ordering::Relaxed) as i64).encode(family)?;
        }
        Ok(())
    }
}
