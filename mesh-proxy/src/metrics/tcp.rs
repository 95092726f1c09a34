//! Istio's TCP metrics: connections opened and closed, and bytes each way,
//! counted as they pass (not at the close, so a long connection shows its
//! traffic while it lasts). `sent` is what went to the downstream peer,
//! `received` what came from it, as Envoy's downstream byte meter counts.
//! Where the access log is on, a connection's line is written as it
//! closes, as Envoy's TCP proxy logs.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use pin_project_lite::pin_project;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::labels::Labels;
use super::rules::SideSwitches;
use super::tags::Metric;
use crate::access_log::{AccessLog, Entry};

#[derive(Default)]
pub struct TcpMetrics {
    opened: Family<Labels, Counter>,
    closed: Family<Labels, Counter>,
    sent: Family<Labels, Counter>,
    received: Family<Labels, Counter>,
}

impl TcpMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let families = [
            ("istio_tcp_connections_opened", "TCP connections opened", &self.opened),
            ("istio_tcp_connections_closed", "TCP connections closed", &self.closed),
            ("istio_tcp_sent_bytes", "Bytes sent to the downstream peer on TCP connections", &self.sent),
            ("istio_tcp_received_bytes", "Bytes received from the downstream peer on TCP connections", &self.received),
        ];
        for (name, help, family) in families {
            registry.register(name, help, family.clone());
        }
    }

    /// Count a connection as opened; the handle counts its bytes and its
    /// close (each only where `side` has it on), each metric's series
    /// labelled `labels(metric)`, and writes `log` as it closes.
    pub fn open<'l>(
        &self,
        labels: impl Fn(Metric) -> std::borrow::Cow<'l, Labels>,
        side: &SideSwitches,
        log: Option<TcpLog>,
    ) -> TcpConnection {
        let counter = |on: bool, family: &Family<Labels, Counter>, metric| {
            on.then(|| family.get_or_create_owned(&labels(metric)))
        };
        if let Some(opened) = counter(side.tcp_opened, &self.opened, Metric::TcpOpened) {
            opened.inc();
        }
        TcpConnection {
            sent: counter(side.tcp_sent, &self.sent, Metric::TcpSent),
            received: counter(side.tcp_received, &self.received, Metric::TcpReceived),
            closed: counter(side.tcp_closed, &self.closed, Metric::TcpClosed),
            log,
        }
    }
}

/// A connection's access log line, completed as it closes.
pub struct TcpLog {
    pub to: Arc<AccessLog>,
    pub entry: Entry<'static>,
    pub started: Instant,
}

/// One connection's counters; dropping it counts the close.
pub struct TcpConnection {
    sent: Option<Counter>,
    received: Option<Counter>,
    closed: Option<Counter>,
    log: Option<TcpLog>,
}

impl TcpConnection {
    fn sent(&mut self, n: usize) {
        if let Some(c) = &self.sent {
            c.inc_by(n as u64);
        }
        if let Some(log) = &mut self.log {
            log.entry.bytes_sent += n as u64;
        }
    }

    fn received(&mut self, n: usize) {
        if let Some(c) = &self.received {
            c.inc_by(n as u64);
        }
        if let Some(log) = &mut self.log {
            log.entry.bytes_received += n as u64;
        }
    }
}

impl Drop for TcpConnection {
    fn drop(&mut self) {
        if let Some(c) = &self.closed {
            c.inc();
        }
        if let Some(mut log) = self.log.take() {
            log.entry.duration = log.started.elapsed();
            log.to.write(&log.entry);
        }
    }
}

pin_project! {
    /// The downstream side of a proxied connection, its bytes counted.
    pub struct Metered<IO> {
        #[pin]
        io: IO,
        meter: TcpConnection,
    }
}

impl<IO> Metered<IO> {
    pub fn new(io: IO, meter: TcpConnection) -> Metered<IO> {
        Metered { io, meter }
    }
}

impl<IO: AsyncRead> AsyncRead for Metered<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.io.poll_read(cx, buf);
        this.meter.received(buf.filled().len() - before);
        result
    }
}

impl<IO: AsyncWrite> AsyncWrite for Metered<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let result = this.io.poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &result {
            this.meter.sent(*n);
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let result = this.io.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &result {
            this.meter.sent(*n);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}
