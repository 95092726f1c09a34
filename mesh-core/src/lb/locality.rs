//! Locality-aware balancing as Istio configures Envoy: endpoints get a
//! priority by how close their locality is to the proxy's (failover), load
//! spills to lower priorities as health drops (Envoy's overprovisioning
//! factor 1.4), and `distribute` rules give localities explicit weights.

use std::ops::Range;

use super::{Host, LoadBalancer};
use crate::model::Locality;
use crate::proxy_config::LbPolicy;

/// Envoy's default overprovisioning factor, in percent.
pub const OVERPROVISIONING_FACTOR: u32 = 140;

/// Istio's failover priority of an endpoint: 0 for the same
/// region/zone/subzone, 1 same zone, 2 same region, then 3 for a region a
/// `failover` rule names for the proxy's region, and 4 for the rest (3 when
/// there are no rules).
pub fn failover_priority(proxy: &Locality, endpoint: &Locality, failover: &[(String, String)]) -> u32 {
    if endpoint.region == proxy.region {
        if endpoint.zone == proxy.zone {
            if endpoint.subzone == proxy.subzone {
                return 0;
            }
            return 1;
        }
        return 2;
    }
    let rules: Vec<&str> =
        failover.iter().filter(|(from, _)| *from == proxy.region).map(|(_, to)| to.as_str()).collect();
    if rules.is_empty() || rules.contains(&endpoint.region.as_str()) {
        3
    } else {
        4
    }
}

/// Ranks `endpoints` for a proxy in `proxy`'s locality by
/// [`failover_priority`], numbered without gaps from 0 as Envoy requires
/// (Istio does the same).
pub fn assign_priorities(
    endpoints: &mut [crate::proxy_config::LbEndpoint],
    proxy: &Locality,
    failover: &[(String, String)],
) {
    let raw: Vec<u32> = endpoints.iter().map(|e| failover_priority(proxy, &e.locality, failover)).collect();
    let mut levels = raw.clone();
    levels.sort_unstable();
    levels.dedup();
    for (e, p) in endpoints.iter_mut().zip(raw) {
        e.priority = levels.iter().position(|l| *l == p).unwrap_or(0) as u32;
    }
}

/// Envoy's split of load (percent, summing to 100) across priority levels,
/// given each level's healthy share (healthy weight / total weight, 0..=1).
pub fn priority_load(healthy_share: &[f64]) -> Vec<u32> {
    let availability: Vec<u32> =
        healthy_share.iter().map(|s| ((f64::from(OVERPROVISIONING_FACTOR) * s).floor() as u32).min(100)).collect();
    let mut load = vec![0u32; availability.len()];
    if load.is_empty() {
        return load;
    }
    let total: u32 = availability.iter().sum::<u32>().min(100);
    if total == 0 {
        // Nothing healthy anywhere: Envoy sends everything to P0 (panic).
        load[0] = 100;
        return load;
    }
    let mut remaining = 100u32;
    let mut first_available = None;
    for (i, a) in availability.iter().enumerate() {
        if first_available.is_none() && *a > 0 {
            first_available = Some(i);
        }
        load[i] = remaining.min(a * 100 / total);
        remaining -= load[i];
    }
    if let Some(first) = first_available {
        load[first] += remaining;
    }
    load
}

/// Pick a priority level from a load split, with `draw` uniform in 0..100.
pub fn choose_priority(load: &[u32], draw: u32) -> usize {
    let mut acc = 0;
    for (i, l) in load.iter().enumerate() {
        acc += l;
        if draw < acc {
            return i;
        }
    }
    0
}

/// A cluster's hosts split into priority levels, each with its own
/// balancer: pick a level by the current priority load, then a host in it.
/// Hosts must be ordered by priority, so each level is a range of them.
pub struct PriorityLevels {
    ranges: Vec<Range<usize>>,
    balancers: Vec<Box<dyn LoadBalancer>>,
}

impl PriorityLevels {
    /// `priorities[i]` is the level of `hosts[i]` (ascending).
    pub fn new(policy: &LbPolicy, hosts: &[Host], priorities: &[u32]) -> PriorityLevels {
        let mut ranges: Vec<Range<usize>> = Vec::new();
        for (i, p) in priorities.iter().enumerate() {
            match ranges.last_mut() {
                Some(r) if priorities[r.start] == *p => r.end = i + 1,
                _ => ranges.push(i..i + 1),
            }
        }
        let balancers = ranges.iter().map(|r| super::build(policy, &hosts[r.clone()])).collect();
        PriorityLevels { ranges, balancers }
    }

    pub fn levels(&self) -> usize {
        self.ranges.len()
    }

    /// The hosts of each level, to compute their healthy share.
    pub fn level_ranges(&self) -> &[Range<usize>] {
        &self.ranges
    }

    /// Pick a host index of `hosts`, choosing the level by `load` (from
    /// [`priority_load`]) with `draw` uniform in 0..100.
    pub fn pick(&self, hosts: &[Host], hash: Option<u64>, load: &[u32], draw: u32) -> Option<usize> {
        let level = choose_priority(load, draw).min(self.ranges.len().checked_sub(1)?);
        let range = self.ranges[level].clone();
        let start = range.start;
        self.balancers[level].pick(&hosts[range], hash).map(|i| start + i)
    }
}

/// Does a locality pattern (`region/zone/subzone`, `*` for any part or
/// as a trailing wildcard) cover a locality?
pub fn locality_matches(pattern: &str, locality: &Locality) -> bool {
    let parts = [locality.region.as_str(), locality.zone.as_str(), locality.subzone.as_str()];
    for (i, p) in pattern.split('/').enumerate() {
        if p == "*" {
            if i == pattern.split('/').count() - 1 {
                return true;
            }
            continue;
        }
        if parts.get(i) != Some(&p) {
            return false;
        }
    }
    true
}

/// Per-endpoint weights under Istio's `distribute`: the first rule whose
/// `from` covers the proxy splits traffic across `to` localities by the
/// given percentages; within a locality, endpoints share by their own
/// weight. Endpoints in no `to` locality get 0. `None` when no rule applies.
pub fn distribute_weights(
    proxy: &Locality,
    endpoints: &[(Locality, u32)],
    rules: &[(String, Vec<(String, u32)>)],
) -> Option<Vec<u32>> {
    let (_, to) = rules.iter().find(|(from, _)| locality_matches(from, proxy))?;
    let mut weights = vec![0u64; endpoints.len()];
    for (pattern, percent) in to {
        let members: Vec<usize> =
            (0..endpoints.len()).filter(|i| weights[*i] == 0 && locality_matches(pattern, &endpoints[*i].0)).collect();
        let total: u64 = members.iter().map(|i| u64::from(endpoints[*i].1.max(1))).sum();
        for i in members {
            // Scale to keep integer precision: percent * 1000 shared by weight.
            weights[i] = (u64::from(*percent) * 1000 * u64::from(endpoints[i].1.max(1)) / total.max(1)).max(1);
        }
    }
    Some(weights.into_iter().map(|w| w.min(u64::from(u32::MAX)) as u32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(s: &str) -> Locality {
        Locality::parse(s)
    }

    #[test]
    fn failover_priorities() {
        let me = loc("us-east/a/1");
        assert_eq!(failover_priority(&me, &loc("us-east/a/1"), &[]), 0);
        assert_eq!(failover_priority(&me, &loc("us-east/a/2"), &[]), 1);
        assert_eq!(failover_priority(&me, &loc("us-east/b/1"), &[]), 2);
        assert_eq!(failover_priority(&me, &loc("eu/a/1"), &[]), 3);
        let rules = [("us-east".to_string(), "us-west".to_string())];
        assert_eq!(failover_priority(&me, &loc("us-west/a/1"), &rules), 3);
        assert_eq!(failover_priority(&me, &loc("eu/a/1"), &rules), 4);
    }

    #[test]
    fn priority_load_spills_as_envoy_documents() {
        // Envoy's docs: P0 100% healthy takes everything.
        assert_eq!(priority_load(&[1.0, 1.0]), [100, 0]);
        // 72% healthy * 1.4 = 100.8 -> still all of it.
        assert_eq!(priority_load(&[0.72, 1.0]), [100, 0]);
        // 71% * 1.4 = 99 -> 1% spills.
        assert_eq!(priority_load(&[0.71, 1.0]), [99, 1]);
        // 50% * 1.4 = 70 -> 70/30.
        assert_eq!(priority_load(&[0.5, 1.0]), [70, 30]);
        // 25% and 25%: 35 + 35 = 70 total, normalized to 50/50.
        assert_eq!(priority_load(&[0.25, 0.25]), [50, 50]);
        assert_eq!(priority_load(&[0.0, 0.0]), [100, 0]);
        assert_eq!(priority_load(&[0.0, 0.5, 1.0]), [0, 70, 30]);
    }

    #[test]
    fn choose_priority_by_draw() {
        let load = [70, 30];
        assert_eq!(choose_priority(&load, 0), 0);
        assert_eq!(choose_priority(&load, 69), 0);
        assert_eq!(choose_priority(&load, 70), 1);
        assert_eq!(choose_priority(&load, 99), 1);
    }

    #[test]
    fn distribute_splits_by_locality_then_weight() {
        let eps = vec![(loc("r/z1/s"), 1), (loc("r/z1/s"), 3), (loc("r/z2/s"), 1), (loc("other/x/y"), 1)];
        let rules = vec![("r/z1/*".to_string(), vec![("r/z1/*".to_string(), 80), ("r/z2/*".to_string(), 20)])];
        let w = distribute_weights(&loc("r/z1/s"), &eps, &rules).unwrap();
        assert_eq!(w[0] + w[1], 80_000);
        assert_eq!(w[1], 3 * w[0]);
        assert_eq!(w[2], 20_000);
        assert_eq!(w[3], 0);
        assert!(distribute_weights(&loc("elsewhere/a/b"), &eps, &rules).is_none());
    }

    #[test]
    fn priority_levels_pick_by_load() {
        let me = loc("r/z1/s");
        let localities = [loc("r/z1/s"), loc("r/z1/s"), loc("r/z2/s"), loc("x/y/z")];
        let hosts: Vec<Host> = (0..4).map(|i| Host::new(&format!("10.0.0.{i}"), 80, 1)).collect();
        let priorities: Vec<u32> = localities.iter().map(|l| failover_priority(&me, l, &[])).collect();
        assert_eq!(priorities, [0, 0, 2, 3]);
        let levels = PriorityLevels::new(&LbPolicy::RoundRobin, &hosts, &priorities);
        assert_eq!(levels.levels(), 3);
        let all_local = priority_load(&[1.0, 1.0, 1.0]);
        let mut rng = fastrand::Rng::with_seed(9);
        for _ in 0..100 {
            assert!(levels.pick(&hosts, None, &all_local, rng.u32(..100)).unwrap() < 2);
        }
        // Half the local hosts are out: 70% stays local, 30% spills over.
        let load = priority_load(&[0.5, 1.0, 1.0]);
        let n = 10_000;
        let local = (0..n).filter(|_| levels.pick(&hosts, None, &load, rng.u32(..100)).unwrap() < 2).count();
        assert!((local as f64 / n as f64 - 0.7).abs() < 0.02, "{local}");
    }

    #[test]
    fn locality_patterns() {
        assert!(locality_matches("*", &loc("a/b/c")));
        assert!(locality_matches("a/*", &loc("a/b/c")));
        assert!(locality_matches("a/b/c", &loc("a/b/c")));
        assert!(!locality_matches("a/x/*", &loc("a/b/c")));
        assert!(locality_matches("a/*/c", &loc("a/b/c")));
    }
}
