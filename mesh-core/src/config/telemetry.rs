//! `telemetry.istio.io` resources: the Telemetry API, which decides per
//! workload how spans are sampled and where they go, whether requests are
//! logged, and which metrics are reported.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::networking::WorkloadSelector;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Telemetry {
    pub selector: Option<WorkloadSelector>,
    pub tracing: Vec<Tracing>,
    pub metrics: Vec<Metrics>,
    pub access_logging: Vec<AccessLogging>,
}

/// A provider of MeshConfig's `extensionProviders`, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProviderRef {
    pub name: String,
}

/// Which side of an exchange a setting is for: the client's (a gateway,
/// a sidecar's outbound) or the server's (a sidecar's inbound).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkloadMode {
    #[default]
    ClientAndServer,
    Client,
    Server,
}

impl WorkloadMode {
    pub fn covers(self, client: bool) -> bool {
        match self {
            WorkloadMode::ClientAndServer => true,
            WorkloadMode::Client => client,
            WorkloadMode::Server => !client,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ModeSelector {
    pub mode: WorkloadMode,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Tracing {
    #[serde(rename = "match")]
    pub match_: Option<ModeSelector>,
    pub providers: Vec<ProviderRef>,
    /// 0 to 100: the share of new traces sampled.
    pub random_sampling_percentage: Option<f64>,
    pub disable_span_reporting: Option<bool>,
    pub custom_tags: BTreeMap<String, CustomTag>,
    pub use_request_id_for_trace_sampling: Option<bool>,
}

/// A span tag: a literal, an environment variable of the proxy, or a
/// request header.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CustomTag {
    pub literal: Option<Literal>,
    pub environment: Option<FromEnvironment>,
    pub header: Option<FromHeader>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Literal {
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FromEnvironment {
    pub name: String,
    pub default_value: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FromHeader {
    pub name: String,
    pub default_value: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Metrics {
    pub providers: Vec<ProviderRef>,
    pub overrides: Vec<MetricsOverrides>,
    pub reporting_interval: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MetricsOverrides {
    #[serde(rename = "match")]
    pub match_: Option<MetricSelector>,
    pub disabled: Option<bool>,
    pub tag_overrides: BTreeMap<String, TagOverride>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MetricSelector {
    /// One of Istio's standard metrics (`REQUEST_COUNT`...) or
    /// `ALL_METRICS`; unset: all.
    pub metric: Option<String>,
    pub custom_metric: Option<String>,
    pub mode: WorkloadMode,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TagOverride {
    /// `UPSERT` (the default) or `REMOVE`.
    pub operation: Option<String>,
    /// A CEL expression.
    pub value: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AccessLogging {
    #[serde(rename = "match")]
    pub match_: Option<ModeSelector>,
    pub providers: Vec<ProviderRef>,
    pub disabled: Option<bool>,
    pub filter: Option<AccessLogFilter>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AccessLogFilter {
    /// A CEL expression over the request and response.
    pub expression: String,
}

/// Istio's standard metrics as the Telemetry API names them, with the
/// Prometheus names they stand for.
pub const METRICS: [(&str, &str); 8] = [
    ("REQUEST_COUNT", "istio_requests_total"),
    ("REQUEST_DURATION", "istio_request_duration_milliseconds"),
    ("REQUEST_SIZE", "istio_request_bytes"),
    ("RESPONSE_SIZE", "istio_response_bytes"),
    ("TCP_OPENED_CONNECTIONS", "istio_tcp_connections_opened_total"),
    ("TCP_CLOSED_CONNECTIONS", "istio_tcp_connections_closed_total"),
    ("TCP_SENT_BYTES", "istio_tcp_sent_bytes_total"),
    ("TCP_RECEIVED_BYTES", "istio_tcp_received_bytes_total"),
];

/// Metric names the Telemetry API accepts besides [`METRICS`]: all of
/// them, and gRPC message counts (which mesh-proxy does not report).
pub const OTHER_METRIC_NAMES: [&str; 3] = ["ALL_METRICS", "GRPC_REQUEST_MESSAGES", "GRPC_RESPONSE_MESSAGES"];

/// The labels of Istio's standard metrics, in the order its stats filter
/// writes them (TCP metrics lack the last two).
pub const STANDARD_TAGS: [&str; 25] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "connection_security_policy",
    "request_protocol",
    "response_flags",
    "response_code",
    "grpc_response_status",
];
