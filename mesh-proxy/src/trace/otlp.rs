//! Spans as OTLP: an `ExportTraceServiceRequest` (one resource per local
//! service, `service.name` set), sent over gRPC or HTTP (protobuf).

use super::span::{truncate, Span, SpanKind};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, status, ResourceSpans, ScopeSpans, Span as OtlpSpan, Status};

fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.to_string())) }),
    }
}

fn otlp_span(s: &Span, max_tag_length: usize) -> OtlpSpan {
    let start = s.start_micros() * 1000;
    let failed = s.tags.iter().any(|(k, v)| k == "error" && v == "true");
    OtlpSpan {
        trace_id: s.trace.to_be_bytes().to_vec(),
        span_id: s.id.to_be_bytes().to_vec(),
        parent_span_id: s.parent.map(|p| p.to_be_bytes().to_vec()).unwrap_or_default(),
        name: s.name.clone(),
        kind: match s.kind {
            SpanKind::Client => span::SpanKind::Client,
            SpanKind::Server => span::SpanKind::Server,
        } as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start + s.duration_micros() * 1000,
        attributes: s.all_tags().map(|(k, v)| attribute(k, truncate(v, max_tag_length))).collect(),
        status: Some(Status {
            code: if failed { status::StatusCode::Error } else { status::StatusCode::Unset } as i32,
            message: String::new(),
        }),
        ..OtlpSpan::default()
    }
}

/// The export request for `spans`, grouped by local service.
pub fn request(spans: &[Span], max_tag_length: usize) -> ExportTraceServiceRequest {
    let mut by_service: Vec<(&str, Vec<OtlpSpan>)> = Vec::new();
    for s in spans {
        let span = otlp_span(s, max_tag_length);
        match by_service.iter_mut().find(|(service, _)| *service == s.service) {
            Some((_, list)) => list.push(span),
            None => by_service.push((&s.service, vec![span])),
        }
    }
    let resource_spans = by_service
        .into_iter()
        .map(|(service, spans)| ResourceSpans {
            resource: Some(Resource { attributes: vec![attribute("service.name", service)], ..Resource::default() }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope { name: "mesh-proxy".into(), ..InstrumentationScope::default() }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

/// Send an export request to the collector at `address` over gRPC.
pub async fn export_grpc(
    address: &str,
    request: ExportTraceServiceRequest,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut client = TraceServiceClient::connect(format!("http://{address}")).await?;
    client.export(request).await?;
    Ok(())
}
