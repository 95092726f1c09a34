//! Connections to upstream endpoints, pooled per endpoint address, one
//! pool per distinct cluster connection setting (HTTP/1.1 or HTTP/2 (h2c),
//! connect timeout, idle timeout). Clusters pick theirs when a config is
//! compiled, never per request, and configs share pools so connections
//! survive config changes.
//!
//! HTTP/1.1 goes through [`crate::http1`], driven by the request's own
//! task; HTTP/2 and upgrades (WebSocket) through hyper's pooled client.
//! Each of hyper's connections carries a count of the requests it served,
//! so that `maxRequestsPerConnection` can retire exactly the connections
//! that reached it (hyper's pool has no such limit of its own).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use http::{Request, Uri, Version};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mesh_core::model::Protocol;
use mesh_core::proxy_config::Cluster;

use crate::answer::Answer;
use crate::body::{self, Body};
use crate::http1::{HostPool, Http1Error, Http1Pool, RequestBody, RequestHead};
use crate::mtls::WorkloadIdentity;
use crate::upstream_tls::{self, Origination, UpstreamIo};

pub type UpstreamClient = Client<CountingConnector, Body>;

/// Envoy's default for idle upstream connections (Istio sets none).
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PoolKey {
    http2: bool,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// The TLS settings, as text (`None`: plaintext).
    tls: Option<String>,
}

#[derive(Default)]
pub struct Upstreams {
    clients: Mutex<HashMap<PoolKey, UpstreamClient>>,
    http1: Mutex<HashMap<PoolKey, Http1Pool>>,
    /// The certificate for ISTIO_MUTUAL clusters.
    identity: Option<WorkloadIdentity>,
}

/// How a cluster reaches its endpoints.
#[derive(Clone)]
pub struct ClusterConnections {
    /// HTTP/2, and HTTP/1.1 upgrades, to plaintext endpoints.
    pub hyper: UpstreamClient,
    /// The same to TLS endpoints, and which endpoints those are (parallel
    /// to the cluster's addresses).
    pub hyper_tls: Option<(UpstreamClient, Vec<bool>)>,
    /// The TLS is Istio mTLS (ISTIO_MUTUAL, or auto mTLS).
    pub istio_mtls: bool,
    /// Plain HTTP/1.1, by endpoint (parallel to the cluster's addresses);
    /// `None` for an HTTP/2 cluster.
    pub http1: Option<Vec<Arc<HostPool>>>,
    pub max_requests_per_connection: Option<u32>,
    /// Responses whose body broke off (Envoy: `upstream_rq_rx_reset`).
    pub upstream_rx_resets: Arc<AtomicU64>,
}

impl Upstreams {
    pub fn new(identity: Option<WorkloadIdentity>) -> Upstreams {
        Upstreams { identity, ..Upstreams::default() }
    }

    /// The pools for a cluster's settings and endpoints (config time only):
    /// each endpoint (address, has a sidecar) plaintext or TLS as the
    /// cluster's TLS settings say.
    pub fn connections_for(&self, cluster: &Cluster, endpoints: &[(SocketAddr, bool)]) -> ClusterConnections {
        let plain = PoolKey {
            http2: matches!(cluster.protocol, Protocol::Http2 | Protocol::Grpc),
            connect_timeout: cluster.connect_timeout,
            idle_timeout: cluster.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT),
            tls: None,
        };
        let uses_tls: Vec<bool> = endpoints
            .iter()
            .map(|(_, ready)| upstream_tls::for_endpoint(cluster.tls.as_ref(), *ready).is_some())
            .collect();
        let tls = cluster.tls.as_ref().filter(|_| uses_tls.contains(&true)).and_then(|tls| {
            let origination = upstream_tls::origination(cluster, tls, self.identity.as_ref())?;
            let key = PoolKey { tls: Some(serde_json::to_string(tls).unwrap_or_default()), ..plain.clone() };
            Some((key, Arc::new(origination)))
        });
        // Auto mTLS with no certificate here: plaintext for all.
        let uses_tls = if tls.is_some() { uses_tls } else { vec![false; endpoints.len()] };
        let hyper = self.client(&plain, None);
        let hyper_tls = tls.as_ref().map(|(key, origination)| (self.client(key, Some(origination)), uses_tls.clone()));
        let http1 = (!plain.http2).then(|| {
            let mut pools = self.http1.lock().unwrap_or_else(PoisonError::into_inner);
            endpoints
                .iter()
                .zip(&uses_tls)
                .map(|((addr, _), tls_here)| {
                    let (key, origination) = match (&tls, tls_here) {
                        (Some((key, origination)), true) => (key, Some(origination)),
                        _ => (&plain, None),
                    };
                    pools
                        .entry(key.clone())
                        .or_insert_with(|| Http1Pool::new(key.connect_timeout, key.idle_timeout, origination.cloned()))
                        .host(*addr)
                })
                .collect()
        });
        let istio_mtls = cluster.tls.as_ref().is_some_and(|t| t.mode == mesh_core::mtls::ISTIO_MUTUAL);
        ClusterConnections {
            hyper,
            hyper_tls,
            istio_mtls,
            http1,
            max_requests_per_connection: cluster.max_requests_per_connection,
            upstream_rx_resets: Arc::default(),
        }
    }

    fn client(&self, key: &PoolKey, origination: Option<&Arc<Origination>>) -> UpstreamClient {
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.clone())
            .or_insert_with(|| build(key, origination.cloned()))
            .clone()
    }

    /// Close the HTTP/1.1 connections idle past their idle timeout (hyper's
    /// pool does this for its own); returns when to call again, `None`
    /// until a config brings connections that can expire.
    pub fn close_expired(&self) -> Option<Instant> {
        self.http1.lock().unwrap_or_else(PoisonError::into_inner).values().filter_map(Http1Pool::close_expired).min()
    }
}

/// A request that failed through the client's fault while it went upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientFailure {
    /// The body broke HTTP/1.1's rules (a bad chunk).
    Malformed,
    /// The client went away before its body was whole.
    HungUp,
    /// The body came too slowly (the stream idle or request timeout).
    TimedOut,
}

impl ClientFailure {
    /// How reading the client's body failed.
    pub fn of(error: &(dyn std::error::Error + 'static)) -> ClientFailure {
        match error.downcast_ref::<std::io::Error>().map(std::io::Error::kind) {
            Some(std::io::ErrorKind::UnexpectedEof) => ClientFailure::HungUp,
            Some(std::io::ErrorKind::TimedOut) => ClientFailure::TimedOut,
            _ => ClientFailure::Malformed,
        }
    }
}

/// Why an upstream request got no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Http1(#[from] Http1Error),
    #[error(transparent)]
    Hyper(#[from] hyper_util::client::legacy::Error),
    /// The request's target and the endpoint made no URI (never sent as
    /// another one).
    #[error("upstream request URI: {0}")]
    Uri(http::uri::InvalidUri),
}

impl UpstreamError {
    pub fn is_connect(&self) -> bool {
        match self {
            UpstreamError::Http1(e) => e.is_connect(),
            UpstreamError::Hyper(e) => e.is_connect(),
            UpstreamError::Uri(_) => false,
        }
    }

    /// How the client's request body failed while it was being sent: the
    /// client's failure, not the upstream's.
    pub fn client_failure(&self) -> Option<ClientFailure> {
        let UpstreamError::Http1(Http1Error::RequestBody(e)) = self else { return None };
        Some(ClientFailure::of(e.as_ref()))
    }

    /// The upstream's answer broke HTTP/1.1's rules (Envoy: a protocol
    /// error, 502 with `UPE`).
    pub fn is_protocol_error(&self) -> bool {
        matches!(self, UpstreamError::Http1(Http1Error::Malformed(_)))
    }
}

impl ClusterConnections {
    /// Does a request to `host` go over Istio mTLS?
    pub fn is_mtls(&self, host: usize) -> bool {
        self.istio_mtls && self.hyper_tls.as_ref().is_some_and(|(_, tls)| tls.get(host).copied().unwrap_or(false))
    }

    /// Send a request to one endpoint (`host`, at `addr`); the response's
    /// extensions carry hyper's upgrade handle when the request asked for
    /// one.
    pub async fn send(
        &self,
        host: usize,
        addr: SocketAddr,
        head: &http::request::Parts,
        body: RequestBody,
        upgrade: bool,
    ) -> Result<Answer, UpstreamError> {
        let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
        if let (Some(pool), false) = (self.http1.as_ref().and_then(|hosts| hosts.get(host)), upgrade) {
            let head = RequestHead { method: &head.method, path, headers: &head.headers };
            let answer = pool.send(head, body, self.max_requests_per_connection).await?;
            return Ok(self.counting_resets(answer));
        }
        let body = match body {
            RequestBody::Full(b) => body::full(b),
            RequestBody::Stream(s) => s,
        };
        let mut req = Request::new(body);
        *req.method_mut() = head.method.clone();
        *req.uri_mut() = Uri::try_from(format!("http://{addr}{path}")).map_err(UpstreamError::Uri)?;
        *req.headers_mut() = head.headers.clone();
        *req.version_mut() = if self.http1.is_none() { Version::HTTP_2 } else { Version::HTTP_11 };
        let connection = hyper_util::client::legacy::connect::capture_connection(&mut req);
        let client = match &self.hyper_tls {
            Some((client, tls)) if tls.get(host).copied().unwrap_or(false) => client,
            _ => &self.hyper,
        };
        let response = client.request(req).await?;
        // maxRequestsPerConnection: a connection that has carried its
        // share is not reused.
        if let Some(max) = self.max_requests_per_connection {
            let carried = response.extensions().get::<ConnectionRequests>().map_or(0, ConnectionRequests::add);
            if carried >= u64::from(max) {
                if let Some(c) = connection.connection_metadata().as_ref() {
                    c.poison();
                }
            }
        }
        Ok(self.counting_resets(response.into()))
    }

    /// The response with its body boxed (once), counting a body that
    /// breaks off mid-response.
    fn counting_resets<B>(&self, answer: Answer<B>) -> Answer
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<body::BoxError>,
    {
        let resets = Arc::clone(&self.upstream_rx_resets);
        answer.map_body(|b| {
            body::boxed(http_body_util::BodyExt::map_err(b, move |e| {
                resets.fetch_add(1, Ordering::Relaxed);
                e
            }))
        })
    }
}

fn build(key: &PoolKey, origination: Option<Arc<Origination>>) -> UpstreamClient {
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
    builder.build(CountingConnector { connector, origination })
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

/// `HttpConnector` (TLS over it when the pool's cluster says so), with a
/// request counter attached to each connection.
#[derive(Clone)]
pub struct CountingConnector {
    connector: HttpConnector,
    origination: Option<Arc<Origination>>,
}

/// A connection with its request counter.
pub struct CountedConnection {
    io: TokioIo<UpstreamIo>,
    requests: ConnectionRequests,
}

impl tower_service::Service<http::Uri> for CountingConnector {
    type Response = CountedConnection;
    type Error = body::BoxError;
    type Future = BoxFuture<'static, Result<CountedConnection, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.connector.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.connector.call(uri);
        let origination = self.origination.clone();
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            let io = UpstreamIo::over(tcp, origination.as_deref()).await?;
            Ok(CountedConnection { io: TokioIo::new(io), requests: ConnectionRequests::default() })
        })
    }
}

impl Connection for CountedConnection {
    fn connected(&self) -> Connected {
        let negotiated_h2 = match self.io.inner() {
            UpstreamIo::Tls(tls) => tls.get_ref().1.alpn_protocol() == Some(b"h2"),
            UpstreamIo::Plain(_) => false,
        };
        let connected = self.io.inner().tcp().connected();
        let connected = if negotiated_h2 { connected.negotiated_h2() } else { connected };
        connected.extra(self.requests.clone())
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
