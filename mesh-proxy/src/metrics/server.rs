//! The proxy's own health, as the `envoy_server_*` gauges Istio users
//! alert on: uptime, live or draining, resident memory, workers. Read at
//! scrape time, never kept up to date.

use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use tokio::sync::watch;

#[derive(Debug)]
pub struct ServerStats {
    started: Instant,
    /// True once the proxy drains.
    draining: watch::Receiver<bool>,
    workers: usize,
}

impl ServerStats {
    pub fn new(draining: watch::Receiver<bool>) -> ServerStats {
        let workers = tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers());
        ServerStats { started: Instant::now(), draining, workers }
    }
}

impl Collector for ServerStats {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let draining = *self.draining.borrow();
        let gauges: [(&str, &str, i64); 5] = [
            ("envoy_server_uptime", "Seconds since the proxy started", self.started.elapsed().as_secs() as i64),
            ("envoy_server_live", "1 while the proxy serves, 0 once it drains", i64::from(!draining)),
            ("envoy_server_state", "0: live, 1: draining", i64::from(draining)),
            ("envoy_server_memory_physical_size", "Resident memory of the proxy process, bytes", resident_bytes()),
            ("envoy_server_concurrency", "Worker threads", self.workers as i64),
        ];
        for (name, help, value) in gauges {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(metric)?;
        }
        Ok(())
    }
}

/// Resident set size, from `VmRSS` in `/proc/self/status` (0 where
/// there is none).
fn resident_bytes() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<i64>().ok())
        .unwrap_or(0);
    kib * 1024
}
