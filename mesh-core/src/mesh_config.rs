//! The mesh-wide settings of Istio's MeshConfig (the `mesh` key of the
//! `istio` ConfigMap, or `meshConfig` of an IstioOperator) that decide
//! translation: the trust domain and its aliases, auto mTLS, the root
//! namespace, the outbound traffic policy, the access log's file and
//! encoding, and the telemetry providers. Fields of MeshConfig not listed here are accepted and left
//! alone, so users paste their file as it is.

use serde::{Deserialize, Serialize};

use crate::identity::{TrustDomains, DEFAULT_TRUST_DOMAIN};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MeshConfig {
    pub trust_domain: String,
    pub trust_domain_aliases: Vec<String>,
    /// mTLS to endpoints that have a sidecar (`security.istio.io/tlsMode:
    /// istio`) when no DestinationRule sets TLS.
    pub enable_auto_mtls: bool,
    /// Where mesh-wide policies live.
    pub root_namespace: String,
    /// Where sidecars send what the mesh does not know (a Sidecar
    /// resource's own policy overrides it).
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    /// Where proxies write their access log (`/dev/stdout`); empty: off.
    pub access_log_file: String,
    pub access_log_encoding: AccessLogEncoding,
    /// Tracing, metrics and logging backends, by name (the Telemetry API
    /// names them).
    pub extension_providers: Vec<ExtensionProvider>,
    /// The providers used where no Telemetry resource names one.
    pub default_providers: DefaultProviders,
    /// Proxies' defaults; only `tracing.sampling` is read.
    pub default_config: ProxyDefaults,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExtensionProvider {
    pub name: String,
    pub zipkin: Option<ZipkinProvider>,
    pub opentelemetry: Option<OpenTelemetryProvider>,
}

/// Zipkin's v2 JSON API (`POST /api/v2/spans`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ZipkinProvider {
    pub service: String,
    pub port: u16,
    pub max_tag_length: Option<u32>,
}

/// OTLP: over gRPC, or over HTTP when `http` is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OpenTelemetryProvider {
    pub service: String,
    pub port: u16,
    pub max_tag_length: Option<u32>,
    pub http: Option<OtlpHttp>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OtlpHttp {
    /// `/v1/traces` when empty.
    pub path: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DefaultProviders {
    pub tracing: Vec<String>,
    pub metrics: Vec<String>,
    pub access_logging: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProxyDefaults {
    pub tracing: Option<TracingDefaults>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TracingDefaults {
    /// Percent of new traces sampled; Istio's default is 1.
    pub sampling: Option<f64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OutboundTrafficPolicy {
    pub mode: OutboundMode,
}

/// Istio's `outboundTrafficPolicy.mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundMode {
    /// On to where it was going (Istio's PassthroughCluster).
    #[default]
    AllowAny,
    /// Only to services the registry knows: the rest is closed (TCP) or
    /// answered 502 (HTTP), Istio's BlackHoleCluster and `block_all`.
    RegistryOnly,
}

/// The access log's format: Istio's text format, or its fields as JSON.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AccessLogEncoding {
    #[default]
    Text,
    Json,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            trust_domain: DEFAULT_TRUST_DOMAIN.into(),
            trust_domain_aliases: Vec::new(),
            enable_auto_mtls: true,
            root_namespace: crate::translate::ROOT_NAMESPACE.into(),
            outbound_traffic_policy: OutboundTrafficPolicy::default(),
            access_log_file: String::new(),
            access_log_encoding: AccessLogEncoding::Text,
            extension_providers: Vec::new(),
            default_providers: DefaultProviders::default(),
            default_config: ProxyDefaults::default(),
        }
    }
}

impl MeshConfig {
    /// Reads MeshConfig YAML; `path` names the file in errors.
    pub fn from_yaml(path: &str, yaml: &str) -> Result<MeshConfig, String> {
        if yaml.trim().is_empty() {
            return Ok(MeshConfig::default());
        }
        serde_saphyr::from_str(yaml).map_err(|e| format!("{path}: MeshConfig: {e}"))
    }

    pub fn trust_domains(&self) -> TrustDomains {
        TrustDomains { own: self.trust_domain.clone(), aliases: self.trust_domain_aliases.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_defaults_and_the_fields_it_reads() {
        assert_eq!(MeshConfig::from_yaml("mesh.yaml", "").unwrap(), MeshConfig::default());
        let yaml = "trustDomain: corp.example\ntrustDomainAliases: [old.example]\nenableAutoMtls: false\naccessLogFile: /dev/stdout\n";
        let config = MeshConfig::from_yaml("mesh.yaml", yaml).unwrap();
        assert_eq!(config.trust_domain, "corp.example");
        assert!(!config.enable_auto_mtls);
        assert_eq!(config.root_namespace, "istio-system");
        assert_eq!(config.trust_domains().aliases, vec!["old.example".to_string()]);
        assert_eq!(config.outbound_traffic_policy.mode, OutboundMode::AllowAny);
        let locked = MeshConfig::from_yaml("mesh.yaml", "outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n").unwrap();
        assert_eq!(locked.outbound_traffic_policy.mode, OutboundMode::RegistryOnly);
        let typo = MeshConfig::from_yaml("mesh.yaml", "outboundTrafficPolicy: {mode: REGISTRY}\n");
        assert!(typo.is_err_and(|e| e.contains("mesh.yaml")), "an unknown mode is an error naming the file");
        assert_eq!(
            (config.access_log_file.as_str(), config.access_log_encoding),
            ("/dev/stdout", AccessLogEncoding::Text)
        );
        let json = MeshConfig::from_yaml("mesh.yaml", "accessLogEncoding: JSON\n").unwrap();
        assert_eq!(json.access_log_encoding, AccessLogEncoding::Json);
        let err = MeshConfig::from_yaml("mesh.yaml", "enableAutoMtls: maybe").unwrap_err();
        assert!(err.starts_with("mesh.yaml: MeshConfig:"), "{err}");
    }
}
