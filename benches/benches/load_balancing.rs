//! Endpoint picks for each algorithm at 10 / 100 / 1,000 endpoints, and the
//! ring and Maglev table builds. Goals: P2C pick under 100 ns, Maglev lookup
//! under 50 ns, a 65,537-entry Maglev table for 500 hosts under 3 ms.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use mesh_core::lb;
use mesh_core::lb::maglev::{Maglev, DEFAULT_TABLE_SIZE};
use mesh_core::lb::ring_hash::{RingHash, DEFAULT_MAX_RING_SIZE};
use mesh_core::proxy_config::{HashPolicy, LbPolicy};

use benches::hosts;

fn picks(c: &mut Criterion) {
    let mut group = c.benchmark_group("lb_pick");
    let policies = [
        ("round_robin", LbPolicy::RoundRobin),
        ("random", LbPolicy::Random),
        ("least_request_p2c", LbPolicy::LeastRequest { choice_count: 2 }),
        ("ring_hash", LbPolicy::RingHash { minimum_ring_size: 1024, hash: HashPolicy::Header("x-user".into()) }),
        ("maglev", LbPolicy::Maglev { table_size: DEFAULT_TABLE_SIZE, hash: HashPolicy::Header("x-user".into()) }),
    ];
    for (name, policy) in &policies {
        for n in [10usize, 100, 1000] {
            let hs = hosts(n);
            let balancer = lb::build(policy, &hs);
            let mut key = 0x9e37_79b9_7f4a_7c15u64;
            group.bench_with_input(BenchmarkId::new(*name, n), &hs, |b, hs| {
                b.iter(|| {
                    key = key.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    balancer.pick(hs, Some(key))
                })
            });
        }
    }
    group.finish();
}

fn builds(c: &mut Criterion) {
    let mut group = c.benchmark_group("lb_build");
    group.sample_size(20);
    for n in [10usize, 100, 500, 1000] {
        let hs = hosts(n);
        group.bench_with_input(BenchmarkId::new("maglev_65537", n), &hs, |b, hs| {
            b.iter(|| Maglev::new(hs, DEFAULT_TABLE_SIZE).table().len())
        });
        group.bench_with_input(BenchmarkId::new("ring_hash_1024", n), &hs, |b, hs| {
            b.iter(|| RingHash::new(hs, 1024, DEFAULT_MAX_RING_SIZE).len())
        });
    }
    group.finish();
}

criterion_group!(benches, picks, builds);
criterion_main!(benches);
