//! Answers the proxy makes itself: plain text replies, a route's direct
//! response and redirect, a fault's abort.

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Response, StatusCode};
use mesh_core::proxy_config::{AbortStatus, Redirect};

use super::exchange::GRPC_STATUS;
use crate::answer::Answer;
use crate::body::{self, Body};

pub(super) fn text(status: StatusCode, text: &str) -> Answer {
    let mut r = Response::new(body::full(Bytes::copy_from_slice(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r.into()
}

/// A route's `directResponse`.
pub(super) fn direct(status: u16, body: Option<String>) -> Answer {
    let mut r = Response::new(body.map_or_else(body::empty, body::full));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.into()
}

/// A route's `redirect`: the request's host and path unless the redirect
/// replaces them.
pub(super) fn redirect(r: &Redirect, head: &http::request::Parts, port: u16) -> Response<Body> {
    let host = head
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| head.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    let bare_host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let scheme = r.scheme.as_deref().unwrap_or("http");
    let authority = r.authority.clone().unwrap_or_else(|| bare_host.to_string());
    let port = r
        .port
        .or(r.port_from_request.then_some(port))
        .filter(|p| !((scheme == "http" && *p == 80) || (scheme == "https" && *p == 443)));
    let path = match (&r.path, &r.prefix_rewrite) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) => p.clone(),
        (None, None) => head.uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
    };
    let location = match port {
        Some(p) => format!("{scheme}://{authority}:{p}{path}"),
        None => format!("{scheme}://{authority}{path}"),
    };
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::from_u16(r.code).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(http::header::LOCATION, v);
    }
    resp
}

/// A fault's abort: an HTTP status, or a gRPC status in a 200.
pub(super) fn abort(abort: AbortStatus) -> Answer {
    match abort {
        AbortStatus::Http(code) => {
            text(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), "fault filter abort")
        }
        AbortStatus::Grpc(code) => {
            let mut r = Response::new(body::empty());
            r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            if let Ok(v) = HeaderValue::from_str(&code.to_string()) {
                r.headers_mut().insert(GRPC_STATUS.clone(), v);
            }
            r.into()
        }
    }
}
