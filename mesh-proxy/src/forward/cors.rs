//! CORS (Envoy's CORS filter): an allowed preflight is answered here; an
//! allowed origin's answer gets the `access-control-*` fields in the
//! response phase.

use http::header::HeaderValue;
use http::{HeaderMap, Method, Response};
use mesh_core::proxy_config::{CorsPolicy, StringMatcher};
use mesh_core::routing::CompiledMatcher;
use rustc_hash::FxHashMap;

use super::Exchange;
use crate::answer::Answer;
use crate::body::{self, Body};

impl Exchange<'_> {
    pub(super) fn cors_preflight(&mut self) -> Result<(), Answer> {
        let Some(cors) = self.route.and_then(|r| r.cors.as_ref()) else { return Ok(()) };
        self.cors_origin = allowed_origin(cors, &self.head, &self.live.regexes);
        match &self.cors_origin {
            Some(origin)
                if self.head.method == Method::OPTIONS
                    && self.head.headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD) =>
            {
                Err(preflight_response(cors, origin).into())
            }
            _ => Ok(()),
        }
    }
}

/// The request's Origin, when the route's CORS policy allows it.
fn allowed_origin(
    cors: &CorsPolicy,
    head: &http::request::Parts,
    regexes: &FxHashMap<String, CompiledMatcher>,
) -> Option<HeaderValue> {
    let origin = head.headers.get(http::header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    cors.allow_origins
        .iter()
        .any(|m| match m {
            StringMatcher::Exact(e) => e == text,
            StringMatcher::Prefix(p) => text.starts_with(p.as_str()),
            StringMatcher::Regex(r) => regexes.get(r).is_some_and(|c| c.matches(text)),
            StringMatcher::Present => true,
        })
        .then(|| origin.clone())
}

pub(super) fn add_cors_headers(headers: &mut HeaderMap, cors: &CorsPolicy, origin: HeaderValue) {
    headers.insert(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    if cors.allow_credentials {
        headers.insert(http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    }
    if let Ok(v) = HeaderValue::from_str(&cors.expose_headers.join(",")) {
        if !cors.expose_headers.is_empty() {
            headers.insert(http::header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
        }
    }
}

/// Envoy answers an allowed CORS preflight itself.
fn preflight_response(cors: &CorsPolicy, origin: &HeaderValue) -> Response<Body> {
    let mut r = Response::new(body::empty());
    let h = r.headers_mut();
    add_cors_headers(h, cors, origin.clone());
    for (name, values) in [
        (http::header::ACCESS_CONTROL_ALLOW_METHODS, &cors.allow_methods),
        (http::header::ACCESS_CONTROL_ALLOW_HEADERS, &cors.allow_headers),
    ] {
        if let Ok(v) = HeaderValue::from_str(&values.join(",")) {
            if !values.is_empty() {
                h.insert(name, v);
            }
        }
    }
    if let Some(age) = cors.max_age.and_then(|a| HeaderValue::from_str(&a.as_secs().to_string()).ok()) {
        h.insert(http::header::ACCESS_CONTROL_MAX_AGE, age);
    }
    r
}
