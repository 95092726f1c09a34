//! A request head parsed and checked as RFC 9112 and Envoy read it, and
//! the body the connection reads on for the handler.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderValue, EXPECT, HOST};
use http::{HeaderMap, Method, Request, Uri, Version};
use hyper::body::{Frame, SizeHint};
use tokio::sync::{mpsc, oneshot};

use crate::wire::{self, Framing, FramingError, RawHeaders};

use std::mem::MaybeUninit;

use crate::limits::MAX_HEADERS_CEILING;

use super::*;

pub(super) struct Parsed {
    pub(super) head: http::request::Parts,
    pub(super) framing: Framing,
    pub(super) expect_continue: bool,
    pub(super) upgrade: bool,
    /// The client may send another request after this one.
    pub(super) keep_alive: bool,
}

/// A whole request head from the front of `buf`, consumed; `None` until
/// one has arrived.
pub(super) fn parse_request(buf: &mut BytesMut, limits: &DownstreamLimits) -> Result<Option<Parsed>, ServeError> {
    // Room for Envoy's default of 100 fields; more only when asked for.
    if limits.max_headers <= 100 {
        parse_into::<100>(buf, limits)
    } else {
        parse_into::<MAX_HEADERS_CEILING>(buf, limits)
    }
}

/// [`parse_request`] with room for `N` fields on the stack, of which
/// `max_headers` are used.
fn parse_into<const N: usize>(buf: &mut BytesMut, limits: &DownstreamLimits) -> Result<Option<Parsed>, ServeError> {
    // Left uninitialized: zeroing 100 slots cost more than parsing them.
    let mut slots = [const { MaybeUninit::uninit() }; N];
    let slots = &mut slots[..limits.max_headers.min(N)];
    let max_head = limits.max_request_headers_bytes;
    let mut request = httparse::Request::new(&mut []);
    let used = match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut request, buf, slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > max_head => {
            return Err(ServeError::TooLarge("request headers over the size limit"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ServeError::TooLarge("more header fields than allowed")),
        Err(_) => return Err(ServeError::Malformed("invalid request head")),
    };
    if used > max_head {
        return Err(ServeError::TooLarge("request headers over the size limit"));
    }
    let method = request.method.filter(|m| is_known_method(m)).map(|m| Method::from_bytes(m.as_bytes()));
    let Some(Ok(method)) = method else { return Err(ServeError::Malformed("method")) };
    let version = if request.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    let path = request.path.unwrap_or("");
    // RFC 9112 3.2: no fragment, and nothing but visible ASCII (httparse
    // lets other bytes through; Envoy refuses them).
    if path.bytes().any(|b| b == b'#' || !b.is_ascii_graphic()) {
        return Err(ServeError::Malformed("request target"));
    }
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

    if version == Version::HTTP_10 && !limits.accept_http_10 {
        return Err(ServeError::Http10);
    }
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
pub(super) struct StreamedBody {
    pub(super) rx: mpsc::Receiver<io::Result<Bytes>>,
    /// Dropped when the body is first read: the go-ahead for a client
    /// waiting on `100 Continue`.
    pub(super) want: Option<oneshot::Sender<()>>,
    /// Bytes left, when the length is known.
    pub(super) left: Option<u64>,
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

/// The methods Envoy's HTTP/1.1 codec knows (its `allow_custom_methods`
/// is off by default): RFC 9110's, WebDAV's and a few more, upper case.
fn is_known_method(method: &str) -> bool {
    matches!(
        method,
        "GET"
            | "HEAD"
            | "POST"
            | "PUT"
            | "DELETE"
            | "CONNECT"
            | "OPTIONS"
            | "TRACE"
            | "PATCH"
            | "COPY"
            | "LOCK"
            | "MKCOL"
            | "MOVE"
            | "PROPFIND"
            | "PROPPATCH"
            | "SEARCH"
            | "UNLOCK"
            | "BIND"
            | "REBIND"
            | "UNBIND"
            | "ACL"
            | "REPORT"
            | "MKACTIVITY"
            | "CHECKOUT"
            | "MERGE"
            | "M-SEARCH"
            | "NOTIFY"
            | "SUBSCRIBE"
            | "UNSUBSCRIBE"
            | "PURGE"
            | "MKCALENDAR"
            | "LINK"
            | "UNLINK"
            | "SOURCE"
    )
}
