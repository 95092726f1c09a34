//! Random choice, weighted when weights differ (binary search over the
//! cumulative weights).

use super::{cumulative_weights, Host, LoadBalancer};

pub struct Random {
    /// Cumulative weights; empty when all weights are equal.
    cumulative: Vec<u64>,
}

impl Random {
    pub fn new(hosts: &[Host]) -> Random {
        Random { cumulative: cumulative_weights(hosts) }
    }
}

/// A weighted pick over cumulative weights.
pub(crate) fn pick_cumulative(cumulative: &[u64], draw: u64) -> usize {
    let total = cumulative.last().copied().unwrap_or(1);
    let target = draw % total;
    cumulative.partition_point(|c| *c <= target)
}

impl LoadBalancer for Random {
    fn pick(&self, hosts: &[Host], _hash: Option<u64>) -> Option<usize> {
        if hosts.is_empty() {
            return None;
        }
        Some(if self.cumulative.is_empty() {
            fastrand::usize(..hosts.len())
        } else {
            pick_cumulative(&self.cumulative, fastrand::u64(..))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::hosts;

    #[test]
    fn weighted_random_follows_weights() {
        let mut hs = hosts(2);
        hs[0].weight = 3;
        let r = Random::new(&hs);
        fastrand::seed(3);
        let n = 40_000;
        let zeros = (0..n).filter(|_| r.pick(&hs, None) == Some(0)).count();
        let share = zeros as f64 / n as f64;
        assert!((share - 0.75).abs() < 0.01, "{share}");
    }

    #[test]
    fn cumulative_boundaries() {
        let c = [3, 4, 10];
        assert_eq!(pick_cumulative(&c, 0), 0);
        assert_eq!(pick_cumulative(&c, 2), 0);
        assert_eq!(pick_cumulative(&c, 3), 1);
        assert_eq!(pick_cumulative(&c, 4), 2);
        assert_eq!(pick_cumulative(&c, 9), 2);
    }
}
