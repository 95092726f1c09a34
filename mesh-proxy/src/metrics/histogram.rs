//! A Prometheus histogram updated with atomics only (prometheus-client's
//! own takes a mutex per observation), on Envoy's default buckets, which
//! Istio's duration and size histograms keep.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Envoy's default histogram buckets: milliseconds for durations, bytes
/// for sizes.
const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];

#[derive(Clone, Debug)]
pub struct AtomicHistogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    /// One per bucket of `BUCKETS`, then +Inf; not cumulative.
    counts: Vec<AtomicU64>,
    /// The sum in thousandths (a microsecond of a duration in
    /// milliseconds): one atomic add per observation, not a CAS loop.
    sum_thousandths: AtomicU64,
    count: AtomicU64,
}

impl Default for AtomicHistogram {
    fn default() -> AtomicHistogram {
        AtomicHistogram(Arc::new(HistogramInner {
            counts: (0..=BUCKETS.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_thousandths: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }))
    }
}

impl AtomicHistogram {
    pub fn observe(&self, v: f64) {
        let i = BUCKETS.iter().position(|b| v <= *b).unwrap_or(BUCKETS.len());
        self.0.counts[i].fetch_add(1, Ordering::Relaxed);
        self.0.count.fetch_add(1, Ordering::Relaxed);
        // `as` saturates: a negative or NaN value adds nothing.
        self.0.sum_thousandths.fetch_add((v * 1000.0).round() as u64, Ordering::Relaxed);
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let bounds = BUCKETS.iter().copied().chain(std::iter::once(f64::INFINITY));
        let buckets: Vec<(f64, u64)> = bounds.zip(self.0.counts.iter().map(|c| c.load(Ordering::Relaxed))).collect();
        let sum = self.0.sum_thousandths.load(Ordering::Relaxed) as f64 / 1000.0;
        encoder.encode_histogram::<NoLabelSet>(sum, self.0.count.load(Ordering::Relaxed), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}
