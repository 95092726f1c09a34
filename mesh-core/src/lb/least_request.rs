//! Least request. With equal weights this is Envoy's power of `choice_count`
//! choices (default 2): draw that many hosts at random (with replacement)
//! and take the one with the fewest requests in flight. With unequal
//! weights the draws are weighted and the comparison is requests in flight
//! per unit of weight, which keeps traffic proportional to weight when hosts
//! are equally fast (Envoy uses an EDF scheduler with the same intent).

use super::random::pick_cumulative;
use super::{cumulative_weights, Host, LoadBalancer};

pub struct LeastRequest {
    choice_count: u32,
    cumulative: Vec<u64>,
}

impl LeastRequest {
    pub fn new(hosts: &[Host], choice_count: u32) -> LeastRequest {
        LeastRequest { choice_count: choice_count.max(1), cumulative: cumulative_weights(hosts) }
    }
}

impl LoadBalancer for LeastRequest {
    fn pick(&self, hosts: &[Host], _hash: Option<u64>) -> Option<usize> {
        let n = hosts.len();
        if n <= 1 {
            return (n == 1).then_some(0);
        }
        let draw = || {
            if self.cumulative.is_empty() {
                fastrand::usize(..n)
            } else {
                pick_cumulative(&self.cumulative, fastrand::u64(..))
            }
        };
        let mut best = draw();
        for _ in 1..self.choice_count {
            let candidate = draw();
            let (b, c) = (&hosts[best], &hosts[candidate]);
            // c.active / c.weight < b.active / b.weight, without division.
            if u64::from(c.active()) * u64::from(b.weight) < u64::from(b.active()) * u64::from(c.weight) {
                best = candidate;
            }
        }
        Some(best)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::lb::hosts;

    #[test]
    fn busy_host_is_avoided() {
        let hs = hosts(2);
        hs[0].active_requests.store(10, Ordering::Relaxed);
        let lr = LeastRequest::new(&hs, 2);
        fastrand::seed(5);
        let picks_of_busy = (0..10_000).filter(|_| lr.pick(&hs, None) == Some(0)).count();
        // The busy host wins only when both draws land on it: 1/4.
        let share = picks_of_busy as f64 / 10_000.0;
        assert!((share - 0.25).abs() < 0.02, "{share}");
    }

    #[test]
    fn idle_hosts_share_evenly() {
        let hs = hosts(4);
        let lr = LeastRequest::new(&hs, 2);
        let mut counts = [0usize; 4];
        for _ in 0..40_000 {
            counts[lr.pick(&hs, None).unwrap()] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }
}
