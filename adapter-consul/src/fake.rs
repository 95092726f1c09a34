//! An in-memory Consul agent that follows the HTTP API's documented
//! semantics, for testing where no Consul can run (feature `fake`; the
//! `fake_consul` example runs it as a process).
//!
//! - Reads: `/v1/catalog/services`, `/v1/health/service/<name>`,
//!   `/v1/kv/<prefix>?recurse`, in the JSON shapes of the API docs, each
//!   with `X-Consul-Index`; with `?index=N` they block until the index
//!   passes N or `wait` (default 5m, at most 10m, plus up to 1/16 jitter)
//!   expires. Indexes are per table and per service, and only grow, as
//!   Consul's do.
//! - Writes: `PUT /v1/catalog/register` and `/v1/catalog/deregister` (node,
//!   service, checks), `PUT` / `DELETE /v1/kv/<key>`.
//! - ACLs: with a token set, requests without it (`X-Consul-Token` or
//!   `?token=`) get `403 ACL not found`.
//! - TLS, when given a certificate and key.
//!
//! Test controls (not in Consul's API): `POST /fake/fail?count=N` answers
//! the next N reads with 500; `POST /fake/restore?index=N` moves every
//! index back to at most N, as a snapshot restore does; `POST /fake/drop`
//! drops the connections of blocked queries; `GET /fake/stats` counts
//! requests by endpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::watch;

#[derive(Clone, Debug, Default)]
pub struct FakeOptions {
    pub datacenter: String,
    pub acl_token: Option<String>,
    /// PEM certificate chain and key: serve HTTPS.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// A synthetic catalog to start with: this many services named
    /// `svc-<i>`, each with `instances` instances.
    pub seed_services: usize,
    pub seed_instances: usize,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct RegisterService {
    #[serde(rename = "ID")]
    id: String,
    service: String,
    tags: Vec<String>,
    address: String,
    meta: BTreeMap<String, String>,
    port: u16,
    weights: Option<Value>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct RegisterCheck {
    #[serde(rename = "CheckID")]
    check_id: String,
    name: String,
    status: String,
    #[serde(rename = "ServiceID")]
    service_id: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct Register {
    node: String,
    address: String,
    node_meta: BTreeMap<String, String>,
    service: Option<RegisterService>,
    check: Option<RegisterCheck>,
    checks: Vec<RegisterCheck>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct Deregister {
    node: String,
    #[serde(rename = "ServiceID")]
    service_id: Option<String>,
    #[serde(rename = "CheckID")]
    check_id: Option<String>,
}

struct NodeRecord {
    address: String,
    meta: BTreeMap<String, String>,
}

#[derive(Default)]
struct State {
    index: u64,
    nodes: BTreeMap<String, NodeRecord>,
    /// By (node, service ID).
    services: BTreeMap<(String, String), RegisterService>,
    /// (node, service ID)s by service name.
    by_name: BTreeMap<String, BTreeSet<(String, String)>>,
    /// By (node, check ID).
    checks: BTreeMap<(String, String), RegisterCheck>,
    kv: BTreeMap<String, (Bytes, u64)>,
    /// Table indexes: the catalog's services, each service name's health,
    /// and the KV store.
    catalog_index: u64,
    service_index: BTreeMap<String, u64>,
    kv_index: u64,
    failures_left: u64,
    requests: BTreeMap<&'static str, u64>,
}

impl State {
    fn bump(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    /// Touch every service name on a node (a node check changed, the node
    /// went away).
    fn touch_node(&mut self, node: &str, index: u64) {
        let names: BTreeSet<String> =
            self.services.iter().filter(|((n, _), _)| n == node).map(|(_, s)| s.service.clone()).collect();
        for name in names {
            self.service_index.insert(name, index);
        }
    }

    fn add_service(&mut self, node: String, service: RegisterService) {
        let key = (node, service.id.clone());
        self.by_name.entry(service.service.clone()).or_default().insert(key.clone());
        if let Some(old) = self.services.insert(key.clone(), service) {
            self.unindex(&old.service, &key);
        }
    }

    fn unindex(&mut self, name: &str, key: &(String, String)) {
        if self.services.get(key).is_some_and(|s| s.service == name) {
            return;
        }
        if let Some(keys) = self.by_name.get_mut(name) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_name.remove(name);
            }
        }
    }

    fn remove_service(&mut self, key: &(String, String)) -> Option<RegisterService> {
        let old = self.services.remove(key)?;
        self.unindex(&old.service, key);
        Some(old)
    }

    fn catalog(&self) -> Value {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for s in self.services.values() {
            out.entry(s.service.clone()).or_default().extend(s.tags.iter().cloned());
        }
        json!(out)
    }

    fn health(&self, name: &str, datacenter: &str) -> Value {
        let entries: Vec<Value> = self
            .by_name
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|key| Some((key, self.services.get(key)?)))
            .map(|((node, id), s)| {
                let n = self.nodes.get(node);
                let checks: Vec<Value> = self
                    .checks
                    .range((node.clone(), String::new())..)
                    .take_while(|((cn, _), _)| cn == node)
                    .filter(|(_, c)| c.service_id.is_empty() || c.service_id == *id)
                    .map(|((cn, cid), c)| {
                        json!({"Node": cn, "CheckID": cid, "Name": c.name, "Status": c.status,
                               "ServiceID": c.service_id, "ServiceName": if c.service_id.is_empty() { "" } else { name }})
                    })
                    .collect();
                json!({
                    "Node": {"ID": "", "Node": node, "Address": n.map_or("", |n| n.address.as_str()),
                             "Datacenter": datacenter, "Meta": n.map(|n| &n.meta)},
                    "Service": {"ID": id, "Service": s.service, "Tags": s.tags, "Address": s.address,
                                "Meta": s.meta, "Port": s.port,
                                "Weights": s.weights.clone().unwrap_or(json!({"Passing": 1, "Warning": 1}))},
                    "Checks": checks
                })
            })
            .collect();
        json!(entries)
    }
}

struct Agent {
    options: FakeOptions,
    state: Mutex<State>,
    /// Bumped on every write (and on drops): blocked queries look again.
    changed: watch::Sender<u64>,
    /// Bumped by `/fake/drop`: blocked queries drop their connection.
    dropped: watch::Sender<u64>,
}

type Body = Full<Bytes>;

fn respond(status: StatusCode, index: Option<u64>, body: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    if let Some(index) = index {
        if let Ok(v) = http::HeaderValue::from_str(&index.to_string()) {
            headers.insert("X-Consul-Index", v);
        }
    }
    resp
}

/// Consul's duration syntax for `wait`: `10s`, `5m`, `250ms`.
fn parse_wait(text: &str) -> Option<Duration> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = number.parse().ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(60 * n),
        _ => return None,
    })
}

/// The error that makes hyper drop the connection without an answer.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by /fake/drop")
    }
}

impl std::error::Error for Dropped {}

impl Agent {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.lock());
        self.changed.send_modify(|n| *n += 1);
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<Body>, Dropped> {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_string();
        let query: BTreeMap<String, String> = parts
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
            .map(|(k, v)| (k.to_string(), percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned()))
            .collect();
        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        if let Some(resp) = self.control(&parts.method, &path, &query) {
            return Ok(resp);
        }
        {
            let mut state = self.lock();
            if parts.method == Method::GET && state.failures_left > 0 {
                state.failures_left -= 1;
                return Ok(respond(StatusCode::INTERNAL_SERVER_ERROR, None, "rpc error: No cluster leader".into()));
            }
        }
        if let Some(expected) = &self.options.acl_token {
            let given = parts
                .headers
                .get("X-Consul-Token")
                .and_then(|v| v.to_str().ok())
                .or(query.get("token").map(String::as_str));
            if given != Some(expected.as_str()) {
                return Ok(respond(StatusCode::FORBIDDEN, None, "ACL not found".into()));
            }
        }
        if query.get("dc").is_some_and(|dc| *dc != self.options.datacenter) {
            return Ok(respond(StatusCode::INTERNAL_SERVER_ERROR, None, "No path to datacenter".into()));
        }
        match (&parts.method, path.as_str()) {
            (&Method::PUT, "/v1/catalog/register") => Ok(self.register(&body)),
            (&Method::PUT, "/v1/catalog/deregister") => Ok(self.deregister(&body)),
            (&Method::GET, "/v1/catalog/services") => {
                self.blocking("catalog", &query, |s| (s.catalog_index, Some(s.catalog()))).await
            }
            (&Method::GET, p) if p.starts_with("/v1/health/service/") => {
                let name = percent_encoding::percent_decode_str(&p["/v1/health/service/".len()..])
                    .decode_utf8_lossy()
                    .into_owned();
                let dc = self.options.datacenter.clone();
                self.blocking("health", &query, move |s| {
                    (s.service_index.get(&name).copied().unwrap_or(s.catalog_index), Some(s.health(&name, &dc)))
                })
                .await
            }
            (&Method::GET, p) if p.starts_with("/v1/kv/") => {
                let prefix = p["/v1/kv/".len()..].to_string();
                let recurse = query.contains_key("recurse");
                self.blocking("kv", &query, move |s| {
                    let pairs: Vec<Value> =
                        s.kv.iter()
                            .filter(|(k, _)| if recurse { k.starts_with(&prefix) } else { **k == prefix })
                            .map(|(k, (v, i))| {
                                json!({"Key": k, "Value": base64::engine::general_purpose::STANDARD.encode(v),
                                                   "CreateIndex": i, "ModifyIndex": i, "LockIndex": 0, "Flags": 0})
                            })
                            .collect();
                    (s.kv_index, (!pairs.is_empty()).then(|| json!(pairs)))
                })
                .await
            }
            (&Method::PUT, p) if p.starts_with("/v1/kv/") => {
                let key = p["/v1/kv/".len()..].to_string();
                self.write(|s| {
                    let i = s.bump();
                    s.kv.insert(key, (body.clone(), i));
                    s.kv_index = i;
                });
                Ok(respond(StatusCode::OK, None, "true".into()))
            }
            (&Method::DELETE, p) if p.starts_with("/v1/kv/") => {
                let key = p["/v1/kv/".len()..].to_string();
                self.write(|s| {
                    if s.kv.remove(&key).is_some() {
                        s.kv_index = s.bump();
                    }
                });
                Ok(respond(StatusCode::OK, None, "true".into()))
            }
            _ => Ok(respond(StatusCode::NOT_FOUND, None, format!("no such endpoint: {path}"))),
        }
    }

    fn control(&self, method: &Method, path: &str, query: &BTreeMap<String, String>) -> Option<Response<Body>> {
        let number = |name: &str| query.get(name).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        let ok = || respond(StatusCode::OK, None, "true".into());
        match (method, path) {
            (&Method::POST, "/fake/fail") => {
                self.lock().failures_left = number("count");
                Some(ok())
            }
            (&Method::POST, "/fake/restore") => {
                let to = number("index").max(1);
                self.write(|s| {
                    s.index = s.index.min(to);
                    s.catalog_index = s.catalog_index.min(to);
                    s.kv_index = s.kv_index.min(to);
                    for i in s.service_index.values_mut() {
                        *i = (*i).min(to);
                    }
                });
                Some(ok())
            }
            (&Method::POST, "/fake/drop") => {
                self.dropped.send_modify(|n| *n += 1);
                Some(ok())
            }
            (&Method::GET, "/fake/stats") => {
                Some(respond(StatusCode::OK, None, json!({"requests": self.lock().requests}).to_string()))
            }
            _ => None,
        }
    }

    /// A read, blocking while its index is not past `?index=`.
    async fn blocking(
        &self,
        what: &'static str,
        query: &BTreeMap<String, String>,
        read: impl Fn(&State) -> (u64, Option<Value>),
    ) -> Result<Response<Body>, Dropped> {
        *self.lock().requests.entry(what).or_default() += 1;
        let after: u64 = query.get("index").and_then(|i| i.parse().ok()).unwrap_or(0);
        let wait = query
            .get("wait")
            .and_then(|w| parse_wait(w))
            .unwrap_or(Duration::from_secs(300))
            .min(Duration::from_secs(600));
        // Consul adds up to wait/16 so that many watchers spread out.
        let deadline = tokio::time::Instant::now() + wait + wait.mul_f64(fastrand::f64() / 16.0);
        let mut changed = self.changed.subscribe();
        let mut dropped = self.dropped.subscribe();
        loop {
            let (index, value) = read(&self.lock());
            let index = index.max(1);
            if after == 0 || index != after || tokio::time::Instant::now() >= deadline {
                return Ok(match value {
                    Some(v) => respond(StatusCode::OK, Some(index), v.to_string()),
                    None => respond(StatusCode::NOT_FOUND, Some(index), String::new()),
                });
            }
            tokio::select! {
                _ = changed.changed() => {}
                _ = dropped.changed() => return Err(Dropped),
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    fn register(&self, body: &[u8]) -> Response<Body> {
        let reg: Register = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => return respond(StatusCode::BAD_REQUEST, None, format!("Request decode failed: {e}")),
        };
        if reg.node.is_empty() || reg.address.is_empty() {
            return respond(StatusCode::BAD_REQUEST, None, "Must provide node and address".into());
        }
        self.write(|s| {
            let i = s.bump();
            s.nodes.insert(reg.node.clone(), NodeRecord { address: reg.address.clone(), meta: reg.node_meta.clone() });
            if let Some(mut svc) = reg.service.clone() {
                if svc.id.is_empty() {
                    svc.id = svc.service.clone();
                }
                s.service_index.insert(svc.service.clone(), i);
                s.catalog_index = i;
                s.add_service(reg.node.clone(), svc);
            }
            for mut check in reg.check.iter().chain(&reg.checks).cloned() {
                if check.check_id.is_empty() {
                    check.check_id = check.name.clone();
                }
                if check.service_id.is_empty() {
                    s.touch_node(&reg.node, i);
                } else if let Some(svc) = s.services.get(&(reg.node.clone(), check.service_id.clone())) {
                    let name = svc.service.clone();
                    s.service_index.insert(name, i);
                }
                s.checks.insert((reg.node.clone(), check.check_id.clone()), check);
            }
        });
        respond(StatusCode::OK, None, "true".into())
    }

    fn deregister(&self, body: &[u8]) -> Response<Body> {
        let dereg: Deregister = match serde_json::from_slice(body) {
            Ok(d) => d,
            Err(e) => return respond(StatusCode::BAD_REQUEST, None, format!("Request decode failed: {e}")),
        };
        self.write(|s| {
            let i = s.bump();
            match (&dereg.service_id, &dereg.check_id) {
                (Some(id), _) => {
                    if let Some(svc) = s.remove_service(&(dereg.node.clone(), id.clone())) {
                        s.service_index.insert(svc.service, i);
                        s.catalog_index = i;
                    }
                    s.checks.retain(|(n, _), c| !(n == &dereg.node && c.service_id == *id));
                }
                (None, Some(check)) => {
                    s.touch_node(&dereg.node, i);
                    s.checks.remove(&(dereg.node.clone(), check.clone()));
                }
                (None, None) => {
                    s.touch_node(&dereg.node, i);
                    s.catalog_index = i;
                    s.nodes.remove(&dereg.node);
                    let keys: Vec<(String, String)> =
                        s.services.keys().filter(|(n, _)| n == &dereg.node).cloned().collect();
                    for key in keys {
                        s.remove_service(&key);
                    }
                    s.checks.retain(|(n, _), _| n != &dereg.node);
                }
            }
        });
        respond(StatusCode::OK, None, "true".into())
    }

    fn seed(&self) {
        let (services, instances) = (self.options.seed_services, self.options.seed_instances);
        self.write(|s| {
            for i in 0..services {
                let name = format!("svc-{i}");
                for j in 0..instances {
                    let node = format!("node-{}", (i * instances + j) % 500);
                    let index = s.bump();
                    s.nodes.entry(node.clone()).or_insert(NodeRecord {
                        address: format!("10.{}.{}.1", (i * instances + j) % 500 / 250, (i * instances + j) % 250),
                        meta: BTreeMap::new(),
                    });
                    let id = format!("{name}-{j}");
                    s.add_service(
                        node.clone(),
                        RegisterService {
                            id: id.clone(),
                            service: name.clone(),
                            tags: vec![format!("version=v{}", j % 3)],
                            address: format!("10.{}.{}.{}", 1 + i / 250, i % 250, j + 1),
                            meta: [("protocol".to_string(), "http".to_string())].into(),
                            port: 8080,
                            weights: None,
                        },
                    );
                    s.checks.insert(
                        (node, format!("service:{id}")),
                        RegisterCheck {
                            check_id: format!("service:{id}"),
                            name: "http".into(),
                            status: "passing".into(),
                            service_id: id,
                        },
                    );
                    s.service_index.insert(name.clone(), index);
                    s.catalog_index = index;
                }
            }
        });
    }
}

/// Serve the fake agent on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, options: FakeOptions) -> std::io::Result<()> {
    let tls = match &options.tls {
        Some((cert, key)) => Some(tls_acceptor(cert, key)?),
        None => None,
    };
    let agent = Arc::new(Agent {
        options,
        state: Mutex::new(State::default()),
        changed: watch::channel(0).0,
        dropped: watch::channel(0).0,
    });
    agent.seed();
    loop {
        let (stream, _) = listener.accept().await?;
        let agent = Arc::clone(&agent);
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| Arc::clone(&agent).handle(req));
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                    }
                }
                None => {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                }
            }
        });
    }
}

fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |e: &dyn std::fmt::Display| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| invalid(&e))?
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(&e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| invalid(&e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| invalid(&e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
