//! Connections to upstream endpoints: hyper's pooled clients, one for
//! HTTP/1.1 and one for HTTP/2 (h2c), keyed by endpoint address, with
//! keep-alive and an idle timeout.

use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::Body;

#[derive(Clone)]
pub struct Upstreams {
    pub http1: Client<HttpConnector, Body>,
    pub http2: Client<HttpConnector, Body>,
}

impl Upstreams {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration) -> Upstreams {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_idle_timeout(idle_timeout).pool_timer(TokioTimer::new()).timer(TokioTimer::new());
        let http1 = builder.build(connector.clone());
        let http2 = builder.clone().http2_only(true).build(connector);
        Upstreams { http1, http2 }
    }
}
