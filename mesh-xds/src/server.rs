//! The ADS gRPC service: one task per stream drives a protocol state
//! machine ([`SotwStream`] or [`DeltaStream`]) with the client's requests
//! and the cache's snapshots, and records what happened in [`SyncStatus`].

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_server::{AggregatedDiscoveryService, AggregatedDiscoveryServiceServer},
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::cache::Snapshot;
use crate::delta::DeltaStream;
use crate::generator::Generator;
use crate::node::{self, NodeInfo};
use crate::resources::short_name;
use crate::sotw::{Received, SotwStream};
use crate::status::{NodeSync, SyncStatus, TypeSync};

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
}

impl Protocol for SotwStream {
    type Req = DiscoveryRequest;
    type Resp = DiscoveryResponse;
    const NAME: &'static str = "sotw";
    fn node(req: &DiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }
    fn type_url(req: &DiscoveryRequest) -> &str {
        &req.type_url
    }
    fn on_request(
        &mut self,
        req: &DiscoveryRequest,
        snapshot: Option<&Snapshot>,
    ) -> (Received, Option<DiscoveryResponse>) {
        SotwStream::on_request(self, req, snapshot)
    }
    fn on_snapshot(&mut self, snapshot: &Snapshot) -> Vec<DiscoveryResponse> {
        SotwStream::on_snapshot(self, snapshot)
    }
    fn sync(&self, type_url: &str) -> Option<&TypeSync> {
        SotwStream::sync(self, type_url)
    }
    fn resp_type(resp: &DiscoveryResponse) -> &str {
        &resp.type_url
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
}

/// The Aggregated Discovery Service over a [`Generator`]'s snapshots.
#[derive(Clone)]
pub struct AdsServer {
    generator: Arc<Generator>,
    status: Arc<SyncStatus>,
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl AdsServer {
    pub fn new(generator: Arc<Generator>, status: Arc<SyncStatus>) -> AdsServer {
        AdsServer { generator, status }
    }

    pub fn status(&self) -> &Arc<SyncStatus> {
        &self.status
    }

    /// Serve ADS on a listener until `shutdown` completes.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .add_service(AggregatedDiscoveryServiceServer::new(self).max_decoding_message_size(64 << 20))
            .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), shutdown)
            .await
    }

    fn start<P: Protocol>(&self, mut inbound: Streaming<P::Req>, peer: Option<SocketAddr>) -> ResponseStream<P::Resp>
    where
        P::Req: prost::Message + Default,
    {
        let (tx, rx) = mpsc::channel(8);
        let server = self.clone();
        tokio::spawn(async move {
            let first = match inbound.next().await {
                Some(Ok(req)) => req,
                _ => return,
            };
            let node = match node::parse(P::node(&first)) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(?peer, error = %e, "xDS stream refused");
                    let _ = tx.send(Err(Status::invalid_argument(e.to_string()))).await;
                    return;
                }
            };
            server.drive::<P>(node, first, inbound, tx).await;
        });
        Box::pin(ReceiverStream::new(rx))
    }

    async fn drive<P: Protocol>(
        &self,
        node: NodeInfo,
        first: P::Req,
        mut inbound: Streaming<P::Req>,
        tx: mpsc::Sender<Result<P::Resp, Status>>,
    ) where
        P::Req: prost::Message + Default,
    {
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
                        Some(Err(e)) => { tracing::debug!(node = %node.id, error = %e, "xDS stream error"); break; }
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
                if tx.send(Ok(resp)).await.is_err() {
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

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let peer = request.remote_addr();
        Ok(Response::new(self.start::<SotwStream>(request.into_inner(), peer)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let peer = request.remote_addr();
        Ok(Response::new(self.start::<DeltaStream>(request.into_inner(), peer)))
    }
}
