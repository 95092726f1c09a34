//! Spans leave the request path through a bounded queue: a thread of
//! its own sends them in batches (every second, or at 512), so a slow or
//! dead collector costs requests nothing. A full queue drops the span and
//! counts it, rather than grow.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use mesh_core::telemetry::TraceProvider;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::span::Span;

/// Spans waiting to be sent, at most.
pub const QUEUE: usize = 4096;
/// Spans in one request to the collector, at most.
const BATCH: usize = 512;
/// How long spans wait for more to share a request.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How long a send may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    provider: String,
    result: &'static str,
}

/// Counts of what became of spans, by provider: `sent`, `dropped` (queue
/// full), `failed` (the collector refused them or could not be reached).
#[derive(Clone, Debug, Default)]
pub struct TraceStats(Family<Outcome, Counter>);

impl TraceStats {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("mesh_tracing_spans", "Spans by what became of them, by provider", self.0.clone());
    }

    fn count(&self, provider: &str, result: &'static str, n: usize) {
        self.0.get_or_create(&Outcome { provider: provider.to_string(), result }).inc_by(n as u64);
    }
}

/// Spans waiting for the sender. A span is pushed under a lock, with no
/// wakeup: the sender comes every second, or when a batch is full (one
/// wakeup per batch, not per span).
#[derive(Default)]
struct Pending {
    spans: Mutex<Vec<Span>>,
    batch_ready: tokio::sync::Notify,
}

/// One provider's queue.
pub struct Exporter {
    provider: String,
    pending: Arc<Pending>,
    stats: TraceStats,
}

impl Exporter {
    /// Queue `span`; with the queue full it is dropped and counted.
    pub fn report(&self, span: Span) {
        let mut spans = self.pending.spans.lock().unwrap_or_else(PoisonError::into_inner);
        if spans.len() >= QUEUE {
            drop(spans);
            self.stats.count(&self.provider, "dropped", 1);
            return;
        }
        spans.push(span);
        if spans.len() == BATCH {
            drop(spans);
            self.pending.batch_ready.notify_one();
        }
    }
}

/// An exporter per provider, made when a config first names it and kept
/// across configs.
#[derive(Default)]
pub struct Exporters {
    by_provider: Mutex<HashMap<TraceProvider, Arc<Exporter>>>,
    pub stats: TraceStats,
}

impl Exporters {
    /// The exporter of `provider`, its sender started on first use.
    pub fn get(&self, provider: &TraceProvider) -> Arc<Exporter> {
        let mut all = self.by_provider.lock().unwrap_or_else(PoisonError::into_inner);
        let exporter = all.entry(provider.clone()).or_insert_with(|| {
            let pending = Arc::<Pending>::default();
            let name = provider_name(provider).to_string();
            spawn_sender(provider.clone(), Arc::clone(&pending), self.stats.clone());
            Arc::new(Exporter { provider: name, pending, stats: self.stats.clone() })
        });
        Arc::clone(exporter)
    }
}

fn provider_name(provider: &TraceProvider) -> &str {
    match provider {
        TraceProvider::Zipkin { name, .. } | TraceProvider::OpenTelemetry { name, .. } => name,
    }
}

/// The sender runs on a thread of its own: encoding a second's spans
/// never takes a turn from the proxy's workers.
fn spawn_sender(provider: TraceProvider, pending: Arc<Pending>, stats: TraceStats) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let started = runtime.map_err(|e| e.to_string()).and_then(|runtime| {
        let run = move || runtime.block_on(send_batches(provider, pending, stats));
        std::thread::Builder::new().name("span-export".into()).spawn(run).map_err(|e| e.to_string())
    });
    if let Err(e) = started {
        // Spans then wait in the queue and are dropped (and counted) once
        // it is full.
        tracing::warn!("span exporter not started: {e}");
    }
}

async fn send_batches(provider: TraceProvider, pending: Arc<Pending>, stats: TraceStats) {
    let name = provider_name(&provider).to_string();
    loop {
        let _ = tokio::time::timeout(FLUSH_EVERY, pending.batch_ready.notified()).await;
        let spans = std::mem::take(&mut *pending.spans.lock().unwrap_or_else(PoisonError::into_inner));
        let mut spans = spans.into_iter().peekable();
        while spans.peek().is_some() {
            let batch: Vec<Span> = spans.by_ref().take(BATCH).collect();
            let n = batch.len();
            match tokio::time::timeout(SEND_TIMEOUT, send(&provider, batch)).await {
                Ok(Ok(())) => stats.count(&name, "sent", n),
                Ok(Err(e)) => {
                    tracing::debug!(provider = %name, "spans not sent: {e}");
                    stats.count(&name, "failed", n);
                }
                Err(_) => stats.count(&name, "failed", n),
            }
        }
    }
}

type SendError = Box<dyn std::error::Error + Send + Sync>;

async fn send(provider: &TraceProvider, spans: Vec<Span>) -> Result<(), SendError> {
    match provider {
        TraceProvider::Zipkin { address, max_tag_length, .. } => {
            let body = super::span::zipkin_list(&spans, *max_tag_length as usize);
            post(address, "/api/v2/spans", "application/json", body.into()).await
        }
        TraceProvider::OpenTelemetry { address, http_path: Some(path), max_tag_length, .. } => {
            let body = prost::Message::encode_to_vec(&super::otlp::request(&spans, *max_tag_length as usize));
            post(address, path, "application/x-protobuf", body.into()).await
        }
        TraceProvider::OpenTelemetry { address, http_path: None, max_tag_length, .. } => {
            super::otlp::export_grpc(address, super::otlp::request(&spans, *max_tag_length as usize)).await
        }
    }
}

/// One HTTP/1.1 POST to `address` (`host:port`); a 2xx answer is success.
async fn post(address: &str, path: &str, content_type: &str, body: Bytes) -> Result<(), SendError> {
    let stream = tokio::net::TcpStream::connect(address).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = http::Request::post(path)
        .header(http::header::HOST, address)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(body))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    // Read the answer, so the connection ends cleanly.
    let _ = response.into_body().collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("{address}{path} answered {status}").into())
    }
}
