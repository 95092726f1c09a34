//! adapter-static at scale: 1,000 services, 10,000 endpoints, 1,000
//! VirtualServices and 1,000 DestinationRules in 1,001 files.
//!
//! - `full_load`: read, parse, validate and assemble everything (goal:
//!   under 1 s);
//! - `one_line_change`: a weight edited in one file, reloaded, until a
//!   watcher of the store has the change (goal: under 50 ms);
//! - `through_the_watcher`: the same edit found by the file watcher; the
//!   time from the write to the watcher's event, less the debounce.

use std::sync::Arc;
use std::time::{Duration, Instant};

use adapter_static::{StaticOptions, StaticSource};
use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::StreamExt;
use mesh_core::ConfigStore;

const SERVICES: usize = 1000;
const ENDPOINTS: usize = 10;

fn static_reload(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let routing_file = benches::write_static_mesh(dir.path(), SERVICES, ENDPOINTS);
    let options = || StaticOptions::new([dir.path()]);
    let check = StaticSource::load(options());
    let status = check.status();
    assert_eq!(
        (status.errors, status.services, status.endpoints, status.resources),
        (0, SERVICES, SERVICES * ENDPOINTS, 2 * SERVICES)
    );

    let mut group = c.benchmark_group("static");
    group.sample_size(10);
    group.bench_function("full_load/1000_services_10000_endpoints", |b| {
        b.iter(|| StaticSource::load(options()).status().resources)
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let source = Arc::new(StaticSource::load(options()));
    let mut flip = 0u32;
    group.bench_function("one_line_change/reload_until_watcher_has_it", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                flip += 1;
                std::fs::write(routing_file(500), benches::routing_yaml(500, 50 + flip % 40))
                    .unwrap_or_else(|e| panic!("{e}"));
                let mut changes = ConfigStore::watch(&*source);
                rt.block_on(changes.next()); // the initial Reset
                let start = Instant::now();
                source.reload();
                rt.block_on(changes.next());
                total += start.elapsed();
            }
            total
        })
    });

    let debounce = Duration::from_millis(20);
    let mut watched_options = options();
    watched_options.debounce = debounce;
    let watched = Arc::new(StaticSource::load(watched_options));
    let _watch = rt.block_on(async { watched.watch_files() }).unwrap_or_else(|e| panic!("{e}"));
    group.bench_function("through_the_watcher/write_to_event_minus_20ms_debounce", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                flip += 1;
                let mut changes = ConfigStore::watch(&*watched);
                rt.block_on(changes.next());
                let start = Instant::now();
                std::fs::write(routing_file(700), benches::routing_yaml(700, 50 + flip % 40))
                    .unwrap_or_else(|e| panic!("{e}"));
                rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), changes.next()).await })
                    .unwrap_or_else(|e| panic!("no event: {e}"));
                total += start.elapsed().saturating_sub(debounce);
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, static_reload);
criterion_main!(benches);
