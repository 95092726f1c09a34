//! Telemetry across a mesh: a gateway and two sidecars (pods as network
//! namespaces with iptables capture; root only, as CI runs).
//!
//! - Istio's dashboards, answered: a real Prometheus (Debian's) scrapes the
//!   three while traffic flows gateway -> productpage and productpage ->
//!   reviews (HTTP over mTLS, and a TCP port), then runs the queries of
//!   Istio's mesh, service and workload dashboards; each must come back
//!   with the series and values the traffic made.
//! - One trace: a request through gateway -> productpage (whose app calls
//!   reviews, passing the trace headers on) -> reviews gives four spans of
//!   one trace at a Zipkin receiver, each the child of the one before.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::netns::{in_ns, write_readable, Pod, World};
use common::{wait_until, Proc};
use mesh_testkit::netns::python;

const GATEWAY_PORT: u16 = 8080;

/// The registry and config: productpage and reviews as Deployments' pods
/// (their workload names come from the ReplicaSet owner), reviews with an
/// HTTP and a TCP port, and the gateway routing to productpage.
fn mesh_yaml(productpage: &Pod, reviews: &Pod) -> String {
    let pod = |app: &str, version: &str, ip: &str| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {app}-{version}-7d9f8c6b5-x2x4q\n  namespace: default\n  generateName: {app}-{version}-7d9f8c6b5-\n  labels: {{app: {app}, version: {version}, pod-template-hash: 7d9f8c6b5, security.istio.io/tlsMode: istio}}\n  ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: {app}-{version}-7d9f8c6b5, controller: true}}]\nspec: {{serviceAccountName: {app}}}\nstatus: {{phase: Running, podIP: {ip}}}\n"
        )
    };
    let service = |app: &str, ip: &str, ports: &str| {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {app}, namespace: default}}\nspec:\n  ports: {ports}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {app}, namespace: default, labels: {{kubernetes.io/service-name: {app}}}}}\naddressType: IPv4\nports: {ports}\nendpoints:\n- addresses: [{ip}]\n  targetRef: {{kind: Pod, name: {app}-v1-7d9f8c6b5-x2x4q, namespace: default}}\n"
        )
    };
    let mut y = String::new();
    y.push_str(&service("productpage", &productpage.ip, "[{name: http, port: 9080}]"));
    y.push_str(&pod("productpage", "v1", &productpage.ip));
    y.push_str(&service("reviews", &reviews.ip, "[{name: http, port: 9080}, {name: tcp-raw, port: 9091}]"));
    y.push_str(&pod("reviews", "v1", &reviews.ip));
    y.push_str(&format!(
        "---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: {GATEWAY_PORT}, name: http, protocol: HTTP}}\n    hosts: [\"*\"]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: front, namespace: default}}\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - route: [{{destination: {{host: productpage.default.svc.cluster.local, port: {{number: 9080}}}}}}]\n"
    ));
    // No retries: the client sees reviews' failures as they are.
    y.push_str("---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: default}\nspec:\n  hosts: [reviews.default.svc.cluster.local]\n  http:\n  - route: [{destination: {host: reviews.default.svc.cluster.local}}]\n    retries: {attempts: 0}\n");
    y
}

/// A CA and a certificate (as `--cert-dir` reads them) per identity,
/// readable by the proxies' UID.
fn certificates(dir: &Path) -> BTreeMap<&'static str, std::path::PathBuf> {
    let meshctl = env!("CARGO_BIN_EXE_meshctl");
    let ca = dir.join("ca");
    let ok = |c: &mut Command| assert!(c.stdout(Stdio::null()).status().expect("meshctl").success());
    ok(Command::new(meshctl).args(["ca", "root", "--dir"]).arg(&ca));
    let mut out = BTreeMap::new();
    for (name, id) in [
        ("gateway", "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway"),
        ("productpage", "spiffe://cluster.local/ns/default/sa/productpage"),
        ("reviews", "spiffe://cluster.local/ns/default/sa/reviews"),
    ] {
        let certs = dir.join(format!("certs-{name}"));
        ok(Command::new(meshctl).args(["ca", "issue", "--dir"]).arg(&ca).args(["--identity", id, "--out"]).arg(&certs));
        chmod_readable(&certs);
        out.insert(name, certs);
    }
    out
}

fn chmod_readable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    for file in std::fs::read_dir(dir).expect("a directory").flatten() {
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
}

/// productpage's app: answers, and for `/chain` first calls reviews with
/// the trace headers it got (as Istio asks apps to).
const PRODUCTPAGE: &str = r#"
import http.server, sys, urllib.request, urllib.error
PASS = ('traceparent', 'tracestate', 'x-request-id', 'x-b3-traceid', 'x-b3-spanid', 'x-b3-parentspanid', 'x-b3-sampled', 'x-b3-flags', 'b3')
class App(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def do_GET(self):
        body = b'productpage'
        if self.path.startswith('/chain'):
            headers = {k: v for k, v in self.headers.items() if k.lower() in PASS}
            headers['Host'] = 'reviews.default.svc.cluster.local:9080'
            try:
                body = urllib.request.urlopen(urllib.request.Request(sys.argv[2], headers=headers), timeout=5).read()
            except urllib.error.HTTPError as e:
                body = e.read()
        self.send_response(200)
        self.send_header('content-length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(('0.0.0.0', int(sys.argv[1])), App).serve_forever()
"#;

/// A Zipkin receiver: each POSTed list of spans, a line of the file.
/// A span receiver: each POST as a line, `<path> <base64 body>` (Zipkin's
/// JSON and OTLP/HTTP's protobuf alike).
const RECEIVER: &str = r#"
import base64, http.server, sys
class Receiver(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get('content-length', 0)))
        with open(sys.argv[2], 'ab') as f:
            f.write(self.path.encode() + b' ' + base64.b64encode(body) + b'\n')
        self.send_response(202)
        self.send_header('content-length', '0')
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer((sys.argv[3], int(sys.argv[1])), Receiver).serve_forever()
"#;

/// `python3 -c code args` in `ns`.
fn python_server(ns: &str, code: &str, args: &[&str]) -> Proc {
    let command =
        Command::new("ip").args(["netns", "exec", ns, "python3", "-c", code]).args(args).stdout(Stdio::null()).spawn();
    Proc(command.expect("python3"))
}

/// MeshConfig naming the receiver as Zipkin and as OTLP over HTTP, and a
/// Telemetry resource that traces every request to `provider`.
fn tracing_config(dir: &Path, receiver: &str, provider: &str) -> std::path::PathBuf {
    let (host, port) = receiver.split_once(':').expect("host:port");
    let mesh_config = dir.join("mesh-config.yaml");
    write_readable(
        &mesh_config,
        &format!("extensionProviders:\n- name: zipkin\n  zipkin: {{service: {host}, port: {port}}}\n- name: otel\n  opentelemetry: {{service: {host}, port: {port}, http: {{path: /v1/traces}}}}\n"),
    );
    let telemetry = format!("apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: mesh-default, namespace: istio-system}}\nspec:\n  tracing: [{{providers: [{{name: {provider}}}], randomSamplingPercentage: 100}}]\n");
    write_readable(&dir.join("config/telemetry.yaml"), &telemetry);
    mesh_config
}

/// The bodies the receiver got at `path`.
fn received(spans_file: &Path, path: &str) -> Vec<Vec<u8>> {
    use base64::Engine;
    let text = std::fs::read_to_string(spans_file).unwrap_or_default();
    let bodies = text.lines().filter_map(|l| l.strip_prefix(path)?.strip_prefix(' '));
    bodies.filter_map(|b| base64::engine::general_purpose::STANDARD.decode(b).ok()).collect()
}

/// `demo-backend` in `pod` on `port`.
fn app(pod: &Pod, version: &str, port: u16, fail_every: u64) -> Proc {
    let backend = env!("CARGO_BIN_EXE_demo-backend");
    let (port, fail) = (port.to_string(), fail_every.to_string());
    let args = ["netns", "exec", &pod.ns, backend, "--version", version, "--host", "0.0.0.0", "--port", &port];
    Proc(Command::new("ip").args(args).args(["--fail-every", &fail]).stdout(Stdio::null()).spawn().expect("an app"))
}

/// The sidecar of `pod`, capture first (as Istio's init container), no
/// `--name`: its workload name comes from the registry.
fn sidecar(world_dir: &Path, pod: &Pod, certs: &Path, mesh_config: &Path) -> Proc {
    in_ns(&pod.ns, &[env!("CARGO_BIN_EXE_mesh-iptables"), "--apply"]);
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &pod.ns, "setpriv", "--reuid=1337", "--regid=1337", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_sidecar"))
        .arg("--config")
        .arg(world_dir.join("config"))
        .args(["--ip", &pod.ip, "--namespace", "default", "--cert-dir"])
        .arg(certs)
        .arg("--mesh-config")
        .arg(mesh_config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    Proc(command.spawn().expect("a sidecar"))
}

/// Requests for `seconds` (at most `count`) from `ns`, spread over the
/// scrapes: `GET url` with `host`; with `tcp`, a connection to that
/// address carrying one HTTP/1.0 exchange. Prints the statuses seen.
fn traffic(ns: &str, url: &str, host: &str, tcp: Option<(&str, u16)>, seconds: u32, count: u32) -> String {
    let tcp = match tcp {
        Some((ip, port)) => format!(
            "    s = socket.create_connection(('{ip}', {port}), timeout=2); s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n    while s.recv(4096): pass\n    s.close()\n"
        ),
        None => String::new(),
    };
    let code = format!(
        "import socket, time, urllib.request, urllib.error, collections\nseen = collections.Counter()\nend = time.time() + {seconds}\nfor i in range({count}):\n    if time.time() > end: break\n    req = urllib.request.Request('{url}', headers={{'Host': '{host}'}})\n    try:\n        seen[urllib.request.urlopen(req, timeout=2).status] += 1\n    except urllib.error.HTTPError as e:\n        seen[e.code] += 1\n    except Exception as e:\n        seen[type(e).__name__] += 1\n{tcp}    time.sleep(0.02)\nprint(dict(seen))"
    );
    python(ns, &code).unwrap_or_else(|e| panic!("traffic from {ns}: {e}"))
}

/// A Prometheus in the node namespace scraping `targets` every second.
fn prometheus(world: &World, dir: &Path, targets: &[String]) -> (Proc, String) {
    let listen = format!("{}:19090", world.node_ip());
    let list = targets.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ");
    let config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n- job_name: mesh\n  metrics_path: /stats/prometheus\n  static_configs: [{{targets: [{list}]}}]\n"
    );
    write_readable(&dir.join("prometheus.yml"), &config);
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &world.node, "prometheus"])
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
        .arg(format!("--web.listen-address={listen}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("a log file"));
    (Proc(command.spawn().expect("prometheus (apt-get install prometheus)")), format!("http://{listen}"))
}

/// Where and when to query: the node namespace, Prometheus' address, and
/// a moment while the traffic flowed (the dashboards' `irate` looks at
/// the last two samples before it).
#[derive(Clone, Copy)]
struct At<'a> {
    node: &'a str,
    base: &'a str,
    time: f64,
}

/// A PromQL query: each result's labels and value.
fn query(at: &At<'_>, promql: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let (node, base, time) = (at.node, at.base, at.time);
    let code = format!(
        "import json, urllib.parse, urllib.request\nq = urllib.parse.urlencode({{'query': {promql:?}, 'time': '{time:.3}'}})\nprint(urllib.request.urlopen('{base}/api/v1/query?' + q, timeout=5).read().decode())"
    );
    let body = python(node, &code).unwrap_or_else(|e| panic!("query {promql}: {e}"));
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{promql}: {e}: {body}"));
    assert_eq!(answer["status"], "success", "{promql}: {body}");
    answer["data"]["result"]
        .as_array()
        .map(|results| {
            results
                .iter()
                .map(|r| {
                    let labels = serde_json::from_value(r["metric"].clone()).unwrap_or_default();
                    let value = r["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
                    (labels, value)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The one value of a query that sums to a single series.
fn scalar(at: &At<'_>, promql: &str) -> f64 {
    let results = query(at, promql);
    assert_eq!(results.len(), 1, "{promql}: {results:?}");
    results[0].1
}

/// The values of `by` in a grouped query's results.
fn grouped(at: &At<'_>, promql: &str, by: &str) -> BTreeMap<String, f64> {
    query(at, promql).into_iter().map(|(labels, v)| (labels.get(by).cloned().unwrap_or_default(), v)).collect()
}

#[test]
fn dashboards_queries_and_one_trace_across_a_gateway_and_two_sidecars() {
    let uid = String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout).unwrap();
    assert_eq!(uid.trim(), "0", "this test needs root: ip netns, iptables, and running the proxy as UID 1337");
    let dir = tempfile::tempdir().unwrap();
    chmod_readable(dir.path());
    let mut world = World::new();
    let (productpage, reviews) = (world.pod("pp", 2), world.pod("rv", 3));
    for pod in [&productpage, &reviews] {
        in_ns(&pod.ns, &["ip", "route", "add", "default", "via", &world.node_ip()]);
    }
    std::fs::create_dir(dir.path().join("config")).unwrap();
    chmod_readable(&dir.path().join("config"));
    write_readable(&dir.path().join("config/mesh.yaml"), &mesh_yaml(&productpage, &reviews));
    let certs = certificates(dir.path());
    let node_ip = world.node_ip();
    let (zipkin, spans_file) = (format!("{node_ip}:19411"), dir.path().join("spans.jsonl"));
    let mesh_config = tracing_config(dir.path(), &zipkin, "zipkin");
    let _zipkin = python_server(&world.node, RECEIVER, &["19411", spans_file.to_str().unwrap(), &node_ip]);
    let reviews_url = format!("http://{}:9080/", reviews.ip);
    let _apps = [
        python_server(&productpage.ns, PRODUCTPAGE, &["9080", &reviews_url]),
        // Every 4th request to reviews fails: the success rate is 0.75.
        app(&reviews, "v1", 9080, 4),
        app(&reviews, "tcp", 9091, 0),
    ];
    let _sidecars = [
        sidecar(dir.path(), &productpage, &certs["productpage"], &mesh_config),
        sidecar(dir.path(), &reviews, &certs["reviews"], &mesh_config),
    ];
    let gateway_metrics = format!("{node_ip}:15091");
    let _gateway = Proc(
        Command::new("ip")
            .args(["netns", "exec", &world.node, env!("CARGO_BIN_EXE_gateway"), "--config"])
            .arg(dir.path().join("config"))
            .args(["--bind", &node_ip, "--admin", &format!("{node_ip}:15001"), "--metrics", &gateway_metrics])
            .arg("--cert-dir")
            .arg(&certs["gateway"])
            .arg("--mesh-config")
            .arg(&mesh_config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("the gateway"),
    );
    let targets = [gateway_metrics.clone(), format!("{}:15090", productpage.ip), format!("{}:15090", reviews.ip)];
    let (_prometheus, base) = prometheus(&world, dir.path(), &targets);
    let node = world.node.clone();
    let all_up = "count(up == 1)";
    let up = || {
        python(&node, &format!("import urllib.request, urllib.parse\nprint(urllib.request.urlopen('{base}/api/v1/query?' + urllib.parse.urlencode({{'query': '{all_up}'}}), timeout=1).read().decode())")).is_ok_and(|b| b.contains("\"3\""))
    };
    let prometheus_log = || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(40), up), "Prometheus did not scrape all 3 proxies:\n{}", prometheus_log());

    // Traffic: through the gateway to productpage, and from productpage's
    // pod to reviews (HTTP and TCP), both for 8 s.
    let from_node = std::thread::spawn({
        let (node, url) = (node.clone(), format!("http://{node_ip}:{GATEWAY_PORT}/"));
        move || traffic(&node, &url, "bookinfo.example", None, 8, 400)
    });
    let to_reviews = traffic(
        &productpage.ns,
        &format!("http://{}:9080/", reviews.ip),
        "reviews.default.svc.cluster.local:9080",
        Some((&reviews.ip, 9091)),
        8,
        400,
    );
    let via_gateway = from_node.join().expect("traffic through the gateway");
    assert!(via_gateway.contains("200:") && !via_gateway.contains("Error"), "through the gateway: {via_gateway}");
    assert!(to_reviews.contains("200:") && to_reviews.contains("503:"), "to reviews: {to_reviews}");
    // A second before the traffic ended, once scraped.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let at = At { node: &node, base: &base, time: now - 1.5 };
    let scraped_since = || {
        let later = At { time: now + 5.0, ..at };
        query(&later, "min(timestamp(up))").first().is_some_and(|(_, t)| *t > now + 0.5)
    };
    assert!(wait_until(Duration::from_secs(10), scraped_since), "no scrape after the traffic");

    check_mesh_dashboard(&at);
    check_service_dashboard(&at);
    check_workload_dashboard(&at);
    for live in query(&at, "envoy_server_live") {
        assert_eq!(live.1, 1.0, "{live:?}");
    }
    // Envoy's cluster stats under Envoy's names: the gateway's cluster for
    // productpage has its one endpoint, healthy.
    let members = query(&at, "envoy_cluster_membership_healthy{cluster_name=~\"outbound.*productpage.*\"}");
    assert!(!members.is_empty() && members.iter().all(|(_, n)| *n == 1.0), "{members:?}");
    assert!(!query(&at, "envoy_cluster_upstream_rq_pending_overflow").is_empty());

    let chain = format!("import urllib.request\nr = urllib.request.Request('http://{node_ip}:{GATEWAY_PORT}/chain', headers={{'Host': 'bookinfo.example', 'x-request-id': 'chain-1'}})\nprint(urllib.request.urlopen(r, timeout=5).status)");
    assert_eq!(python(&node, &chain).as_deref(), Ok("200"));
    check_one_trace(&spans_file);

    // The same chain to an OpenTelemetry collector (OTLP over HTTP), the
    // Telemetry resource switched live; a chain counts once all four of its
    // spans went there.
    tracing_config(dir.path(), &zipkin, "otel");
    let mut otlp = Vec::new();
    let switched = (0..CHAINS).any(|n| {
        let id = format!("chain-otel-{n}");
        let chain = format!("import urllib.request\nr = urllib.request.Request('http://{node_ip}:{GATEWAY_PORT}/chain', headers={{'Host': 'bookinfo.example', 'x-request-id': '{id}'}})\nprint(urllib.request.urlopen(r, timeout=5).status)");
        let _ = python(&node, &chain);
        wait_until(Duration::from_secs(3), || {
            otlp = otlp_spans(&spans_file);
            otlp.iter().filter(|s| s.1 == id).count() == 4
        })
    });
    assert!(switched, "no chain of four spans over OTLP: {otlp:?}");
    check_otlp_chain(&otlp);
}

/// Chains sent, each given 3 s, until one has all its spans over OTLP
/// (proxies pick the Telemetry change up one by one).
const CHAINS: usize = 8;

/// The spans received over OTLP/HTTP: (service, request id, span).
type OtlpSpan = (String, String, opentelemetry_proto::tonic::trace::v1::Span);

fn otlp_spans(spans_file: &Path) -> Vec<OtlpSpan> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let text = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match v
        .as_ref()
        .and_then(|v| v.value.as_ref())
    {
        Some(Value::StringValue(s)) => s.clone(),
        _ => String::new(),
    };
    let mut spans = Vec::new();
    for body in received(spans_file, "/v1/traces") {
        let request = <ExportTraceServiceRequest as prost::Message>::decode(body.as_slice()).expect("OTLP protobuf");
        for resource in request.resource_spans {
            let attributes = resource.resource.map(|r| r.attributes).unwrap_or_default();
            let service =
                attributes.iter().find(|a| a.key == "service.name").map(|a| text(&a.value)).unwrap_or_default();
            for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                let id = span.attributes.iter().find(|a| a.key == "guid:x-request-id").map(|a| text(&a.value));
                spans.push((service.clone(), id.unwrap_or_default(), span));
            }
        }
    }
    spans
}

/// The first chain whose four spans all came over OTLP: one trace, each
/// span the child of the one before.
fn check_otlp_chain(spans: &[OtlpSpan]) {
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    let id = (0..CHAINS).map(|n| format!("chain-otel-{n}")).find(|id| spans.iter().filter(|s| &s.1 == id).count() == 4);
    let chain: Vec<&OtlpSpan> = spans.iter().filter(|s| Some(&s.1) == id.as_ref()).collect();
    let find = |service: &str, kind: SpanKind| {
        chain
            .iter()
            .find(|s| s.0 == service && s.2.kind == kind as i32)
            .map(|s| &s.2)
            .unwrap_or_else(|| panic!("no {kind:?} span of {service}: {chain:?}"))
    };
    let gateway = find("istio-ingressgateway.istio-system", SpanKind::Client);
    let pp_in = find("productpage.default", SpanKind::Server);
    let pp_out = find("productpage.default", SpanKind::Client);
    let reviews_in = find("reviews.default", SpanKind::Server);
    assert!(chain.iter().all(|s| s.2.trace_id == gateway.trace_id), "one trace: {chain:?}");
    assert!(gateway.parent_span_id.is_empty());
    for (child, parent) in [(pp_in, gateway), (pp_out, pp_in), (reviews_in, pp_out)] {
        assert_eq!(child.parent_span_id, parent.span_id, "{child:?} under {parent:?}");
    }
}

/// The chain's four spans: one trace, each span the child of the one
/// before: the gateway's client span, productpage's server and client
/// spans, reviews' server span.
fn check_one_trace(spans_file: &Path) {
    let chain = || -> Vec<serde_json::Value> {
        let bodies = received(spans_file, "/api/v2/spans");
        let all = bodies.iter().filter_map(|b| serde_json::from_slice::<Vec<serde_json::Value>>(b).ok()).flatten();
        all.filter(|s| s["tags"]["guid:x-request-id"] == "chain-1").collect()
    };
    let received = || std::fs::read_to_string(spans_file).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(10), || chain().len() == 4),
        "the chain's spans: {:?}\nall received: {:.2000}",
        chain(),
        received()
    );
    let spans = chain();
    let find = |service: &str, kind: &str| {
        spans
            .iter()
            .find(|s| s["localEndpoint"]["serviceName"] == service && s["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} span of {service}: {spans:?}"))
    };
    let gateway = find("istio-ingressgateway.istio-system", "CLIENT");
    let pp_in = find("productpage.default", "SERVER");
    let pp_out = find("productpage.default", "CLIENT");
    let reviews_in = find("reviews.default", "SERVER");
    assert!(spans.iter().all(|s| s["traceId"] == gateway["traceId"]), "one trace: {spans:?}");
    assert!(gateway.get("parentId").is_none(), "{gateway}");
    for (child, parent) in [(pp_in, gateway), (pp_out, pp_in), (reviews_in, pp_out)] {
        assert_eq!(child["parentId"], parent["id"], "{child} under {parent}");
    }
    assert_eq!(reviews_in["name"], "reviews.default.svc.cluster.local:9080/*");
    assert_eq!(pp_in["tags"]["istio.canonical_service"], "productpage");
}

/// Istio's mesh dashboard: global volume and success rate, the HTTP
/// workloads table, latency percentiles, TCP bytes by service.
fn check_mesh_dashboard(at: &At<'_>) {
    let volume = scalar(at, r#"round(sum(irate(istio_requests_total{reporter=~"source|waypoint"}[1m])), 0.001)"#);
    assert!(volume > 1.0, "global request volume {volume}");
    let success = scalar(
        at,
        r#"sum(rate(istio_requests_total{reporter=~"source|waypoint", response_code!~"5.*"}[1m])) / sum(rate(istio_requests_total{reporter=~"source|waypoint"}[1m]))"#,
    );
    // Half the requests go to reviews (a quarter failing), half to
    // productpage (none): about 7/8.
    assert!((0.80..0.95).contains(&success), "global success rate {success}");
    let workloads = grouped(
        at,
        r#"label_join(sum(rate(istio_requests_total{reporter=~"source|waypoint", response_code="200"}[1m])) by (destination_workload, destination_workload_namespace, destination_service), "destination_workload_var", ".", "destination_workload", "destination_workload_namespace")"#,
        "destination_workload_var",
    );
    let names: Vec<&str> = workloads.keys().map(String::as_str).collect();
    assert_eq!(names, ["productpage-v1.default", "reviews-v1.default"], "{workloads:?}");
    for q in [0.50, 0.90, 0.99] {
        let latency = grouped(
            at,
            &format!(
                r#"histogram_quantile({q}, sum(rate(istio_request_duration_milliseconds_bucket{{reporter=~"source|waypoint"}}[1m])) by (le, destination_workload, destination_workload_namespace))"#
            ),
            "destination_workload",
        );
        assert_eq!(latency.len(), 2, "P{q}: {latency:?}");
        assert!(latency.values().all(|ms| ms.is_finite() && *ms > 0.0 && *ms < 1000.0), "P{q}: {latency:?}");
    }
    let tcp = grouped(
        at,
        r#"sum(rate(istio_tcp_sent_bytes_total{reporter=~"source|waypoint"}[1m])) by (destination_workload, destination_workload_namespace, destination_service)"#,
        "destination_service",
    );
    assert!(tcp.get("reviews.default.svc.cluster.local").is_some_and(|b| *b > 0.0), "TCP bytes by service: {tcp:?}");
}

/// Istio's service dashboard, for reviews: requests, success rate and
/// latency as its server reports them, and who called over mTLS.
fn check_service_dashboard(at: &At<'_>) {
    let service = "reviews.default.svc.cluster.local";
    let rate = scalar(
        at,
        &format!(r#"sum(irate(istio_requests_total{{reporter=~"destination",destination_service=~"{service}"}}[1m]))"#),
    );
    assert!(rate > 1.0, "reviews' request rate {rate}");
    let success = scalar(
        at,
        &format!(
            r#"sum(rate(istio_requests_total{{reporter="destination",destination_service=~"{service}",response_code!~"5.*"}}[1m])) / sum(rate(istio_requests_total{{reporter="destination",destination_service=~"{service}"}}[1m]))"#
        ),
    );
    assert!((0.70..0.80).contains(&success), "reviews' success rate {success} (every 4th request fails)");
    let p90 = scalar(
        at,
        &format!(
            r#"histogram_quantile(0.90, sum(irate(istio_request_duration_milliseconds_bucket{{reporter="destination",destination_service=~"{service}"}}[1m])) by (le))"#
        ),
    );
    assert!(p90.is_finite() && p90 > 0.0, "reviews' P90 {p90}");
    let size = scalar(
        at,
        &format!(
            r#"histogram_quantile(0.50, sum(irate(istio_request_bytes_bucket{{reporter="destination",destination_service=~"{service}"}}[1m])) by (le))"#
        ),
    );
    assert!(size > 10.0, "reviews' median request size {size}");
    let callers = query(
        at,
        &format!(
            r#"round(sum(irate(istio_requests_total{{connection_security_policy="mutual_tls",destination_service=~"{service}",reporter=~"destination"}}[1m])) by (source_workload, source_workload_namespace, response_code), 0.001)"#
        ),
    );
    let seen: Vec<(String, String, String)> = callers
        .iter()
        .map(|(l, _)| {
            (l["source_workload"].clone(), l["source_workload_namespace"].clone(), l["response_code"].clone())
        })
        .collect();
    let pp = |code: &str| ("productpage-v1".to_string(), "default".to_string(), code.to_string());
    assert_eq!(seen.len(), 2, "{callers:?}");
    assert!(seen.contains(&pp("200")) && seen.contains(&pp("503")), "reviews' callers over mTLS: {callers:?}");
}

/// Istio's workload dashboard, for productpage-v1: what it served (from
/// the gateway), what it called, and the TCP bytes reviews took from it.
fn check_workload_dashboard(at: &At<'_>) {
    let inbound = grouped(
        at,
        r#"sum(irate(istio_requests_total{reporter=~"destination",destination_workload_namespace=~"default",destination_workload=~"productpage-v1"}[1m])) by (source_workload, source_principal)"#,
        "source_workload",
    );
    assert!(inbound.get("istio-ingressgateway").is_some_and(|r| *r > 0.0), "productpage's callers: {inbound:?}");
    let outbound = grouped(
        at,
        r#"sum(irate(istio_requests_total{reporter=~"source",source_workload_namespace=~"default",source_workload=~"productpage-v1"}[1m])) by (destination_service)"#,
        "destination_service",
    );
    assert!(
        outbound.get("reviews.default.svc.cluster.local").is_some_and(|r| *r > 0.0),
        "productpage's calls: {outbound:?}"
    );
    let tcp = grouped(
        at,
        r#"sum(irate(istio_tcp_received_bytes_total{reporter=~"destination", destination_workload_namespace=~"default", destination_workload=~"reviews-v1"}[1m])) by (source_workload)"#,
        "source_workload",
    );
    assert_eq!(tcp.len(), 1, "TCP into reviews by source: {tcp:?}");
    let opened =
        scalar(at, r#"sum(istio_tcp_connections_opened_total{reporter="source", destination_workload="reviews-v1"})"#);
    let closed =
        scalar(at, r#"sum(istio_tcp_connections_closed_total{reporter="source", destination_workload="reviews-v1"})"#);
    // At the moment queried, one connection may still be open.
    assert!(
        opened > 10.0 && (opened - 1.0..=opened).contains(&closed),
        "TCP connections opened {opened}, closed {closed}"
    );
}
