//! Circuit breaking as Envoy's cluster resource manager does it: counters of
//! connections, pending requests, requests and retries, each with a limit.
//! Admission is an atomic increment; the returned guard gives it back.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::proxy_config::{CircuitBreakerThresholds, RetryBudgetConfig};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    Connections,
    PendingRequests,
    Requests,
    Retries,
}

#[derive(Debug, Default)]
struct Counter {
    active: AtomicU32,
    /// Times admission was refused (Envoy's `upstream_rq_pending_overflow`
    /// and friends).
    overflows: AtomicU64,
}

#[derive(Debug)]
pub struct CircuitBreaker {
    thresholds: CircuitBreakerThresholds,
    budget: Option<RetryBudgetConfig>,
    counters: [Counter; 4],
}

/// Holds one unit of a resource until dropped.
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<CircuitBreaker>,
    resource: Resource,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.breaker.counter(self.resource).active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl CircuitBreaker {
    pub fn new(thresholds: CircuitBreakerThresholds, budget: Option<RetryBudgetConfig>) -> Arc<CircuitBreaker> {
        Arc::new(CircuitBreaker { thresholds, budget, counters: Default::default() })
    }

    fn counter(&self, r: Resource) -> &Counter {
        &self.counters[r as usize]
    }

    fn limit(&self, r: Resource) -> u32 {
        match r {
            Resource::Connections => self.thresholds.max_connections,
            Resource::PendingRequests => self.thresholds.max_pending_requests,
            Resource::Requests => self.thresholds.max_requests,
            Resource::Retries => self.retry_limit(),
        }
    }

    /// With a retry budget, Envoy allows retries up to a share of the
    /// active and pending requests, but never fewer than the minimum.
    fn retry_limit(&self) -> u32 {
        match &self.budget {
            None => self.thresholds.max_retries,
            Some(b) => {
                let outstanding = self.active(Resource::Requests) + self.active(Resource::PendingRequests);
                let share = (b.percent / 100.0 * f64::from(outstanding)) as u32;
                share.max(b.min_retry_concurrency)
            }
        }
    }

    /// Take one unit of `resource`, or `None` (counted as an overflow) when
    /// the limit is reached.
    pub fn try_acquire(self: &Arc<Self>, resource: Resource) -> Option<Permit> {
        let limit = self.limit(resource);
        let counter = self.counter(resource);
        let admitted =
            counter.active.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1)).is_ok();
        if admitted {
            Some(Permit { breaker: Arc::clone(self), resource })
        } else {
            counter.overflows.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    pub fn active(&self, resource: Resource) -> u32 {
        self.counter(resource).active.load(Ordering::Acquire)
    }

    pub fn overflows(&self, resource: Resource) -> u64 {
        self.counter(resource).overflows.load(Ordering::Relaxed)
    }

    pub fn thresholds(&self) -> &CircuitBreakerThresholds {
        &self.thresholds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_then_overflows_and_recovers() {
        let cb = CircuitBreaker::new(CircuitBreakerThresholds { max_requests: 2, ..Default::default() }, None);
        let a = cb.try_acquire(Resource::Requests).unwrap();
        let _b = cb.try_acquire(Resource::Requests).unwrap();
        assert!(cb.try_acquire(Resource::Requests).is_none());
        assert_eq!(cb.overflows(Resource::Requests), 1);
        drop(a);
        assert!(cb.try_acquire(Resource::Requests).is_some());
        assert_eq!(cb.active(Resource::Requests), 1);
    }

    #[test]
    fn concurrent_admission_never_exceeds_limit() {
        let cb = CircuitBreaker::new(CircuitBreakerThresholds { max_pending_requests: 10, ..Default::default() }, None);
        let peak = std::sync::Arc::new(AtomicU32::new(0));
        std::thread::scope(|s| {
            for _ in 0..4 {
                let cb = &cb;
                let peak = &peak;
                s.spawn(move || {
                    for _ in 0..10_000 {
                        if let Some(p) = cb.try_acquire(Resource::PendingRequests) {
                            peak.fetch_max(cb.active(Resource::PendingRequests), Ordering::Relaxed);
                            drop(p);
                        }
                    }
                });
            }
        });
        assert!(peak.load(Ordering::Relaxed) <= 10);
        assert_eq!(cb.active(Resource::PendingRequests), 0);
    }

    #[test]
    fn retry_budget_scales_with_outstanding_requests() {
        let cb = CircuitBreaker::new(
            Default::default(),
            Some(RetryBudgetConfig { percent: 20.0, min_retry_concurrency: 3 }),
        );
        let permits: Vec<_> = (0..50).map(|_| cb.try_acquire(Resource::Requests).unwrap()).collect();
        // 20% of 50 = 10 retries allowed.
        let retries: Vec<_> = (0..20).filter_map(|_| cb.try_acquire(Resource::Retries)).collect();
        assert_eq!(retries.len(), 10);
        drop(retries);
        drop(permits);
        let retries: Vec<_> = (0..20).filter_map(|_| cb.try_acquire(Resource::Retries)).collect();
        assert_eq!(retries.len(), 3, "the minimum concurrency holds with nothing outstanding");
    }
}
