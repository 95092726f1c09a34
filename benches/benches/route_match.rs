//! Route lookup at 10 / 100 / 1,000 routes, for each match kind, hitting the
//! first and the last route. Goal: under 1 µs at 1,000 routes.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use mesh_core::routing::{RequestView, RouteTable};

use benches::{request_for, route_config, MatchKind};

fn route_match(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_match");
    for kind in MatchKind::ALL {
        for n in [10usize, 100, 1000] {
            let table = RouteTable::new(route_config(n, kind)).unwrap_or_else(|e| panic!("{e}"));
            for (label, target) in [("first", 0), ("last", n - 1)] {
                let head = request_for(target, kind);
                let view = RequestView::from_parts(&head, 80);
                assert_eq!(table.find(&view).map(|h| h.route_index), Some(target));
                group.bench_with_input(BenchmarkId::new(format!("{}/{label}", kind.name()), n), &view, |b, view| {
                    b.iter(|| std::hint::black_box(table.find(std::hint::black_box(view))).map(|h| h.route_index))
                });
            }
        }
    }
    group.finish();
}

fn table_build(c: &mut Criterion) {
    let config = std::sync::Arc::new(route_config(1000, MatchKind::Regex));
    c.bench_function("route_table_build/regex/1000", |b| {
        b.iter(|| RouteTable::new(std::sync::Arc::clone(&config)).map(|t| t.name().len()))
    });
}

criterion_group!(benches, route_match, table_build);
criterion_main!(benches);
