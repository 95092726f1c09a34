//! Passive outlier detection as Envoy does it: consecutive 5xx / gateway
//! errors / local-origin failures eject a host at once; ejected hosts come
//! back on an interval sweep after `base_ejection_time` times the host's
//! ejection count (capped by `max_ejection_time`); a host that stays healthy
//! through a sweep has its count lowered again. At most
//! `max_ejection_percent` of hosts are out at once.
//!
//! Time is passed in (time since the detector started), so the state machine
//! is pure and testable; reads are lock-free.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::proxy_config::OutlierDetectionConfig;

const NOT_EJECTED: u64 = u64::MAX;

/// What one request to a host showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observation {
    /// The upstream answered with this HTTP status.
    Status(u16),
    /// The proxy could not reach the host: refused, reset, or timed out.
    LocalOriginFailure,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EjectionReason {
    Consecutive5xx,
    ConsecutiveGatewayErrors,
    ConsecutiveLocalOriginFailures,
}

#[derive(Debug)]
struct HostState {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    /// Milliseconds since start when ejected, or `NOT_EJECTED`.
    ejected_at_ms: AtomicU64,
    /// Multiplier of the base ejection time (Envoy's eject time backoff).
    backoff: AtomicU32,
    ejections: AtomicU64,
}

impl Default for HostState {
    fn default() -> Self {
        HostState {
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            consecutive_local: AtomicU32::new(0),
            ejected_at_ms: AtomicU64::new(NOT_EJECTED),
            backoff: AtomicU32::new(0),
            ejections: AtomicU64::new(0),
        }
    }
}

#[derive(Debug)]
pub struct OutlierDetector {
    config: OutlierDetectionConfig,
    hosts: Vec<HostState>,
    ejected: AtomicU32,
}

impl OutlierDetector {
    pub fn new(config: OutlierDetectionConfig, host_count: usize) -> OutlierDetector {
        OutlierDetector {
            config,
            hosts: (0..host_count).map(|_| HostState::default()).collect(),
            ejected: AtomicU32::new(0),
        }
    }

    pub fn config(&self) -> &OutlierDetectionConfig {
        &self.config
    }

    pub fn is_ejected(&self, host: usize) -> bool {
        self.hosts.get(host).is_some_and(|h| h.ejected_at_ms.load(Ordering::Acquire) != NOT_EJECTED)
    }

    pub fn ejected_count(&self) -> u32 {
        self.ejected.load(Ordering::Acquire)
    }

    /// Total ejections of a host so far.
    pub fn ejections(&self, host: usize) -> u64 {
        self.hosts.get(host).map_or(0, |h| h.ejections.load(Ordering::Relaxed))
    }

    /// Record the result of one request; returns why the host was ejected,
    /// if this ejected it.
    pub fn record(&self, host: usize, observation: Observation, now: Duration) -> Option<EjectionReason> {
        let h = self.hosts.get(host)?;
        let cfg = &self.config;
        let bump = |counter: &AtomicU32, threshold: Option<u32>| -> bool {
            let n = counter.fetch_add(1, Ordering::AcqRel) + 1;
            threshold.is_some_and(|t| n == t)
        };
        let status = match observation {
            Observation::LocalOriginFailure if cfg.split_external_local_origin_errors => {
                return if bump(&h.consecutive_local, cfg.consecutive_local_origin_failures) {
                    self.eject(host, now).then_some(EjectionReason::ConsecutiveLocalOriginFailures)
                } else {
                    None
                };
            }
            // Unsplit, Envoy counts a local failure as a 503 from the host.
            Observation::LocalOriginFailure => 503,
            Observation::Status(s) => s,
        };
        if !(500..600).contains(&status) {
            h.consecutive_5xx.store(0, Ordering::Release);
            h.consecutive_gateway.store(0, Ordering::Release);
            if matches!(observation, Observation::Status(_)) && cfg.split_external_local_origin_errors {
                h.consecutive_local.store(0, Ordering::Release);
            }
            return None;
        }
        let mut reason = None;
        if matches!(status, 502..=504) {
            if bump(&h.consecutive_gateway, cfg.consecutive_gateway_errors) {
                reason = Some(EjectionReason::ConsecutiveGatewayErrors);
            }
        } else {
            h.consecutive_gateway.store(0, Ordering::Release);
        }
        if bump(&h.consecutive_5xx, cfg.consecutive_5xx) && reason.is_none() {
            reason = Some(EjectionReason::Consecutive5xx);
        }
        reason.filter(|_| self.eject(host, now))
    }

    fn eject(&self, host: usize, now: Duration) -> bool {
        let h = &self.hosts[host];
        if h.ejected_at_ms.load(Ordering::Acquire) != NOT_EJECTED {
            return false;
        }
        let total = self.hosts.len() as u64;
        let admitted = self
            .ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (100 * (u64::from(n) + 1) <= u64::from(self.config.max_ejection_percent) * total).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            return false;
        }
        let now_ms = now.as_millis() as u64;
        if h.ejected_at_ms.compare_exchange(NOT_EJECTED, now_ms, Ordering::AcqRel, Ordering::Acquire).is_err() {
            self.ejected.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        let base = self.config.base_ejection_time;
        let backoff = h.backoff.load(Ordering::Acquire);
        if base * backoff < self.config.max_ejection_time {
            h.backoff.fetch_add(1, Ordering::AcqRel);
        }
        h.ejections.fetch_add(1, Ordering::Relaxed);
        for c in [&h.consecutive_5xx, &h.consecutive_gateway, &h.consecutive_local] {
            c.store(0, Ordering::Release);
        }
        true
    }

    /// The interval sweep: bring back hosts whose ejection time is over,
    /// and lower the backoff of hosts that stayed in. Returns the hosts
    /// brought back.
    pub fn sweep(&self, now: Duration) -> Vec<usize> {
        let now_ms = now.as_millis() as u64;
        let base = self.config.base_ejection_time;
        let cap = self.config.max_ejection_time.max(base);
        let mut restored = Vec::new();
        for (i, h) in self.hosts.iter().enumerate() {
            let at = h.ejected_at_ms.load(Ordering::Acquire);
            if at == NOT_EJECTED {
                let _ = h.backoff.fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| b.checked_sub(1));
                continue;
            }
            let ejection = (base * h.backoff.load(Ordering::Acquire)).min(cap);
            if now_ms.saturating_sub(at) >= ejection.as_millis() as u64
                && h.ejected_at_ms.compare_exchange(at, NOT_EJECTED, Ordering::AcqRel, Ordering::Acquire).is_ok()
            {
                self.ejected.fetch_sub(1, Ordering::AcqRel);
                restored.push(i);
            }
        }
        restored
    }

    /// Envoy's panic mode: when fewer than `min_health_percent` of hosts
    /// are available, balance across all of them, ejected or not.
    pub fn in_panic(&self, unhealthy_besides_ejected: usize) -> bool {
        let total = self.hosts.len();
        if total == 0 || self.config.min_health_percent == 0 {
            return false;
        }
        let available = total.saturating_sub(self.ejected_count() as usize + unhealthy_besides_ejected);
        (available * 100) < (self.config.min_health_percent as usize * total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> OutlierDetectionConfig {
        OutlierDetectionConfig {
            consecutive_5xx: Some(3),
            consecutive_gateway_errors: None,
            consecutive_local_origin_failures: None,
            split_external_local_origin_errors: false,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 100,
            min_health_percent: 0,
        }
    }

    const T0: Duration = Duration::ZERO;

    #[test]
    fn consecutive_5xx_ejects_and_a_success_resets_the_count() {
        let d = OutlierDetector::new(config(), 4);
        d.record(0, Observation::Status(500), T0);
        d.record(0, Observation::Status(503), T0);
        d.record(0, Observation::Status(200), T0);
        d.record(0, Observation::Status(500), T0);
        assert!(!d.is_ejected(0));
        d.record(0, Observation::Status(500), T0);
        assert_eq!(d.record(0, Observation::LocalOriginFailure, T0), Some(EjectionReason::Consecutive5xx));
        assert!(d.is_ejected(0));
        assert_eq!(d.ejected_count(), 1);
    }

    #[test]
    fn ejection_time_grows_with_each_ejection_and_decays_when_healthy() {
        let d = OutlierDetector::new(config(), 2);
        let eject = |at: Duration| {
            for _ in 0..3 {
                d.record(0, Observation::Status(502), at);
            }
            assert!(d.is_ejected(0));
        };
        eject(T0);
        assert!(d.sweep(Duration::from_secs(20)).is_empty(), "30s not yet over");
        assert_eq!(d.sweep(Duration::from_secs(30)), [0]);
        // Second ejection: 2 x 30s.
        eject(Duration::from_secs(40));
        assert!(d.sweep(Duration::from_secs(90)).is_empty());
        assert_eq!(d.sweep(Duration::from_secs(100)), [0]);
        // Two healthy sweeps bring the multiplier from 2 back to 0, so the
        // next ejection lasts the base time again.
        d.sweep(Duration::from_secs(110));
        d.sweep(Duration::from_secs(120));
        eject(Duration::from_secs(130));
        assert_eq!(d.sweep(Duration::from_secs(160)), [0]);
    }

    #[test]
    fn ejection_time_is_capped() {
        let mut c = config();
        c.max_ejection_time = Duration::from_secs(60);
        let d = OutlierDetector::new(c, 1);
        let mut now = T0;
        for _ in 0..5 {
            for _ in 0..3 {
                d.record(0, Observation::Status(500), now);
            }
            assert!(d.is_ejected(0));
            now += Duration::from_secs(60);
            assert_eq!(d.sweep(now), [0], "never out longer than the cap");
        }
    }

    #[test]
    fn max_ejection_percent_limits_ejections() {
        let mut c = config();
        c.max_ejection_percent = 50;
        let d = OutlierDetector::new(c, 4);
        for host in 0..4 {
            for _ in 0..3 {
                d.record(host, Observation::Status(500), T0);
            }
        }
        assert_eq!(d.ejected_count(), 2);
        // Envoy's default of 10% ejects nothing from a pool of 4.
        let d = OutlierDetector::new(OutlierDetectionConfig { max_ejection_percent: 10, ..config() }, 4);
        for _ in 0..3 {
            d.record(0, Observation::Status(500), T0);
        }
        assert_eq!(d.ejected_count(), 0);
    }

    #[test]
    fn gateway_errors_and_split_local_origin() {
        let mut c = config();
        c.consecutive_5xx = None;
        c.consecutive_gateway_errors = Some(2);
        let d = OutlierDetector::new(c.clone(), 2);
        d.record(0, Observation::Status(500), T0);
        d.record(0, Observation::Status(500), T0);
        assert!(!d.is_ejected(0), "500 is not a gateway error");
        d.record(0, Observation::Status(504), T0);
        assert_eq!(d.record(0, Observation::Status(503), T0), Some(EjectionReason::ConsecutiveGatewayErrors));

        c.split_external_local_origin_errors = true;
        c.consecutive_local_origin_failures = Some(2);
        let d = OutlierDetector::new(c, 2);
        d.record(1, Observation::LocalOriginFailure, T0);
        assert_eq!(
            d.record(1, Observation::LocalOriginFailure, T0),
            Some(EjectionReason::ConsecutiveLocalOriginFailures)
        );
    }

    #[test]
    fn panic_threshold() {
        let mut c = config();
        c.min_health_percent = 50;
        let d = OutlierDetector::new(c, 4);
        assert!(!d.in_panic(0));
        for host in 0..3 {
            for _ in 0..3 {
                d.record(host, Observation::Status(500), T0);
            }
        }
        assert!(d.in_panic(0), "1 of 4 available is under 50%");
    }
}
