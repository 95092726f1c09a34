//! Tracing on the request path: a request's span begun and its context
//! written into the upstream request's headers, unsampled (what 99% of
//! requests pay at Istio's default 1%) and sampled and reported (queued
//! for the exporter's thread, which sends to a collector that is down).

use std::collections::BTreeMap;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use mesh_core::telemetry::{SideTelemetry, TelemetryConfig, TraceProvider, TracingConfig};
use mesh_proxy::trace::{Setup, SpanEnd, Tracers};

fn tracers(setup: &Setup, sampling: f64) -> Tracers {
    let provider = TraceProvider::Zipkin { name: "zipkin".into(), address: "127.0.0.1:9".into(), max_tag_length: 256 };
    let tracing = TracingConfig { provider, sampling, custom_tags: BTreeMap::new(), disable_reporting: false };
    let telemetry = TelemetryConfig {
        client: SideTelemetry { tracing: Some(tracing), ..Default::default() },
        ..Default::default()
    };
    Tracers::compile(&telemetry, setup)
}

/// A request as a gateway sends it on: a browser's fields, a request id.
fn head() -> http::request::Parts {
    let request = http::Request::get("http://shop.example.com/api/items?page=2")
        .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64)")
        .header("accept", "*/*")
        .header("accept-encoding", "gzip, deflate, br")
        .header("x-forwarded-for", "192.0.2.10")
        .header("x-forwarded-proto", "http")
        .header("x-request-id", "5f1c6a3e-8a3b-4b7e-9a55-6d1f0f3c2b11")
        .body(())
        .unwrap_or_else(|e| panic!("{e}"));
    request.into_parts().0
}

fn span_per_request(c: &mut Criterion) {
    let setup = Setup::default();
    let end = SpanEnd {
        status: 200,
        flags: "-",
        cluster: "outbound|80||shop.default.svc.cluster.local",
        service: "shop.default.svc.cluster.local",
        request_id: "5f1c6a3e-8a3b-4b7e-9a55-6d1f0f3c2b11",
        upstream: "10.0.0.7:8080".parse().ok(),
        peer: "192.0.2.10:51234".parse().unwrap_or_else(|e| panic!("{e}")),
        request_size: 180,
    };
    for (name, sampling) in [("trace/unsampled_begin_inject_finish", 0.0), ("trace/sampled_begin_inject_report", 100.0)]
    {
        let tracers = tracers(&setup, sampling);
        let Some(tracer) = tracers.side(false) else { panic!("a client tracer") };
        c.bench_function(name, |b| {
            b.iter_batched(
                head,
                |mut head| {
                    let span = tracer.begin(&head);
                    span.inject(&mut head.headers);
                    span.finish(&end);
                    head
                },
                BatchSize::SmallInput,
            )
        });
    }
}

criterion_group!(benches, span_per_request);
criterion_main!(benches);
