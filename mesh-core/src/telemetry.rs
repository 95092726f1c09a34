//! The Telemetry API merged for one proxy, as Istio merges it: the root
//! namespace's resource (no selector), then the proxy's namespace's, then
//! the one selecting the workload, each overriding what it sets, per side
//! (client: a gateway or a sidecar's outbound; server: a sidecar's
//! inbound). Providers are MeshConfig's `extensionProviders`; where no
//! resource names one, its `defaultProviders`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::telemetry::{CustomTag, Telemetry, METRICS, STANDARD_TAGS};
use crate::mesh_config::MeshConfig;

/// Istio's sampling of new traces when nothing says otherwise: 1%.
pub const DEFAULT_SAMPLING: f64 = 1.0;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TelemetryConfig {
    pub client: SideTelemetry,
    pub server: SideTelemetry,
    /// What could not be applied (an unknown provider, a setting not
    /// supported), each naming the resource and field: to be shown loudly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// MeshConfig's `accessLogEncoding` and `accessLogFile`, for proxies
    /// configured over xDS.
    #[serde(default)]
    pub access_log_encoding: crate::mesh_config::AccessLogEncoding,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub access_log_file: String,
}

impl TelemetryConfig {
    pub fn side(&self, client: bool) -> &SideTelemetry {
        if client {
            &self.client
        } else {
            &self.server
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SideTelemetry {
    /// `None`: no spans.
    pub tracing: Option<TracingConfig>,
    /// Whether requests are logged; `None`: neither MeshConfig nor a
    /// Telemetry resource says (the proxy's own setting decides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<bool>,
    /// A CEL expression: only exchanges it is true for are logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log_filter: Option<String>,
    /// Prometheus names of the metrics not reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disabled_metrics: Vec<String>,
    /// By metric (Prometheus name), by tag: what a Telemetry resource's
    /// `tagOverrides` does to it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tag_overrides: BTreeMap<String, BTreeMap<String, TagOp>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TagOp {
    Remove,
    /// Set, or add, the tag: a CEL expression over the exchange.
    Upsert(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TracingConfig {
    pub provider: TraceProvider,
    /// Percent of new traces sampled (a caller's decision is kept).
    pub sampling: f64,
    pub custom_tags: BTreeMap<String, CustomTag>,
    /// Propagate and sample, but send no spans.
    pub disable_reporting: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TraceProvider {
    /// Zipkin's v2 JSON API at `address` (`host:port`).
    Zipkin { name: String, address: String, max_tag_length: u32 },
    /// OTLP over gRPC, or over HTTP to `http_path`.
    OpenTelemetry { name: String, address: String, http_path: Option<String>, max_tag_length: u32 },
}

/// The Telemetry resources that apply to a proxy, most general first.
pub struct Scopes<'a> {
    pub ordered: Vec<(&'a str, &'a Telemetry)>,
}

/// What the Telemetry resources in `scopes` (root, namespace, workload:
/// each named `namespace/name`) and MeshConfig say for one proxy.
pub fn resolve(scopes: &Scopes<'_>, mesh: &MeshConfig) -> TelemetryConfig {
    let mut warnings = Vec::new();
    let mut side = |client: bool| {
        let (access_log, access_log_filter) = access_log(scopes, mesh, client);
        SideTelemetry {
            tracing: tracing(scopes, mesh, client, &mut warnings),
            access_log,
            access_log_filter,
            disabled_metrics: disabled_metrics(scopes, client),
            tag_overrides: tag_overrides(scopes, client),
        }
    };
    let (client, server) = (side(true), side(false));
    warnings.extend(nonstandard_removals(scopes));
    TelemetryConfig {
        client,
        server,
        warnings,
        access_log_encoding: mesh.access_log_encoding,
        access_log_file: mesh.access_log_file.clone(),
    }
}

fn tracing(scopes: &Scopes<'_>, mesh: &MeshConfig, client: bool, warnings: &mut Vec<String>) -> Option<TracingConfig> {
    let mut providers: Vec<String> = mesh.default_providers.tracing.clone();
    let mut sampling = mesh.default_config.tracing.as_ref().and_then(|t| t.sampling).unwrap_or(DEFAULT_SAMPLING);
    let mut custom_tags = BTreeMap::new();
    let mut disable_reporting = false;
    let mut named_by = "MeshConfig defaultProviders.tracing".to_string();
    for (name, t) in &scopes.ordered {
        for rule in t.tracing.iter().filter(|r| r.match_.as_ref().is_none_or(|m| m.mode.covers(client))) {
            if !rule.providers.is_empty() {
                providers = rule.providers.iter().map(|p| p.name.clone()).collect();
                named_by = format!("Telemetry {name}");
            }
            sampling = rule.random_sampling_percentage.unwrap_or(sampling);
            disable_reporting = rule.disable_span_reporting.unwrap_or(disable_reporting);
            custom_tags.extend(rule.custom_tags.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    let first = providers.first()?;
    if providers.len() > 1 {
        warnings.push(format!("{named_by}: tracing to {} only; Istio sends spans to one provider", providers[0]));
    }
    let Some(provider) = trace_provider(mesh, first) else {
        warnings.push(format!(
            "{named_by}: tracing provider `{first}` is not a zipkin or opentelemetry provider of MeshConfig extensionProviders: no spans"
        ));
        return None;
    };
    Some(TracingConfig { provider, sampling, custom_tags, disable_reporting })
}

fn trace_provider(mesh: &MeshConfig, name: &str) -> Option<TraceProvider> {
    let p = mesh.extension_providers.iter().find(|p| p.name == name)?;
    let name = name.to_string();
    if let Some(z) = &p.zipkin {
        let address = format!("{}:{}", z.service, z.port);
        return Some(TraceProvider::Zipkin { name, address, max_tag_length: z.max_tag_length.unwrap_or(256) });
    }
    let o = p.opentelemetry.as_ref()?;
    let http_path = o.http.as_ref().map(|h| if h.path.is_empty() { "/v1/traces".to_string() } else { h.path.clone() });
    let address = format!("{}:{}", o.service, o.port);
    Some(TraceProvider::OpenTelemetry { name, address, http_path, max_tag_length: o.max_tag_length.unwrap_or(256) })
}

/// Whether requests are logged: MeshConfig's default (a default provider,
/// or `accessLogFile`), then each scope's `disabled` or providers.
fn access_log(scopes: &Scopes<'_>, mesh: &MeshConfig, client: bool) -> (Option<bool>, Option<String>) {
    let by_mesh = !mesh.access_log_file.is_empty() || !mesh.default_providers.access_logging.is_empty();
    let mut on = by_mesh.then_some(true);
    let mut filter = None;
    for (_, t) in &scopes.ordered {
        for rule in t.access_logging.iter().filter(|r| r.match_.as_ref().is_none_or(|m| m.mode.covers(client))) {
            if let Some(disabled) = rule.disabled {
                on = Some(!disabled);
            } else if !rule.providers.is_empty() {
                on = Some(true);
            }
            if let Some(f) = &rule.filter {
                filter = Some(f.expression.clone());
            }
        }
    }
    (on, filter)
}

fn disabled_metrics(scopes: &Scopes<'_>, client: bool) -> Vec<String> {
    let mut disabled: BTreeMap<&str, bool> = BTreeMap::new();
    for (_, t) in &scopes.ordered {
        for o in t.metrics.iter().flat_map(|m| &m.overrides) {
            let Some(off) = o.disabled else { continue };
            let selector = o.match_.clone().unwrap_or_default();
            if !selector.mode.covers(client) {
                continue;
            }
            let metric = selector.metric.as_deref().unwrap_or("ALL_METRICS");
            for (name, prometheus) in METRICS {
                if metric == "ALL_METRICS" || metric == name {
                    disabled.insert(prometheus, off);
                }
            }
        }
    }
    disabled.into_iter().filter(|(_, off)| *off).map(|(name, _)| name.to_string()).collect()
}

/// Each metric's tag overrides, the later scope's and the later
/// override's winning per tag, as Istio merges them.
fn tag_overrides(scopes: &Scopes<'_>, client: bool) -> BTreeMap<String, BTreeMap<String, TagOp>> {
    let mut merged: BTreeMap<String, BTreeMap<String, TagOp>> = BTreeMap::new();
    for (_, t) in &scopes.ordered {
        for o in t.metrics.iter().flat_map(|m| &m.overrides).filter(|o| !o.tag_overrides.is_empty()) {
            let selector = o.match_.clone().unwrap_or_default();
            if !selector.mode.covers(client) {
                continue;
            }
            let metric = selector.metric.as_deref().unwrap_or("ALL_METRICS");
            for (_, prometheus) in METRICS.iter().filter(|(name, _)| metric == "ALL_METRICS" || metric == *name) {
                let tags = merged.entry(prometheus.to_string()).or_default();
                for (tag, op) in &o.tag_overrides {
                    let op = match (op.operation.as_deref(), &op.value) {
                        (Some("REMOVE"), _) => TagOp::Remove,
                        (_, value) => TagOp::Upsert(value.clone().unwrap_or_default()),
                    };
                    tags.insert(tag.clone(), op);
                }
            }
        }
    }
    merged
}

/// Removing a tag that is not one of Istio's does nothing (Istio's stats
/// filter logs it and goes on): say so.
fn nonstandard_removals(scopes: &Scopes<'_>) -> Vec<String> {
    let mut warnings = Vec::new();
    for (name, t) in &scopes.ordered {
        for (i, m) in t.metrics.iter().enumerate() {
            for (j, o) in m.overrides.iter().enumerate() {
                let removed = o.tag_overrides.iter().filter(|(_, op)| op.operation.as_deref() == Some("REMOVE"));
                for (tag, _) in removed.filter(|(tag, _)| !STANDARD_TAGS.contains(&tag.as_str())) {
                    warnings.push(format!(
                        "Telemetry {name}: spec.metrics[{i}].overrides[{j}].tagOverrides.{tag}: REMOVE of `{tag}`, which is not one of Istio's standard labels, does nothing"
                    ));
                }
            }
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Resource, Spec};

    fn telemetry(yaml: &str) -> Telemetry {
        let r = Resource::from_yaml(&format!(
            "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: t, namespace: ns}}\nspec:\n{yaml}"
        ))
        .unwrap();
        let Spec::Telemetry(t) = r.spec else { unreachable!() };
        t
    }

    fn mesh() -> MeshConfig {
        MeshConfig::from_yaml(
            "mesh.yaml",
            "extensionProviders:\n- name: zipkin\n  zipkin: {service: zipkin.istio-system, port: 9411}\n- name: otel\n  opentelemetry: {service: otel.observability, port: 4318, http: {}}\ndefaultProviders: {tracing: [zipkin]}\n",
        )
        .unwrap()
    }

    #[test]
    fn workload_overrides_namespace_overrides_root_per_side() {
        let root =
            telemetry("  tracing: [{randomSamplingPercentage: 10, customTags: {team: {literal: {value: mesh}}}}]\n");
        let namespace = telemetry(
            "  tracing:\n  - match: {mode: CLIENT}\n    providers: [{name: otel}]\n    randomSamplingPercentage: 50\n  accessLogging: [{providers: [{name: envoy}]}]\n",
        );
        let workload = telemetry(
            "  selector: {matchLabels: {app: reviews}}\n  tracing: [{disableSpanReporting: true, customTags: {team: {header: {name: x-team}}}}]\n  accessLogging: [{match: {mode: SERVER}, disabled: true}]\n  metrics: [{overrides: [{match: {metric: REQUEST_COUNT, mode: SERVER}, disabled: true}]}]\n",
        );
        let scopes =
            Scopes { ordered: vec![("istio-system/root", &root), ("ns/ns", &namespace), ("ns/reviews", &workload)] };
        let t = resolve(&scopes, &mesh());
        let (client, server) = (t.client.tracing.unwrap(), t.server.tracing.unwrap());
        assert!(
            matches!(&client.provider, TraceProvider::OpenTelemetry { http_path: Some(p), .. } if p == "/v1/traces")
        );
        assert!(
            matches!(&server.provider, TraceProvider::Zipkin { address, .. } if address == "zipkin.istio-system:9411")
        );
        assert_eq!((client.sampling, server.sampling), (50.0, 10.0));
        assert!(client.disable_reporting && server.disable_reporting);
        assert!(client.custom_tags["team"].header.is_some(), "the workload's tag replaces the root's");
        assert_eq!((t.client.access_log, t.server.access_log), (Some(true), Some(false)));
        assert_eq!(t.server.disabled_metrics, ["istio_requests_total"]);
        assert!(t.client.disabled_metrics.is_empty());
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    }

    #[test]
    fn defaults_and_what_cannot_be_applied_are_said() {
        let none = resolve(&Scopes { ordered: vec![] }, &MeshConfig::default());
        assert!(none.client.tracing.is_none() && none.client.access_log.is_none());
        let defaults = resolve(&Scopes { ordered: vec![] }, &mesh());
        assert_eq!(defaults.server.tracing.unwrap().sampling, DEFAULT_SAMPLING);
        let unknown = telemetry("  tracing: [{providers: [{name: jaeger}]}]\n  metrics: [{overrides: [{tagOverrides: {x: {operation: REMOVE}}}]}]\n");
        let t = resolve(&Scopes { ordered: vec![("ns/t", &unknown)] }, &mesh());
        assert!(t.client.tracing.is_none());
        assert!(t.warnings.iter().any(|w| w.contains("Telemetry ns/t") && w.contains("`jaeger`")), "{:?}", t.warnings);
        assert!(t.warnings.iter().any(|w| w.contains("tagOverrides.x: REMOVE")), "{:?}", t.warnings);
        let invalid = |spec: &str| {
            let yaml =
                format!("apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: t}}\nspec:\n{spec}");
            Resource::from_yaml(&yaml).unwrap_err().to_string()
        };
        assert!(invalid("  tracing: [{randomSamplingPercentage: 150}]\n").contains("randomSamplingPercentage"));
        let no_value = invalid("  metrics: [{overrides: [{tagOverrides: {x: {operation: UPSERT}}}]}]\n");
        assert!(no_value.contains("spec.metrics[0].overrides[0].tagOverrides.x.value"), "{no_value}");
        let bad_attribute = invalid("  metrics: [{overrides: [{tagOverrides: {x: {value: request.hostname}}}]}]\n");
        assert!(bad_attribute.contains("`request.hostname` is not supported"), "{bad_attribute}");
        let bad_filter = invalid("  accessLogging: [{filter: {expression: 'response.code >='}}]\n");
        assert!(bad_filter.contains("spec.accessLogging[0].filter.expression"), "{bad_filter}");
    }

    #[test]
    fn tag_overrides_merge_per_metric_and_tag_later_scopes_winning() {
        let root = telemetry(
            "  metrics:\n  - overrides:\n    - tagOverrides: {request_host: {value: request.host}, source_principal: {operation: REMOVE}}\n",
        );
        let workload = telemetry(
            "  metrics:\n  - overrides:\n    - match: {metric: REQUEST_COUNT, mode: SERVER}\n      tagOverrides: {request_host: {value: \"'fixed'\"}, source_principal: {value: source.address}}\n",
        );
        let t = resolve(&Scopes { ordered: vec![("istio-system/root", &root), ("ns/w", &workload)] }, &mesh());
        let upsert = |s: &str| TagOp::Upsert(s.to_string());
        let server_requests = &t.server.tag_overrides["istio_requests_total"];
        assert_eq!(server_requests["request_host"], upsert("'fixed'"));
        assert_eq!(server_requests["source_principal"], upsert("source.address"));
        let client_requests = &t.client.tag_overrides["istio_requests_total"];
        assert_eq!(client_requests["request_host"], upsert("request.host"));
        assert_eq!(client_requests["source_principal"], TagOp::Remove);
        assert_eq!(t.server.tag_overrides["istio_tcp_sent_bytes_total"]["source_principal"], TagOp::Remove);
        assert_eq!(t.server.tag_overrides.len(), 8, "ALL_METRICS is every metric");
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    }
}
