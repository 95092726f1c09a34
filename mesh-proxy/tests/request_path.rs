//! The request path as a user of the library runs it: an in-process proxy
//! on Istio config, in front of the recording upstream (a child process
//! that reports what reached it). Path normalization before routing and
//! authorization, fields a client names in `Connection`, the forwarded
//! Host, and user filters on every exchange.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mesh_core::config::Resource;
use mesh_core::filter::{Filter, FilterContext, FilterError, ResponseHead};
use mesh_core::model::{Endpoint, Service};
use mesh_core::path::PathNormalization;
use mesh_core::registry::MemoryRegistry;
use mesh_core::store::MemoryConfigStore;
use mesh_proxy::limits::DownstreamLimits;
use mesh_proxy::{default_gateway_identity, ConfigSource, ProxyBuilder, ProxyHandle};
use mesh_testkit::http::{parse, raw_port, Response};
use mesh_testkit::peers::recording_upstream;
use mesh_testkit::{free_port, Proc};
use serde_json::Value;

/// The gateway's routes and policies, after the Gateway resource.
const ROUTES: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: app, namespace: default}
spec:
  hosts: [\"*\"]
  gateways: [istio-system/gw]
  http:
  - name: fault
    match: [{uri: {prefix: /fault}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: app}}]
  - match: [{uri: {prefix: /__close/retried}}]
    route: [{destination: {host: app}}]
    retries: {attempts: 1, retryOn: reset}
  - name: missing
    match: [{uri: {prefix: /missing}}]
    directResponse: {status: 200}
  - match: [{authority: {exact: internal.example}}]
    route: [{destination: {host: app}}]
    headers: {request: {set: {x-routed: internal, x-tenant: gold}}}
  - name: default
    match: [{uri: {prefix: /}}]
    route: [{destination: {host: app}}]
    headers: {request: {set: {x-routed: default, x-tenant: gold}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules: [{to: [{operation: {paths: [\"/admin*\"]}}]}]
";

struct Setup {
    _upstream: Proc,
    /// Holds the upstream's log of requests.
    dir: tempfile::TempDir,
    proxy: Option<ProxyHandle>,
    port: u16,
    runtime: tokio::runtime::Runtime,
}

impl Setup {
    fn start(mode: PathNormalization, filters: Vec<Arc<dyn Filter>>) -> Setup {
        Setup::start_with(mode, filters, DownstreamLimits::default())
    }

    fn start_with(mode: PathNormalization, filters: Vec<Arc<dyn Filter>>, limits: DownstreamLimits) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let (upstream, upstream_port) = recording_upstream(Some(&dir.path().join("requests.jsonl")));
        let port = free_port();
        let store = Arc::new(MemoryConfigStore::new());
        let gateway = format!("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: {port}, name: http, protocol: HTTP}}\n    hosts: [\"*\"]\n");
        for doc in std::iter::once(gateway.as_str()).chain(ROUTES.split("---\n")) {
            store.upsert(Resource::from_yaml(doc).unwrap_or_else(|e| panic!("{e}\n{doc}")));
        }
        let registry = Arc::new(MemoryRegistry::new("test"));
        let mut endpoint = Endpoint::new("127.0.0.1");
        endpoint.ports.insert("http".into(), upstream_port);
        registry.upsert(Service::http("app.default.svc.cluster.local", "default", 80), vec![endpoint]);
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let mut builder = ProxyBuilder::new(ConfigSource::mesh(store.clone(), registry, default_gateway_identity()))
            .bind_ip("127.0.0.1".parse().unwrap())
            .path_normalization(mode)
            .downstream_limits(limits)
            .drain_timeout(Duration::from_millis(500))
            .admin("127.0.0.1:0".parse().unwrap());
        for filter in filters {
            builder = builder.filter(filter);
        }
        let proxy = runtime.block_on(async {
            let proxy = builder.start().await.unwrap();
            proxy.wait_for_version_change("", Duration::from_secs(10)).await.expect("the config applies");
            proxy
        });
        Setup { _upstream: upstream, dir, proxy: Some(proxy), port, runtime }
    }

    fn send(&self, request: &str) -> Response {
        let text = raw_port(self.port, request.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        parse(&text).unwrap_or_else(|| panic!("no answer to {request:?}: {text:?}"))
    }

    fn get(&self, target: &str, extra: &str) -> Response {
        self.send(&format!("GET {target} HTTP/1.1\r\nhost: app.example\r\n{extra}connection: close\r\n\r\n"))
    }

    /// The requests that reached the upstream with this target.
    fn reached(&self, target: &str) -> usize {
        let log = std::fs::read_to_string(self.dir.path().join("requests.jsonl")).unwrap_or_default();
        log.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|r| r["target"] == target).count()
    }

    /// The upstream's open connections, asked through the proxy (on one
    /// of them).
    fn upstream_connections(&self) -> usize {
        let r = self.get("/__open", "");
        r.body.trim().parse().unwrap_or_else(|_| panic!("{}", r.body))
    }

    fn admin(&self, path: &str) -> String {
        let admin = self.proxy.as_ref().and_then(|p| p.admin_address()).expect("an admin server");
        mesh_testkit::http::get(admin.port(), path, &[]).body
    }

    fn metrics(&self) -> String {
        let admin = self.proxy.as_ref().and_then(|p| p.admin_address()).expect("an admin server");
        mesh_testkit::http::get(admin.port(), "/stats/prometheus", &[]).body
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(proxy) = self.proxy.take() {
            self.runtime.block_on(proxy.drain());
        }
    }
}

/// What the upstream saw, from its JSON answer.
fn seen(r: &Response) -> Value {
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

fn header<'a>(seen: &'a Value, name: &str) -> Vec<&'a str> {
    let headers = seen["headers"].as_array().expect("headers");
    headers.iter().filter(|h| h[0] == name).filter_map(|h| h[1].as_str()).collect()
}

#[test]
fn paths_are_normalized_before_authorization_and_routing_in_every_mode() {
    use PathNormalization::{Base, DecodeAndMergeSlashes, MergeSlashes, None};
    // (path, status under NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES)
    let cases: [(&str, [u16; 4]); 9] = [
        ("/admin", [403, 403, 403, 403]),
        ("/./admin", [200, 403, 403, 403]),
        ("/a/../admin", [200, 403, 403, 403]),
        ("/%61dmin", [200, 403, 403, 403]),
        ("/public/..\\admin", [200, 403, 403, 403]),
        ("//admin", [200, 200, 403, 403]),
        ("/x%2F..%2Fadmin", [200, 200, 200, 403]),
        ("/x%5C..%5Cadmin", [200, 200, 200, 403]),
        ("/a%zz", [200, 400, 400, 400]),
    ];
    for (i, mode) in [None, Base, MergeSlashes, DecodeAndMergeSlashes].into_iter().enumerate() {
        let setup = Setup::start(mode, vec![]);
        for (path, statuses) in &cases {
            let r = setup.get(path, "");
            assert_eq!(r.status, statuses[i], "{path} under {mode:?}: {}", r.body);
        }
        // What passes goes upstream normalized: the upstream serves what
        // was authorized.
        let expected = match mode {
            None => "/p/./q/../r//s",
            Base => "/p/r//s",
            _ => "/p/r/s",
        };
        assert_eq!(seen(&setup.get("/p/./q/../r//s", ""))["target"], expected, "{mode:?}");
        assert_eq!(seen(&setup.get("/q?x=/../y", ""))["target"], "/q?x=/../y", "the query is left alone");
    }
}

#[test]
fn a_client_cannot_strip_what_the_config_adds_by_naming_it_in_connection() {
    let setup = Setup::start(PathNormalization::Base, vec![]);
    let up = seen(&setup.get("/", "x-tenant: evil\r\nconnection: x-tenant\r\n"));
    assert_eq!(header(&up, "x-tenant"), ["gold"], "{up}");
    let up = seen(&setup.get("/", "x-request-id: mine\r\nconnection: x-request-id, x-forwarded-for\r\n"));
    let ids = header(&up, "x-request-id");
    assert!(ids.len() == 1 && !ids[0].is_empty() && ids[0] != "mine", "a fresh request id: {up}");
    assert_eq!(header(&up, "x-forwarded-for"), ["127.0.0.1"], "{up}");
    // Named fields of the client's own go, as hop-by-hop fields must.
    let up = seen(&setup.get("/", "x-hop: 1\r\nconnection: x-hop\r\n"));
    assert!(header(&up, "x-hop").is_empty() && header(&up, "connection").is_empty(), "{up}");
}

#[test]
fn an_absolute_form_target_is_routed_and_forwarded_with_its_own_host() {
    let setup = Setup::start(PathNormalization::Base, vec![]);
    let up = seen(
        &setup.send("GET http://internal.example/x HTTP/1.1\r\nhost: public.example\r\nconnection: close\r\n\r\n"),
    );
    assert_eq!((header(&up, "host"), header(&up, "x-routed")), (vec!["internal.example"], vec!["internal"]), "{up}");
    assert_eq!(up["target"], "/x");
    let up = seen(&setup.send("GET /x HTTP/1.1\r\nhost: internal.example\r\nconnection: close\r\n\r\n"));
    assert_eq!(header(&up, "x-routed"), ["internal"]);
    for refused in [
        "GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nhost: a b\r\n\r\n",
        "GET / HTTP/1.1\r\nhost: a\r\nconnection: host\r\n\r\n",
    ] {
        assert_eq!(setup.send(refused).status, 400, "{refused:?}");
    }
}

/// Records what each filter phase saw.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<String>>,
}

#[async_trait]
impl Filter for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }

    async fn on_response(&self, resp: &mut ResponseHead, ctx: &mut FilterContext) -> Result<(), FilterError> {
        let flags = ctx.response_flags.unwrap_or("-");
        self.seen.lock().unwrap().push(format!("response {} {flags}", resp.status.as_u16()));
        resp.headers.insert("x-filtered", http::HeaderValue::from_static("yes"));
        Ok(())
    }

    fn on_log(&self, ctx: &FilterContext) {
        let status = ctx.status.map_or(0, |s| s.as_u16());
        let flags = ctx.response_flags.unwrap_or("-");
        self.seen.lock().unwrap().push(format!("log {status} {flags} {}", ctx.route.as_deref().unwrap_or("")));
    }
}

#[test]
fn filters_see_local_replies_with_their_flags_and_every_exchange_is_logged() {
    let recorder = Arc::new(Recorder::default());
    let setup = Setup::start(PathNormalization::Base, vec![recorder.clone()]);
    for (target, status) in [("/ok", 200), ("/admin", 403), ("/fault", 418), ("/missing", 200), ("/a%zz", 400)] {
        let r = setup.get(target, "");
        assert_eq!((r.status, r.header("x-filtered")), (status, Some("yes")), "{target}: {}", r.body);
    }
    let seen = recorder.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            "response 200 -",
            "log 200 - default",
            "response 403 RBAC",
            "log 403 RBAC default",
            "response 418 FI",
            "log 418 FI fault",
            "response 200 -",
            "log 200 - missing",
            "response 400 DPE",
            "log 400 DPE ",
        ],
    );
}

/// A client that leaves before its answer cancels the exchange: the
/// upstream request is dropped and its connection closed (Istio sets no
/// route timeout, so nothing else would), and the exchange is logged with
/// response code 0 and flag `DC`, as Envoy logs it.
#[test]
fn a_client_that_leaves_cancels_its_upstream_request_over_http1_and_http2() {
    use std::io::Write;
    let setup = Setup::start(PathNormalization::Base, vec![]);
    let hanging: Vec<std::net::TcpStream> = (0..30)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", setup.port)).unwrap();
            s.write_all(b"GET /__hang HTTP/1.1\r\nhost: a\r\n\r\n").unwrap();
            s
        })
        .collect();
    mesh_testkit::wait_until(Duration::from_secs(10), || setup.upstream_connections() > 30);
    drop(hanging);
    mesh_testkit::wait_until(Duration::from_secs(10), || setup.upstream_connections() <= 2);

    // HTTP/2: ten streams on one connection, reset; then ten connections
    // closed, with a stream each in flight.
    let port = setup.port;
    let rt = &setup.runtime;
    let (shared, streams, _sender) = rt.block_on(h2_hanging(port, 10));
    let closing: Vec<_> = (0..10).map(|_| rt.block_on(h2_hanging(port, 1))).collect();
    mesh_testkit::wait_until(Duration::from_secs(10), || setup.upstream_connections() > 20);
    for stream in streams {
        stream.abort();
    }
    mesh_testkit::wait_until(Duration::from_secs(10), || setup.upstream_connections() <= 12);
    assert!(!shared.is_finished(), "the connection outlives its reset streams");
    for (connection, streams, _) in closing {
        connection.abort();
        streams.into_iter().for_each(|s| s.abort());
    }
    mesh_testkit::wait_until(Duration::from_secs(10), || setup.upstream_connections() <= 2);
    shared.abort();

    let metrics = setup.metrics();
    let abandoned: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"0\""))
        .filter(|l| l.contains("response_flags=\"DC\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(abandoned, 50, "{metrics}");
}

type Task<T> = tokio::task::JoinHandle<T>;
type H2Sender = hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>;

/// An HTTP/2 connection to the proxy with `streams` requests for an
/// answer that never comes: the connection's task, the streams' tasks, and
/// the handle that keeps the connection open.
async fn h2_hanging(port: u16, streams: usize) -> (Task<hyper::Result<()>>, Vec<Task<()>>, H2Sender) {
    let io = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(io))
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    let streams = (0..streams)
        .map(|_| {
            let mut sender = sender.clone();
            let request =
                http::Request::get("http://app.example/__hang").body(http_body_util::Empty::<bytes::Bytes>::new());
            tokio::spawn(async move {
                let _ = sender.send_request(request.unwrap()).await;
            })
        })
        .collect();
    (connection, streams, sender)
}

/// A POST written whole on a kept-alive connection, which the upstream then
/// closed without an answer, may have been acted on: it is sent again only
/// when the route's retry policy says `reset` (Istio's default policy does
/// not), never by the connection pool on its own (RFC 9112 9.3.1 lets it
/// retry idempotent methods only).
#[test]
fn a_request_the_upstream_may_have_acted_on_is_replayed_only_as_the_retry_policy_allows() {
    let setup = Setup::start(PathNormalization::Base, vec![]);
    let post = |target: &str| {
        // One kept-alive connection upstream, then the POST on it.
        let warm = "GET / HTTP/1.1\r\nhost: a\r\n\r\n";
        let post = format!("POST {target} HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello");
        let text = raw_port(setup.port, format!("{warm}{post}").as_bytes()).unwrap();
        let second = text.match_indices("HTTP/1.1 ").nth(1).map(|(i, _)| &text[i..]).unwrap_or_default();
        parse(second).unwrap_or_else(|| panic!("two answers: {text}"))
    };
    let r = post("/__close");
    assert_eq!(
        (r.status, r.body.as_str()),
        (503, "upstream connect error or disconnect/reset before headers. reset reason: connection termination")
    );
    assert_eq!(setup.reached("/__close"), 1, "sent once");
    assert_eq!(post("/__close/retried").status, 503);
    assert_eq!(setup.reached("/__close/retried"), 2, "retryOn: reset allows one retry");
}

/// Timeouts and limits an operator sets: a body that stalls is 408 with
/// flag `SI` and never reaches the upstream whole; connections past a
/// listener's limit are closed as they come and counted.
#[test]
fn stalled_bodies_get_408_and_connections_past_the_limit_are_refused_and_counted() {
    use std::io::{Read, Write};
    let limits = DownstreamLimits {
        stream_idle_timeout: Some(Duration::from_millis(300)),
        max_connections: Some(3),
        ..DownstreamLimits::default()
    };
    let setup = Setup::start_with(PathNormalization::Base, vec![], limits);
    let mut stalled = std::net::TcpStream::connect(("127.0.0.1", setup.port)).unwrap();
    stalled.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stalled.write_all(b"POST /slow HTTP/1.1\r\nhost: a\r\ncontent-length: 100\r\n\r\n0123456789").unwrap();
    let mut answer = String::new();
    let read = stalled.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer} {read:?}");
    assert_eq!(setup.reached("/slow"), 0, "the upstream never got a cut body as whole");
    assert!(setup.metrics().contains("response_flags=\"SI\""), "{}", setup.metrics());

    let held: Vec<std::net::TcpStream> =
        (0..3).map(|_| std::net::TcpStream::connect(("127.0.0.1", setup.port)).unwrap()).collect();
    let mut refused = std::net::TcpStream::connect(("127.0.0.1", setup.port)).unwrap();
    refused.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = refused.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n");
    let mut nothing = Vec::new();
    let read = refused.read_to_end(&mut nothing);
    assert!(read.is_err() || nothing.is_empty(), "closed unanswered: {:?}", String::from_utf8_lossy(&nothing));
    let stats = setup.admin("/stats");
    assert!(stats.contains("listener.downstream_cx_overflow: 1"), "{stats}");
    drop(held);
    let served = mesh_testkit::wait_until(Duration::from_secs(5), || {
        let text = raw_port(setup.port, b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n").unwrap_or_default();
        parse(&text).is_some_and(|r| r.status == 200)
    });
    assert!(served, "a slot frees as a connection closes");
}

/// A drain lets requests in flight finish up to the drain timeout; those
/// still running then are cut off, and counted.
#[test]
fn requests_still_running_at_the_drain_deadline_are_counted() {
    use std::io::Write;
    let mut setup = Setup::start(PathNormalization::Base, vec![]);
    let _hanging: Vec<std::net::TcpStream> = (0..2)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", setup.port)).unwrap();
            s.write_all(b"GET /__hang HTTP/1.1\r\nhost: a\r\n\r\n").unwrap();
            s
        })
        .collect();
    let _idle = std::net::TcpStream::connect(("127.0.0.1", setup.port)).unwrap();
    mesh_testkit::wait_until(Duration::from_secs(10), || setup.upstream_connections() > 2);
    let proxy = setup.proxy.take().unwrap();
    let drained = setup.runtime.block_on(proxy.drain());
    assert_eq!(drained.cut_off_connections, 2, "the idle connection closed at once; the two in flight were cut off");
}
