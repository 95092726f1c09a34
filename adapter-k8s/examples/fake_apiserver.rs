//! An in-memory Kubernetes API server that follows the documented list and
//! watch semantics, for testing the adapter through kube-rs's real client
//! where no cluster can run.
//!
//! What it does as the real one does:
//! - list with `metadata.resourceVersion`, `limit` and `continue`;
//! - `watch=true` from a resourceVersion: ADDED / MODIFIED / DELETED events
//!   after it, BOOKMARKs when asked for, the stream closed after
//!   `timeoutSeconds` (capped by `--max-watch-seconds`, as the real server's
//!   `--min-request-timeout` does), and an ERROR event with `410 Gone` when
//!   the version was compacted away;
//! - create (POST), replace (PUT, also `/status`), delete (DELETE), with
//!   `409 Conflict` on a stale resourceVersion;
//! - discovery of `/apis/{group}` and `/apis/{group}/{version}`; CRD objects
//!   are stored once and served in every version (`--istio-versions`).
//!
//! Test controls (not in the real API): `POST /fake/stats` says how many
//! watch requests were answered, `POST /fake/compact` forgets the
//! event history (every older resourceVersion gets 410), `POST
//! /fake/drop-watches` closes every watch stream, `POST /fake/pause-watches`
//! closes them and answers new watches with 503 until `POST
//! /fake/resume-watches` (lists and writes still work, so a test can
//! change the world while the adapter cannot see it).
//!
//! TokenReview (`POST /apis/authentication.k8s.io/v1/tokenreviews`)
//! authenticates the tokens a test registered with `POST /fake/tokens`
//! (`{"token": ..., "user": "system:serviceaccount:NS:SA", "audiences":
//! [...]}`); any other token is not authenticated, as a real server says
//! of a forged or expired one.
//!
//! `--rv-start N` starts resourceVersions at N, as a server restored from
//! an etcd backup would; the history before it counts as compacted.
//!
//! Prints `listening on ADDR` on stdout once it accepts connections.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Versions served for the Istio groups, most preferred first
    /// (security.istio.io serves those of them it has: v1, v1beta1).
    #[arg(long, value_delimiter = ',', default_value = "v1,v1beta1,v1alpha3")]
    istio_versions: Vec<String>,
    #[arg(long, default_value_t = 1)]
    rv_start: u64,
    /// The longest a watch stays open, whatever the client asks.
    #[arg(long, default_value_t = 300)]
    max_watch_seconds: u64,
    /// How often a watch that allows bookmarks gets one.
    #[arg(long, default_value_t = 1000)]
    bookmark_ms: u64,
}

/// A resource type this server knows.
#[derive(Clone, Copy)]
struct Type {
    group: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
}

const TYPES: &[Type] = &[
    Type { group: "", plural: "services", kind: "Service", namespaced: true },
    Type { group: "", plural: "pods", kind: "Pod", namespaced: true },
    Type { group: "", plural: "namespaces", kind: "Namespace", namespaced: false },
    Type { group: "", plural: "nodes", kind: "Node", namespaced: false },
    Type { group: "", plural: "secrets", kind: "Secret", namespaced: true },
    Type { group: "discovery.k8s.io", plural: "endpointslices", kind: "EndpointSlice", namespaced: true },
    Type { group: NETWORKING, plural: "virtualservices", kind: "VirtualService", namespaced: true },
    Type { group: NETWORKING, plural: "destinationrules", kind: "DestinationRule", namespaced: true },
    Type { group: NETWORKING, plural: "gateways", kind: "Gateway", namespaced: true },
    Type { group: NETWORKING, plural: "serviceentries", kind: "ServiceEntry", namespaced: true },
    Type { group: NETWORKING, plural: "workloadentries", kind: "WorkloadEntry", namespaced: true },
    Type { group: NETWORKING, plural: "sidecars", kind: "Sidecar", namespaced: true },
    Type { group: NETWORKING, plural: "envoyfilters", kind: "EnvoyFilter", namespaced: true },
    Type { group: SECURITY, plural: "authorizationpolicies", kind: "AuthorizationPolicy", namespaced: true },
    Type { group: SECURITY, plural: "peerauthentications", kind: "PeerAuthentication", namespaced: true },
    Type { group: SECURITY, plural: "requestauthentications", kind: "RequestAuthentication", namespaced: true },
];
const NETWORKING: &str = "networking.istio.io";
const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
const SECURITY: &str = "security.istio.io";

/// Objects are stored once per group and plural, whatever version wrote
/// them (Istio's CRD versions convert as the identity).
type ObjectKey = (&'static str, &'static str, String, String);

struct Event {
    rv: u64,
    group: &'static str,
    plural: &'static str,
    namespace: String,
    kind: &'static str,
    object: Value,
}

struct Watcher {
    group: &'static str,
    plural: &'static str,
    namespace: Option<String>,
    api_version: String,
    tx: mpsc::UnboundedSender<Bytes>,
    /// Dropped with the watcher: tells its task to end the stream.
    _closing: oneshot::Sender<()>,
}

struct State {
    rv: u64,
    /// Watches from before this resourceVersion get 410 Gone.
    oldest: u64,
    objects: BTreeMap<ObjectKey, Value>,
    history: Vec<Event>,
    watchers: Vec<Watcher>,
    watches_paused: bool,
    /// Watch requests answered, for tests that wait for watches to come
    /// back after the server closed them.
    watches_served: u64,
    /// Tokens TokenReview knows: the user and audiences of each.
    tokens: BTreeMap<String, (String, Vec<String>)>,
}

struct Server {
    args: Args,
    state: Mutex<State>,
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, body: Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    full(
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

/// A parsed resource path: `/api/v1[/namespaces/NS]/PLURAL[/NAME[/status]]`
/// or `/apis/GROUP/VERSION[/namespaces/NS]/PLURAL[/NAME[/status]]`.
struct Target {
    ty: Type,
    version: String,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

impl Server {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn served_versions(&self, group: &str) -> Vec<String> {
        match group {
            "" => vec!["v1".into()],
            "discovery.k8s.io" => vec!["v1".into()],
            SECURITY => {
                self.args.istio_versions.iter().filter(|v| ["v1", "v1beta1"].contains(&v.as_str())).cloned().collect()
            }
            NETWORKING => self.args.istio_versions.clone(),
            _ => Vec::new(),
        }
    }

    fn target(&self, path: &str) -> Option<Target> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, version, rest) = match parts.as_slice() {
            ["api", version, rest @ ..] => ("", *version, rest),
            ["apis", group, version, rest @ ..] => (*group, *version, rest),
            _ => return None,
        };
        if !self.served_versions(group).iter().any(|v| v == version) {
            return None;
        }
        let (namespace, rest) = match rest {
            ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
            _ => (None, rest),
        };
        let (plural, name, status) = match rest {
            [plural] => (*plural, None, false),
            [plural, name] => (*plural, Some(name.to_string()), false),
            [plural, name, "status"] => (*plural, Some(name.to_string()), true),
            _ => return None,
        };
        let ty = *TYPES.iter().find(|t| t.group == group && t.plural == plural)?;
        Some(Target { ty, version: version.to_string(), namespace, name, status })
    }

    fn api_version(group: &str, version: &str) -> String {
        if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        }
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_string();
        let query: BTreeMap<String, String> = parts
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .filter(|(k, _)| !k.is_empty())
            .map(|(k, v)| (k.to_string(), percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned()))
            .collect();
        if parts.method == Method::POST && (path == "/fake/tokens" || path == TOKEN_REVIEWS) {
            return match body.collect().await.map(|b| serde_json::from_slice::<Value>(&b.to_bytes())) {
                Ok(Ok(body)) if path == TOKEN_REVIEWS => self.token_review(&body),
                Ok(Ok(body)) => self.register_token(&body),
                _ => status(StatusCode::BAD_REQUEST, "BadRequest", "a JSON body is required"),
            };
        }
        if let Some(resp) = self.control(&parts.method, &path) {
            return resp;
        }
        let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
        if watching && self.lock().watches_paused {
            return status(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "watches are paused");
        }
        if let Some(resp) = self.discovery(&path) {
            return resp;
        }
        let Some(target) = self.target(&path) else {
            return status(StatusCode::NOT_FOUND, "NotFound", &format!("the server could not find {path}"));
        };
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
        };
        match (parts.method, target.name.is_some()) {
            (Method::GET, false) if watching => self.watch(&target, &query),
            (Method::GET, false) => self.list(&target, &query),
            (Method::GET, true) => self.get(&target),
            (Method::POST, false) => self.write(&target, &body, true),
            (Method::PUT, true) => self.write(&target, &body, false),
            (Method::PATCH, true) if target.status => self.patch_status(&target, &body),
            (Method::DELETE, true) => self.delete(&target),
            _ => status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "not supported here"),
        }
    }

    fn register_token(&self, body: &Value) -> Response<Body> {
        let (Some(token), Some(user)) = (body["token"].as_str(), body["user"].as_str()) else {
            return status(StatusCode::BAD_REQUEST, "BadRequest", "token and user are required");
        };
        let audiences = body["audiences"].as_array().into_iter().flatten().filter_map(|a| a.as_str().map(String::from));
        self.lock().tokens.insert(token.to_string(), (user.to_string(), audiences.collect()));
        full(StatusCode::OK, json!({}))
    }

    /// A TokenReview: authenticated with the user and the audiences asked
    /// for that the token has (all of its own when none are asked).
    fn token_review(&self, review: &Value) -> Response<Body> {
        let token = review["spec"]["token"].as_str().unwrap_or_default();
        let asked: Vec<&str> =
            review["spec"]["audiences"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let known = self.lock().tokens.get(token).cloned();
        let status = match known {
            Some((user, audiences)) => {
                let granted: Vec<&String> = if asked.is_empty() {
                    audiences.iter().collect()
                } else {
                    audiences.iter().filter(|a| asked.contains(&a.as_str())).collect()
                };
                if asked.is_empty() || !granted.is_empty() {
                    json!({"authenticated": true, "user": {"username": user}, "audiences": granted})
                } else {
                    json!({"authenticated": false, "error": "token audiences do not match"})
                }
            }
            None => json!({"authenticated": false, "error": "invalid bearer token"}),
        };
        let mut answer = review.clone();
        answer["status"] = status;
        answer["apiVersion"] = json!("authentication.k8s.io/v1");
        answer["kind"] = json!("TokenReview");
        full(StatusCode::CREATED, answer)
    }

    fn control(&self, method: &Method, path: &str) -> Option<Response<Body>> {
        if method != Method::POST || !path.starts_with("/fake/") {
            return None;
        }
        let mut state = self.lock();
        match path {
            "/fake/compact" => {
                state.oldest = state.rv + 1;
                state.history.clear();
            }
            "/fake/drop-watches" => state.watchers.clear(),
            "/fake/pause-watches" => {
                state.watches_paused = true;
                state.watchers.clear();
            }
            "/fake/resume-watches" => state.watches_paused = false,
            "/fake/stats" => {}
            _ => return Some(status(StatusCode::NOT_FOUND, "NotFound", "unknown control")),
        }
        Some(full(StatusCode::OK, json!({"rv": state.rv, "watches_served": state.watches_served})))
    }

    fn discovery(&self, path: &str) -> Option<Response<Body>> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let group_versions = |group: &str| -> Vec<Value> {
            self.served_versions(group)
                .iter()
                .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
                .collect()
        };
        let group_of = |group: &str| {
            let versions = group_versions(group);
            json!({"kind": "APIGroup", "apiVersion": "v1", "name": group,
                   "versions": versions, "preferredVersion": versions.first()})
        };
        let resources = |group: &str, version: &str| -> Option<Value> {
            if !self.served_versions(group).iter().any(|v| v == version) {
                return None;
            }
            let list: Vec<Value> = TYPES
                .iter()
                .filter(|t| t.group == group)
                .map(|t| {
                    json!({"name": t.plural, "singularName": "", "namespaced": t.namespaced, "kind": t.kind,
                                "verbs": ["create", "delete", "get", "list", "update", "watch"]})
                })
                .collect();
            Some(json!({"kind": "APIResourceList", "apiVersion": "v1",
                        "groupVersion": Self::api_version(group, version), "resources": list}))
        };
        let body = match parts.as_slice() {
            ["api"] => json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
            ["api", version] => resources("", version)?,
            ["apis"] => {
                let groups: Vec<Value> = ["discovery.k8s.io", NETWORKING, SECURITY]
                    .into_iter()
                    .filter(|g| !self.served_versions(g).is_empty())
                    .map(group_of)
                    .collect();
                json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
            }
            ["apis", group] if !self.served_versions(group).is_empty() => group_of(group),
            ["apis", group, version] => resources(group, version)?,
            ["version"] => json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake"}),
            _ => return None,
        };
        Some(full(StatusCode::OK, body))
    }

    fn with_type(object: &Value, ty: &Type, version: &str) -> Value {
        let mut object = object.clone();
        object["apiVersion"] = json!(Self::api_version(ty.group, version));
        object["kind"] = json!(ty.kind);
        object
    }

    fn list(&self, target: &Target, query: &BTreeMap<String, String>) -> Response<Body> {
        let state = self.lock();
        let limit: usize = query.get("limit").and_then(|l| l.parse().ok()).filter(|l| *l > 0).unwrap_or(usize::MAX);
        let after = query.get("continue").filter(|c| !c.is_empty()).cloned();
        let mut items = Vec::new();
        let mut next = None;
        for ((_, _, ns, name), object) in state
            .objects
            .range((target.ty.group, target.ty.plural, String::new(), String::new())..)
            .take_while(|((g, p, _, _), _)| *g == target.ty.group && *p == target.ty.plural)
            .filter(|((_, _, ns, _), _)| target.namespace.as_ref().is_none_or(|want| want == ns))
            .filter(|((_, _, ns, name), _)| after.as_ref().is_none_or(|a| format!("{ns}/{name}") > *a))
        {
            if items.len() == limit {
                next = Some(format!("{ns}/{name}"));
                break;
            }
            items.push(Self::with_type(object, &target.ty, &target.version));
        }
        // The token names the last item given, so the next page starts after it.
        let continue_token = next.and_then(|_| {
            items.last().map(|o| {
                format!(
                    "{}/{}",
                    o["metadata"]["namespace"].as_str().unwrap_or(""),
                    o["metadata"]["name"].as_str().unwrap_or("")
                )
            })
        });
        let mut metadata = json!({"resourceVersion": state.rv.to_string()});
        if let Some(token) = continue_token {
            metadata["continue"] = json!(token);
        }
        full(
            StatusCode::OK,
            json!({"kind": format!("{}List", target.ty.kind),
                   "apiVersion": Self::api_version(target.ty.group, &target.version),
                   "metadata": metadata, "items": items}),
        )
    }

    fn watch(self: &Arc<Self>, target: &Target, query: &BTreeMap<String, String>) -> Response<Body> {
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        let (closing, mut closed) = oneshot::channel::<()>();
        let api_version = Self::api_version(target.ty.group, &target.version);
        let line = |kind: &str, object: Value| Bytes::from(format!("{}\n", json!({"type": kind, "object": object})));
        {
            let mut state = self.lock();
            let from: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
            if from != 0 && from < state.oldest.saturating_sub(1) {
                let gone = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                  "message": format!("too old resource version: {from} ({})", state.oldest),
                                  "reason": "Expired", "code": 410});
                let _ = tx.send(line("ERROR", gone));
                drop(tx);
                return self.stream(rx);
            }
            if from == 0 {
                // "0" means any version: start with the current objects.
                for ((g, p, ns, _), object) in &state.objects {
                    if *g == target.ty.group
                        && *p == target.ty.plural
                        && target.namespace.as_ref().is_none_or(|want| want == ns)
                    {
                        let _ = tx.send(line("ADDED", Self::with_type(object, &target.ty, &target.version)));
                    }
                }
            } else {
                for e in state.history.iter().filter(|e| e.rv > from) {
                    if e.group == target.ty.group
                        && e.plural == target.ty.plural
                        && target.namespace.as_ref().is_none_or(|want| *want == e.namespace)
                    {
                        let _ = tx.send(line(e.kind, Self::with_type(&e.object, &target.ty, &target.version)));
                    }
                }
            }
            state.watches_served += 1;
            state.watchers.push(Watcher {
                group: target.ty.group,
                plural: target.ty.plural,
                namespace: target.namespace.clone(),
                api_version: api_version.clone(),
                tx: tx.clone(),
                _closing: closing,
            });
        }
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .unwrap_or(self.args.max_watch_seconds)
            .min(self.args.max_watch_seconds);
        let bookmarks = query.get("allowWatchBookmarks").is_some_and(|b| b == "true");
        let server = Arc::clone(self);
        let kind = target.ty.kind;
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
            let mut tick = tokio::time::interval(Duration::from_millis(server.args.bookmark_ms));
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = tx.closed() => break,
                    _ = &mut closed => break,
                    _ = tick.tick() => {
                        if bookmarks {
                            let rv = server.lock().rv;
                            let mark = json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": rv.to_string()}});
                            if tx.send(line("BOOKMARK", mark)).is_err() {
                                break;
                            }
                        }
                    }
                }
            }
            // Dropping the last sender ends the response body.
            server.lock().watchers.retain(|w| !w.tx.same_channel(&tx));
        });
        self.stream(rx)
    }

    fn stream(&self, rx: mpsc::UnboundedReceiver<Bytes>) -> Response<Body> {
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        let mut resp = Response::new(BodyExt::boxed(StreamBody::new(frames)));
        resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        resp
    }

    fn get(&self, target: &Target) -> Response<Body> {
        let state = self.lock();
        let key = Self::key(target);
        match state.objects.get(&key) {
            Some(o) => full(StatusCode::OK, Self::with_type(o, &target.ty, &target.version)),
            None => status(StatusCode::NOT_FOUND, "NotFound", &format!("{} {:?} not found", target.ty.plural, key.3)),
        }
    }

    fn key(target: &Target) -> ObjectKey {
        (
            target.ty.group,
            target.ty.plural,
            target.namespace.clone().unwrap_or_default(),
            target.name.clone().unwrap_or_default(),
        )
    }

    fn write(&self, target: &Target, body: &[u8], create: bool) -> Response<Body> {
        let mut object: Value = match serde_json::from_slice(body) {
            Ok(v @ Value::Object(_)) => v,
            _ => return status(StatusCode::BAD_REQUEST, "BadRequest", "the body must be a JSON object"),
        };
        let Some(name) = object["metadata"]["name"].as_str().map(str::to_string) else {
            return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", "metadata.name: Required value");
        };
        if target.name.as_ref().is_some_and(|n| *n != name) {
            return status(StatusCode::BAD_REQUEST, "BadRequest", "the name in the body does not match the URL");
        }
        let namespace = if target.ty.namespaced {
            target.namespace.clone().or_else(|| object["metadata"]["namespace"].as_str().map(str::to_string))
        } else {
            None
        };
        let key: ObjectKey = (target.ty.group, target.ty.plural, namespace.clone().unwrap_or_default(), name.clone());
        let mut state = self.lock();
        let existing = state.objects.get(&key).cloned();
        match (&existing, create) {
            (Some(_), true) => return status(StatusCode::CONFLICT, "AlreadyExists", &format!("{name} already exists")),
            (None, false) => return status(StatusCode::NOT_FOUND, "NotFound", &format!("{name} not found")),
            _ => {}
        }
        if let (Some(old), Some(given)) = (&existing, object["metadata"]["resourceVersion"].as_str()) {
            if old["metadata"]["resourceVersion"].as_str() != Some(given) {
                return status(StatusCode::CONFLICT, "Conflict", "the object has been modified");
            }
        }
        if target.status {
            // The status subresource changes only the status.
            let Some(mut old) = existing.clone() else { unreachable!("checked above") };
            old["status"] = object["status"].take();
            object = old;
        }
        state.rv += 1;
        let rv = state.rv;
        let meta = &mut object["metadata"];
        meta["resourceVersion"] = json!(rv.to_string());
        if let Some(ns) = &namespace {
            meta["namespace"] = json!(ns);
        }
        match &existing {
            Some(old) => {
                meta["uid"] = old["metadata"]["uid"].clone();
                meta["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
            }
            None => {
                meta["uid"] = json!(format!("uid-{rv}"));
                meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
            }
        }
        // As the real server: every write records who manages which field.
        meta["managedFields"] =
            json!([{"manager": "fake-apiserver", "operation": "Update", "fieldsV1": {"f:spec": {}}}]);
        let kind = if existing.is_some() { "MODIFIED" } else { "ADDED" };
        state.objects.insert(key, object.clone());
        Self::publish(&mut state, target.ty, namespace.unwrap_or_default(), kind, object.clone());
        let code = if existing.is_some() { StatusCode::OK } else { StatusCode::CREATED };
        full(code, Self::with_type(&object, &target.ty, &target.version))
    }

    /// A JSON merge patch (RFC 7386) of the status subresource, as
    /// controllers report on objects.
    fn patch_status(&self, target: &Target, body: &[u8]) -> Response<Body> {
        let Ok(patch) = serde_json::from_slice::<Value>(body) else {
            return status(StatusCode::BAD_REQUEST, "BadRequest", "the patch must be JSON");
        };
        let Some(mut object) = self.lock().objects.get(&Self::key(target)).cloned() else {
            return status(StatusCode::NOT_FOUND, "NotFound", "not found");
        };
        merge_patch(&mut object["status"], &patch["status"]);
        object["metadata"]["resourceVersion"] = Value::Null;
        self.write(target, object.to_string().as_bytes(), false)
    }

    fn delete(&self, target: &Target) -> Response<Body> {
        let mut state = self.lock();
        let key = Self::key(target);
        let Some(mut object) = state.objects.remove(&key) else {
            return status(StatusCode::NOT_FOUND, "NotFound", &format!("{} not found", key.3));
        };
        state.rv += 1;
        object["metadata"]["resourceVersion"] = json!(state.rv.to_string());
        Self::publish(&mut state, target.ty, key.2, "DELETED", object.clone());
        full(StatusCode::OK, Self::with_type(&object, &target.ty, &target.version))
    }

    fn publish(state: &mut State, ty: Type, namespace: String, kind: &'static str, object: Value) {
        state.watchers.retain(|w| {
            if w.group != ty.group || w.plural != ty.plural || w.namespace.as_ref().is_some_and(|n| *n != namespace) {
                return !w.tx.is_closed();
            }
            let mut typed = object.clone();
            typed["apiVersion"] = json!(w.api_version);
            typed["kind"] = json!(ty.kind);
            w.tx.send(Bytes::from(format!("{}\n", json!({"type": kind, "object": typed})))).is_ok()
        });
        let rv = state.rv;
        state.history.push(Event { rv, group: ty.group, plural: ty.plural, namespace, kind, object });
    }
}

fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    for (k, v) in fields {
        if v.is_null() {
            if let Some(map) = target.as_object_mut() {
                map.remove(k);
            }
        } else {
            merge_patch(&mut target[k], v);
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let rv_start = args.rv_start.max(1);
    let server = Arc::new(Server {
        args,
        state: Mutex::new(State {
            rv: rv_start,
            oldest: rv_start,
            objects: BTreeMap::new(),
            history: Vec::new(),
            watchers: Vec::new(),
            watches_paused: false,
            watches_served: 0,
            tokens: BTreeMap::new(),
        }),
    });
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let server = Arc::clone(&server);
                async move { Ok::<_, Infallible>(server.handle(req).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
    }
}
