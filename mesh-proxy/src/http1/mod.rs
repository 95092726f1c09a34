//! A lean HTTP/1.1 client for upstream requests, driven by the request's
//! own task.
//!
//! Why not hyper's pooled client for HTTP/1.1: it runs each connection as
//! a task of its own and hands it every request over a channel, a task
//! switch each way per request, and holds about 34 KB per connection
//! (the task, two channel blocks, buffers: `benches/README.md`). Here the
//! request's task writes the request and parses the response head
//! (`httparse`) on a pooled socket; the response body reads on from that
//! socket and puts the connection back in the pool when it ends. An idle
//! connection is its socket and nothing else.
//!
//! HTTP/2 upstreams and upgrades (WebSocket) stay on hyper's client.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HOST};
use http::{HeaderMap, Method, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::answer::{Answer, FieldList};
use crate::body::Body;
use crate::upstream_tls::{Origination, UpstreamIo};
use crate::wire::{self, Decoded, Framing, RawHeaders, Seen, MAX_HEAD, MAX_HEADERS, READ_SIZE};

#[derive(Debug, thiserror::Error)]
pub enum Http1Error {
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("connect timeout after {0:?}")]
    ConnectTimeout(Duration),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("connection closed before the response")]
    Closed,
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    #[error("request body: {0}")]
    RequestBody(crate::body::BoxError),
}

impl Http1Error {
    pub fn is_connect(&self) -> bool {
        matches!(self, Http1Error::Connect(_) | Http1Error::ConnectTimeout(_))
    }

    /// What a pooled connection the server had already closed gives.
    fn is_stale_connection(&self) -> bool {
        use io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
        match self {
            Http1Error::Closed => true,
            Http1Error::Io(e) => matches!(e.kind(), BrokenPipe | ConnectionReset | ConnectionAborted),
            _ => false,
        }
    }
}

/// What goes upstream: the request head as the proxy built it.
pub struct RequestHead<'a> {
    pub method: &'a Method,
    /// Origin form: path and query.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

/// A request body: whole (and so sendable again on a fresh connection when
/// a pooled one turns out closed), or streamed.
pub enum RequestBody {
    Full(Bytes),
    Stream(Body),
}

/// The endpoints' pools for one set of connection settings. Clusters look
/// up their endpoints' [`HostPool`]s when a config is compiled, so a
/// request takes its connection without a lookup, and configs that name
/// the same endpoint share its connections. The clusters own the host
/// pools: when no config names an endpoint any more, its pool and idle
/// connections go (as Envoy drains a removed host's), and its entry here
/// goes with it.
pub struct Http1Pool {
    hosts: Arc<Mutex<HostMap>>,
    settings: Settings,
}

type HostMap = HashMap<SocketAddr, Weak<HostPool>>;

#[derive(Clone)]
struct Settings {
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// TLS over each connection (`None`: plaintext).
    origination: Option<Arc<Origination>>,
}

/// One endpoint's idle connections.
pub struct HostPool {
    addr: SocketAddr,
    idle: Mutex<Vec<Idle>>,
    settings: Settings,
    /// The map that found this pool, to leave when the pool goes.
    known_in: Weak<Mutex<HostMap>>,
}

impl Drop for HostPool {
    fn drop(&mut self) {
        let Some(map) = self.known_in.upgrade() else { return };
        let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
        // A later config may have made a new pool for the address.
        if map.get(&self.addr).is_some_and(|known| known.strong_count() == 0) {
            map.remove(&self.addr);
        }
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

struct Conn {
    io: UpstreamIo,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    /// Requests this connection has carried.
    requests: u64,
}

impl Conn {
    /// Read more into the buffer; `Ok(0)` is the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let tcp = match &mut self.io {
            UpstreamIo::Plain(tcp) => tcp,
            UpstreamIo::Tls(tls) => {
                self.buf.reserve(READ_SIZE);
                return tokio_util::io::poll_read_buf(Pin::new(tls.as_mut()), cx, &mut self.buf);
            }
        };
        loop {
            ready!(tcp.poll_read_ready(cx))?;
            self.buf.reserve(READ_SIZE);
            match tcp.try_read_buf(&mut self.buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    /// The response has been read whole: forget the read readiness it
    /// left, without a system call, so that the idle check finds the
    /// socket unready unless something new (a close) arrives. A close that
    /// came with the response itself goes unseen until the next request,
    /// which then retries on a new connection.
    fn forget_readiness(&self) {
        if let UpstreamIo::Plain(tcp) = &self.io {
            let _ = tcp.try_io(tokio::io::Interest::READABLE, || Err::<(), _>(io::ErrorKind::WouldBlock.into()));
        }
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// An idle connection is usable while the peer has neither closed it
    /// nor sent anything unasked.
    fn still_open(&mut self) -> bool {
        match &mut self.io {
            UpstreamIo::Plain(tcp) => {
                let mut probe = [0u8; 1];
                matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            // TLS may hold records (a session ticket) with no data: poll
            // once without a waker; only "nothing yet" means open.
            UpstreamIo::Tls(tls) => {
                let mut probe = [0u8; 1];
                let mut buf = tokio::io::ReadBuf::new(&mut probe);
                let mut cx = Context::from_waker(std::task::Waker::noop());
                tokio::io::AsyncRead::poll_read(Pin::new(tls.as_mut()), &mut cx, &mut buf).is_pending()
            }
        }
    }
}

impl Http1Pool {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration, origination: Option<Arc<Origination>>) -> Http1Pool {
        Http1Pool { hosts: Arc::default(), settings: Settings { connect_timeout, idle_timeout, origination } }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HostMap> {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The endpoints' pools held now. Taken out of the lock: the last
    /// reference to one may be dropped here, and a pool's drop takes it.
    fn live(&self) -> Vec<Arc<HostPool>> {
        self.lock().values().filter_map(Weak::upgrade).collect()
    }

    /// The pool of one endpoint (config time).
    pub fn host(&self, addr: SocketAddr) -> Arc<HostPool> {
        self.hosts(&[addr]).remove(0)
    }

    /// The pools of a cluster's endpoints, in order (config time): the
    /// live ones where another cluster or the config before names the
    /// same endpoint, new ones for the rest.
    pub fn hosts(&self, addrs: &[SocketAddr]) -> Vec<Arc<HostPool>> {
        let settings = &self.settings;
        let mut hosts = self.lock();
        addrs
            .iter()
            .map(|&addr| {
                let known = hosts.get(&addr).and_then(Weak::upgrade);
                known.unwrap_or_else(|| {
                    let known_in = Arc::downgrade(&self.hosts);
                    let host =
                        Arc::new(HostPool { addr, idle: Mutex::default(), settings: settings.clone(), known_in });
                    hosts.insert(addr, Arc::downgrade(&host));
                    host
                })
            })
            .collect()
    }

    /// Close the connections idle for longer than the idle timeout.
    /// Returns when to look again: when the next idle connection reaches
    /// its timeout, though no sooner than a sixteenth of the timeout from
    /// now, so that connections expiring close together are closed in one
    /// pass rather than one pass each (`None`: a timeout past any clock).
    pub fn close_expired(&self) -> Option<Instant> {
        let now = Instant::now();
        let timeout = self.settings.idle_timeout;
        let oldest = self.live().iter().filter_map(|host| host.close_expired(now)).min();
        // Connections that go idle from now on expire no sooner than this.
        let next = oldest.or_else(|| now.checked_add(timeout))?;
        Some(next.max(now.checked_add(timeout / 16)?))
    }

    /// Idle connections held, for stats.
    pub fn idle_connections(&self) -> usize {
        self.live().iter().map(|h| h.idle_connections()).sum()
    }
}

impl HostPool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection that is still good.
    fn checkout(&self) -> Option<Conn> {
        let mut idle = self.lock();
        while let Some(Idle { mut conn, since }) = idle.pop() {
            if since.elapsed() < self.settings.idle_timeout && conn.still_open() {
                return Some(conn);
            }
        }
        None
    }

    fn checkin(&self, mut conn: Conn) {
        // Idle connections keep no buffer.
        if conn.buf.is_empty() {
            conn.buf = BytesMut::new();
        }
        let mut idle = self.lock();
        if idle.len() == idle.capacity() {
            // Grown from one, not four: with many endpoints (P2C over a
            // thousand) each mostly holds one idle connection.
            let more = idle.len().max(1);
            idle.reserve_exact(more);
        }
        idle.push(Idle { conn, since: Instant::now() });
    }

    /// Close the connections idle past the timeout at `now`; returns when
    /// the oldest one left reaches it.
    fn close_expired(&self, now: Instant) -> Option<Instant> {
        let timeout = self.settings.idle_timeout;
        let mut idle = self.lock();
        idle.retain(|i| now.saturating_duration_since(i.since) < timeout);
        idle.iter().map(|i| i.since).min()?.checked_add(timeout)
    }

    pub fn idle_connections(&self) -> usize {
        self.lock().len()
    }

    /// A new connection, TLS included (one connect timeout for both).
    async fn connect(&self) -> Result<Conn, Http1Error> {
        let timeout = self.settings.connect_timeout;
        let origination = self.settings.origination.as_deref();
        let connecting = async {
            let tcp = TcpStream::connect(self.addr).await?;
            let _ = tcp.set_nodelay(true);
            UpstreamIo::over(tcp, origination).await
        };
        let io = match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => return Err(Http1Error::Connect(e)),
            Err(_) => return Err(Http1Error::ConnectTimeout(timeout)),
        };
        Ok(Conn { io, buf: BytesMut::new(), requests: 0 })
    }

    /// Send a request to this endpoint and read the response head; the
    /// body follows as the response's body. A connection that has carried
    /// `max_requests` is closed after its response.
    pub async fn send(
        self: &Arc<Self>,
        head: RequestHead<'_>,
        body: RequestBody,
        max_requests: Option<u32>,
    ) -> Result<Answer<ResponseBody>, Http1Error> {
        let mut body = Some(body);
        loop {
            let (mut conn, reused) = match self.checkout() {
                Some(conn) => (conn, true),
                None => (self.connect().await?, false),
            };
            let sending = body.take().unwrap_or(RequestBody::Full(Bytes::new()));
            let replay = match &sending {
                RequestBody::Full(b) if reused => Some(b.clone()),
                _ => None,
            };
            let written = write_request(&mut conn, self.addr, &head, sending).await;
            let sent_whole = written.is_ok();
            let result = match written {
                Ok(()) => read_head(&mut conn, head.method).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(parsed) => {
                    conn.requests += 1;
                    let reusable = parsed.keep_alive && max_requests.is_none_or(|m| conn.requests < u64::from(m));
                    let Parsed { status, version, fields, framing, .. } = parsed;
                    let mut body = ResponseBody { conn: Some(conn), framing, pool: reusable.then(|| Arc::clone(self)) };
                    body.finish_if_done();
                    return Ok(Answer::with_fields(status, version, fields, body));
                }
                // A pooled connection the server closed as the request went
                // out, with no byte of an answer: once more on a new one if
                // the server cannot have acted on it (the write failed) or
                // acting twice is harmless (an idempotent method, RFC 9112
                // 9.3.1). Else the failure goes back, for the route's retry
                // policy to decide, as Envoy does.
                Err(e)
                    if e.is_stale_connection()
                        && replay.is_some()
                        && conn.buf.is_empty()
                        && (!sent_whole || head.method.is_idempotent()) =>
                {
                    body = replay.map(RequestBody::Full)
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A parsed response head and how its body is framed.
struct Parsed {
    status: StatusCode,
    version: Version,
    fields: FieldList,
    framing: Framing,
    keep_alive: bool,
}

/// Write the request, head and body.
async fn write_request(
    conn: &mut Conn,
    addr: SocketAddr,
    head: &RequestHead<'_>,
    body: RequestBody,
) -> Result<(), Http1Error> {
    let chunked = matches!(body, RequestBody::Stream(_)) && !head.headers.contains_key(CONTENT_LENGTH);
    let mut out = BytesMut::with_capacity(512 + if let RequestBody::Full(b) = &body { b.len() } else { 0 });
    write_head(&mut out, addr, head, &body, chunked);
    match body {
        RequestBody::Full(b) => {
            out.put(b);
            conn.io.write_all(&out).await?;
        }
        RequestBody::Stream(mut stream) => {
            conn.io.write_all(&out).await?;
            while let Some(frame) = stream.frame().await {
                let frame = frame.map_err(Http1Error::RequestBody)?;
                let Ok(data) = frame.into_data() else { continue };
                if data.is_empty() {
                    continue;
                }
                if chunked {
                    // Size line, data and CRLF in one vectored write.
                    let mut size = crate::ascii::hex(data.len());
                    size.extend_from_slice(b"\r\n");
                    conn.io.write_all_buf(&mut (&size[..]).chain(data).chain(&b"\r\n"[..])).await?;
                } else {
                    conn.io.write_all(&data).await?;
                }
            }
            if chunked {
                conn.io.write_all(b"0\r\n\r\n").await?;
            }
        }
    }
    Ok(())
}

fn write_head(out: &mut BytesMut, addr: SocketAddr, head: &RequestHead<'_>, body: &RequestBody, chunked: bool) {
    out.put_slice(head.method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(head.path.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    // Noted on the way, not looked up after: a lookup hashes the name.
    let (mut host, mut content_length) = (false, false);
    for (name, value) in head.headers {
        host |= *name == HOST;
        content_length |= *name == CONTENT_LENGTH;
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    // Writing into a BytesMut cannot fail.
    if !host {
        let _ = write!(out, "host: {addr}\r\n");
    }
    match body {
        RequestBody::Full(b) if !b.is_empty() && !content_length => {
            out.put_slice(b"content-length: ");
            out.put_slice(itoa::Buffer::new().format(b.len()).as_bytes());
            out.put_slice(b"\r\n");
        }
        _ if chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    out.put_slice(b"\r\n");
}

async fn read_head(conn: &mut Conn, method: &Method) -> Result<Parsed, Http1Error> {
    loop {
        // An empty buffer: the answer has not come yet, nothing to parse.
        let parsed = if conn.buf.is_empty() { None } else { parse_head(&mut conn.buf, method)? };
        if let Some(parsed) = parsed {
            // 1xx answers (100 Continue) come before the real one.
            if parsed.status.is_informational() && parsed.status != StatusCode::SWITCHING_PROTOCOLS {
                continue;
            }
            return Ok(parsed);
        }
        if conn.buf.len() > MAX_HEAD {
            return Err(Http1Error::Malformed("response headers too large"));
        }
        if conn.fill().await? == 0 {
            return Err(if conn.buf.is_empty() { Http1Error::Closed } else { Http1Error::Malformed("truncated head") });
        }
    }
}

/// A whole response head from the front of `buf`, consumed; `None` until
/// one has arrived.
fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Parsed>, Http1Error> {
    // Left uninitialized: zeroing 100 headers cost more than parsing them.
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let used =
        match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut response, buf, &mut headers) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(Http1Error::Malformed("too many headers")),
            Err(_) => return Err(Http1Error::Malformed("invalid response head")),
        };
    let status = response.code.and_then(|c| StatusCode::from_u16(c).ok()).ok_or(Http1Error::Malformed("status"))?;
    let version = if response.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    let mut raw = RawHeaders::default();
    raw.locate(response.headers, buf, used).map_err(Http1Error::Malformed)?;
    let head_bytes = buf.split_to(used).freeze();
    let fields = raw.take_list(&head_bytes, wire::RESPONSE_ROOM).map_err(Http1Error::Malformed)?;
    let framing = framing(&fields, raw.seen, status, method)?;
    // After a 101 the connection speaks another protocol.
    let keep_alive = framing != Framing::UntilClose
        && status != StatusCode::SWITCHING_PROTOCOLS
        && wire::keeps_alive(&fields, raw.seen, version);
    Ok(Some(Parsed { status, version, fields, framing, keep_alive }))
}

/// RFC 9112, section 6.3: how the response body ends.
fn framing(headers: &FieldList, seen: Seen, status: StatusCode, method: &Method) -> Result<Framing, Http1Error> {
    // RFC 9110 15.3.5: a 204 has no content, and saying it has some is a
    // protocol error to Envoy (its bytes would be read as the next answer).
    if status == StatusCode::NO_CONTENT && (seen.transfer_encoding || non_zero_length(headers)) {
        return Err(Http1Error::Malformed("a 204 with content"));
    }
    if method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Length(0));
    }
    // As Envoy: a framing it would refuse is a protocol error (502), never
    // a body delimited one way while the client is told another.
    wire::framing_of(headers, seen).map_err(|e| match e {
        wire::FramingError::Malformed(what) => Http1Error::Malformed(what),
        wire::FramingError::UnsupportedCoding => Http1Error::Malformed("transfer-encoding"),
    })
}

fn non_zero_length(headers: &FieldList) -> bool {
    headers
        .iter()
        .filter(|(name, _)| *name == CONTENT_LENGTH)
        .any(|(_, value)| value.as_bytes().iter().any(|&b| b != b'0' && b != b' ' && b != b'\t'))
}

/// A response body read from its upstream connection, which goes back to
/// the pool when the body has been read to its end.
pub struct ResponseBody {
    conn: Option<Conn>,
    framing: Framing,
    /// Where the connection goes back to; `None`: it closes.
    pool: Option<Arc<HostPool>>,
}

impl ResponseBody {
    fn finish_if_done(&mut self) {
        if self.framing == Framing::Length(0) {
            self.framing = Framing::Done;
        }
        if self.framing != Framing::Done {
            return;
        }
        if let (Some(conn), Some(pool)) = (self.conn.take(), self.pool.take()) {
            // Bytes past the response: the server is not speaking HTTP/1.1
            // as it should; do not reuse.
            if conn.buf.is_empty() {
                conn.forget_readiness();
                pool.checkin(conn);
            }
        }
    }

    /// The next piece of the body, or `None` at its end.
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else { return Poll::Ready(None) };
            match wire::decode(&mut self.framing, &mut conn.buf)? {
                Decoded::Data(data) => {
                    self.finish_if_done();
                    return Poll::Ready(Some(Ok(data)));
                }
                Decoded::End => {
                    self.finish_if_done();
                    return Poll::Ready(None);
                }
                Decoded::NeedMore => {}
            }
            let read = ready!(conn.poll_fill(cx));
            match read {
                Ok(0) if self.framing == Framing::UntilClose => {
                    self.framing = Framing::Done;
                    self.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "upstream closed the connection mid-body",
                    ))));
                }
                Ok(_) => {}
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let data = ready!(this.poll_data(cx));
        if data.as_ref().is_some_and(Result::is_err) {
            // A broken body leaves the connection in an unknown state.
            this.conn = None;
            this.pool = None;
        }
        Poll::Ready(data.map(|d| d.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done | Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
