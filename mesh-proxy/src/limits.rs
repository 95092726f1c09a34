//! What a downstream client may take and send: timeouts, head limits,
//! connection counts and protocol versions, per listener, with Envoy's
//! defaults where Istio keeps them.

use std::time::Duration;

/// Set with [`crate::ProxyBuilder::downstream_limits`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DownstreamLimits {
    /// From the first byte of a request head (for a new connection, from
    /// its start) to the end of the head (Envoy's
    /// `request_headers_timeout`); a head that is not whole gets 408, a
    /// new connection that sent nothing is closed. Default 10 s.
    pub header_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request
    /// (Envoy's `idle_timeout`, one hour).
    pub idle_timeout: Duration,
    /// The largest request head, request line and fields (Envoy's
    /// `max_request_headers_kb`, 60 KiB): larger is 431.
    pub max_request_headers_bytes: usize,
    /// The most fields in a request head (Envoy's `max_headers_count`,
    /// 100), at most [`MAX_HEADERS_CEILING`]: more is 431.
    pub max_headers: usize,
    /// The longest a request body (or its trailers) may go without a byte
    /// (Envoy's `stream_idle_timeout`; Istio turns it off, so `None`):
    /// past it, 408.
    pub stream_idle_timeout: Option<Duration>,
    /// The longest a whole request may take to arrive (Envoy's
    /// `request_timeout`, off by default): past it, 408.
    pub request_timeout: Option<Duration>,
    /// Connections a listener serves at once; more are closed as they
    /// come, and counted (`downstream_cx_overflow`). Envoy sets no limit
    /// unless its overload manager does.
    pub max_connections: Option<usize>,
    /// A listener's accept queue: as long as the kernel allows, as
    /// Envoy's (`net.core.somaxconn` caps it).
    pub listen_backlog: u32,
    /// Serve HTTP/1.0 requests. Off by default, as Envoy's and Istio's
    /// (`PILOT_HTTP10`): they get 426.
    pub accept_http_10: bool,
}

/// `max_headers` is read into room on the stack this large.
pub const MAX_HEADERS_CEILING: usize = 1024;

impl Default for DownstreamLimits {
    fn default() -> Self {
        DownstreamLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(3600),
            max_request_headers_bytes: 60 * 1024,
            max_headers: 100,
            stream_idle_timeout: None,
            request_timeout: None,
            max_connections: None,
            listen_backlog: 65_535,
            accept_http_10: false,
        }
    }
}

impl DownstreamLimits {
    /// What cannot be served: a limit of zero, or over its ceiling.
    pub fn check(&self) -> Result<(), String> {
        if self.max_headers == 0 || self.max_headers > MAX_HEADERS_CEILING {
            return Err(format!("max_headers {} is not in 1..={MAX_HEADERS_CEILING}", self.max_headers));
        }
        if self.max_request_headers_bytes < 1024 || self.max_request_headers_bytes > 8 * 1024 * 1024 {
            return Err(format!(
                "max_request_headers_bytes {} is not in 1 KiB..=8 MiB (Envoy's range)",
                self.max_request_headers_bytes
            ));
        }
        if self.max_connections == Some(0) {
            return Err("max_connections 0 would refuse every connection".into());
        }
        Ok(())
    }
}
