//! The Telemetry API in the gateway binary: a workload-scoped Telemetry
//! overrides the root namespace's, observed in the access log and the
//! metrics, and changes take effect live.

mod common;

use std::sync::mpsc::Receiver;
use std::time::Duration;

use common::{backend, free_port, write_mesh, Gateway, Service};

const ROOT: &str = "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: mesh-default, namespace: istio-system}\nspec:\n  accessLogging: [{disabled: true}]\n  metrics:\n  - overrides: [{match: {metric: REQUEST_DURATION}, disabled: true}]\n";
const GATEWAY: &str = "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: ingress, namespace: istio-system}\nspec:\n  selector: {matchLabels: {istio: ingressgateway}}\n  accessLogging: [{providers: [{name: envoy}]}]\n  metrics:\n  - overrides: [{match: {metric: REQUEST_COUNT, mode: CLIENT}, disabled: true}]\n";

/// The access log lines with `id` that arrive within a second.
fn lines_with(log: &Receiver<String>, id: &str) -> Vec<String> {
    let mut found = Vec::new();
    while let Ok(line) = log.recv_timeout(Duration::from_secs(1)) {
        if line.contains(id) {
            found.push(line);
        }
    }
    found
}

fn has_series(g: &Gateway, name: &str) -> bool {
    let body = g.admin_get("/stats/prometheus").map(|r| r.body).unwrap_or_default();
    body.lines().any(|l| l.starts_with(name) && l.contains("destination_service_name=\"web\""))
}

/// A backend behind the gateway's config for service `web`, routed by
/// `http` (a VirtualService's `http:` list), and `files` beside it.
struct Web {
    _backend: common::Proc,
    backend_port: u16,
    dir: tempfile::TempDir,
    port: u16,
}

fn web(http: &str, files: &[(&str, &str)]) -> Web {
    let (backend, backend_port) = backend("v1", 0);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_mesh(dir.path(), port, &[Service { name: "web", backends: &[("v1", backend_port)] }], "");
    std::fs::write(dir.path().join("routes.yaml"), common::routes("web", http)).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    Web { _backend: backend, backend_port, dir, port }
}

const ROUTE_ALL: &str = "  - route:\n    - destination: {host: web}\n";

#[test]
fn a_workload_telemetry_overrides_the_root_namespace_one_live() {
    let Web { dir, port, .. } = &web(ROUTE_ALL, &[("telemetry-root.yaml", ROOT), ("telemetry-gateway.yaml", GATEWAY)]);
    let mut g = Gateway::start_with(dir.path(), *port, &["--access-log"], std::process::Stdio::piped());
    let log = g.stdout_lines();

    // The gateway's own Telemetry logs (the root's says not to) and drops
    // the request count; the root's duration override still holds.
    assert_eq!(g.get("/a", &[("x-request-id", "with-both")]).status, 200);
    let logged = lines_with(&log, "with-both");
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert!(logged[0].contains("\"GET /a HTTP/1.1\" 200 - via_upstream"), "Istio's text format: {}", logged[0]);
    assert!(!has_series(&g, "istio_requests_total{"), "REQUEST_COUNT is off for the gateway");
    assert!(!has_series(&g, "istio_request_duration_milliseconds_count{"), "REQUEST_DURATION is off mesh-wide");
    assert!(has_series(&g, "istio_request_bytes_count{"), "REQUEST_SIZE stays on");
    // Beside them, Envoy's cluster stats under Envoy's own names.
    let text = g.admin_get("/stats/prometheus").map(|r| r.body).unwrap_or_default();
    assert!(text.contains("# TYPE envoy_cluster_upstream_rq_pending_overflow untyped"), "{text}");
    assert!(
        text.contains(
            "envoy_cluster_membership_healthy{cluster_name=\"outbound|9080||web.default.svc.cluster.local\"} 1"
        ),
        "{text}"
    );

    // Without it, the root namespace's Telemetry rules: no log line, and
    // the request count is back.
    g.apply(dir.path(), "telemetry-gateway.yaml", "");
    assert_eq!(g.get("/b", &[("x-request-id", "root-only")]).status, 200);
    assert!(lines_with(&log, "root-only").is_empty(), "the root Telemetry turns the log off");
    assert!(has_series(&g, "istio_requests_total{"));
    assert!(!has_series(&g, "istio_request_duration_milliseconds_count{"));

    // And with no Telemetry at all, `--access-log` decides.
    g.apply(dir.path(), "telemetry-root.yaml", "");
    assert_eq!(g.get("/c", &[("x-request-id", "flag-only")]).status, 200);
    assert_eq!(lines_with(&log, "flag-only").len(), 1);
    assert!(has_series(&g, "istio_request_duration_milliseconds_count{"));
}

const TAGS_ROOT: &str = r#"apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  accessLogging:
  - providers: [{name: envoy}]
    filter: {expression: "response.code >= 400 || request.headers['x-debug'] == 'true'"}
  metrics:
  - overrides:
    - tagOverrides:
        source_principal: {operation: REMOVE}
        response_code: {value: "response.code >= 400 ? 'error' : 'ok'"}
        request_host: {value: request.host}
"#;
const TAGS_GATEWAY: &str = r#"apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: ingress, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  metrics:
  - overrides:
    - match: {metric: REQUEST_COUNT}
      tagOverrides:
        request_host: {value: "'pinned'"}
        user: {value: "request.headers['x-user']"}
"#;

fn series(g: &Gateway, prefix: &str) -> Vec<String> {
    let body = g.admin_get("/stats/prometheus").map(|r| r.body).unwrap_or_default();
    body.lines().filter(|l| l.starts_with(prefix)).map(str::to_string).collect()
}

#[test]
fn tag_overrides_and_a_log_filter_apply_as_expressions_over_the_request() {
    let http = "  - match: [{uri: {prefix: /api}}]\n    route:\n    - destination: {host: web}\n";
    let Web { dir, port, .. } =
        &web(http, &[("telemetry-root.yaml", TAGS_ROOT), ("telemetry-gateway.yaml", TAGS_GATEWAY)]);
    let mut g = Gateway::start_with(dir.path(), *port, &[], std::process::Stdio::piped());
    let log = g.stdout_lines();

    // The filter: a 200 is logged only when asked with x-debug, a 404 always.
    assert_eq!(g.get("/api/1", &[("x-request-id", "quiet"), ("x-user", "jason")]).status, 200);
    assert_eq!(g.get("/api/2", &[("x-request-id", "debugged"), ("x-debug", "true")]).status, 200);
    assert_eq!(g.get("/other", &[("x-request-id", "missed")]).status, 404);
    let logged = lines_with(&log, "");
    let count = |id: &str| logged.iter().filter(|l| l.contains(id)).count();
    assert_eq!((count("quiet"), count("debugged"), count("missed")), (0, 1, 1), "{logged:#?}");

    // The gateway's override of REQUEST_COUNT wins over the root's for that
    // metric; the root's holds for the others.
    let requests = series(&g, "istio_requests_total{");
    let ok: Vec<_> = requests.iter().filter(|l| l.contains("response_code=\"ok\"")).collect();
    assert_eq!(ok.len(), 2, "one series per user: {requests:#?}");
    assert!(ok.iter().all(|l| l.contains("request_host=\"pinned\"")), "{requests:#?}");
    assert!(ok.iter().any(|l| l.contains("user=\"jason\"")), "{requests:#?}");
    assert!(ok.iter().any(|l| l.contains("user=\"unknown\"")), "no x-user: unknown, {requests:#?}");
    let missed = requests.iter().find(|l| l.contains("response_flags=\"NR\""));
    assert!(missed.is_some_and(|l| l.contains("response_code=\"error\"")), "{requests:#?}");
    let sizes = series(&g, "istio_request_bytes_count{");
    assert!(
        sizes.iter().all(|l| l.contains("request_host=\"test.example.com\"") && !l.contains("user=")),
        "{sizes:#?}"
    );
    let all = series(&g, "istio_");
    assert!(!all.is_empty() && all.iter().all(|l| !l.contains("source_principal=")), "removed everywhere");

    // An expression naming an attribute the proxy lacks is refused, loudly,
    // and the last good config keeps serving.
    let bad = TAGS_GATEWAY.replace("\"'pinned'\"", "node.id");
    std::fs::write(dir.path().join("telemetry-gateway.yaml"), bad).unwrap();
    let mut rejections = String::new();
    let shown = mesh_testkit::wait_until(Duration::from_secs(10), || {
        rejections = g.admin_get("/config_rejections").map(|r| r.body).unwrap_or_default();
        rejections.contains("attribute `node` is not supported")
    });
    assert!(shown && rejections.contains("tagOverrides.request_host.value"), "{rejections}");
    assert_eq!(g.get("/api/3", &[("x-user", "jason")]).status, 200);
    let requests = series(&g, "istio_requests_total{");
    assert!(
        requests
            .iter()
            .any(|l| l.contains("request_host=\"pinned\"") && l.contains("user=\"jason\"") && l.ends_with(" 2")),
        "{requests:#?}"
    );
}

/// A TCP connection is logged as it closes, as Envoy's TCP proxy logs it:
/// no method, path or code; bytes each way, the upstream and the cluster.
#[test]
fn tcp_connections_are_logged_as_they_close() {
    let tcp_port = free_port();
    let tcp = format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: tcp-gw, namespace: default}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: {tcp_port}, name: tcp, protocol: TCP}}\n    hosts: [\"*\"]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: tcp-routes, namespace: default}}\nspec:\n  hosts: [\"*\"]\n  gateways: [tcp-gw]\n  tcp:\n  - route:\n    - destination: {{host: web}}\n"
    );
    let Web { dir, port, backend_port: p, .. } = &web(ROUTE_ALL, &[("tcp.yaml", &tcp)]);
    let mut g = Gateway::start_with(dir.path(), *port, &["--access-log"], std::process::Stdio::piped());
    let log = g.stdout_lines();
    let up = || std::net::TcpStream::connect(("127.0.0.1", tcp_port)).is_ok();
    assert!(common::wait_until(Duration::from_secs(10), up), "the TCP listener is up");
    let r = common::get(tcp_port, "/over-tcp", &[("x-request-id", "inside-tcp")]);
    assert_eq!(r.status, 200);

    // Bytes received (the request) and sent (the response), both counted;
    // the probes that only connected have none.
    let logged = lines_with(&log, "\"- - -\"");
    let bytes = |line: &str| -> Vec<u64> {
        line.split("\"-\" ").nth(1).unwrap_or_default().split(' ').take(2).filter_map(|n| n.parse().ok()).collect()
    };
    let line =
        logged.iter().find(|l| bytes(l).first().is_some_and(|b| *b > 0)).unwrap_or_else(|| panic!("{logged:#?}"));
    assert!(line.contains("\"- - -\" 0 - - - \"-\" "), "Envoy's TCP line: {line}");
    assert!(line.contains(&format!("\"127.0.0.1:{p}\" outbound|9080||web.default.svc.cluster.local ")), "{line}");
    let numbers = bytes(line);
    assert!(numbers[1] > numbers[0] / 2, "{line}");
}
