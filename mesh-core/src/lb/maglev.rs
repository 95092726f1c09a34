//! Maglev consistent hashing, as Envoy builds the table: each host has an
//! offset `xxHash64(key) % M` and a skip `xxHash64(key, seed 1) % (M-1) + 1`
//! and fills its next free preferred slot in turn, weighted hosts more often;
//! a request goes to `table[hash % M]`.

use xxhash_rust::xxh64::xxh64;

use super::{Host, LoadBalancer};

/// Envoy's default table size (a prime).
pub const DEFAULT_TABLE_SIZE: u64 = 65537;

pub struct Maglev {
    table: Vec<u32>,
}

impl Maglev {
    pub fn new(hosts: &[Host], table_size: u64) -> Maglev {
        let size = table_size.max(2);
        if hosts.is_empty() {
            return Maglev { table: Vec::new() };
        }
        let total: f64 = hosts.iter().map(|h| f64::from(h.weight)).sum();
        struct Entry {
            /// The host's index in `hosts`.
            host: u32,
            weight: f64,
            target: f64,
            /// The host's next candidate slot: offset + skip * next, mod M,
            /// kept incrementally to avoid a multiply and a modulo per step.
            slot: u64,
            skip: u64,
        }
        // Envoy fills the table in the order of the hosts' hash keys, so
        // that the same hosts give the same table whatever order they were
        // listed in; contested slots go to whoever comes first.
        let mut order: Vec<usize> = (0..hosts.len()).collect();
        order.sort_by(|a, b| hosts[*a].hash_key.cmp(&hosts[*b].hash_key).then(a.cmp(b)));
        let mut entries: Vec<Entry> = order
            .into_iter()
            .map(|i| {
                let h = &hosts[i];
                let key = h.hash_key.as_bytes();
                Entry {
                    host: i as u32,
                    weight: f64::from(h.weight) / total,
                    target: 0.0,
                    slot: xxh64(key, 0) % size,
                    skip: xxh64(key, 1) % (size - 1) + 1,
                }
            })
            .collect();
        let max_weight = entries.iter().map(|e| e.weight).fold(0.0, f64::max);
        let mut table = vec![u32::MAX; size as usize];
        let mut filled = 0u64;
        let mut iteration = 1u64;
        while filled < size {
            for e in entries.iter_mut() {
                if filled == size {
                    break;
                }
                // A host of the largest weight takes a slot every round, one
                // of a third of it every third round.
                if (iteration as f64) * e.weight < e.target {
                    continue;
                }
                e.target += max_weight;
                while table[e.slot as usize] != u32::MAX {
                    e.slot += e.skip;
                    if e.slot >= size {
                        e.slot -= size;
                    }
                }
                table[e.slot as usize] = e.host;
                e.slot += e.skip;
                if e.slot >= size {
                    e.slot -= size;
                }
                filled += 1;
            }
            iteration += 1;
        }
        Maglev { table }
    }

    pub fn table(&self) -> &[u32] {
        &self.table
    }
}

impl LoadBalancer for Maglev {
    fn pick(&self, _hosts: &[Host], hash: Option<u64>) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let h = hash.unwrap_or_else(|| fastrand::u64(..));
        Some(self.table[(h % self.table.len() as u64) as usize] as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::hosts;

    /// Envoy builds the table in hash-key order, so the same hosts listed
    /// in another order give the same table.
    #[test]
    fn table_does_not_depend_on_host_order() {
        let spec: Vec<(u16, u32)> = (0..40u16).map(|i| (8000 + i, u32::from(i % 5) + 1)).collect();
        let forward: Vec<Host> = spec.iter().map(|(p, w)| Host::new("10.0.0.1", *p, *w)).collect();
        let backward: Vec<Host> = spec.iter().rev().map(|(p, w)| Host::new("10.0.0.1", *p, *w)).collect();
        let (a, b) = (Maglev::new(&forward, DEFAULT_TABLE_SIZE), Maglev::new(&backward, DEFAULT_TABLE_SIZE));
        let differ = a
            .table()
            .iter()
            .zip(b.table())
            .filter(|(x, y)| forward[**x as usize].hash_key != backward[**y as usize].hash_key)
            .count();
        assert_eq!(differ, 0, "{differ} of {DEFAULT_TABLE_SIZE} slots differ");
    }

    #[test]
    fn table_is_full_and_balanced() {
        let hs = hosts(7);
        let m = Maglev::new(&hs, DEFAULT_TABLE_SIZE);
        let mut counts = [0usize; 7];
        for h in m.table() {
            counts[*h as usize] += 1;
        }
        let ideal = DEFAULT_TABLE_SIZE as usize / 7;
        for c in counts {
            assert!(c.abs_diff(ideal) <= 1, "{counts:?}");
        }
    }

    #[test]
    fn weights_scale_table_share() {
        let mut hs = hosts(2);
        hs[0].weight = 3;
        let m = Maglev::new(&hs, 101);
        let heavy = m.table().iter().filter(|h| **h == 0).count();
        assert!((74..=77).contains(&heavy), "{heavy} of 101");
    }

    #[test]
    fn small_table_matches_the_maglev_paper_procedure() {
        // Recompute the table the slow, obvious way (offset + skip * next)
        // and compare with the incremental build.
        let hs = hosts(3);
        let m = 13u64;
        let built = Maglev::new(&hs, m);
        let perms: Vec<(u64, u64)> = hs
            .iter()
            .map(|h| (xxh64(h.hash_key.as_bytes(), 0) % m, xxh64(h.hash_key.as_bytes(), 1) % (m - 1) + 1))
            .collect();
        let mut next = [0u64; 3];
        let mut table = vec![u32::MAX; m as usize];
        let mut filled = 0;
        'outer: loop {
            for i in 0..3 {
                let mut c = (perms[i].0 + perms[i].1 * next[i]) % m;
                while table[c as usize] != u32::MAX {
                    next[i] += 1;
                    c = (perms[i].0 + perms[i].1 * next[i]) % m;
                }
                table[c as usize] = i as u32;
                next[i] += 1;
                filled += 1;
                if filled == m {
                    break 'outer;
                }
            }
        }
        assert_eq!(built.table(), &table[..]);
    }

    #[test]
    fn removing_a_host_moves_few_keys() {
        let hs = hosts(10);
        let full = Maglev::new(&hs, DEFAULT_TABLE_SIZE);
        let fewer = Maglev::new(&hs[..9], DEFAULT_TABLE_SIZE);
        let moved = full.table().iter().zip(fewer.table()).filter(|(a, b)| **a != 9 && a != b).count();
        // Maglev trades a little disruption for balance: a few percent.
        assert!(moved < DEFAULT_TABLE_SIZE as usize / 20, "{moved}");
    }
}
