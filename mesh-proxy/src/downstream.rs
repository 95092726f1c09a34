//! The HTTP/1.1 server side of a downstream connection, run in the
//! connection's own task.
//!
//! Why not hyper's server: its dispatcher moves each request through a
//! general state machine, builds the head through a second copy, and was
//! about a third of the proxy's instructions per request under load
//! (`benches/README.md`). Here the task reads and parses a head
//! (`httparse`), calls the handler, and writes the answer's head with the
//! first of its body in one write. A request body streams to the handler
//! through a channel while the task reads it on; one that arrived with its
//! head is handed over whole.
//!
//! What hyper's server did and this keeps: keep-alive and pipelining, the
//! framing rules of RFC 9112 as strictly as Envoy reads them (both
//! Content-Length and Transfer-Encoding, repeated lengths and a missing or
//! repeated Host refused with 400, codings other than chunked with 501),
//! `100 Continue` when the handler first reads the body, 431 for heads
//! over 60 KiB, a header timeout, a
//! `Date` on every answer, upgrades (101) handed to the handler as the raw
//! connection, and draining. HTTP/2 (the h2c preface, or ALPN `h2`) goes to
//! hyper's HTTP/2 server: [`Served::Http2`] hands the connection back with
//! what was read of it.

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::future::{Fuse, FusedFuture};
use futures_util::FutureExt;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, DATE, EXPECT, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, oneshot, watch};

use crate::answer::Answer;
use crate::ascii;
use crate::body::{self, Body, BoxError};
use crate::wire::{self, Decoded, Framing, FramingError, RawHeaders, MAX_HEAD, MAX_HEADERS, READ_SIZE};

/// A connection's byte stream: TCP, or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// From the first byte of a request head (for a new connection: from
    /// its start) to the end of the head (Envoy's `request_headers_timeout`).
    pub header_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request
    /// (Envoy's `idle_timeout`, one hour by default).
    pub idle_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Answered with 400 and closed.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// Answered with 431 and closed.
    #[error("request head too large: {0}")]
    TooLarge(&'static str),
    /// Answered with 501 and closed: a transfer coding other than
    /// `chunked` alone, as Envoy answers it.
    #[error("transfer coding not implemented")]
    NotImplemented,
    /// Answered with 408 and closed.
    #[error("request headers not received within {0:?}")]
    HeaderTimeout(Duration),
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The answer's body failed after its head was sent.
    #[error("response body: {0}")]
    ResponseBody(BoxError),
}

/// How a connection ended.
pub enum Served<IO> {
    Closed,
    /// The client opened with the HTTP/2 preface: serve it as HTTP/2.
    Http2(Rewind<IO>),
}

/// The request extension through which the request path takes over a
/// connection that switched protocols: it resolves once the `101` answer
/// has been written.
#[derive(Clone)]
pub struct OnUpgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

/// A connection that switched protocols, with what the client sent past
/// the request head.
pub type Upgraded = Rewind<Box<dyn Io>>;

impl OnUpgrade {
    /// The connection; `None` if it was taken before or did not switch.
    pub async fn connection(self) -> Option<Upgraded> {
        let taken = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        taken?.await.ok()
    }
}

/// Serve HTTP/1.1 on `io` until the client closes, a request says
/// `Connection: close`, or `drain` turns true.
pub async fn serve<IO, F, Fut, A>(
    io: IO,
    settings: Settings,
    drain: &mut watch::Receiver<bool>,
    mut handle: F,
) -> Result<Served<IO>, ServeError>
where
    IO: Io,
    F: FnMut(Request<Body>) -> Fut,
    Fut: Future<Output = A>,
    A: Into<Answer>,
{
    let now = Instant::now();
    let mut conn = Conn {
        io,
        buf: BytesMut::with_capacity(READ_SIZE),
        out: BytesMut::new(),
        settings,
        idle_since: now,
        head_started: Some(now),
        first: true,
    };
    let mut timer = pin!(tokio::time::sleep_until((now + settings.header_timeout).into()));
    // One wait on the drain signal for the connection's life, not one
    // registered and dropped per request.
    let mut drained = pin!(drained(drain).fuse());
    loop {
        // Taken apart where it is matched: a `Parsed` kept whole beside its
        // parts would take room in the task for the connection's life.
        let Parsed { mut head, framing, expect_continue, upgrade, mut keep_alive } =
            match conn.read_head(timer.as_mut(), drained.as_mut()).await {
                Ok(Head::Request(r)) => r,
                Ok(Head::Http2) => return Ok(Served::Http2(Rewind { prefix: conn.buf.freeze(), io: conn.io })),
                Ok(Head::Closed) => return Ok(Served::Closed),
                Err(e) => {
                    conn.refuse(&e).await;
                    return Err(e);
                }
            };
        let method = head.method.clone();
        let version = head.version;
        let mut framing = framing;
        let on_upgrade = upgrade.then(|| {
            let (tx, rx) = oneshot::channel();
            head.extensions.insert(OnUpgrade(Arc::new(Mutex::new(Some(rx)))));
            tx
        });

        // The body: none, whole (it came with the head), or streamed from
        // the connection while the handler runs. One handler future either
        // way: it is the largest part of the connection's task.
        let mut reader = None;
        let body = match framing {
            Framing::Done => body::empty(),
            Framing::Length(n) if n <= conn.buf.len() as u64 => {
                framing = Framing::Done;
                body::full(conn.buf.split_to(n as usize).freeze())
            }
            _ => {
                let (frames, rx) = mpsc::channel(2);
                let (want, wanted) = oneshot::channel();
                let left = match framing {
                    Framing::Length(n) => Some(n),
                    _ => None,
                };
                reader = Some((frames, expect_continue.then_some(wanted)));
                body::boxed(StreamedBody { rx, want: Some(want), left })
            }
        };
        // Beside the handler: the body read on, then the connection watched,
        // so that a client that leaves cancels its exchange (and with it
        // the upstream request) as Envoy resets the stream.
        let watching = async {
            if let Some((frames, wanted)) = reader {
                conn.read_body(&mut framing, frames, wanted).await;
            }
            conn.until_closed().await;
        };
        let answering = handle(Request::from_parts(head, body));
        let Some(response) = (UnlessClientLeaves { answering, watching }).await else {
            return Ok(Served::Closed);
        };
        let response = response.into();
        // A body left unread would be taken for the next request.
        if framing != Framing::Done {
            keep_alive = false;
        }
        if drained.is_terminated() || drained.as_mut().now_or_never().is_some() {
            keep_alive = false;
        }
        if let (Some(tx), StatusCode::SWITCHING_PROTOCOLS) = (on_upgrade, response.status()) {
            conn.respond(response, &method, version, true).await?;
            let _ = tx.send(Rewind { prefix: conn.buf.freeze(), io: Box::new(conn.io) });
            return Ok(Served::Closed);
        }
        let kept = conn.respond(response, &method, version, keep_alive).await?;
        if !kept {
            let _ = conn.io.shutdown().await;
            if framing != Framing::Done {
                linger(conn.io);
            }
            return Ok(Served::Closed);
        }
        conn.idle_since = Instant::now();
    }
}

pin_project! {
    /// The handler's answer, with the connection read on beside it (the
    /// request body, then anything the client sends before the answer).
    /// One future awaited once, not a `select` and an await after it:
    /// the task's layout can then give the handler's state (the largest
    /// part of the task) the room that reading a head and writing an
    /// answer use, instead of room of its own.
    struct UnlessClientLeaves<A, W> {
        #[pin]
        answering: A,
        #[pin]
        watching: W,
    }
}

impl<A: Future, W: Future<Output = ()>> Future for UnlessClientLeaves<A, W> {
    /// `None`: the client left first.
    type Output = Option<A::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(answer) = this.answering.poll(cx) {
            return Poll::Ready(Some(answer));
        }
        match this.watching.poll(cx) {
            Poll::Ready(()) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

struct Conn<IO> {
    io: IO,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    /// What is being written; kept between answers.
    out: BytesMut,
    settings: Settings,
    /// When the last answer went out.
    idle_since: Instant,
    /// When the first byte of the head being read arrived.
    head_started: Option<Instant>,
    /// No request has been read yet.
    first: bool,
}

// Returned once per request and taken apart at once: boxing the request
// would cost an allocation each time.
#[allow(clippy::large_enum_variant)]
enum Head {
    Request(Parsed),
    Http2,
    /// Closed between requests, idle too long, or draining.
    Closed,
}

struct Parsed {
    head: http::request::Parts,
    framing: Framing,
    expect_continue: bool,
    upgrade: bool,
    /// The client may send another request after this one.
    keep_alive: bool,
}

/// Less room than this left in the read buffer: make room first.
const MIN_READ: usize = 1024;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl<IO: Io> Conn<IO> {
    /// The next request head. `timer` is the connection's one timer: it is
    /// moved only when the deadline it guards comes closer (a head
    /// started); firing early is cheap, it is then set to the deadline in
    /// force, so the request path resets no timer.
    async fn read_head<D: Future<Output = ()>>(
        &mut self,
        mut timer: Pin<&mut tokio::time::Sleep>,
        mut drained: Pin<&mut Fuse<D>>,
    ) -> Result<Head, ServeError> {
        loop {
            if !self.buf.is_empty() {
                if self.first && H2_PREFACE.starts_with(&self.buf[..self.buf.len().min(H2_PREFACE.len())]) {
                    if self.buf.len() >= H2_PREFACE.len() {
                        return Ok(Head::Http2);
                    }
                } else if let Some(parsed) = parse_request(&mut self.buf)? {
                    self.first = false;
                    self.head_started = None;
                    return Ok(Head::Request(parsed));
                }
                if self.head_started.is_none() {
                    let started = Instant::now();
                    self.head_started = Some(started);
                    let due = started + self.settings.header_timeout;
                    if due < timer.deadline().into_std() {
                        timer.as_mut().reset(due.into());
                    }
                }
            }
            tokio::select! {
                biased;
                read = self.fill() => {
                    if read? == 0 {
                        return Ok(Head::Closed);
                    }
                }
                () = &mut timer => {
                    let due = match self.head_started {
                        Some(started) => started + self.settings.header_timeout,
                        None => self.idle_since + self.settings.idle_timeout,
                    };
                    let now = Instant::now();
                    if now >= due {
                        return match self.head_started {
                            Some(_) => Err(ServeError::HeaderTimeout(self.settings.header_timeout)),
                            None => Ok(Head::Closed),
                        };
                    }
                    // Idle for a header timeout with nothing buffered: give
                    // the buffers back (as nginx does), so that many idle
                    // keep-alive clients cost little; a connection holding
                    // them is looked at again a header timeout later.
                    let idle = self.head_started.is_none() && self.buf.is_empty();
                    if idle && now >= self.idle_since + self.settings.header_timeout {
                        self.buf = BytesMut::new();
                        self.out = BytesMut::new();
                    }
                    let next = if self.buf.capacity() > 0 { due.min(now + self.settings.header_timeout) } else { due };
                    timer.as_mut().reset(next.into());
                }
                () = &mut drained, if self.buf.is_empty() && !drained.is_terminated() => return Ok(Head::Closed),
            }
        }
    }

    /// Read more into the buffer; `Ok(0)` is the end of the stream.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.buf.capacity() == 0 {
            // Given back while idle: take a buffer again only once bytes
            // come (the rest of them on the next read).
            let mut first = [0u8; 256];
            let n = self.io.read(&mut first).await?;
            self.buf.reserve(READ_SIZE);
            self.buf.extend_from_slice(&first[..n]);
            return Ok(n);
        }
        if self.buf.capacity() - self.buf.len() < MIN_READ {
            // Takes back the front of the buffer once the requests that
            // point into it are gone.
            self.buf.reserve(READ_SIZE);
        }
        self.io.read_buf(&mut self.buf).await
    }

    /// Returns once the client has closed its side (or the connection
    /// failed). What it sends meanwhile is kept for the next request, up to
    /// a head's worth; past that it is left in the socket.
    async fn until_closed(&mut self) {
        while self.buf.len() < MAX_HEAD {
            if matches!(self.fill().await, Ok(0) | Err(_)) {
                return;
            }
        }
        std::future::pending::<()>().await;
    }

    /// Read the request body on into `frames` until it ends or the handler
    /// drops it; with `Expect: 100-continue`, only once the handler asks.
    async fn read_body(
        &mut self,
        framing: &mut Framing,
        frames: mpsc::Sender<io::Result<Bytes>>,
        wanted: Option<oneshot::Receiver<()>>,
    ) {
        if let Some(wanted) = wanted {
            if wanted.await.is_err() {
                return;
            }
            if self.io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() || self.io.flush().await.is_err() {
                return;
            }
        }
        loop {
            let step = match wire::decode(framing, &mut self.buf) {
                Ok(Decoded::Data(data)) => Ok(data),
                Ok(Decoded::End) => return,
                Ok(Decoded::NeedMore) => match self.fill().await {
                    Ok(0) => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "client closed mid-body")),
                    Ok(_) => continue,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            let failed = step.is_err();
            if frames.send(step).await.is_err() || failed {
                return;
            }
        }
    }

    /// Write the answer; `Ok(false)`: the connection must close after it.
    async fn respond(
        &mut self,
        response: Answer,
        method: &Method,
        version: Version,
        mut keep_alive: bool,
    ) -> Result<bool, ServeError> {
        let status = response.status();
        let bodiless = *method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let length = response.body().size_hint().exact();
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        out.put_slice(if version == Version::HTTP_10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
        out.put_slice(status.as_str().as_bytes());
        out.put_u8(b' ');
        out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.put_slice(b"\r\n");
        let written = write_headers(&mut out, response.fields());
        let mut body = response.into_body();
        if !written.date {
            out.put_slice(b"date: ");
            out.put_slice(&http_date());
            out.put_slice(b"\r\n");
        }
        // A body of unknown length goes chunked; an HTTP/1.0 client has no
        // chunks, and the close ends it.
        let unsized_body = !bodiless && length.is_none() && !written.content_length;
        let chunked = unsized_body && version != Version::HTTP_10;
        if unsized_body && !chunked {
            keep_alive = false;
        }
        if chunked {
            out.put_slice(b"transfer-encoding: chunked\r\n");
        } else if let (Some(n), false, false) = (length, written.content_length, bodiless) {
            out.put_slice(b"content-length: ");
            out.put_slice(itoa::Buffer::new().format(n).as_bytes());
            out.put_slice(b"\r\n");
        }
        if status != StatusCode::SWITCHING_PROTOCOLS {
            if !keep_alive {
                out.put_slice(b"connection: close\r\n");
            } else if version == Version::HTTP_10 {
                out.put_slice(b"connection: keep-alive\r\n");
            }
        }
        out.put_slice(b"\r\n");

        let result = if bodiless { Ok(()) } else { self.write_body(&mut out, &mut body, chunked).await };
        let flushed = match result {
            Ok(()) => self.flush(&mut out).await,
            Err(e) => Err(e),
        };
        out.clear();
        if out.capacity() <= 4 * READ_SIZE {
            self.out = out;
        }
        flushed?;
        Ok(keep_alive)
    }

    /// The body after the head in `out`: what is ready at once goes out
    /// with the head, in one write; the rest as it comes.
    async fn write_body(&mut self, out: &mut BytesMut, body: &mut Body, chunked: bool) -> Result<(), ServeError> {
        let mut trailers = None;
        while !body.is_end_stream() {
            let frame = match body.frame().now_or_never() {
                Some(frame) => frame,
                None => {
                    self.flush(out).await?;
                    body.frame().await
                }
            };
            let Some(frame) = frame else { break };
            let frame = frame.map_err(ServeError::ResponseBody)?;
            let frame = match frame.into_data() {
                Ok(data) if data.is_empty() => continue,
                Ok(data) => data,
                Err(frame) => {
                    trailers = frame.into_trailers().ok();
                    continue;
                }
            };
            if chunked {
                out.put_slice(ascii::hex(frame.len()).as_slice());
                out.put_slice(b"\r\n");
            }
            if out.len() + frame.len() > 4 * READ_SIZE {
                self.flush(out).await?;
                self.io.write_all(&frame).await?;
            } else {
                out.put_slice(&frame);
            }
            if chunked {
                out.put_slice(b"\r\n");
            }
        }
        if chunked {
            out.put_slice(b"0\r\n");
            if let Some(trailers) = &trailers {
                let _ = write_headers(out, trailers.iter());
            }
            out.put_slice(b"\r\n");
        }
        Ok(())
    }

    async fn flush(&mut self, out: &mut BytesMut) -> Result<(), ServeError> {
        if !out.is_empty() {
            self.io.write_all(out).await?;
            out.clear();
        }
        self.io.flush().await?;
        Ok(())
    }

    /// Answer a request that will not be served, then close lingering (as
    /// nginx does).
    async fn refuse(mut self, error: &ServeError) {
        let answer: &[u8] = match error {
            ServeError::TooLarge(_) => {
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            }
            ServeError::Malformed(_) => b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            ServeError::NotImplemented => {
                b"HTTP/1.1 501 Not Implemented\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            }
            ServeError::HeaderTimeout(_) => {
                b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            }
            _ => return,
        };
        if self.io.write_all(answer).await.is_err() || self.io.shutdown().await.is_err() {
            return;
        }
        linger(self.io);
    }
}

/// Read and drop what the client still sends, for a moment, in a task of
/// its own: closing with unread bytes would reset the connection, and the
/// client could lose the answer it was just sent.
fn linger<IO: Io>(mut io: IO) {
    tokio::spawn(async move {
        let drop_input = async {
            let mut discarded = 0usize;
            let mut sink = [0u8; 4096];
            while discarded < LINGER_BYTES {
                match io.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => discarded += n,
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_TIME, drop_input).await;
    });
}

/// Once `drain` turns true (or its sender is gone).
pub(crate) async fn drained(drain: &mut watch::Receiver<bool>) {
    let _ = drain.wait_for(|draining| *draining).await;
}

/// A lingering close reads at most this much, for at most this long.
const LINGER_BYTES: usize = 4 * 1024 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(2);

/// Which fields an answer came with that the connection would add.
#[derive(Default)]
struct Written {
    date: bool,
    content_length: bool,
}

/// Header fields as they are, but for `transfer-encoding`: the framing of
/// what is written here is this connection's to say.
fn write_headers<'a>(out: &mut BytesMut, headers: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>) -> Written {
    let mut written = Written::default();
    for (name, value) in headers {
        if *name == TRANSFER_ENCODING {
            continue;
        }
        written.date |= *name == DATE;
        written.content_length |= *name == CONTENT_LENGTH;
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    written
}

/// The current time as an HTTP date, formatted once a second per thread.
fn http_date() -> [u8; 29] {
    thread_local! {
        static CACHED: std::cell::Cell<(u64, [u8; 29])> = const { std::cell::Cell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|cached| {
        let (at, text) = cached.get();
        if at == second {
            return text;
        }
        let mut fresh = [0u8; 29];
        let formatted = httpdate::fmt_http_date(now);
        let n = formatted.len().min(29);
        fresh[..n].copy_from_slice(&formatted.as_bytes()[..n]);
        cached.set((second, fresh));
        fresh
    })
}

/// A whole request head from the front of `buf`, consumed; `None` until
/// one has arrived.
fn parse_request(buf: &mut BytesMut) -> Result<Option<Parsed>, ServeError> {
    // Left uninitialized: zeroing 100 headers cost more than parsing them.
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let used =
        match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut request, buf, &mut headers) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Err(ServeError::TooLarge("over 60 KiB of headers"))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(ServeError::TooLarge("over 100 header fields")),
            Err(_) => return Err(ServeError::Malformed("invalid request head")),
        };
    if used > MAX_HEAD {
        return Err(ServeError::TooLarge("over 60 KiB of headers"));
    }
    let method = request.method.map(|m| Method::from_bytes(m.as_bytes()));
    let Some(Ok(method)) = method else { return Err(ServeError::Malformed("method")) };
    let version = if request.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    let path = request.path.unwrap_or("");
    let path_start = (path.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
    let path_len = path.len();
    let mut raw = RawHeaders::default();
    raw.locate(request.headers, buf, used).map_err(ServeError::Malformed)?;
    let head_bytes = buf.split_to(used).freeze();
    if path_start.checked_add(path_len).is_none_or(|end| end > used) {
        return Err(ServeError::Malformed("request target"));
    }
    let uri = Uri::from_maybe_shared(head_bytes.slice(path_start..path_start + path_len))
        .map_err(|_| ServeError::Malformed("request target"))?;
    let mut headers = raw.take_map(&head_bytes, wire::REQUEST_ROOM).map_err(ServeError::Malformed)?;
    let seen = raw.seen;

    // RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 is faulty framing.
    if seen.transfer_encoding && version == Version::HTTP_10 {
        return Err(ServeError::Malformed("transfer-encoding in HTTP/1.0"));
    }
    let framing = match wire::framing_of(&headers, seen) {
        Err(FramingError::UnsupportedCoding) => return Err(ServeError::NotImplemented),
        Err(FramingError::Malformed(what)) => return Err(ServeError::Malformed(what)),
        Ok(Framing::Length(0) | Framing::UntilClose) => Framing::Done,
        Ok(f) => f,
    };
    check_host(&headers, version)?;
    if seen.connection && wire::connection_has(&headers, "host") {
        // RFC 9112 3.2: the Host is the request's, never the connection's.
        return Err(ServeError::Malformed("connection names host"));
    }
    // RFC 9112 3.2.2: an absolute-form target's authority is the request's
    // host; a Host that says otherwise is replaced, so routing and the
    // upstream see one host.
    if let Some(authority) = uri.authority() {
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| ServeError::Malformed("request target"))?;
        headers.insert(HOST, host);
    }
    let expect_continue = seen.expect
        && version == Version::HTTP_11
        && headers.get(EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expect_continue {
        // Answered here, when the handler reads the body.
        headers.remove(EXPECT);
    }
    let upgrade = seen.upgrade && version == Version::HTTP_11 && wire::connection_has(&headers, "upgrade");
    let keep_alive = wire::keeps_alive(&headers, seen, version);
    let mut head = Request::new(()).into_parts().0;
    head.method = method;
    head.uri = uri;
    head.version = version;
    head.headers = headers;
    Ok(Some(Parsed { head, framing, expect_continue, upgrade, keep_alive }))
}

/// RFC 9112 3.2: an HTTP/1.1 request has exactly one Host, and it is a
/// valid authority (empty is allowed, for a target without one).
fn check_host(headers: &HeaderMap, version: Version) -> Result<(), ServeError> {
    let mut hosts = headers.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if version == Version::HTTP_10 => Ok(()),
        (None, _) => Err(ServeError::Malformed("no host")),
        (Some(_), Some(_)) => Err(ServeError::Malformed("more than one host")),
        (Some(host), None) if host.is_empty() || wire::valid_host(host.as_bytes()) => Ok(()),
        (Some(_), None) => Err(ServeError::Malformed("host")),
    }
}

/// A request body read on by the connection's task.
struct StreamedBody {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    /// Dropped when the body is first read: the go-ahead for a client
    /// waiting on `100 Continue`.
    want: Option<oneshot::Sender<()>>,
    /// Bytes left, when the length is known.
    left: Option<u64>,
}

impl hyper::body::Body for StreamedBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if let Some(want) = self.want.take() {
            let _ = want.send(());
        }
        let next = std::task::ready!(self.rx.poll_recv(cx));
        if let (Some(Ok(data)), Some(left)) = (&next, self.left.as_mut()) {
            *left = left.saturating_sub(data.len() as u64);
        }
        Poll::Ready(next.map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.left == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        self.left.map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// A connection handed on with the bytes already read from it in front.
pub struct Rewind<IO> {
    prefix: Bytes,
    io: IO,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::UPGRADE;
    use http::Response;
    use tokio::net::{TcpListener, TcpStream};

    const SETTINGS: Settings =
        Settings { header_timeout: Duration::from_millis(300), idle_timeout: Duration::from_secs(60) };

    /// What the test handler answers: method, path, the body it read (unless
    /// the path says not to read it), and how some headers arrived.
    async fn echo(req: Request<Body>) -> Response<Body> {
        let (head, body) = req.into_parts();
        let text = if head.uri.path() == "/unread" {
            String::new()
        } else {
            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            String::from_utf8_lossy(&body).into_owned()
        };
        let seen = format!(
            "{} {} {} expect={:?} cl={:?}",
            head.method,
            head.uri,
            text,
            head.headers.get(EXPECT),
            head.headers.get(CONTENT_LENGTH)
        );
        match head.uri.path() {
            "/stream" => {
                let pieces = futures_util::stream::iter(
                    ["a", "bc"].map(|p| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(p)))),
                );
                Response::new(body::boxed(http_body_util::StreamBody::new(pieces)))
            }
            "/empty" => {
                let mut r = Response::new(body::empty());
                *r.status_mut() = StatusCode::NO_CONTENT;
                r
            }
            _ => Response::new(body::full(seen)),
        }
    }

    /// One connection served with `echo`: the client's socket, the drain
    /// switch, and how serving it ended.
    async fn connect(
    ) -> (TcpStream, watch::Sender<bool>, tokio::task::JoinHandle<Result<Served<TcpStream>, ServeError>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (drain, mut draining) = watch::channel(false);
        let served = tokio::spawn(async move {
            let (io, _) = listener.accept().await.unwrap();
            serve(io, SETTINGS, &mut draining, echo).await
        });
        (TcpStream::connect(addr).await.unwrap(), drain, served)
    }

    /// Everything the server sends until it closes (bounded by a timeout).
    async fn read_all(client: &mut TcpStream) -> String {
        let mut seen = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut seen)).await;
        String::from_utf8_lossy(&seen).into_owned()
    }

    /// Read until `needle` has been seen `times` times.
    async fn read_until(client: &mut TcpStream, needle: &str, times: usize) -> String {
        let mut seen = String::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while seen.matches(needle).count() < times && Instant::now() < deadline {
            let mut buf = [0u8; 4096];
            match tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                _ => break,
            }
        }
        seen
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_with_their_bodies() {
        let (mut client, _drain, served) = connect().await;
        client
            .write_all(
                b"GET /one HTTP/1.1\r\nhost: x\r\n\r\n\
                  POST /two HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello\
                  POST /three HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
                  GET /four HTTP/1.0\r\n\r\n",
            )
            .await
            .unwrap();
        let text = read_all(&mut client).await;
        let answers: Vec<&str> = text.split("HTTP/1.").skip(1).collect();
        assert_eq!(answers.len(), 4, "{text}");
        assert!(
            answers[0].starts_with("1 200 OK\r\n") && answers[0].ends_with("\r\n\r\nGET /one  expect=None cl=None")
        );
        let two = "POST /two hello expect=None cl=Some(\"5\")";
        assert!(
            answers[1].contains(&format!("content-length: {}\r\n", two.len())) && answers[1].ends_with(two),
            "{}",
            answers[1]
        );
        assert!(
            answers[2].ends_with("POST /three abc expect=None cl=None"),
            "a chunked body, handed on without its framing field: {}",
            answers[2]
        );
        assert!(
            answers[3].starts_with("0 200 OK\r\n") && answers[3].contains("connection: close\r\n"),
            "{}",
            answers[3]
        );
        assert!(answers.iter().all(|a| a.contains("\r\ndate: ")), "{text}");
        assert!(matches!(served.await.unwrap(), Ok(Served::Closed)));
    }

    #[tokio::test]
    async fn bodies_of_unknown_length_go_chunked_or_until_close() {
        let (mut client, _drain, _served) = connect().await;
        client
            .write_all(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\nHEAD /x HTTP/1.1\r\nhost: x\r\n\r\nGET /empty HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        // The last answer is a head alone: it ends the text.
        let text = read_until(&mut client, "\r\n\r\n", 4).await;
        let answers: Vec<&str> = text.split("HTTP/1.1 ").skip(1).collect();
        assert_eq!(answers.len(), 3, "{text}");
        assert!(
            answers[0].contains("transfer-encoding: chunked\r\n")
                && answers[0].ends_with("\r\n\r\n1\r\na\r\n2\r\nbc\r\n0\r\n\r\n"),
            "{}",
            answers[0]
        );
        assert!(
            answers[1].ends_with("\r\n\r\n") && !answers[1].contains("content-length"),
            "a HEAD answer has no body: {}",
            answers[1]
        );
        assert!(answers[2].starts_with("204") && !answers[2].contains("content-length"), "{}", answers[2]);

        let (mut client, _drain, _served) = connect().await;
        client.write_all(b"GET /stream HTTP/1.0\r\nconnection: keep-alive\r\n\r\n").await.unwrap();
        let text = read_all(&mut client).await;
        assert!(
            text.contains("connection: close\r\n") && text.ends_with("\r\n\r\nabc"),
            "HTTP/1.0 has no chunks: {text}"
        );
    }

    #[tokio::test]
    async fn expect_100_continue_is_answered_when_the_body_is_first_read() {
        let (mut client, _drain, _served) = connect().await;
        client
            .write_all(b"POST /up HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_until(&mut client, "\r\n\r\n", 1).await, "HTTP/1.1 100 Continue\r\n\r\n");
        client.write_all(b"data").await.unwrap();
        let text = read_until(&mut client, "expect", 1).await;
        assert!(text.ends_with("POST /up data expect=None cl=Some(\"4\")"), "{text}");

        // A handler that answers without reading: no 100, and the body
        // the client may still send is not taken for the next request.
        let (mut client, _drain, served) = connect().await;
        client
            .write_all(b"POST /unread HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n")
            .await
            .unwrap();
        let text = read_all(&mut client).await;
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n") && text.contains("connection: close\r\n"), "{text}");
        assert!(matches!(served.await.unwrap(), Ok(Served::Closed)));
    }

    #[tokio::test]
    async fn an_answer_before_the_body_is_read_ends_the_connection() {
        let (mut client, _drain, _served) = connect().await;
        let body = vec![b'x'; 256 * 1024];
        client.write_all(b"POST /unread HTTP/1.1\r\nhost: x\r\ncontent-length: 1048576\r\n\r\n").await.unwrap();
        // The answer comes while the client is still sending. (Whether
        // the lingering close saves it from a reset cannot be seen on
        // loopback: Linux hands a reset socket's queued bytes over first.)
        let _ = client.write_all(&body).await;
        let text = read_until(&mut client, "\r\n\r\n", 1).await;
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n") && text.contains("connection: close\r\n"), "{text:.200}");
    }

    #[tokio::test]
    async fn bad_heads_get_400_431_or_501_and_a_close() {
        let huge = format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "a".repeat(2 * MAX_HEAD));
        // Envoy's limit is 60 KiB: 61 KiB is refused, 59 KiB served.
        let over = format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "a".repeat(61 * 1024));
        let under = format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "a".repeat(59 * 1024));
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("x-{i}: 1\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\nhost: x\r\n{many}\r\n");
        for (request, status) in [
            ("NOT HTTP AT ALL\r\n\r\n", "400"),
            ("POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\nabcd", "400"),
            ("POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ncontent-length: 4\r\n\r\nabcd", "400"),
            ("POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4, 4\r\n\r\nabcd", "400"),
            ("POST / HTTP/1.1\r\nhost: x\r\ncontent-length: +4\r\n\r\nabcd", "400"),
            ("POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n", "400"),
            ("POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n", "400"),
            ("POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\n", "501"),
            ("POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n", "501"),
            ("POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked, chunked\r\n\r\n0\r\n\r\n", "501"),
            ("POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", "200"),
            ("GET / HTTP/1.1\r\n\r\n", "400"),
            ("GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n", "400"),
            ("GET / HTTP/1.1\r\nhost: a b\r\n\r\n", "400"),
            ("GET / HTTP/1.1\r\nhost: user@a\r\n\r\n", "400"),
            ("GET / HTTP/1.1\r\nhost: a\r\nconnection: keep-alive, Host\r\n\r\n", "400"),
            (huge.as_str(), "431"),
            (over.as_str(), "431"),
            (many.as_str(), "431"),
        ] {
            let (mut client, _drain, served) = connect().await;
            client.write_all(request.as_bytes()).await.unwrap();
            let text = read_all(&mut client).await;
            assert_eq!(text.split(' ').nth(1), Some(status), "{:.60}: {text}", request);
            assert!(text.contains("connection: close"), "{text}");
            let ended = served.await.unwrap();
            assert_eq!(ended.is_err(), status != "200", "{:.60}", request);
        }
        for request in [under.as_str(), "GET / HTTP/1.0\r\n\r\n", "GET / HTTP/1.1\r\nhost:\r\n\r\n"] {
            let (mut client, _drain, _served) = connect().await;
            client.write_all(request.as_bytes()).await.unwrap();
            let text = read_all(&mut client).await;
            assert_eq!(text.split(' ').nth(1), Some("200"), "{:.60}: {text}", request);
        }
    }

    #[tokio::test]
    async fn slow_heads_time_out_and_draining_closes_idle_connections() {
        let (mut client, _drain, served) = connect().await;
        client.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").await.unwrap();
        let text = read_all(&mut client).await;
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(matches!(served.await.unwrap(), Err(ServeError::HeaderTimeout(_))));

        // Kept alive past the header timeout: idle is not slow. (Idle that
        // long, the connection gave its buffers back; the next request,
        // longer than the first read after that, takes them again.)
        let (mut client, drain, served) = connect().await;
        client.write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        read_until(&mut client, "expect", 1).await;
        tokio::time::sleep(SETTINGS.header_timeout * 3).await;
        let long = format!("GET /b HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\n\r\n", "p".repeat(600));
        client.write_all(long.as_bytes()).await.unwrap();
        assert!(read_until(&mut client, "expect", 1).await.contains("GET /b"));
        drain.send(true).unwrap();
        assert!(matches!(served.await.unwrap(), Ok(Served::Closed)), "an idle connection closes on drain");
        assert_eq!(read_all(&mut client).await, "");
    }

    #[tokio::test]
    async fn the_h2_preface_hands_the_connection_over_untouched() {
        let (mut client, _drain, served) = connect().await;
        client.write_all(&H2_PREFACE[..10]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.write_all(&H2_PREFACE[10..]).await.unwrap();
        client.write_all(b"frames").await.unwrap();
        let Ok(Served::Http2(mut io)) = served.await.unwrap() else { panic!("not handed over") };
        let mut seen = vec![0u8; H2_PREFACE.len() + 6];
        io.read_exact(&mut seen).await.unwrap();
        assert_eq!(&seen[..H2_PREFACE.len()], H2_PREFACE);
        assert_eq!(&seen[H2_PREFACE.len()..], b"frames");
    }

    #[tokio::test]
    async fn an_upgrade_hands_the_connection_to_the_handler_after_the_101() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (io, _) = listener.accept().await.unwrap();
            let (_drain, mut draining) = watch::channel(false);
            serve(io, SETTINGS, &mut draining, |mut req: Request<Body>| async move {
                let upgrade = req.extensions_mut().remove::<OnUpgrade>().expect("an upgrade was asked for");
                tokio::spawn(async move {
                    let mut io = upgrade.connection().await.expect("switched");
                    let mut hello = [0u8; 5];
                    io.read_exact(&mut hello).await.unwrap();
                    io.write_all(&hello.to_ascii_uppercase()).await.unwrap();
                });
                let mut r = Response::new(body::empty());
                *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                r.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("upgrade"));
                r.headers_mut().insert(UPGRADE, http::HeaderValue::from_static("echo"));
                r
            })
            .await
        });
        let mut client = TcpStream::connect(addr).await.unwrap();
        // The first bytes of the new protocol ride with the request.
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\nhel")
            .await
            .unwrap();
        let head = read_until(&mut client, "\r\n\r\n", 1).await;
        assert!(
            head.starts_with("HTTP/1.1 101 Switching Protocols\r\n") && !head.contains("connection: close"),
            "{head}"
        );
        assert!(!head.contains("content-length"), "a 1xx answer has no framing: {head}");
        client.write_all(b"lo").await.unwrap();
        assert_eq!(read_until(&mut client, "HELLO", 1).await, "HELLO");
        assert!(matches!(server.await.unwrap(), Ok(Served::Closed)));
    }
}
