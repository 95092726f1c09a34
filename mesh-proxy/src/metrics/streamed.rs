//! Bodies whose size is only known once they have passed: a request body
//! without a length is counted as it goes upstream; a response body
//! without one is counted as it goes downstream, and its request's
//! duration, response size and access log line are recorded when it ends
//! (as Envoy records them when the stream completes).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::histogram::AtomicHistogram;
use crate::access_log::{AccessLog, Entry};
use crate::body::{Body, BoxError};

pin_project! {
    /// A request body that adds what passes to a shared count.
    pub struct CountedBody {
        #[pin]
        inner: Body,
        count: Arc<AtomicU64>,
    }
}

impl CountedBody {
    pub fn new(inner: Body, count: Arc<AtomicU64>) -> CountedBody {
        CountedBody { inner, count }
    }
}

impl HttpBody for CountedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.count.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a streamed response observes when it ends.
pub struct ResponseMeter {
    pub(super) started: Instant,
    /// `None` where the Telemetry API turned the metric off.
    pub(super) duration: Option<AtomicHistogram>,
    pub(super) size: Option<AtomicHistogram>,
    pub(super) head_bytes: u64,
    /// The body's bytes as they pass.
    pub(super) body_bytes: u64,
    /// The exchange's access log line, written at the end.
    pub(super) log: Option<(Arc<AccessLog>, Entry<'static>)>,
}

impl Drop for ResponseMeter {
    /// The end of the body, or the client gone before it: either way the
    /// exchange is over.
    fn drop(&mut self) {
        let took = self.started.elapsed();
        if let Some(duration) = &self.duration {
            duration.observe(took.as_secs_f64() * 1000.0);
        }
        if let Some(size) = &self.size {
            size.observe((self.head_bytes + self.body_bytes) as f64);
        }
        if let Some((log, entry)) = &mut self.log {
            (entry.bytes_sent, entry.duration) = (self.body_bytes, took);
            log.write(entry);
        }
    }
}

pin_project! {
    /// A response body whose end is the end of its exchange's metrics.
    pub struct MeteredBody {
        #[pin]
        inner: Body,
        meter: Option<ResponseMeter>,
    }
}

impl MeteredBody {
    pub fn new(inner: Body, meter: ResponseMeter) -> MeteredBody {
        MeteredBody { inner, meter: Some(meter) }
    }
}

impl HttpBody for MeteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(meter)) = (frame.data_ref(), this.meter.as_mut()) {
                    meter.body_bytes += data.len() as u64;
                }
            }
            // Ended, or failed: observed now rather than when dropped.
            Poll::Ready(_) => drop(this.meter.take()),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
