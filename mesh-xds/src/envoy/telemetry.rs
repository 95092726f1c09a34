//! Telemetry for Envoy, as istiod sends it: the Telemetry API's tracing
//! (Zipkin or OpenTelemetry tracer, sampling, custom tags) and access
//! logging (a file log to stdout in Istio's text format, or its fields as
//! JSON) on each HTTP connection manager of the side it is for, and a
//! cluster for each collector.

use envoy_types::pb::envoy::config::accesslog::v3::access_log_filter::FilterSpecifier;
use envoy_types::pb::envoy::config::accesslog::v3::extension_filter::ConfigType as ExtensionConfig;
use envoy_types::pb::envoy::config::accesslog::v3::{
    access_log::ConfigType as LogConfig, AccessLog, AccessLogFilter, ExtensionFilter,
};
use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::{ClusterDiscoveryType, DiscoveryType},
    Cluster as EnvoyCluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    data_source::Specifier, grpc_service::EnvoyGrpc, grpc_service::TargetSpecifier, http_uri::HttpUpstreamType,
    substitution_format_string::Format, DataSource, GrpcService, HttpService, HttpUri, SubstitutionFormatString,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::trace::v3::tracing::{http::ConfigType as TracerConfig, Http as Tracer};
use envoy_types::pb::envoy::config::trace::v3::{
    zipkin_config::CollectorEndpointVersion, OpenTelemetryConfig, ZipkinConfig,
};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{file_access_log::AccessLogFormat, FileAccessLog};
use envoy_types::pb::envoy::extensions::access_loggers::filters::cel::v3::ExpressionFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options::{explicit_http_config::ProtocolConfig, ExplicitHttpConfig, UpstreamProtocolOptions},
    HttpProtocolOptions,
};
use envoy_types::pb::envoy::r#type::tracing::v3::{custom_tag, CustomTag};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{Struct, Value};
use mesh_core::mesh_config::AccessLogEncoding;
use mesh_core::proxy_config::ProxyConfig;
use mesh_core::telemetry::{SideTelemetry, TelemetryConfig, TraceProvider, TracingConfig};

use super::{any, boolean, duration, endpoints::socket_address};

/// Istio's default text format (1.9 on).
pub const TEXT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// The same fields by name, as Istio's JSON encoding has them.
const JSON_FIELDS: [(&str, &str); 24] = [
    ("start_time", "%START_TIME%"),
    ("route_name", "%ROUTE_NAME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    ("connection_termination_details", "%CONNECTION_TERMINATION_DETAILS%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    ("upstream_service_time", "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%"),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER_RAW%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    ("upstream_transport_failure_reason", "%UPSTREAM_TRANSPORT_FAILURE_REASON%"),
];

/// The connection manager's tracing for one side; `None`: no spans.
pub(super) fn tracing(side: &SideTelemetry) -> Option<Tracing> {
    let t = side.tracing.as_ref()?;
    let percent = |value: f64| Some(Percent { value });
    Some(Tracing {
        random_sampling: percent(t.sampling),
        // Spans still made but never sent: nothing is sampled.
        overall_sampling: percent(if t.disable_reporting { 0.0 } else { 100.0 }),
        custom_tags: custom_tags(t),
        provider: Some(provider(&t.provider)),
        ..Default::default()
    })
}

fn custom_tags(t: &TracingConfig) -> Vec<CustomTag> {
    t.custom_tags
        .iter()
        .filter_map(|(tag, source)| {
            let kind = match (&source.literal, &source.environment, &source.header) {
                (Some(l), _, _) => custom_tag::Type::Literal(custom_tag::Literal { value: l.value.clone() }),
                (_, Some(e), _) => custom_tag::Type::Environment(custom_tag::Environment {
                    name: e.name.clone(),
                    default_value: e.default_value.clone().unwrap_or_default(),
                }),
                (_, _, Some(h)) => custom_tag::Type::RequestHeader(custom_tag::Header {
                    name: h.name.clone(),
                    default_value: h.default_value.clone().unwrap_or_default(),
                }),
                _ => return None,
            };
            Some(CustomTag { tag: tag.clone(), r#type: Some(kind) })
        })
        .collect()
}

/// The cluster Envoy sends a provider's spans to.
fn collector_cluster(provider: &TraceProvider) -> String {
    match provider {
        TraceProvider::Zipkin { address, .. } | TraceProvider::OpenTelemetry { address, .. } => {
            let (host, port) = address.rsplit_once(':').unwrap_or((address, "80"));
            format!("outbound|{port}||{host}")
        }
    }
}

fn provider(p: &TraceProvider) -> Tracer {
    let cluster = collector_cluster(p);
    match p {
        TraceProvider::Zipkin { address, .. } => Tracer {
            name: "envoy.tracers.zipkin".into(),
            config_type: Some(TracerConfig::TypedConfig(any(&ZipkinConfig {
                collector_cluster: cluster,
                collector_endpoint: "/api/v2/spans".into(),
                collector_endpoint_version: CollectorEndpointVersion::HttpJson as i32,
                trace_id_128bit: true,
                shared_span_context: boolean(false),
                collector_hostname: address.clone(),
                ..Default::default()
            }))),
        },
        TraceProvider::OpenTelemetry { address, http_path, .. } => {
            let mut config = OpenTelemetryConfig::default();
            match http_path {
                Some(path) => {
                    config.http_service = Some(HttpService {
                        http_uri: Some(HttpUri {
                            uri: format!("http://{address}{path}"),
                            timeout: Some(duration(std::time::Duration::from_secs(5))),
                            http_upstream_type: Some(HttpUpstreamType::Cluster(cluster)),
                        }),
                        ..Default::default()
                    })
                }
                None => {
                    config.grpc_service = Some(GrpcService {
                        target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                            cluster_name: cluster,
                            authority: address.clone(),
                            ..Default::default()
                        })),
                        ..Default::default()
                    })
                }
            }
            Tracer {
                name: "envoy.tracers.opentelemetry".into(),
                config_type: Some(TracerConfig::TypedConfig(any(&config))),
            }
        }
    }
}

/// The connection manager's access log for one side, when the Telemetry
/// API or MeshConfig turns it on: to MeshConfig's `accessLogFile`
/// (`/dev/stdout` by default).
pub(super) fn access_logs(side: &SideTelemetry, t: &TelemetryConfig) -> Vec<AccessLog> {
    if side.access_log != Some(true) {
        return Vec::new();
    }
    let format = match t.access_log_encoding {
        AccessLogEncoding::Text => Format::TextFormatSource(DataSource {
            specifier: Some(Specifier::InlineString(TEXT_FORMAT.into())),
            ..Default::default()
        }),
        AccessLogEncoding::Json => Format::JsonFormat(Struct {
            fields: JSON_FIELDS
                .iter()
                .map(|(k, v)| {
                    let value = Value {
                        kind: Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(v.to_string())),
                    };
                    (k.to_string(), value)
                })
                .collect(),
        }),
    };
    let path = if t.access_log_file.is_empty() { "/dev/stdout" } else { &t.access_log_file };
    let file = FileAccessLog {
        path: path.into(),
        access_log_format: Some(AccessLogFormat::LogFormat(SubstitutionFormatString {
            format: Some(format),
            ..Default::default()
        })),
    };
    vec![AccessLog {
        name: "envoy.access_loggers.file".into(),
        filter: side.access_log_filter.as_deref().map(cel_filter),
        config_type: Some(LogConfig::TypedConfig(any(&file))),
    }]
}

/// A Telemetry `accessLogging[].filter`, as Istio hands it to Envoy.
fn cel_filter(expression: &str) -> AccessLogFilter {
    let cel = ExpressionFilter { expression: expression.into(), cel_config: None };
    let extension = ExtensionFilter {
        name: "envoy.access_loggers.extension_filters.cel".into(),
        config_type: Some(ExtensionConfig::TypedConfig(any(&cel))),
    };
    AccessLogFilter { filter_specifier: Some(FilterSpecifier::ExtensionFilter(extension)) }
}

/// A cluster for each collector the config traces to that is not one of
/// its own clusters (a collector outside the registry), resolved by DNS.
pub(super) fn collector_clusters(cfg: &ProxyConfig) -> Vec<EnvoyCluster> {
    let t: &TelemetryConfig = &cfg.telemetry;
    let mut providers: Vec<&TraceProvider> =
        [&t.client, &t.server].iter().filter_map(|s| s.tracing.as_ref()).map(|t| &t.provider).collect();
    providers.dedup();
    providers
        .into_iter()
        .filter(|p| cfg.cluster(&collector_cluster(p)).is_none())
        .map(|p| {
            let name = collector_cluster(p);
            let (TraceProvider::Zipkin { address, .. } | TraceProvider::OpenTelemetry { address, .. }) = p;
            let (host, port) = address.rsplit_once(':').unwrap_or((address, "80"));
            let endpoint = LbEndpoint {
                host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                    address: Some(socket_address(host, port.parse().unwrap_or(80))),
                    ..Default::default()
                })),
                ..Default::default()
            };
            let grpc = matches!(p, TraceProvider::OpenTelemetry { http_path: None, .. });
            EnvoyCluster {
                name: name.clone(),
                connect_timeout: Some(duration(std::time::Duration::from_secs(5))),
                cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32)),
                load_assignment: Some(ClusterLoadAssignment {
                    cluster_name: name,
                    endpoints: vec![LocalityLbEndpoints { lb_endpoints: vec![endpoint], ..Default::default() }],
                    ..Default::default()
                }),
                typed_extension_protocol_options: if grpc { http2_options() } else { Default::default() },
                ..Default::default()
            }
        })
        .collect()
}

/// OTLP over gRPC needs HTTP/2 to its collector.
fn http2_options() -> std::collections::HashMap<String, envoy_types::pb::google::protobuf::Any> {
    let options = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(Default::default())),
        })),
        ..Default::default()
    };
    std::collections::HashMap::from([(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
        any(&options),
    )])
}
