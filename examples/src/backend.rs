//! A small HTTP backend for demos and tests: it says which version and
//! instance answered, and can be told to fail, delay or answer a status.
//!
//! - every answer carries `x-backend-version` and `x-backend-instance`, and
//!   the body `Hello version: v1, instance: NAME` (as Istio's helloworld);
//! - `?status=503` answers that status; `?delay_ms=200` waits first;
//! - `fail_every: N` makes every N-th request answer 503 (a flaky upstream);
//! - `/headers` answers the request headers it got, one per line;
//! - `/ws` is a WebSocket echo;
//! - `/served` answers how many requests came before it;
//! - `x-backend-connection-requests` says how many requests the connection
//!   has carried.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

#[derive(Clone, Debug)]
pub struct Backend {
    pub version: String,
    pub instance: String,
    /// Every `fail_every`-th request answers 503; 0 never.
    pub fail_every: u64,
}

struct State {
    backend: Backend,
    served: AtomicU64,
}

/// Serve forever on `socket` (HTTP/1.1 and h2c).
pub async fn serve(socket: TcpListener, backend: Backend) {
    let state = Arc::new(State { backend, served: AtomicU64::new(0) });
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let Ok((stream, _)) = socket.accept().await else { continue };
        let state = Arc::clone(&state);
        // Requests this connection has carried, for keep-alive checks.
        let on_connection = Arc::new(AtomicU64::new(0));
        let service = hyper::service::service_fn(move |req| {
            let state = Arc::clone(&state);
            let seen = on_connection.fetch_add(1, Ordering::Relaxed) + 1;
            async move {
                let mut r = answer(&state, req).await;
                r.headers_mut().insert("x-backend-connection-requests", http::HeaderValue::from(seen));
                Ok::<_, Infallible>(r)
            }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

async fn answer(state: &State, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let n = state.served.fetch_add(1, Ordering::Relaxed) + 1;
    if req.uri().path() == "/ws" {
        return websocket_echo(&mut req);
    }
    if req.uri().path() == "/served" {
        return Response::new(Full::new(Bytes::from(format!("{}\n", n - 1))));
    }
    let query = req.uri().query().unwrap_or("").to_string();
    let param =
        |name: &str| query.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')).map(str::to_string);
    if let Some(ms) = param("delay_ms").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let b = &state.backend;
    let mut status = param("status")
        .and_then(|s| s.parse().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    if b.fail_every > 0 && n.is_multiple_of(b.fail_every) {
        status = StatusCode::SERVICE_UNAVAILABLE;
    }
    let protocol = format!("{:?}", req.version());
    let text = if req.uri().path() == "/headers" {
        req.headers().iter().map(|(k, v)| format!("{k}: {}\n", v.to_str().unwrap_or("?"))).collect()
    } else {
        // Read the body so requests with one are answered after it arrived.
        let _ = req.into_body().collect().await;
        format!("Hello version: {}, instance: {}\n", b.version, b.instance)
    };
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    for (name, value) in
        [("x-backend-version", &b.version), ("x-backend-instance", &b.instance), ("x-backend-protocol", &protocol)]
    {
        if let Ok(v) = http::HeaderValue::from_str(value) {
            r.headers_mut().insert(name, v);
        }
    }
    r
}

/// Accept a WebSocket handshake and echo every message back.
fn websocket_echo(req: &mut Request<Incoming>) -> Response<Full<Bytes>> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    let Some(key) = req.headers().get("sec-websocket-key").map(|k| derive_accept_key(k.as_bytes())) else {
        let mut r = Response::new(Full::new(Bytes::from_static(b"not a websocket handshake\n")));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() || ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(http::header::CONNECTION, http::HeaderValue::from_static("upgrade"));
    h.insert(http::header::UPGRADE, http::HeaderValue::from_static("websocket"));
    if let Ok(v) = http::HeaderValue::from_str(&key) {
        h.insert("sec-websocket-accept", v);
    }
    r
}
