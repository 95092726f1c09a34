//! HTTP/1.1 framing, differential: the same raw bytes to the gateway and
//! to Envoy 1.40 (configured as Istio configures a gateway), each in front
//! of its own recording upstream.
//!
//! Requests: for every case of the corpus (`framing/corpus.rs`) the
//! gateway forwards nothing Envoy refuses, forwards nothing the upstream
//! cannot parse, and its upstream sees exactly the requests it answered
//! with the upstream's answers (no request hidden in another's body).
//!
//! Responses: for every way an upstream can misframe an answer (the
//! recording upstream's `/__raw/NAME` answers), the gateway passes on
//! nothing Envoy refuses, and the next request on the same client
//! connection gets its own answer (no desync).

#[path = "framing/corpus.rs"]
mod corpus;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_core::config::Resource;
use mesh_core::model::{Endpoint, Service};
use mesh_core::registry::MemoryRegistry;
use mesh_core::store::MemoryConfigStore;
use mesh_proxy::{default_gateway_identity, ConfigSource, ProxyBuilder, ProxyHandle};
use mesh_testkit::envoy::Envoy;
use mesh_testkit::peers::recording_upstream;
use mesh_testkit::{free_port, Proc};
use serde_json::Value;

/// A proxy under test, with its own recording upstream and its log.
struct Front {
    port: u16,
    log: PathBuf,
    /// Log lines already read.
    seen: usize,
}

/// What reached an upstream: method, target, body.
type Forwarded = (String, String, String);

/// The answers a client read: status and body, in order.
type Answers = Vec<(u16, String)>;

impl Front {
    /// The requests its upstream logged since the last call; a line the
    /// upstream could not parse comes back as an error.
    fn forwarded(&mut self) -> Result<Vec<Forwarded>, String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let new = &lines[self.seen.min(lines.len())..];
        self.seen = lines.len();
        new.iter()
            .map(|l| {
                let v: Value = serde_json::from_str(l).map_err(|e| format!("{e}: {l}"))?;
                match v.get("error") {
                    Some(e) => Err(format!("the upstream could not parse what it got: {e}")),
                    None => Ok((str_of(&v["method"]), str_of(&v["target"]), str_of(&v["body"]))),
                }
            })
            .collect()
    }
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

const ENVOY: &str = r#"
static_resources:
  listeners:
  - name: http
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: http
          # As Istio sets a gateway's connection manager by default.
          normalize_path: true
          merge_slashes: false
          path_with_escaped_slashes_action: KEEP_UNCHANGED
          stream_idle_timeout: 0s
          use_remote_address: true
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: upstream, timeout: 5s}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: UPSTREAM}}}
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 0}}
"#;

struct Peers {
    envoy: Front,
    ours: Front,
    _procs: (Envoy, Proc, Proc),
    _proxy: ProxyHandle,
    _runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn peers() -> Peers {
    let dir = tempfile::tempdir().unwrap();
    let (envoy_upstream, envoy_upstream_port) = recording_upstream(Some(&dir.path().join("envoy.jsonl")));
    let (our_upstream, our_upstream_port) = recording_upstream(Some(&dir.path().join("ours.jsonl")));
    let envoy_dir = dir.path().join("envoy");
    std::fs::create_dir_all(&envoy_dir).unwrap();
    let envoy = Envoy::start(&ENVOY.replace("UPSTREAM", &envoy_upstream_port.to_string()), &envoy_dir);
    let envoy_port = envoy.listener_port().expect("Envoy's listener port");
    let (runtime, proxy, port) = gateway(our_upstream_port);
    Peers {
        envoy: Front { port: envoy_port, log: dir.path().join("envoy.jsonl"), seen: 0 },
        ours: Front { port, log: dir.path().join("ours.jsonl"), seen: 0 },
        _procs: (envoy, envoy_upstream, our_upstream),
        _proxy: proxy,
        _runtime: runtime,
        _dir: dir,
    }
}

/// The gateway, in this process, routing everything to `upstream`.
fn gateway(upstream: u16) -> (tokio::runtime::Runtime, ProxyHandle, u16) {
    let port = free_port();
    let store = Arc::new(MemoryConfigStore::new());
    for doc in [
        format!("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: {port}, name: http, protocol: HTTP}}\n    hosts: [\"*\"]\n"),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: app, namespace: default}\nspec:\n  hosts: [\"*\"]\n  gateways: [istio-system/gw]\n  http:\n  - route: [{destination: {host: app}}]\n    timeout: 5s\n".to_string(),
    ] {
        store.upsert(Resource::from_yaml(&doc).unwrap());
    }
    let registry = Arc::new(MemoryRegistry::new("test"));
    let mut endpoint = Endpoint::new("127.0.0.1");
    endpoint.ports.insert("http".into(), upstream);
    registry.upsert(Service::http("app.default.svc.cluster.local", "default", 80), vec![endpoint]);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let proxy = runtime.block_on(async {
        let proxy = ProxyBuilder::new(ConfigSource::mesh(store, registry, default_gateway_identity()))
            .bind_ip("127.0.0.1".parse().unwrap())
            .start()
            .await
            .unwrap();
        proxy.wait_for_version_change("", Duration::from_secs(10)).await.expect("the config applies");
        proxy
    });
    (runtime, proxy, port)
}

/// Everything a proxy sends back on a fresh connection for `bytes`, until
/// it closes or is quiet for a moment (bounded).
fn exchange(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = stream.write_all(bytes);
    read_quiet(&mut stream)
}

fn read_quiet(stream: &mut TcpStream) -> Vec<u8> {
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

/// The responses in `bytes`, in order: status and body. A response cut
/// short ends the list.
fn responses(mut bytes: &[u8]) -> Answers {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut response = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(used)) = response.parse(bytes) else { break };
        let status = response.code.unwrap_or(0);
        let field =
            |name: &str| response.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.to_vec());
        let rest = &bytes[used..];
        let (body, after) = if (100..200).contains(&status) || status == 204 || status == 304 {
            (Vec::new(), rest)
        } else if field("transfer-encoding").is_some() {
            match mesh_testkit::http::dechunk(&String::from_utf8_lossy(rest)) {
                Some(body) => (body.into_bytes(), &rest[rest.len()..]),
                None => break,
            }
        } else if let Some(n) = field("content-length").and_then(|v| String::from_utf8(v).ok()?.trim().parse().ok()) {
            if rest.len() < n {
                break;
            }
            (rest[..n].to_vec(), &rest[n..])
        } else {
            (rest.to_vec(), &rest[rest.len()..])
        };
        // Interim answers (100 Continue) are not answers of their own.
        if !(100..200).contains(&status) || status == 101 {
            out.push((status, String::from_utf8_lossy(&body).into_owned()));
        }
        bytes = after;
    }
    out
}

/// Answers that came from the recording upstream (its JSON), not from
/// the proxy.
fn upstream_answers(responses: &[(u16, String)]) -> usize {
    responses.iter().filter(|(_, body)| body.starts_with("{\"conn\"")).count()
}

/// `ours` has no element that `theirs` lacks (as multisets).
fn is_sub_multiset(ours: &[Forwarded], theirs: &[Forwarded]) -> bool {
    let mut left: HashMap<&Forwarded, usize> = HashMap::new();
    for f in theirs {
        *left.entry(f).or_default() += 1;
    }
    ours.iter().all(|f| left.get_mut(f).is_some_and(|n| std::mem::replace(n, n.saturating_sub(1)) > 0))
}

#[test]
fn requests_the_gateway_forwards_are_a_subset_of_envoys_with_the_same_boundaries() {
    let mut p = peers();
    let cases = corpus::requests();
    assert!(cases.len() >= 100, "the corpus has {} cases", cases.len());
    let mut problems = Vec::new();
    let mut report = Vec::new();
    for case in &cases {
        let (envoy_out, our_out) = std::thread::scope(|s| {
            let envoy = s.spawn(|| exchange(p.envoy.port, &case.bytes));
            let ours = exchange(p.ours.port, &case.bytes);
            (envoy.join().unwrap(), ours)
        });
        let (envoy_answers, our_answers) = (responses(&envoy_out), responses(&our_out));
        let envoy_forwarded = p.envoy.forwarded().unwrap_or_default();
        let ours_forwarded = match p.ours.forwarded() {
            Ok(f) => f,
            Err(e) => {
                problems.push(format!("{}: {e}", case.name));
                continue;
            }
        };
        let statuses = |a: &[(u16, String)]| a.iter().map(|(s, _)| s.to_string()).collect::<Vec<_>>().join(",");
        report.push(format!(
            "{:<40} envoy [{}] forwarded {} | gateway [{}] forwarded {}",
            case.name,
            statuses(&envoy_answers),
            envoy_forwarded.len(),
            statuses(&our_answers),
            ours_forwarded.len()
        ));
        if !is_sub_multiset(&ours_forwarded, &envoy_forwarded) {
            problems.push(format!(
                "{}: the gateway forwarded {ours_forwarded:?}, Envoy only {envoy_forwarded:?}",
                case.name
            ));
        }
        if upstream_answers(&our_answers) != ours_forwarded.len() {
            problems.push(format!(
                "{}: the upstream saw {} requests, the client got {} of its answers: {:?}",
                case.name,
                ours_forwarded.len(),
                upstream_answers(&our_answers),
                String::from_utf8_lossy(&our_out)
            ));
        }
    }
    println!("{}", report.join("\n"));
    assert!(problems.is_empty(), "{} of {} cases:\n{}", problems.len(), cases.len(), problems.join("\n"));
}

/// One request for a canned answer, then the next request on the same
/// connection: the answers to each.
fn misframed(port: u16, name: &str) -> (Answers, Answers) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = stream.write_all(format!("GET /__raw/{name} HTTP/1.1\r\nhost: a\r\n\r\n").as_bytes());
    let first = responses(&read_quiet(&mut stream));
    let _ = stream.write_all(b"GET /after HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n");
    let second = responses(&read_quiet(&mut stream));
    (first, second)
}

#[test]
fn misframed_upstream_answers_are_refused_as_envoy_refuses_them_and_never_desync_the_client() {
    let p = peers();
    let names = mesh_testkit::peers::recording_upstream_answers();
    assert!(names.len() >= 35, "{names:?}");
    let mut problems = Vec::new();
    let mut report = Vec::new();
    for name in &names {
        let ((envoy_first, envoy_next), (our_first, our_next)) = std::thread::scope(|s| {
            let envoy = s.spawn(|| misframed(p.envoy.port, name));
            let ours = misframed(p.ours.port, name);
            (envoy.join().unwrap(), ours)
        });
        let show = |a: &[(u16, String)]| a.iter().map(|(s, _)| s.to_string()).collect::<Vec<_>>().join(",");
        report.push(format!(
            "{name:<28} envoy [{}] then [{}] | gateway [{}] then [{}]",
            show(&envoy_first),
            show(&envoy_next),
            show(&our_first),
            show(&our_next)
        ));
        let refused = |a: &[(u16, String)]| a.first().is_none_or(|(s, _)| *s == 502 || *s == 503);
        if refused(&envoy_first) && !refused(&our_first) {
            problems.push(format!("{name}: Envoy refused it, the gateway passed on {our_first:?}"));
        }
        let own_answer = |(status, body): &(u16, String)| {
            body.contains("\"target\": \"/after\"") || (*status >= 500 && !body.contains("extra"))
        };
        if !our_next.iter().all(own_answer) || our_next.len() > 1 || our_first.len() > 1 {
            problems.push(format!("{name}: desync: first {our_first:?}, then {our_next:?}"));
        }
    }
    println!("{}", report.join("\n"));
    assert!(problems.is_empty(), "{} of {} answers:\n{}", problems.len(), names.len(), problems.join("\n"));
}
