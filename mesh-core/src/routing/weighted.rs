use crate::proxy_config::WeightedCluster;

/// Choose a destination by weight, with `draw` uniform over u64, as Envoy's
/// weighted clusters: `draw % total` falls into one destination's share.
pub fn pick_weighted(clusters: &[WeightedCluster], draw: u64) -> Option<&WeightedCluster> {
    let total: u64 = clusters.iter().map(|c| u64::from(c.weight)).sum();
    if total == 0 {
        return clusters.first();
    }
    let mut target = draw % total;
    for c in clusters {
        let w = u64::from(c.weight);
        if target < w {
            return Some(c);
        }
        target -= w;
    }
    clusters.last()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy_config::HeaderOps;

    fn wc(name: &str, weight: u32) -> WeightedCluster {
        WeightedCluster { cluster: name.into(), weight, headers: HeaderOps::default() }
    }

    #[test]
    fn shares_follow_weights() {
        let cs = [wc("a", 90), wc("b", 10), wc("zero", 0)];
        assert_eq!(pick_weighted(&cs, 0).unwrap().cluster, "a");
        assert_eq!(pick_weighted(&cs, 89).unwrap().cluster, "a");
        assert_eq!(pick_weighted(&cs, 90).unwrap().cluster, "b");
        assert_eq!(pick_weighted(&cs, 99).unwrap().cluster, "b");
        assert_eq!(pick_weighted(&cs, 100).unwrap().cluster, "a");
        assert!(pick_weighted(&[], 1).is_none());
    }
}
