//! `Filter`: what a user writes to see, change or answer requests and
//! responses. Phases are methods with defaults, so a filter implements only
//! the phases it needs (as Pingora's `ProxyHttp`):
//!
//! 1. [`Filter::on_request`]: after routing, before the upstream is called;
//!    may change the request head or answer it directly.
//! 2. [`Filter::on_response`]: with the response head, in reverse filter
//!    order, as Envoy runs encoder filters: the upstream's answer or a local
//!    one (no route, RBAC, rate limit, fault abort, an upstream failure, or
//!    a filter's own), with [`FilterContext::response_flags`] saying which.
//!    Every filter sees every response, also one made before its
//!    `on_request` ran, as every Envoy encoder filter sees local replies.
//! 3. [`Filter::on_log`]: once per exchange when it is over, whatever ended
//!    it (a client that went away included), for logs and metrics.
//!
//! A filter is shared by all requests; per-request state lives in the
//! [`FilterContext`]'s typed `extensions`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;

pub type RequestHead = http::request::Parts;
pub type ResponseHead = http::response::Parts;

/// What `on_request` decided.
#[derive(Debug)]
pub enum RequestAction {
    /// Go on to the next filter and then the upstream.
    Continue,
    /// Answer now with this response; later filters and the upstream are
    /// skipped, response filters still run.
    Respond(http::Response<Bytes>),
}

#[derive(Debug, thiserror::Error)]
#[error("filter `{filter}` failed: {message}")]
pub struct FilterError {
    pub filter: String,
    pub message: String,
}

impl FilterError {
    pub fn new(filter: impl Into<String>, message: impl Into<String>) -> FilterError {
        FilterError { filter: filter.into(), message: message.into() }
    }
}

/// Per-request facts and state shared by the filters of one request.
#[derive(Debug)]
pub struct FilterContext {
    pub request_id: String,
    pub downstream: Option<SocketAddr>,
    /// The route's name, once routed.
    pub route: Option<String>,
    /// The chosen cluster (`outbound|9080|v2|reviews...`), once routed.
    pub cluster: Option<String>,
    pub started: Instant,
    /// Response status, known from the response phase on.
    pub status: Option<http::StatusCode>,
    /// Envoy's response flags (`NR`, `RBAC`, `UH`, `DC`...) for an exchange
    /// that did not end in the upstream's own answer; `None` when it did.
    pub response_flags: Option<&'static str>,
    /// Typed per-request state for filters: `ctx.extensions.insert(MyState)`.
    pub extensions: http::Extensions,
}

impl FilterContext {
    pub fn new(request_id: impl Into<String>, downstream: Option<SocketAddr>) -> FilterContext {
        FilterContext {
            request_id: request_id.into(),
            downstream,
            route: None,
            cluster: None,
            started: Instant::now(),
            status: None,
            response_flags: None,
            extensions: http::Extensions::new(),
        }
    }
}

#[async_trait]
pub trait Filter: Send + Sync + 'static {
    /// For logs and errors.
    fn name(&self) -> &str;

    async fn on_request(&self, _req: &mut RequestHead, _ctx: &mut FilterContext) -> Result<RequestAction, FilterError> {
        Ok(RequestAction::Continue)
    }

    async fn on_response(&self, _resp: &mut ResponseHead, _ctx: &mut FilterContext) -> Result<(), FilterError> {
        Ok(())
    }

    fn on_log(&self, _ctx: &FilterContext) {}
}

/// An ordered list of filters, run as Envoy runs a filter chain.
#[derive(Clone, Default)]
pub struct FilterChain {
    filters: Vec<Arc<dyn Filter>>,
}

impl FilterChain {
    pub fn new(filters: Vec<Arc<dyn Filter>>) -> FilterChain {
        FilterChain { filters }
    }

    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Request phase, first filter first, until one answers.
    pub async fn on_request(
        &self,
        req: &mut RequestHead,
        ctx: &mut FilterContext,
    ) -> Result<RequestAction, FilterError> {
        for f in &self.filters {
            if let RequestAction::Respond(resp) = f.on_request(req, ctx).await? {
                return Ok(RequestAction::Respond(resp));
            }
        }
        Ok(RequestAction::Continue)
    }

    /// Response phase, last filter first.
    pub async fn on_response(&self, resp: &mut ResponseHead, ctx: &mut FilterContext) -> Result<(), FilterError> {
        ctx.status = Some(resp.status);
        for f in self.filters.iter().rev() {
            f.on_response(resp, ctx).await?;
        }
        Ok(())
    }

    pub fn on_log(&self, ctx: &FilterContext) {
        for f in &self.filters {
            f.on_log(ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    struct Tag(&'static str, Arc<Mutex<Vec<String>>>);

    #[async_trait]
    impl Filter for Tag {
        fn name(&self) -> &str {
            self.0
        }
        async fn on_request(
            &self,
            req: &mut RequestHead,
            _ctx: &mut FilterContext,
        ) -> Result<RequestAction, FilterError> {
            self.1.lock().unwrap().push(format!("req:{}", self.0));
            req.headers.append("x-seen", self.0.parse().unwrap());
            if self.0 == "blocker" && req.uri.path() == "/blocked" {
                return Ok(RequestAction::Respond(http::Response::builder().status(403).body(Bytes::new()).unwrap()));
            }
            Ok(RequestAction::Continue)
        }
        async fn on_response(&self, _resp: &mut ResponseHead, _ctx: &mut FilterContext) -> Result<(), FilterError> {
            self.1.lock().unwrap().push(format!("resp:{}", self.0));
            Ok(())
        }
    }

    /// A filter that implements no phase at all still compiles and runs.
    struct Nothing;
    impl Filter for Nothing {
        fn name(&self) -> &str {
            "nothing"
        }
    }

    #[tokio::test]
    async fn phases_run_in_order_and_reverse_and_can_short_circuit() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let chain = FilterChain::new(vec![
            Arc::new(Tag("a", log.clone())),
            Arc::new(Nothing),
            Arc::new(Tag("blocker", log.clone())),
            Arc::new(Tag("c", log.clone())),
        ]);
        let (mut req, _) = http::Request::get("/ok").body(()).unwrap().into_parts();
        let mut ctx = FilterContext::new("id", None);
        let action = chain.on_request(&mut req, &mut ctx).await.unwrap();
        assert!(matches!(action, RequestAction::Continue));
        assert_eq!(req.headers.get_all("x-seen").iter().count(), 3);
        let (mut resp, _) = http::Response::new(()).into_parts();
        chain.on_response(&mut resp, &mut ctx).await.unwrap();
        assert_eq!(*log.lock().unwrap(), ["req:a", "req:blocker", "req:c", "resp:c", "resp:blocker", "resp:a"]);

        log.lock().unwrap().clear();
        let (mut req, _) = http::Request::get("/blocked").body(()).unwrap().into_parts();
        let action = chain.on_request(&mut req, &mut ctx).await.unwrap();
        let RequestAction::Respond(r) = action else { panic!("expected an early answer") };
        assert_eq!(r.status(), 403);
        chain.on_response(&mut r.into_parts().0, &mut ctx).await.unwrap();
        // `c` never saw the request and still sees the answer, as Envoy's
        // encoder filters see a local reply.
        assert_eq!(*log.lock().unwrap(), ["req:a", "req:blocker", "resp:c", "resp:blocker", "resp:a"]);
    }
}
