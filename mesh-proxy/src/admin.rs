//! The admin server (Envoy's, on 15000): `/config_dump`, `/clusters`,
//! `/stats`, `/stats/prometheus`, `/ready`, `/drain`, `/certs`, and
//! `/config_rejections` (what was rejected, with its error, while the last
//! good config serves). The Prometheus
//! endpoint is also served alone on 15090.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use mesh_core::resilience::circuit_breaker::Resource;
use tokio::net::TcpListener;
use tokio::sync::watch;

use std::sync::atomic::Ordering;

use crate::body::{self, Body};
use crate::live::SharedConfig;
use crate::metrics::DownstreamStats;
use crate::metrics::Metrics;
use crate::mtls::WorkloadIdentity;
use crate::status::ProxyStatus;

#[derive(Clone)]
pub struct AdminState {
    pub live: SharedConfig,
    pub metrics: Arc<Metrics>,
    /// Set to `true` to drain the proxy.
    pub drain: watch::Sender<bool>,
    /// Downstream failures counted outside the request path.
    pub downstream: Arc<DownstreamStats>,
    /// Listeners down, config rejected.
    pub status: Arc<ProxyStatus>,
    /// The workload certificate, for `/certs` and the mTLS counts.
    pub identity: Option<WorkloadIdentity>,
}

fn reply(status: StatusCode, content_type: &'static str, text: String) -> Response<Body> {
    let mut r = Response::new(body::full(text));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    r
}

fn json(value: &serde_json::Value) -> Response<Body> {
    reply(StatusCode::OK, "application/json", serde_json::to_string_pretty(value).unwrap_or_default())
}

pub fn handle(state: &AdminState, req: &Request<Incoming>, prometheus_only: bool) -> Response<Body> {
    let live = state.live.load_full();
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/stats/prometheus") | (&Method::GET, "/metrics") => {
            let accept = req.headers().get(http::header::ACCEPT).and_then(|a| a.to_str().ok());
            let format = crate::metrics::Format::negotiate(accept);
            reply(StatusCode::OK, format.content_type(), state.metrics.render(format))
        }
        _ if prometheus_only => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        (&Method::GET, "/config_dump") => {
            let certificates: Vec<_> = state.identity.iter().filter_map(WorkloadIdentity::view).collect();
            json(
                &serde_json::json!({ "version": live.config.version, "config": &*live.config, "certificates": certificates }),
            )
        }
        (&Method::GET, "/clusters") => {
            let mut names: Vec<&String> = live.clusters.keys().collect();
            names.sort();
            let clusters: Vec<serde_json::Value> = names
                .into_iter()
                .map(|name| {
                    let c = &live.clusters[name];
                    let endpoints: Vec<serde_json::Value> = c
                        .addresses
                        .iter()
                        .enumerate()
                        .map(|(i, addr)| {
                            serde_json::json!({
                                "address": addr.to_string(),
                                "health": "HEALTHY",
                                "ejected": c.outlier.as_ref().is_some_and(|o| o.is_ejected(i)),
                                "ejections_total": c.outlier.as_ref().map_or(0, |o| o.ejections(i)),
                                "active_requests": c.hosts[i].active(),
                                "weight": c.hosts[i].weight,
                            })
                        })
                        .collect();
                    serde_json::json!({
                        "name": name,
                        "endpoints": endpoints,
                        "unhealthy_endpoints": c.assignment.endpoints.len() - c.addresses.len(),
                        "circuit_breakers": {
                            "max_connections": c.breaker.thresholds().max_connections,
                            "max_pending_requests": c.breaker.thresholds().max_pending_requests,
                            "max_requests": c.breaker.thresholds().max_requests,
                            "max_retries": c.breaker.thresholds().max_retries,
                            "rq_active": c.breaker.active(Resource::Requests),
                        },
                    })
                })
                .collect();
            json(&serde_json::json!({ "clusters": clusters }))
        }
        (&Method::GET, "/stats") => {
            let d = &state.downstream;
            let mut lines = vec![
                format!("server.config_version: {}", live.config.version),
                format!("http.downstream_rq_malformed: {}", d.malformed.load(Ordering::Relaxed)),
                format!("http.downstream_header_timeout: {}", d.header_timeouts.load(Ordering::Relaxed)),
                format!("http.downstream_cx_error: {}", d.connection_errors.load(Ordering::Relaxed)),
                format!("listener.downstream_cx_overflow: {}", d.overflow.load(Ordering::Relaxed)),
                format!("listener_manager.listener_create_failure: {}", state.status.bind_failures.get()),
                format!("listener_manager.listeners_down: {}", state.status.listeners_down().len()),
                format!("config.update_rejected: {}", state.status.rejections.get()),
                format!("tls.certificate_reload_failed: {}", state.status.certificate_reload_failures.get()),
            ];
            if let Some(identity) = &state.identity {
                let m = identity.stats();
                lines.push(format!("mtls.peer_certificate_rejected: {}", m.peer_rejections.load(Ordering::Relaxed)));
                lines.push(format!(
                    "mtls.inbound_handshake_failed: {}",
                    m.inbound_handshake_failures.load(Ordering::Relaxed)
                ));
                lines.push(format!("mtls.certificate_refused: {}", m.certificate_errors.load(Ordering::Relaxed)));
            }
            let mut names: Vec<&String> = live.clusters.keys().collect();
            names.sort();
            for name in names {
                let c = &live.clusters[name];
                lines.push(format!("cluster.{name}.upstream_rq_active: {}", c.breaker.active(Resource::Requests)));
                lines.push(format!(
                    "cluster.{name}.upstream_rq_pending_overflow: {}",
                    c.breaker.overflows(Resource::Requests)
                ));
                lines.push(format!(
                    "cluster.{name}.upstream_rq_retry_overflow: {}",
                    c.breaker.overflows(Resource::Retries)
                ));
                lines.push(format!(
                    "cluster.{name}.upstream_rq_rx_reset: {}",
                    c.connections.upstream_rx_resets.load(Ordering::Relaxed)
                ));
                let idle = c.connections.http1.iter().flatten().map(|h| h.idle_connections()).sum::<usize>();
                lines.push(format!("cluster.{name}.upstream_cx_idle_http1: {idle}"));
                lines.push(format!(
                    "cluster.{name}.outlier_detection.ejections_active: {}",
                    c.outlier.as_ref().map_or(0, |o| o.ejected_count())
                ));
            }
            reply(StatusCode::OK, "text/plain", lines.join("\n") + "\n")
        }
        (&Method::GET, "/ready") => ready(state, &live),
        (&Method::GET, "/certs") => certs(state),
        (&Method::GET, "/config_rejections") => {
            let rejected: Vec<serde_json::Value> = state
                .status
                .rejections_in_force()
                .into_iter()
                .map(|(source, error)| serde_json::json!({ "source": source, "error": error }))
                .collect();
            json(&serde_json::json!({ "rejected_total": state.status.rejections.get(), "in_force": rejected }))
        }
        (&Method::POST, "/drain") | (&Method::POST, "/drain_listeners") => {
            let _ = state.drain.send(true);
            reply(StatusCode::OK, "text/plain", "OK\n".into())
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Envoy's `/certs`: the workload certificate in use (its SPIFFE IDs,
/// serial and validity; never the key), and the newest peer refusal.
fn certs(state: &AdminState) -> Response<Body> {
    let Some(identity) = &state.identity else {
        return json(&serde_json::json!({ "certificates": [] }));
    };
    let last = identity.stats().last_rejection.lock().map(|l| l.clone()).unwrap_or_default();
    json(&serde_json::json!({
        "certificates": identity.view().into_iter().collect::<Vec<_>>(),
        "last_peer_rejection": last,
    }))
}

/// Envoy's `/ready`: 503 while draining or before the first config; a
/// proxy running degraded (listeners that could not bind) says which.
fn ready(state: &AdminState, live: &crate::live::LiveConfig) -> Response<Body> {
    let down = state.status.listeners_down();
    if *state.drain.borrow() {
        reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "DRAINING\n".into())
    } else if live.config.version.is_empty() {
        reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "PRE_INITIALIZING\n".into())
    } else if !down.is_empty() {
        let lines: String = down.iter().map(|(name, why)| format!("listener {name} down: {why}\n")).collect();
        reply(StatusCode::OK, "text/plain", format!("DEGRADED\n{lines}"))
    } else {
        reply(StatusCode::OK, "text/plain", "LIVE\n".into())
    }
}

/// Serve the admin endpoints (or only Prometheus) on `socket` until stopped.
pub async fn serve(socket: TcpListener, state: AdminState, prometheus_only: bool, mut stop: watch::Receiver<bool>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = tokio::select! {
            a = socket.accept() => match a { Ok(a) => a, Err(_) => continue },
            _ = stop.changed() => return,
        };
        let state = state.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let r = handle(&state, &req, prometheus_only);
            async move { Ok::<_, Infallible>(r) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}
