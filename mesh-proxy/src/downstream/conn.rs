//! The connection's side of serving: reading heads and bodies, writing
//! answers, refusing what cannot be served.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::SystemTime;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::future::{Fuse, FusedFuture};
use futures_util::FutureExt;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{Method, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::answer::Answer;
use crate::ascii;
use crate::body::Body;
use crate::wire::{self, Decoded, Framing, READ_SIZE};

use super::request::{parse_request, Parsed};
use super::scratch;
use super::*;

pub(super) struct Conn<IO> {
    pub(super) io: IO,
    /// Bytes read and not yet consumed.
    pub(super) buf: BytesMut,
    /// What is being written; kept between answers.
    pub(super) out: BytesMut,
    pub(super) settings: DownstreamLimits,
    /// When the last answer went out.
    pub(super) idle_since: Instant,
    /// When the first byte of the head being read arrived.
    pub(super) head_started: Option<Instant>,
    /// When the request being served began: its `request_timeout` counts
    /// from here.
    pub(super) request_started: Instant,
    /// No request has been read yet.
    pub(super) first: bool,
}

// Returned once per request and taken apart at once: boxing the request
// would cost an allocation each time.
#[allow(clippy::large_enum_variant)]
pub(super) enum Head {
    Request(Parsed),
    Http2,
    /// Closed between requests, idle too long, or draining.
    Closed,
}

/// Less room than this left in the read buffer: make room first.
const MIN_READ: usize = 1024;

pub(super) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl<IO: Io> Conn<IO> {
    /// The next request head. `timer` is the connection's one timer: it is
    /// moved only when the deadline it guards comes closer (a head
    /// started); firing early is cheap, it is then set to the deadline in
    /// force, so the request path resets no timer.
    pub(super) async fn read_head<D: Future<Output = ()>>(
        &mut self,
        mut timer: Pin<&mut tokio::time::Sleep>,
        mut drained: Pin<&mut Fuse<D>>,
    ) -> Result<Head, ServeError> {
        if self.buf.is_empty() && !self.first {
            // Nothing pipelined: give the buffers back while waiting (as
            // nginx does), so that idle keep-alive clients cost little.
            self.buf = BytesMut::new();
            self.out = BytesMut::new();
        }
        loop {
            if !self.buf.is_empty() {
                if self.first && H2_PREFACE.starts_with(&self.buf[..self.buf.len().min(H2_PREFACE.len())]) {
                    if self.buf.len() >= H2_PREFACE.len() {
                        return Ok(Head::Http2);
                    }
                } else if let Some(parsed) = parse_request(&mut self.buf, &self.settings)? {
                    self.first = false;
                    self.request_started = self.head_started.take().unwrap_or_else(Instant::now);
                    return Ok(Head::Request(parsed));
                }
                if self.head_started.is_none() {
                    let started = Instant::now();
                    self.head_started = Some(started);
                    let due = started + self.settings.header_timeout;
                    if due < timer.deadline() {
                        timer.as_mut().reset(due);
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
                            Some(_) if self.buf.is_empty() => Err(ServeError::NothingSent(self.settings.header_timeout)),
                            Some(_) => Err(ServeError::HeaderTimeout(self.settings.header_timeout)),
                            None => Ok(Head::Closed),
                        };
                    }
                    timer.as_mut().reset(due);
                }
                () = &mut drained, if self.buf.is_empty() && !drained.is_terminated() => return Ok(Head::Closed),
            }
        }
    }

    /// Read more into the buffer; `Ok(0)` is the end of the stream.
    pub(super) async fn fill(&mut self) -> io::Result<usize> {
        if self.buf.capacity() == 0 {
            // Given back while idle: take a buffer again only once bytes
            // come. They are read into the thread's scratch buffer, which
            // no connection holds while it waits, and copied: one read,
            // however long the head.
            return std::future::poll_fn(|cx| scratch::poll_read_into(&mut self.io, cx, &mut self.buf)).await;
        }
        if self.buf.capacity() - self.buf.len() < MIN_READ {
            // Takes back the front of the buffer once the requests that
            // point into it are gone.
            self.buf.reserve(READ_SIZE);
        }
        self.io.read_buf(&mut self.buf).await
    }

    /// [`Conn::fill`] for a request body: an error once the body has gone
    /// `stream_idle_timeout` without a byte or the request has taken its
    /// `request_timeout` (the handler answers 408).
    async fn fill_body(&mut self) -> io::Result<usize> {
        let limits = &self.settings;
        let idle = limits.stream_idle_timeout.map(|t| Instant::now() + t);
        let whole = limits.request_timeout.map(|t| self.request_started + t);
        let due = match (idle, whole) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let Some(due) = due else { return self.fill().await };
        match tokio::time::timeout_at(due, self.fill()).await {
            Ok(read) => read,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "request body timed out")),
        }
    }

    /// Returns once the client has closed its side (or the connection
    /// failed). What it sends meanwhile is kept for the next request, up to
    /// a head's worth; past that it is left in the socket.
    pub(super) async fn until_closed(&mut self) {
        while self.buf.len() < self.settings.max_request_headers_bytes {
            if matches!(self.fill().await, Ok(0) | Err(_)) {
                return;
            }
        }
        std::future::pending::<()>().await;
    }

    /// Read the request body on into `frames` until it ends or the handler
    /// drops it; with `Expect: 100-continue`, only once the handler asks.
    pub(super) async fn read_body(
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
                Ok(Decoded::NeedMore) => match self.fill_body().await {
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
    pub(super) async fn respond(
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
        // Given back while idle: one allocation, not one per doubling.
        out.reserve(READ_SIZE);
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
    pub(super) async fn write_body(
        &mut self,
        out: &mut BytesMut,
        body: &mut Body,
        chunked: bool,
    ) -> Result<(), ServeError> {
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

    pub(super) async fn flush(&mut self, out: &mut BytesMut) -> Result<(), ServeError> {
        if !out.is_empty() {
            self.io.write_all(out).await?;
            out.clear();
        }
        self.io.flush().await?;
        Ok(())
    }

    /// Answer a request that will not be served, then close lingering (as
    /// nginx does).
    pub(super) async fn refuse(mut self, error: &ServeError) {
        let answer: &[u8] = match error {
            ServeError::TooLarge(_) => {
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            }
            ServeError::Malformed(_) => b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            ServeError::Http10 => b"HTTP/1.1 426 Upgrade Required\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
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
