//! Downstream failures that never reach the request path, for `/stats`
//! and Prometheus beside Istio's metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// Downstream failures that never reach the request path: the connection
/// answers them (400, 431, 408) or closes itself.
#[derive(Debug, Default)]
pub struct DownstreamStats {
    /// Requests that did not parse (Envoy: `downstream_rq_rx_reset` and
    /// codec errors), including header blocks over the limit.
    pub malformed: AtomicU64,
    /// Clients too slow with their request headers or TLS handshake.
    pub header_timeouts: AtomicU64,
    /// Connections that ended in any other error.
    pub connection_errors: AtomicU64,
    /// Connections closed as they came, over a listener's limit (Envoy's
    /// `downstream_cx_overflow`).
    pub overflow: AtomicU64,
}

impl DownstreamStats {
    /// Count a connection's error by kind.
    pub fn count(&self, error: &(dyn std::error::Error + 'static)) {
        use crate::downstream::ServeError;
        let counter = match (error.downcast_ref::<ServeError>(), error.downcast_ref::<hyper::Error>()) {
            (
                Some(
                    ServeError::Malformed(_)
                    | ServeError::TooLarge(_)
                    | ServeError::NotImplemented
                    | ServeError::Http10,
                ),
                _,
            ) => &self.malformed,
            (Some(ServeError::HeaderTimeout(_) | ServeError::NothingSent(_)), _) => &self.header_timeouts,
            (_, Some(e)) if e.is_parse() || e.is_parse_status() => &self.malformed,
            (_, Some(e)) if e.is_timeout() => &self.header_timeouts,
            _ => &self.connection_errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
