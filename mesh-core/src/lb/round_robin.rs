//! Weighted round robin. The schedule is computed once with smooth weighted
//! round robin (hosts interleaved in proportion to weight, as Envoy's EDF
//! scheduler does); a pick is one atomic increment.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{uniform_weights, Host, LoadBalancer};

pub struct RoundRobin {
    /// Host indices in visiting order; empty means "0..n in order".
    schedule: Vec<u32>,
    next: AtomicUsize,
}

/// Past this many slots, weights are scaled down to keep the schedule small.
const MAX_SCHEDULE: u64 = 1 << 16;

impl RoundRobin {
    pub fn new(hosts: &[Host]) -> RoundRobin {
        // Envoy starts each balancer at a random host so that many proxies
        // do not all hit the first host first.
        let start = if hosts.is_empty() { 0 } else { fastrand::usize(..hosts.len()) };
        let schedule = if uniform_weights(hosts) { Vec::new() } else { smooth_schedule(hosts) };
        RoundRobin { schedule, next: AtomicUsize::new(start) }
    }
}

fn smooth_schedule(hosts: &[Host]) -> Vec<u32> {
    let total: u64 = hosts.iter().map(|h| u64::from(h.weight)).sum();
    let divisor = total.div_ceil(MAX_SCHEDULE).max(1);
    let weights: Vec<i64> = hosts.iter().map(|h| (u64::from(h.weight) / divisor).max(1) as i64).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; hosts.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..weights.len() {
            current[i] += weights[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best as u32);
    }
    schedule
}

impl LoadBalancer for RoundRobin {
    fn pick(&self, hosts: &[Host], _hash: Option<u64>) -> Option<usize> {
        if hosts.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Some(if self.schedule.is_empty() { n % hosts.len() } else { self.schedule[n % self.schedule.len()] as usize })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::hosts;

    #[test]
    fn visits_every_host_in_turn() {
        let hs = hosts(5);
        let rr = RoundRobin::new(&hs);
        let first = rr.pick(&hs, None).unwrap();
        for i in 1..20 {
            assert_eq!(rr.pick(&hs, None).unwrap(), (first + i) % 5);
        }
    }

    #[test]
    fn weights_are_interleaved_and_proportional() {
        let mut hs = hosts(3);
        hs[0].weight = 5;
        hs[1].weight = 1;
        hs[2].weight = 1;
        let rr = RoundRobin::new(&hs);
        let picks: Vec<usize> = (0..7).map(|_| rr.pick(&hs, None).unwrap()).collect();
        assert_eq!(picks.iter().filter(|p| **p == 0).count(), 5);
        // Smooth: never more than 3 of the heavy host in a row in a cycle
        // of 7 with two light hosts spread out.
        let schedule = smooth_schedule(&hs);
        assert_eq!(schedule, [0, 0, 1, 0, 2, 0, 0]);
    }
}
