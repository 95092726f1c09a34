//! The ADS gRPC service: one task per stream drives a protocol state
//! machine ([`SotwStream`] or [`DeltaStream`]) with the client's requests
//! and the cache's snapshots, and records what happened in [`SyncStatus`].
//! The transport is [`crate::grpc`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest};
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;

use crate::cache::Snapshot;
use crate::delta::DeltaStream;
use crate::generator::Generator;
use crate::grpc::{self, FrameParts, GrpcStatus};
use crate::node::{self, NodeInfo};
use crate::resources::short_name;
use crate::sotw::{Received, SotwResponse, SotwStream};
use crate::status::{NodeSync, SyncStatus, TypeSync};

/// What one stream may have queued in HTTP/2 before it waits for the
/// client to read: one chunk ([`grpc`]'s 8 KiB). hyper's default (400 KiB)
/// let a connect storm queue up to 400 MB across 1,000 slow clients.
const SEND_BUFFER: usize = 8 * 1024;

const SOTW_METHOD: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_METHOD: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// What the stream task needs from either protocol.
trait Protocol: Default + Send + 'static {
    type Req: Send + 'static;
    type Resp: Send + 'static;
    const NAME: &'static str;
    fn node(req: &Self::Req) -> Option<&Node>;
    fn type_url(req: &Self::Req) -> &str;
    fn on_request(&mut self, req: &Self::Req, snapshot: Option<&Snapshot>) -> (Received, Option<Self::Resp>);
    fn on_snapshot(&mut self, snapshot: &Snapshot) -> Vec<Self::Resp>;
    fn sync(&self, type_url: &str) -> Option<&TypeSync>;
    fn resp_type(resp: &Self::Resp) -> &str;
    fn encode(resp: Self::Resp) -> FrameParts;
}

impl Protocol for SotwStream {
    type Req = DiscoveryRequest;
    type Resp = SotwResponse;
    const NAME: &'static str = "sotw";
    fn node(req: &DiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }
    fn type_url(req: &DiscoveryRequest) -> &str {
        &req.type_url
    }
    fn on_request(&mut self, req: &DiscoveryRequest, snapshot: Option<&Snapshot>) -> (Received, Option<SotwResponse>) {
        SotwStream::on_request(self, req, snapshot)
    }
    fn on_snapshot(&mut self, snapshot: &Snapshot) -> Vec<SotwResponse> {
        SotwStream::on_snapshot(self, snapshot)
    }
    fn sync(&self, type_url: &str) -> Option<&TypeSync> {
        SotwStream::sync(self, type_url)
    }
    fn resp_type(resp: &SotwResponse) -> &str {
        &resp.type_url
    }
    /// `DiscoveryResponse` fields around the resources' shared bytes.
    fn encode(resp: SotwResponse) -> FrameParts {
        use prost::encoding::string;
        let mut head = BytesMut::new();
        string::encode(1, &resp.version_info, &mut head);
        let mut tail = BytesMut::new();
        string::encode(4, &resp.type_url, &mut tail);
        string::encode(5, &resp.nonce, &mut tail);
        let len = head.len() + tail.len() + resp.resources.iter().map(|r| r.wire.len()).sum::<usize>();
        let mut framed = BytesMut::with_capacity(5 + head.len());
        framed.put(grpc::frame_header(len));
        framed.put(head);
        FrameParts { head: framed.freeze(), resources: resp.resources, tail: tail.freeze() }
    }
}

impl Protocol for DeltaStream {
    type Req = DeltaDiscoveryRequest;
    type Resp = DeltaDiscoveryResponse;
    const NAME: &'static str = "delta";
    fn node(req: &DeltaDiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }
    fn type_url(req: &DeltaDiscoveryRequest) -> &str {
        &req.type_url
    }
    fn on_request(
        &mut self,
        req: &DeltaDiscoveryRequest,
        snapshot: Option<&Snapshot>,
    ) -> (Received, Option<DeltaDiscoveryResponse>) {
        DeltaStream::on_request(self, req, snapshot)
    }
    fn on_snapshot(&mut self, snapshot: &Snapshot) -> Vec<DeltaDiscoveryResponse> {
        DeltaStream::on_snapshot(self, snapshot)
    }
    fn sync(&self, type_url: &str) -> Option<&TypeSync> {
        DeltaStream::sync(self, type_url)
    }
    fn resp_type(resp: &DeltaDiscoveryResponse) -> &str {
        &resp.type_url
    }
    fn encode(resp: DeltaDiscoveryResponse) -> FrameParts {
        grpc::encode_message(&resp)
    }
}

/// The Aggregated Discovery Service over a [`Generator`]'s snapshots.
#[derive(Clone)]
pub struct AdsServer {
    generator: Arc<Generator>,
    status: Arc<SyncStatus>,
}

impl AdsServer {
    pub fn new(generator: Arc<Generator>, status: Arc<SyncStatus>) -> AdsServer {
        AdsServer { generator, status }
    }

    pub fn status(&self) -> &Arc<SyncStatus> {
        &self.status
    }

    /// Serve ADS (HTTP/2, gRPC) on a listener until `shutdown` completes.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => { tracing::warn!(error = %e, "xDS accept failed"); tokio::time::sleep(Duration::from_millis(50)).await; continue; }
                },
                _ = &mut shutdown => return Ok(()),
            };
            let _ = stream.set_nodelay(true);
            let server = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let server = server.clone();
                    async move { Ok::<_, std::convert::Infallible>(server.call(req, peer)) }
                });
                let mut http2 = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
                http2
                    .initial_stream_window_size(1 << 20)
                    .initial_connection_window_size(4 << 20)
                    .max_send_buf_size(SEND_BUFFER)
                    .keep_alive_interval(Some(Duration::from_secs(30)))
                    .timer(hyper_util::rt::TokioTimer::new());
                if let Err(e) = http2.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await {
                    tracing::debug!(%peer, error = %e, "xDS connection ended");
                }
            });
        }
    }

    fn call(&self, req: http::Request<hyper::body::Incoming>, peer: SocketAddr) -> http::Response<grpc::GrpcBody> {
        match req.uri().path() {
            SOTW_METHOD => self.start::<SotwStream>(grpc::request_messages(req), peer),
            DELTA_METHOD => self.start::<DeltaStream>(grpc::request_messages(req), peer),
            other => {
                grpc::status_response(&GrpcStatus::new(GrpcStatus::UNIMPLEMENTED, format!("unknown method {other}")))
            }
        }
    }

    fn start<P: Protocol>(
        &self,
        mut inbound: impl Stream<Item = Result<P::Req, GrpcStatus>> + Send + Unpin + 'static,
        peer: SocketAddr,
    ) -> http::Response<grpc::GrpcBody> {
        // Boxed: a channel allocates its slots 32 at a time, whatever its
        // bound, and a frame unboxed is 90 bytes: 2.6 KB per stream.
        let (tx, rx) = mpsc::channel(2);
        let server = self.clone();
        tokio::spawn(async move {
            let first = match inbound.next().await {
                Some(Ok(req)) => req,
                _ => return,
            };
            let node = match node::parse(P::node(&first)) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "xDS stream refused");
                    let _ = tx.send(Box::new(Err(GrpcStatus::new(GrpcStatus::INVALID_ARGUMENT, e.to_string())))).await;
                    return;
                }
            };
            server.drive::<P>(node, first, inbound, tx).await;
        });
        grpc::streaming_response(rx)
    }

    async fn drive<P: Protocol>(
        &self,
        node: NodeInfo,
        first: P::Req,
        mut inbound: impl Stream<Item = Result<P::Req, GrpcStatus>> + Unpin,
        tx: mpsc::Sender<grpc::Outgoing>,
    ) {
        let mut snapshots = self.generator.attach(&node).await;
        let id = self.status.connect(NodeSync {
            node_id: node.id.clone(),
            key: node.key(),
            flavor: format!("{:?}", node.flavor),
            protocol: P::NAME,
            connected_unix_time: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            types: Default::default(),
        });
        tracing::info!(node = %node.id, key = %node.key(), protocol = P::NAME, "xDS stream opened");
        let mut protocol = P::default();
        let mut next = Some(first);
        'stream: loop {
            let out: Vec<P::Resp> = if let Some(req) = next.take() {
                let snapshot = snapshots.borrow().clone();
                let (received, resp) = protocol.on_request(&req, snapshot.as_deref());
                if let Received::Nack(message) = &received {
                    tracing::warn!(node = %node.id, r#type = short_name(P::type_url(&req)), %message, "NACK: the node rejected config and keeps its last good one");
                }
                self.record(id, &protocol, P::type_url(&req));
                resp.into_iter().collect()
            } else {
                tokio::select! {
                    req = inbound.next() => match req {
                        Some(Ok(req)) => { next = Some(req); continue; }
                        Some(Err(e)) => { tracing::debug!(node = %node.id, error = ?e, "xDS stream error"); break; }
                        None => break,
                    },
                    changed = snapshots.changed() => {
                        if changed.is_err() { break; }
                        let snapshot = snapshots.borrow_and_update().clone();
                        match snapshot {
                            Some(s) => protocol.on_snapshot(&s),
                            None => continue,
                        }
                    }
                }
            };
            for resp in out {
                let type_url = P::resp_type(&resp).to_string();
                if tx.send(Box::new(Ok(P::encode(resp)))).await.is_err() {
                    break 'stream;
                }
                self.record(id, &protocol, &type_url);
            }
        }
        tracing::info!(node = %node.id, "xDS stream closed");
        self.status.disconnect(id);
        self.generator.detach(&node);
    }

    fn record<P: Protocol>(&self, id: u64, protocol: &P, type_url: &str) {
        if let Some(sync) = protocol.sync(type_url) {
            self.status.update(id, short_name(type_url), sync);
        }
    }
}
