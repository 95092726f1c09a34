//! Ketama ring hash, as Envoy builds it: each host gets hashes in
//! proportion to its weight, where hash `i` of a host is
//! `xxHash64("<ip:port>_<i>")`; the ring is sorted by hash and a request
//! goes to the first entry at or after its hash, wrapping around.

use xxhash_rust::xxh64::xxh64;

use super::{Host, LoadBalancer};

pub const DEFAULT_MIN_RING_SIZE: u64 = 1024;
pub const DEFAULT_MAX_RING_SIZE: u64 = 8 * 1024 * 1024;

pub struct RingHash {
    /// (hash, host index), sorted by hash.
    ring: Vec<(u64, u32)>,
}

impl RingHash {
    pub fn new(hosts: &[Host], min_ring_size: u64, max_ring_size: u64) -> RingHash {
        if hosts.is_empty() {
            return RingHash { ring: Vec::new() };
        }
        let total: f64 = hosts.iter().map(|h| f64::from(h.weight)).sum();
        let min_normalized = hosts.iter().map(|h| f64::from(h.weight) / total).fold(f64::INFINITY, f64::min);
        let min_ring = min_ring_size.clamp(1, max_ring_size) as f64;
        let scale = ((min_normalized * min_ring).ceil() / min_normalized).min(max_ring_size as f64);
        let mut ring = Vec::with_capacity(scale.ceil() as usize);
        let mut current = 0.0f64;
        let mut target = 0.0f64;
        let mut key = String::new();
        for (index, host) in hosts.iter().enumerate() {
            target += scale * (f64::from(host.weight) / total);
            let mut i = 0u64;
            while current < target {
                key.clear();
                key.push_str(&host.hash_key);
                key.push('_');
                key.push_str(itoa(i, &mut [0u8; 20]));
                ring.push((xxh64(key.as_bytes(), 0), index as u32));
                i += 1;
                current += 1.0;
            }
        }
        ring.sort_unstable_by_key(|(hash, _)| *hash);
        RingHash { ring }
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }
}

fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

impl LoadBalancer for RingHash {
    fn pick(&self, _hosts: &[Host], hash: Option<u64>) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        // Without a hash key Envoy picks a random point on the ring.
        let h = hash.unwrap_or_else(|| fastrand::u64(..));
        let at = self.ring.partition_point(|(entry, _)| *entry < h);
        let (_, host) = self.ring[if at == self.ring.len() { 0 } else { at }];
        Some(host as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::hosts;

    #[test]
    fn ring_size_follows_envoy_scaling() {
        let hs = hosts(3);
        let ring = RingHash::new(&hs, 1024, DEFAULT_MAX_RING_SIZE);
        // Each host gets ceil(1024 / 3) = 342 hashes' worth: scale = 342 * 3.
        assert_eq!(ring.len(), 1026);
        let mut weighted = hosts(2);
        weighted[0].weight = 3;
        let ring = RingHash::new(&weighted, 1024, DEFAULT_MAX_RING_SIZE);
        let for_heavy = ring.ring.iter().filter(|(_, h)| *h == 0).count();
        assert_eq!(for_heavy, (ring.len() - for_heavy) * 3);
    }

    #[test]
    fn same_key_same_host_and_minimal_disruption() {
        let hs = hosts(10);
        let ring = RingHash::new(&hs, 1024, DEFAULT_MAX_RING_SIZE);
        let keys: Vec<u64> = (0..10_000u64).map(|k| xxh64(&k.to_le_bytes(), 0)).collect();
        let before: Vec<usize> = keys.iter().map(|k| ring.pick(&hs, Some(*k)).unwrap()).collect();
        assert_eq!(before, keys.iter().map(|k| ring.pick(&hs, Some(*k)).unwrap()).collect::<Vec<_>>());
        // Removing host 9 moves its keys; the ring is rescaled for 9 hosts
        // (as Envoy does), so a few others move too, but only a few.
        let fewer = &hs[..9];
        let ring9 = RingHash::new(fewer, 1024, DEFAULT_MAX_RING_SIZE);
        let (mut stayed, mut others) = (0, 0);
        for (k, b) in keys.iter().zip(&before) {
            let after = ring9.pick(fewer, Some(*k)).unwrap();
            assert!(after < 9);
            if *b != 9 {
                others += 1;
                stayed += usize::from(after == *b);
            }
        }
        assert!(stayed * 100 >= others * 90, "{stayed} of {others} stayed");
        // Spread is roughly even.
        let mut counts = [0usize; 10];
        for b in before {
            counts[b] += 1;
        }
        assert!(counts.iter().all(|c| (700..1300).contains(c)), "{counts:?}");
    }

    #[test]
    fn lookup_wraps_around() {
        let hs = hosts(2);
        let ring = RingHash::new(&hs, 4, 16);
        let first_host = ring.ring[0].1 as usize;
        assert_eq!(ring.pick(&hs, Some(u64::MAX)), Some(first_host));
        assert_eq!(ring.pick(&hs, Some(0)), Some(first_host));
    }
}
