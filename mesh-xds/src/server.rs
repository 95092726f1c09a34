//! The ADS gRPC service: one task per stream drives a protocol state
//! machine ([`SotwStream`] or [`DeltaStream`]) with the client's requests
//! and the cache's snapshots, and records what happened in [`SyncStatus`].
//! The transport is [`crate::grpc`].

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest};
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;

use crate::ca::authn::{self, Authenticator, Credentials};
use crate::cache::Snapshot;
use crate::delta::DeltaStream;
use crate::generator::Generator;
use crate::grpc::Caller;
use crate::grpc::{self, FrameParts, GrpcStatus};
use crate::node::{self, NodeInfo};
use crate::resources::{short_name, SECRET};
use crate::sds::{SecretIssuer, StreamSecrets};
use crate::sotw::{Received, SotwResponse, SotwStream};
use crate::status::{NodeSync, SyncStatus, TypeSync};
use std::sync::atomic::{AtomicU64, Ordering};

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
    security: Option<StreamSecurity>,
    stats: Arc<AdsStats>,
    /// The largest request message taken; a larger one cuts its stream.
    max_message: usize,
}

/// How streams over TLS prove who they are, and the secrets (SDS) they
/// are then sent: Istio's 15012. Streams on a plaintext port (15010) are
/// not asked and get no secrets.
#[derive(Clone)]
pub struct StreamSecurity {
    pub authenticators: Arc<[Arc<dyn Authenticator>]>,
    pub secrets: Arc<SecretIssuer>,
    /// Gateway credentials (`credentialName`), read in the namespace a
    /// stream proved; `None` when the platform keeps none.
    pub credentials: Option<Arc<dyn mesh_core::credentials::CredentialSource>>,
}

/// Streams the server refused or cut, by reason.
#[derive(Debug, Default)]
pub struct AdsStats {
    /// Over TLS without a proof the authenticators accept.
    pub unauthenticated: AtomicU64,
    /// A node claiming a namespace other than the one it proved.
    pub identity_mismatch: AtomicU64,
    /// A first request without a usable node.
    pub bad_node: AtomicU64,
    /// A message that does not decode, or is over the size limit.
    pub bad_messages: AtomicU64,
    /// Secret requests on a stream that proved no identity (answered
    /// with nothing).
    pub secrets_refused: AtomicU64,
    /// Streams cut for sending requests faster than [`RequestBudget`]
    /// allows.
    pub flooded: AtomicU64,
}

/// How fast one stream may send requests: a burst of [`Self::BURST`],
/// then [`Self::PER_SECOND`]. A proxy sends one per response it gets
/// (an ACK or NACK) and one per subscription change: far below this.
struct RequestBudget {
    tokens: f64,
    last: std::time::Instant,
}

impl RequestBudget {
    const BURST: f64 = 1000.0;
    const PER_SECOND: f64 = 100.0;

    fn new() -> RequestBudget {
        RequestBudget { tokens: Self::BURST, last: std::time::Instant::now() }
    }

    /// Spends one request; `false` when the stream is over its budget.
    fn spend(&mut self) -> bool {
        let now = std::time::Instant::now();
        let earned = now.duration_since(self.last).as_secs_f64() * Self::PER_SECOND;
        self.tokens = (self.tokens + earned).min(Self::BURST);
        self.last = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

impl AdsServer {
    pub fn new(generator: Arc<Generator>, status: Arc<SyncStatus>) -> AdsServer {
        AdsServer { generator, status, security: None, stats: Arc::default(), max_message: grpc::MAX_MESSAGE }
    }

    /// Refuse request messages over `bytes` (RESOURCE_EXHAUSTED) rather
    /// than [`grpc::MAX_MESSAGE`].
    pub fn with_max_message(mut self, bytes: usize) -> AdsServer {
        self.max_message = bytes;
        self
    }

    /// Authenticate streams over TLS and send them their secrets.
    pub fn with_security(mut self, security: StreamSecurity) -> AdsServer {
        self.security = Some(security);
        self
    }

    pub fn status(&self) -> &Arc<SyncStatus> {
        &self.status
    }

    pub fn stats(&self) -> &Arc<AdsStats> {
        &self.stats
    }

    /// Serve ADS (HTTP/2, gRPC) in plaintext on a listener until
    /// `shutdown` completes. No stream is sent secrets here.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        grpc::serve(listener, None, shutdown, move |req, caller| std::future::ready(self.call(req, caller))).await
    }

    /// Serve ADS over TLS, streams authenticated, until `shutdown`.
    pub async fn serve_tls(
        self,
        listener: tokio::net::TcpListener,
        tls: Arc<rustls::ServerConfig>,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        grpc::serve(listener, Some(tls), shutdown, move |req, caller| std::future::ready(self.call(req, caller))).await
    }

    /// One call: an ADS stream (started in a task of its own), or
    /// `UNIMPLEMENTED`.
    pub fn call(
        &self,
        req: http::Request<hyper::body::Incoming>,
        caller: Arc<Caller>,
    ) -> http::Response<grpc::GrpcBody> {
        let token = grpc::bearer_token(req.headers());
        match req.uri().path() {
            SOTW_METHOD => self.start::<SotwStream>(grpc::request_messages(req, self.max_message), caller, token),
            DELTA_METHOD => self.start::<DeltaStream>(grpc::request_messages(req, self.max_message), caller, token),
            other => {
                grpc::status_response(&GrpcStatus::new(GrpcStatus::UNIMPLEMENTED, format!("unknown method {other}")))
            }
        }
    }

    fn start<P: Protocol>(
        &self,
        mut inbound: impl Stream<Item = Result<P::Req, GrpcStatus>> + Send + Unpin + 'static,
        caller: Arc<Caller>,
        token: Option<String>,
    ) -> http::Response<grpc::GrpcBody> {
        // Boxed: a channel allocates its slots 32 at a time, whatever its
        // bound, and a frame unboxed is 90 bytes: 2.6 KB per stream.
        let (tx, rx) = mpsc::channel(2);
        let server = self.clone();
        tokio::spawn(async move {
            let first = match inbound.next().await {
                Some(Ok(req)) => req,
                Some(Err(status)) => return server.refuse(&tx, &caller, &server.stats.bad_messages, status).await,
                None => return,
            };
            let node = match node::parse(P::node(&first)) {
                Ok(n) => n,
                Err(e) => {
                    let status = GrpcStatus::new(GrpcStatus::INVALID_ARGUMENT, e.to_string());
                    return server.refuse(&tx, &caller, &server.stats.bad_node, status).await;
                }
            };
            let secrets = match server.authenticate(&caller, token.as_deref(), &node).await {
                Ok(secrets) => secrets,
                Err((counter, status)) => return server.refuse(&tx, &caller, counter, status).await,
            };
            let node = NodeInfo { has_certificate: node.has_certificate || secrets.is_some(), ..node };
            let secrets =
                secrets.map(|s| StreamSecrets::new(s, server.security.as_ref().and_then(|c| c.credentials.clone())));
            server.drive::<P>(node, secrets, first, inbound, tx).await;
        });
        grpc::streaming_response(rx)
    }

    /// Over TLS with security on: the identity the caller proves, whose
    /// namespace must be the node's, and its secrets. `None` elsewhere.
    async fn authenticate(
        &self,
        caller: &Caller,
        token: Option<&str>,
        node: &NodeInfo,
    ) -> Result<Option<Arc<crate::sds::IdentitySecrets>>, (&AtomicU64, GrpcStatus)> {
        let Some(security) = self.security.as_ref().filter(|_| caller.tls) else { return Ok(None) };
        let credentials = Credentials {
            bearer_token: token,
            peer_certificate: caller.peer_certificate.as_deref(),
            remote: caller.remote,
        };
        let ids = authn::authenticate(&security.authenticators, &credentials)
            .await
            .map_err(|e| (&self.stats.unauthenticated, GrpcStatus::new(GrpcStatus::UNAUTHENTICATED, e.to_string())))?;
        // Istio's check: the node may read only its own namespace's config.
        let Some(id) = ids.iter().find(|id| id.namespace() == node.identity.namespace) else {
            let proven: Vec<String> = ids.iter().map(ToString::to_string).collect();
            let message = format!(
                "node {} claims namespace {} but proved {}",
                node.id,
                node.identity.namespace,
                proven.join(", ")
            );
            return Err((&self.stats.identity_mismatch, GrpcStatus::new(GrpcStatus::PERMISSION_DENIED, message)));
        };
        security.secrets.secrets_for(id).map(Some).map_err(|e| {
            (
                &self.stats.unauthenticated,
                GrpcStatus::new(GrpcStatus::INTERNAL, format!("issuing {id}'s certificate: {e}")),
            )
        })
    }

    async fn refuse(
        &self,
        tx: &mpsc::Sender<grpc::Outgoing>,
        caller: &Caller,
        counter: &AtomicU64,
        status: GrpcStatus,
    ) {
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(remote = %caller.remote, code = status.code, message = %status.message, "xDS stream refused");
        let _ = tx.send(Box::new(Err(status))).await;
    }

    async fn drive<P: Protocol>(
        &self,
        node: NodeInfo,
        mut secrets: Option<StreamSecrets>,
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
            unsupported: Vec::new(),
        });
        let identity = secrets.as_ref().map(|s| s.identity().to_string()).unwrap_or_default();
        tracing::info!(node = %node.id, key = %node.key(), protocol = P::NAME, %identity, "xDS stream opened");
        let mut protocol = P::default();
        let mut next = Some(first);
        let mut told_no_secrets = false;
        let mut budget = RequestBudget::new();
        let why: &str = 'stream: loop {
            let out: Vec<P::Resp> = if let Some(req) = next.take() {
                if P::type_url(&req) == SECRET && secrets.is_none() && !told_no_secrets {
                    told_no_secrets = true;
                    self.stats.secrets_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(node = %node.id, "SDS asked for on a stream that proved no identity (plaintext port, or no CA): no secrets sent");
                }
                let snapshot = with_secrets(&node.id, snapshots.borrow().clone(), secrets.as_mut());
                if let Some(s) = &snapshot {
                    self.status.set_unsupported(id, &s.unsupported);
                }
                let (received, resp) = protocol.on_request(&req, snapshot.as_deref());
                if let Received::Nack(message) = &received {
                    tracing::warn!(node = %node.id, r#type = short_name(P::type_url(&req)), %message, "NACK: the node rejected config and keeps its last good one");
                }
                self.record(id, &protocol, P::type_url(&req));
                resp.into_iter().collect()
            } else {
                let renewed = async {
                    match secrets.as_mut() {
                        Some(s) => s.changed().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    req = inbound.next() => match req {
                        Some(Ok(_)) if !budget.spend() => {
                            self.stats.flooded.fetch_add(1, Ordering::Relaxed);
                            let message = format!("more than {} requests at once, or {} a second", RequestBudget::BURST, RequestBudget::PER_SECOND);
                            tracing::warn!(node = %node.id, %message, "xDS stream cut: it floods requests");
                            let _ = tx.send(Box::new(Err(GrpcStatus::new(GrpcStatus::RESOURCE_EXHAUSTED, message)))).await;
                            break 'stream "it flooded requests";
                        }
                        Some(Ok(req)) => { next = Some(req); continue; }
                        Some(Err(e)) => {
                            self.stats.bad_messages.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(node = %node.id, code = e.code, message = %e.message, "xDS stream cut");
                            let _ = tx.send(Box::new(Err(e))).await;
                            break 'stream "a bad message";
                        }
                        None => break 'stream "the client ended it",
                    },
                    changed = snapshots.changed() => {
                        if changed.is_err() { break 'stream "its config source went away"; }
                        let snapshot = snapshots.borrow_and_update().clone();
                        match with_secrets(&node.id, snapshot, secrets.as_mut()) {
                            Some(s) => {
                                self.status.set_unsupported(id, &s.unsupported);
                                protocol.on_snapshot(&s)
                            }
                            None => continue,
                        }
                    }
                    renewed = renewed => {
                        if !renewed { break 'stream "its secrets can no longer be renewed"; }
                        match with_secrets(&node.id, snapshots.borrow().clone(), secrets.as_mut()) {
                            Some(s) => protocol.on_snapshot(&s),
                            None => continue,
                        }
                    }
                }
            };
            for resp in out {
                let type_url = P::resp_type(&resp).to_string();
                if tx.send(Box::new(Ok(P::encode(resp)))).await.is_err() {
                    break 'stream "the client is gone";
                }
                self.record(id, &protocol, &type_url);
            }
        };
        tracing::info!(node = %node.id, why, "xDS stream closed");
        self.status.disconnect(id);
        // Not following the key any more first: a key nobody follows is
        // dropped from the cache, so its next node gets a fresh build
        // rather than a snapshot no change has touched since.
        drop(snapshots);
        self.generator.detach(&node);
    }

    fn record<P: Protocol>(&self, id: u64, protocol: &P, type_url: &str) {
        if let Some(sync) = protocol.sync(type_url) {
            self.status.update(id, short_name(type_url), sync);
        }
    }
}

/// The node's snapshot with its stream's secrets added; the snapshot
/// itself, uncopied, when the stream has none.
fn with_secrets(
    node: &str,
    snapshot: Option<Arc<Snapshot>>,
    secrets: Option<&mut StreamSecrets>,
) -> Option<Arc<Snapshot>> {
    let snapshot = snapshot?;
    Some(match secrets {
        Some(s) => s.merge(node, &snapshot),
        None => snapshot,
    })
}
