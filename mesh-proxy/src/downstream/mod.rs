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
use std::time::Duration;

use bytes::BytesMut;
use futures_util::future::FusedFuture;
use futures_util::FutureExt;
use http::{Request, StatusCode};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
// Tokio's clock, not the system's: deadlines and the timers that guard
// them read one clock (a paused one too, in tests).
use tokio::time::Instant;

use crate::answer::Answer;
use crate::body::{self, Body, BoxError};
use crate::limits::DownstreamLimits;
use crate::wire::{Framing, READ_SIZE};

use conn::{Conn, Head};
use request::{Parsed, StreamedBody};

mod conn;
mod request;
mod rewind;
mod scratch;
#[cfg(test)]
mod tests;

pub use rewind::Rewind;

/// A connection's byte stream: TCP, or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Answered with 400 and closed.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// Answered with 431 and closed.
    #[error("request head too large: {0}")]
    TooLarge(&'static str),
    /// Answered with 426 and closed: HTTP/1.0, unless accepted.
    #[error("HTTP/1.0 is not accepted")]
    Http10,
    /// Answered with 501 and closed: a transfer coding other than
    /// `chunked` alone, as Envoy answers it.
    #[error("transfer coding not implemented")]
    NotImplemented,
    /// Answered with 408 and closed.
    #[error("request headers not received within {0:?}")]
    HeaderTimeout(Duration),
    /// A new connection that sent nothing within the header timeout:
    /// closed without an answer (it asked nothing).
    #[error("nothing sent within {0:?}")]
    NothingSent(Duration),
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
    settings: DownstreamLimits,
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
        request_started: now,
        first: true,
    };
    let mut timer = pin!(tokio::time::sleep_until(now + settings.header_timeout));
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
                    Box::pin(conn.refuse(&e)).await;
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
        // the connection while the handler runs.
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
        // Boxed: the handler's state is the largest there is, and inline it
        // would make every idle connection's task as large.
        let answering = Box::pin(handle(Request::from_parts(head, body)));
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
    /// One future awaited once, not a `select` and an await after it, so
    /// that the reading shares room in the task with reading a head.
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
