//! gRPC over hyper's HTTP/2 server, for the two ADS methods only.
//!
//! Why not tonic's server: its encoder copies each response into a
//! per-stream buffer that then stays as large as the largest response
//! (a 1,000-service mesh makes 1 MB CDS and RDS responses: 1 GB for 1,000
//! streams, measured in `benches/xds_scale.rs`). Here a response goes out
//! as the resources' shared, pre-encoded bytes, handed to HTTP/2 (and
//! written vectored) up to 8 KiB at a time as flow control asks for
//! more. The client side stays on tonic.

use std::convert::Infallible;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use prost::Message;
use tokio::sync::mpsc;

/// A gRPC status to end a call with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcStatus {
    pub code: u32,
    pub message: String,
}

impl GrpcStatus {
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const PERMISSION_DENIED: u32 = 7;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
    pub const UNAUTHENTICATED: u32 = 16;

    pub fn new(code: u32, message: impl Into<String>) -> GrpcStatus {
        GrpcStatus { code, message: message.into() }
    }
}

/// One gRPC frame: `head` (the 5-byte header and the first fields), the
/// shared encoded resources, then `tail`. Resources stay `Arc`s until the
/// moment they are copied into a chunk.
#[derive(Clone, Debug, Default)]
pub struct FrameParts {
    pub head: Bytes,
    pub resources: Vec<std::sync::Arc<crate::resources::Resource>>,
    pub tail: Bytes,
}

impl FrameParts {
    fn part(&self, i: usize) -> Option<&Bytes> {
        match i {
            0 => Some(&self.head),
            i if i <= self.resources.len() => Some(&self.resources[i - 1].wire),
            i if i == self.resources.len() + 1 => Some(&self.tail),
            _ => None,
        }
    }
}

/// The 5-byte gRPC frame header: not compressed, then the length.
pub fn frame_header(len: usize) -> Bytes {
    let mut h = BytesMut::with_capacity(5);
    h.put_u8(0);
    h.put_u32(len as u32);
    h.freeze()
}

/// A whole message as one frame.
pub fn encode_message<M: Message>(msg: &M) -> FrameParts {
    let mut head = BytesMut::with_capacity(5 + msg.encoded_len());
    head.put(frame_header(msg.encoded_len()));
    msg.encode_raw(&mut head);
    FrameParts { head: head.freeze(), ..Default::default() }
}

/// What a stream task hands the response body: a frame, or the status
/// that ends the call.
pub type Outgoing = Box<Result<FrameParts, GrpcStatus>>;

pub type GrpcBody = StreamBody<futures_util::stream::BoxStream<'static, Result<Frame<Pieces>, Infallible>>>;

/// Small resources are gathered into DATA frames of up to this size: few
/// enough frames, and little queued per stream (a connect storm has 1,000
/// streams sending at once).
const CHUNK: usize = 8 * 1024;

/// The body of one DATA frame: shared pieces (a frame header, encoded
/// resources) that HTTP/2 writes out vectored, so a resource's bytes are
/// never copied into a frame buffer (a connect storm sends 4 GB).
#[derive(Debug, Default)]
pub struct Pieces {
    parts: std::collections::VecDeque<Bytes>,
    remaining: usize,
}

impl Pieces {
    fn push(&mut self, part: Bytes) {
        if !part.is_empty() {
            self.remaining += part.len();
            self.parts.push_back(part);
        }
    }
}

impl From<Bytes> for Pieces {
    fn from(part: Bytes) -> Pieces {
        let mut pieces = Pieces::default();
        pieces.push(part);
        pieces
    }
}

impl Buf for Pieces {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.parts.front().map_or(&[], |p| p.as_ref())
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advanced past the end of the pieces");
        self.remaining -= cnt;
        while let Some(front) = self.parts.front_mut() {
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.parts.pop_front();
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [std::io::IoSlice<'a>]) -> usize {
        dst.iter_mut().zip(&self.parts).map(|(slot, part)| *slot = std::io::IoSlice::new(part)).count()
    }
}

/// The response of a streaming call: frames from `rx` as they come, in
/// chunks of at most 8 KiB, then the status as trailers.
pub fn streaming_response(rx: mpsc::Receiver<Outgoing>) -> Response<GrpcBody> {
    struct State {
        rx: mpsc::Receiver<Outgoing>,
        /// The frame being sent, and the index of its next part.
        pending: Option<(FrameParts, usize)>,
        done: bool,
    }
    let frames = futures_util::stream::unfold(State { rx, pending: None, done: false }, |mut st| async move {
        if st.done {
            return None;
        }
        if st.pending.is_none() {
            match st.rx.recv().await.map(|outgoing| *outgoing) {
                Some(Ok(parts)) => st.pending = Some((parts, 0)),
                Some(Err(status)) => {
                    st.done = true;
                    return Some((Ok(Frame::trailers(trailers(&status))), st));
                }
                None => {
                    st.done = true;
                    return Some((Ok(Frame::trailers(trailers(&GrpcStatus::new(0, "")))), st));
                }
            }
        }
        // A large part goes alone; small ones are gathered up to a chunk.
        let (parts, next) = st.pending.as_mut()?;
        let mut data = Pieces::from(parts.part(*next).cloned().unwrap_or_default());
        *next += 1;
        while let Some(p) = parts.part(*next).filter(|p| data.remaining() + p.len() <= CHUNK) {
            data.push(p.clone());
            *next += 1;
        }
        if parts.part(*next).is_none() {
            st.pending = None;
        }
        Some((Ok(Frame::data(data)), st))
    });
    let mut response = Response::new(StreamBody::new(frames.boxed()));
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

/// The answer of a unary call: one message, then status OK.
pub fn unary_response(message: Vec<u8>) -> Response<GrpcBody> {
    let mut data = BytesMut::with_capacity(5 + message.len());
    data.put(frame_header(message.len()));
    data.put_slice(&message);
    let frames = [Frame::data(Pieces::from(data.freeze())), Frame::trailers(trailers(&GrpcStatus::new(0, "")))];
    let body = futures_util::stream::iter(frames.into_iter().map(Ok)).boxed();
    let mut response = Response::new(StreamBody::new(body));
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

/// A call answered by its status alone (an unknown method, say).
pub fn status_response(status: &GrpcStatus) -> Response<GrpcBody> {
    let mut response = Response::new(StreamBody::new(futures_util::stream::empty().boxed()));
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response.headers_mut().extend(trailers(status));
    response
}

fn trailers(status: &GrpcStatus) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from(status.code));
    if !status.message.is_empty() {
        // gRPC's spec: percent-encode all but printable ASCII and `%`.
        const GRPC_MESSAGE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');
        let encoded = percent_encoding::utf8_percent_encode(&status.message, GRPC_MESSAGE).to_string();
        if let Ok(v) = HeaderValue::from_str(&encoded) {
            t.insert("grpc-message", v);
        }
    }
    t
}

/// A message larger than this is refused (tonic's default limit).
pub const MAX_MESSAGE: usize = 4 << 20;

/// The request messages of a streaming call; one over `max` bytes ends it
/// with `RESOURCE_EXHAUSTED`, before its bytes are buffered.
pub fn request_messages<M: Message + Default + 'static>(
    req: Request<Incoming>,
    max: usize,
) -> impl Stream<Item = Result<M, GrpcStatus>> + Send + Unpin {
    let body = req.into_body();
    futures_util::stream::unfold((body, BytesMut::new(), false), move |(mut body, mut buf, mut failed)| async move {
        loop {
            if failed {
                return None;
            }
            if buf.len() >= 5 {
                let compressed = buf[0];
                let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                if compressed != 0 {
                    failed = true;
                    return Some((
                        Err(GrpcStatus::new(GrpcStatus::UNIMPLEMENTED, "compressed messages are not supported")),
                        (body, buf, failed),
                    ));
                }
                if len > max {
                    failed = true;
                    let status = GrpcStatus::new(
                        GrpcStatus::RESOURCE_EXHAUSTED,
                        format!("a message of {len} bytes is over the limit of {max}"),
                    );
                    return Some((Err(status), (body, buf, failed)));
                }
                if buf.len() >= 5 + len {
                    buf.advance(5);
                    let msg = buf.split_to(len);
                    // `buf` still shares the message's allocation (as large
                    // as the largest request: an EDS ACK names every
                    // cluster): let it go with the message rather than keep
                    // it for the life of the stream. Requests are rare.
                    if buf.is_empty() {
                        buf = BytesMut::new();
                    }
                    let item = M::decode(msg.freeze())
                        .map_err(|e| GrpcStatus::new(GrpcStatus::INVALID_ARGUMENT, format!("bad message: {e}")));
                    failed = item.is_err();
                    return Some((item, (body, buf, failed)));
                }
            }
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        buf.extend_from_slice(&data);
                    }
                }
                Some(Err(_)) | None => return None,
            }
        }
    })
    .boxed()
}

/// Who is on the other end of a call.
#[derive(Clone, Debug)]
pub struct Caller {
    pub remote: std::net::SocketAddr,
    /// Over TLS: the client certificate, verified against the CA's roots.
    pub peer_certificate: Option<std::sync::Arc<mesh_core::certificate::CertificateInfo>>,
    /// The connection is TLS: a token it carries was not sent in the clear.
    pub tls: bool,
}

/// The token of `authorization: Bearer <token>` metadata.
pub fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::to_string)
}

/// HTTP/2 as the control plane's gRPC ports serve it.
pub fn http2_server() -> hyper::server::conn::http2::Builder<hyper_util::rt::TokioExecutor> {
    let mut http2 = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    http2
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .max_send_buf_size(SEND_BUFFER)
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)))
        .timer(hyper_util::rt::TokioTimer::new());
    http2
}

/// What one stream may have queued in HTTP/2 before it waits for the
/// client to read: one chunk. hyper's default (400 KiB) let a connect
/// storm queue up to 400 MB across 1,000 slow clients.
const SEND_BUFFER: usize = CHUNK;

/// Serves gRPC on `listener` until `shutdown`, over TLS when `tls` is
/// given: each call goes to `handle` with who made it (istiod's 15012:
/// xDS and the CA on one TLS port; 15010: xDS in plaintext).
pub async fn serve<H, F>(
    listener: tokio::net::TcpListener,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send,
    handle: H,
) -> std::io::Result<()>
where
    H: Fn(Request<Incoming>, std::sync::Arc<Caller>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Response<GrpcBody>> + Send + 'static,
{
    use std::time::Duration;
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => { tracing::warn!(error = %e, "gRPC accept failed"); tokio::time::sleep(Duration::from_millis(50)).await; continue; }
            },
            _ = &mut shutdown => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, handle) = (acceptor.clone(), handle.clone());
        tokio::spawn(async move {
            let Some(acceptor) = acceptor else {
                let caller = Caller { remote, peer_certificate: None, tls: false };
                return serve_connection(stream, caller, handle).await;
            };
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::info!(%remote, error = %e, "gRPC TLS handshake failed"),
                Err(_) => return tracing::info!(%remote, "gRPC TLS handshake timed out"),
            };
            let peer = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
            let peer = peer.and_then(|der| mesh_core::certificate::CertificateInfo::from_der(der).ok());
            let caller = Caller { remote, peer_certificate: peer.map(std::sync::Arc::new), tls: true };
            serve_connection(tls, caller, handle).await;
        });
    }
}

async fn serve_connection<IO, H, F>(io: IO, caller: Caller, handle: H)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>, std::sync::Arc<Caller>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Response<GrpcBody>> + Send + 'static,
{
    let (remote, caller) = (caller.remote, std::sync::Arc::new(caller));
    let service = hyper::service::service_fn(move |req| {
        let reply = handle(req, caller.clone());
        async move { Ok::<_, Infallible>(reply.await) }
    });
    if let Err(e) = http2_server().serve_connection(hyper_util::rt::TokioIo::new(io), service).await {
        tracing::debug!(%remote, error = %e, "gRPC connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_read_across_their_parts_as_one_buffer() {
        let mut pieces = Pieces::from(Bytes::from_static(b"head"));
        pieces.push(Bytes::new());
        pieces.push(Bytes::from_static(b"resource"));
        pieces.push(Bytes::from_static(b"tail"));
        assert_eq!(pieces.remaining(), 16);
        let mut slices = [std::io::IoSlice::new(&[]); 2];
        assert_eq!(pieces.chunks_vectored(&mut slices), 2, "an empty part is never a slice");
        assert_eq!((&*slices[0], &*slices[1]), (&b"head"[..], &b"resource"[..]));
        pieces.advance(6);
        assert_eq!((pieces.chunk(), pieces.remaining()), (&b"source"[..], 10));
        assert_eq!(pieces.copy_to_bytes(10), Bytes::from_static(b"sourcetail"));
        assert_eq!((pieces.chunk(), pieces.remaining()), (&b""[..], 0));
    }
}
