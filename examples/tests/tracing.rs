//! Tracing in the gateway binary, against in-process collectors on the
//! published protocols (Zipkin v2 JSON; OTLP over gRPC and HTTP, from
//! opentelemetry-proto): the span of each request, the context passed to
//! the app in W3C and B3, the caller's decision kept, sampling at 0, 1 and
//! 100 percent, the provider switched live by the Telemetry API, and a
//! collector that is down costing requests nothing.

mod common;

use std::sync::mpsc::Receiver;
use std::time::Duration;

use common::{free_port, Gateway};
use mesh_testkit::collector::{http_collector, otlp_grpc_collector, otlp_request, Posted};
use mesh_testkit::peers::{recorded_header, recording_upstream};

fn mesh(port: u16, app: u16) -> String {
    common::secure::gateway_mesh(&common::secure::server(port, ""), "app", app, "", "")
}

fn telemetry(provider: &str, percent: f64) -> String {
    format!(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: mesh-default, namespace: istio-system}}\nspec:\n  tracing:\n  - providers: [{{name: {provider}}}]\n    randomSamplingPercentage: {percent}\n    customTags: {{team: {{literal: {{value: mesh}}}}, tenant: {{header: {{name: x-tenant, defaultValue: none}}}}}}\n"
    )
}

/// A gateway's config (routing to the app) and MeshConfig, tracing all
/// to `zipkin`.
struct Setup {
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    mesh_config: std::path::PathBuf,
    port: u16,
}

fn setup(mesh_config_text: &str, app_port: u16) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mesh_config = dir.path().join("mesh-config.yaml");
    std::fs::write(&mesh_config, mesh_config_text).unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    let port = free_port();
    std::fs::write(config.join("mesh.yaml"), mesh(port, app_port)).unwrap();
    std::fs::write(config.join("telemetry.yaml"), telemetry("zipkin", 100.0)).unwrap();
    Setup { dir, config, mesh_config, port }
}

/// Zipkin spans posted within `wait`.
fn zipkin_spans(posted: &Receiver<Posted>, wait: Duration) -> Vec<serde_json::Value> {
    let mut spans = Vec::new();
    while let Ok((path, body)) = posted.recv_timeout(wait) {
        assert_eq!(path, "/api/v2/spans");
        let list: Vec<serde_json::Value> = serde_json::from_slice(&body).expect("Zipkin v2 JSON");
        spans.extend(list);
    }
    spans
}

fn tag<'v>(span: &'v serde_json::Value, name: &str) -> &'v str {
    span["tags"][name].as_str().unwrap_or_else(|| panic!("no tag {name} in {span}"))
}

#[test]
fn spans_reach_zipkin_and_otlp_collectors_with_istios_context_and_sampling() {
    let (_app, app_port) = recording_upstream(None);
    let (zipkin_port, zipkin) = http_collector();
    let (otlp_http_port, otlp_http) = http_collector();
    let (otlp_grpc_port, otlp_grpc) = otlp_grpc_collector();
    let dead = free_port();
    let providers = format!(
        "extensionProviders:\n- name: zipkin\n  zipkin: {{service: 127.0.0.1, port: {zipkin_port}}}\n- name: otel-grpc\n  opentelemetry: {{service: 127.0.0.1, port: {otlp_grpc_port}}}\n- name: otel-http\n  opentelemetry: {{service: 127.0.0.1, port: {otlp_http_port}, http: {{path: /v1/traces}}}}\n- name: down\n  zipkin: {{service: 127.0.0.1, port: {dead}}}\n"
    );
    let Setup { dir: _dir, config, mesh_config, port } = setup(&providers, app_port);
    let g = Gateway::start_with(
        &config,
        port,
        &["--mesh-config", mesh_config.to_str().unwrap()],
        std::process::Stdio::null(),
    );

    // A new trace, sampled: one client span, the app sees it as parent.
    let r = g.get("/new?x=1", &[("x-request-id", "first"), ("x-tenant", "acme")]);
    assert_eq!(r.status, 200, "{}", r.body);
    let spans = zipkin_spans(&zipkin, Duration::from_secs(3));
    assert_eq!(spans.len(), 1, "{spans:?}");
    let span = &spans[0];
    assert_eq!(
        (span["kind"].as_str(), span["name"].as_str()),
        (Some("CLIENT"), Some("app.default.svc.cluster.local:80/*"))
    );
    assert_eq!(span["localEndpoint"]["serviceName"], "istio-ingressgateway.istio-system");
    for (name, value) in [
        ("http.method", "GET"),
        ("http.status_code", "200"),
        ("guid:x-request-id", "first"),
        ("response_flags", "-"),
        ("upstream_cluster", "outbound|80||app.default.svc.cluster.local"),
        ("istio.namespace", "istio-system"),
        ("team", "mesh"),
        ("tenant", "acme"),
        ("component", "proxy"),
    ] {
        assert_eq!(tag(span, name), value, "{span}");
    }
    assert!(tag(span, "http.url").ends_with("/new?x=1"), "{span}");
    let (trace, id) = (span["traceId"].as_str().unwrap(), span["id"].as_str().unwrap());
    // A new trace goes on in Zipkin's own headers, B3.
    assert_eq!(recorded_header(&r.body, "x-b3-traceid"), [trace.to_string()]);
    assert_eq!(recorded_header(&r.body, "x-b3-spanid"), [id.to_string()]);
    assert_eq!(recorded_header(&r.body, "x-b3-sampled"), ["1"]);
    assert!(recorded_header(&r.body, "traceparent").is_empty());
    assert!(span.get("parentId").is_none(), "a new trace: {span}");

    // The caller's trace continues, in its headers; its decision holds
    // either way.
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = g.get("/", &[("traceparent", caller)]);
    let spans = zipkin_spans(&zipkin, Duration::from_secs(3));
    assert_eq!(spans.len(), 1, "{spans:?}");
    let (trace, id) = (spans[0]["traceId"].as_str().unwrap(), spans[0]["id"].as_str().unwrap());
    assert_eq!((trace, spans[0]["parentId"].as_str()), ("4bf92f3577b34da6a3ce929d0e0e4736", Some("00f067aa0ba902b7")));
    assert_eq!(recorded_header(&r.body, "traceparent"), [format!("00-{trace}-{id}-01")]);
    let r =
        g.get("/", &[("x-b3-traceid", "a3ce929d0e0e4736"), ("x-b3-spanid", "00f067aa0ba902b7"), ("x-b3-sampled", "0")]);
    assert_eq!(recorded_header(&r.body, "x-b3-sampled"), ["0"], "the caller's decision passed on");
    assert_eq!(recorded_header(&r.body, "x-b3-traceid"), ["0000000000000000a3ce929d0e0e4736"]);
    assert!(zipkin_spans(&zipkin, Duration::from_secs(2)).is_empty(), "an unsampled trace reports nothing");

    // 0%: nothing new is sampled, but a caller's `sampled=1` still is.
    g.apply(&config, "telemetry.yaml", &telemetry("zipkin", 0.0));
    for _ in 0..50 {
        assert_eq!(g.get("/", &[]).status, 200);
    }
    assert_eq!(g.get("/", &[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")]).status, 200);
    let spans = zipkin_spans(&zipkin, Duration::from_secs(3));
    assert_eq!(spans.len(), 1, "only the caller-sampled one: {spans:?}");
    // 1% (Istio's default): about 3 of 300.
    g.apply(&config, "telemetry.yaml", &telemetry("zipkin", 1.0));
    for _ in 0..300 {
        assert_eq!(g.get("/", &[]).status, 200);
    }
    let sampled = zipkin_spans(&zipkin, Duration::from_secs(3)).len();
    assert!(sampled <= 15, "{sampled} of 300 sampled at 1%");

    // OTLP over gRPC, then HTTP: the same span, as OTLP.
    g.apply(&config, "telemetry.yaml", &telemetry("otel-grpc", 100.0));
    assert_eq!(g.get("/grpc", &[("x-request-id", "over-grpc")]).status, 200);
    let request = otlp_grpc.recv_timeout(Duration::from_secs(5)).expect("an OTLP/gRPC export");
    check_otlp(&request, "over-grpc");
    g.apply(&config, "telemetry.yaml", &telemetry("otel-http", 100.0));
    assert_eq!(g.get("/http", &[("x-request-id", "over-http")]).status, 200);
    let (path, body) = otlp_http.recv_timeout(Duration::from_secs(5)).expect("an OTLP/HTTP export");
    assert_eq!(path, "/v1/traces");
    check_otlp(&otlp_request(&body), "over-http");

    // A collector that is down: requests go on; the failed sends counted.
    g.apply(&config, "telemetry.yaml", &telemetry("down", 100.0));
    for _ in 0..20 {
        assert_eq!(g.get("/", &[]).status, 200);
    }
    let failed = || {
        let body = g.admin_get("/stats/prometheus").map(|r| r.body).unwrap_or_default();
        body.lines().any(|l| {
            l.starts_with("mesh_tracing_spans_total{")
                && l.contains("provider=\"down\"")
                && l.contains("result=\"failed\"")
        })
    };
    assert!(common::wait_until(Duration::from_secs(10), failed), "failed sends are counted");
}

fn check_otlp(request: &opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest, id: &str) {
    let resource = &request.resource_spans[0];
    let service = resource.resource.as_ref().unwrap().attributes.iter().find(|a| a.key == "service.name").unwrap();
    assert_eq!(
        format!("{:?}", service.value),
        format!(
            "{:?}",
            Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                value: Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                    "istio-ingressgateway.istio-system".into()
                ))
            })
        )
    );
    let spans: Vec<_> = resource.scope_spans.iter().flat_map(|s| &s.spans).collect();
    let span = spans
        .iter()
        .find(|s| s.attributes.iter().any(|a| a.key == "guid:x-request-id" && format!("{:?}", a.value).contains(id)))
        .unwrap_or_else(|| panic!("no span of {id}: {spans:?}"));
    assert_eq!((span.trace_id.len(), span.span_id.len(), span.kind), (16, 8, 3), "{span:?}");
    assert!(span.end_time_unix_nano > span.start_time_unix_nano);
    assert_eq!(span.name, "app.default.svc.cluster.local:80/*");
}

/// Envoy driven by our control plane gets the same: the Telemetry API's
/// tracer and sampling on its connection manager, the collector as a
/// cluster, and Istio's access log format, to MeshConfig's file, filtered
/// by the Telemetry's expression.
#[test]
fn envoy_over_xds_traces_and_logs_as_the_telemetry_api_says() {
    let (_app, app_port) = recording_upstream(None);
    let (zipkin_port, zipkin) = http_collector();
    let logs = tempfile::tempdir().unwrap();
    let access_log = logs.path().join("envoy-access.log");
    let providers = format!(
        "accessLogFile: {}\nextensionProviders:\n- name: zipkin\n  zipkin: {{service: 127.0.0.1, port: {zipkin_port}}}\n",
        access_log.display()
    );
    let Setup { dir: _dir, config, mesh_config, port } = setup(&providers, app_port);
    let filtered = "  accessLogging: [{filter: {expression: \"request.url_path != '/quiet'\"}}]\n";
    std::fs::write(config.join("telemetry.yaml"), telemetry("zipkin", 100.0) + filtered).unwrap();
    let (_cp, xds, _debug) = common::control_plane_on(&[
        "--config",
        config.to_str().unwrap(),
        "--mesh-config",
        mesh_config.to_str().unwrap(),
    ]);
    let work = tempfile::tempdir().unwrap();
    let envoy = common::gateway_envoy(work.path(), xds, "GRPC");
    let served =
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && common::get(port, "/", &[]).status == 200;
    assert!(common::wait_until(Duration::from_secs(30), served), "Envoy never served; its log:\n{}", envoy.log());

    // An edge Envoy makes its own x-request-id: the span is found by path.
    assert_eq!(common::get(port, "/quiet", &[]).status, 200);
    let r = common::get(port, "/envoy", &[("x-tenant", "acme")]);
    assert_eq!(r.status, 200, "{}", r.body);
    let mut spans = Vec::new();
    let ours = |s: &serde_json::Value| s["tags"]["http.url"].as_str().is_some_and(|u| u.ends_with("/envoy"));
    let found = common::wait_until(Duration::from_secs(15), || {
        spans.extend(zipkin_spans(&zipkin, Duration::from_millis(200)));
        spans.iter().any(ours)
    });
    assert!(found, "no span of Envoy's at the collector: {spans:?}\n{}", envoy.log());
    let span = spans.iter().find(|s| ours(s)).unwrap();
    assert_eq!((tag(span, "team"), tag(span, "tenant")), ("mesh", "acme"), "custom tags: {span}");
    assert_eq!(span["name"], "app.default.svc.cluster.local:80/*", "Istio's span name, as mesh-proxy's");
    assert_eq!(recorded_header(&r.body, "x-b3-traceid"), [span["traceId"].as_str().unwrap().to_string()]);
    let request_id = tag(span, "guid:x-request-id").to_string();
    assert_eq!(recorded_header(&r.body, "x-request-id"), std::slice::from_ref(&request_id));

    let logged = || std::fs::read_to_string(&access_log).unwrap_or_default();
    assert!(common::wait_until(Duration::from_secs(10), || logged().contains(&request_id)), "{}", logged());
    let line = logged().lines().find(|l| l.contains(&request_id)).unwrap().to_string();
    assert!(
        line.starts_with('[') && line.contains("\"GET /envoy HTTP/1.1\" 200 - via_upstream"),
        "Istio's format: {line}"
    );
    assert!(!logged().contains("/quiet"), "the Telemetry's CEL filter, in Envoy: {}", logged());
}
