//! Connections to upstream endpoints: hyper's pooled clients (keep-alive,
//! one pool per endpoint address), one client per distinct cluster
//! connection setting: HTTP/1.1 or HTTP/2 (h2c), connect timeout, idle
//! timeout. Clusters pick theirs when a config is compiled, never per
//! request, and configs share clients so pools survive config changes.
//!
//! Each connection carries a count of the requests it served, so that
//! `maxRequestsPerConnection` can retire exactly the connections that
//! reached it (hyper's pool has no such limit of its own).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mesh_core::model::Protocol;
use mesh_core::proxy_config::Cluster;
use tokio::net::TcpStream;

use crate::body::Body;

pub type UpstreamClient = Client<CountingConnector, Body>;

/// Envoy's default for idle upstream connections (Istio sets none).
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PoolKey {
    http2: bool,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

#[derive(Default)]
pub struct Upstreams {
    clients: Mutex<HashMap<PoolKey, UpstreamClient>>,
}

impl Upstreams {
    /// The client for a cluster's settings (config time only).
    pub fn client_for(&self, cluster: &Cluster) -> UpstreamClient {
        let key = PoolKey {
            http2: matches!(cluster.protocol, Protocol::Http2 | Protocol::Grpc),
            connect_timeout: cluster.connect_timeout,
            idle_timeout: cluster.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT),
        };
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        clients.entry(key).or_insert_with(|| build(key)).clone()
    }
}

fn build(key: PoolKey) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(key.connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(key.idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_only(key.http2);
    builder.build(CountingConnector(connector))
}

/// The requests one upstream connection has carried; hyper puts it in
/// every response's extensions.
#[derive(Clone, Debug, Default)]
pub struct ConnectionRequests(pub Arc<AtomicU64>);

impl ConnectionRequests {
    /// Count one more request; returns the new total.
    pub fn add(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// `HttpConnector`, with a request counter attached to each connection.
#[derive(Clone)]
pub struct CountingConnector(HttpConnector);

/// A TCP connection with its request counter.
pub struct CountedConnection {
    io: TokioIo<TcpStream>,
    requests: ConnectionRequests,
}

impl tower_service::Service<http::Uri> for CountingConnector {
    type Response = CountedConnection;
    type Error = <HttpConnector as tower_service::Service<http::Uri>>::Error;
    type Future = BoxFuture<'static, Result<CountedConnection, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(
            async move { Ok(CountedConnection { io: connecting.await?, requests: ConnectionRequests::default() }) },
        )
    }
}

impl Connection for CountedConnection {
    fn connected(&self) -> Connected {
        self.io.connected().extra(self.requests.clone())
    }
}

// The IO itself is TokioIo's, which is Unpin: plain delegation.
impl hyper::rt::Read for CountedConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for CountedConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}
