//! TLS transport sockets as Istio builds them for Envoy: in-mesh mTLS
//! with the node's secrets over SDS (`default`, `ROOTCA`), gateway
//! credentials (`credentialName`) over SDS as `kubernetes://NAME`, and
//! certificates from files.

use envoy_types::pb::envoy::config::core::v3::{
    transport_socket::ConfigType as SocketConfig, DataSource, TransportSocket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::{CombinedCertificateValidationContext, ValidationContextType},
    CertificateProviderPluginInstance, CertificateValidationContext, CommonTlsContext, DownstreamTlsContext,
    SdsSecretConfig, SubjectAltNameMatcher, TlsCertificate, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use std::collections::BTreeSet;

use mesh_core::mtls::ISTIO_MUTUAL;
use mesh_core::proxy_config::{ServerTls, UpstreamTls};
use mesh_core::ProxyConfig;

use crate::sds::{SecretRef, ROOT_SECRET, WORKLOAD_SECRET};

use super::{ads, any, boolean, file, Flavor};

const TLS_SOCKET: &str = "envoy.transport_sockets.tls";

/// `SubjectAltNameMatcher.san_type` values.
const SAN_DNS: i32 = 2;
const SAN_URI: i32 = 3;

/// The cluster's TLS, or `None` for plaintext. `ISTIO_MUTUAL` presents
/// the node's workload certificate and checks the server's SPIFFE ID
/// against the destination's service accounts (secure naming).
pub(super) fn upstream(tls: &UpstreamTls, flavor: Flavor) -> Option<TransportSocket> {
    if tls.mode == "DISABLE" {
        return None;
    }
    let common = if tls.mode == ISTIO_MUTUAL && flavor == Flavor::ProxylessGrpc {
        provider_context(&tls.subject_alt_names)
    } else if tls.mode == ISTIO_MUTUAL {
        let names = tls.subject_alt_names.iter().map(|san| san_matcher(SAN_URI, MatchPattern::Exact(san.clone())));
        mesh_context(names.collect(), tls.alpn.clone(), tls.insecure_skip_verify)
    } else if let Some(name) = &tls.credential_name {
        credential_client_context(tls, name)
    } else {
        file_client_context(tls)
    };
    let context = UpstreamTlsContext {
        common_tls_context: Some(common),
        sni: tls.sni.clone().unwrap_or_default(),
        ..Default::default()
    };
    Some(socket(any(&context)))
}

/// A server chain's TLS; `None` when Envoy could not load its certificate
/// (a SIMPLE or MUTUAL server with neither files nor a credential).
pub(super) fn downstream(tls: &ServerTls) -> Option<TransportSocket> {
    let (common, mutual) = if tls.mode == ISTIO_MUTUAL {
        let prefixes = tls
            .peer_trust_domains
            .iter()
            .map(|td| san_matcher(SAN_URI, MatchPattern::Prefix(format!("spiffe://{td}/"))))
            .collect();
        (mesh_context(prefixes, tls.alpn.clone(), false), true)
    } else {
        let mutual = tls.mode == "MUTUAL";
        (file_or_credential_server_context(tls, mutual)?, mutual)
    };
    let context = DownstreamTlsContext {
        common_tls_context: Some(common),
        require_client_certificate: mutual.then(|| boolean(true)).flatten(),
        ..Default::default()
    };
    Some(socket(any(&context)))
}

/// The node's own certificate and the mesh's roots, both over SDS, with
/// the peer's SPIFFE ID checked by `subject_alt_names`.
fn mesh_context(
    subject_alt_names: Vec<SubjectAltNameMatcher>,
    alpn: Vec<String>,
    skip_names: bool,
) -> CommonTlsContext {
    let validation = CertificateValidationContext {
        match_typed_subject_alt_names: if skip_names { Vec::new() } else { subject_alt_names },
        ..Default::default()
    };
    CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![sds(WORKLOAD_SECRET)],
        validation_context_type: Some(ValidationContextType::CombinedValidationContext(
            CombinedCertificateValidationContext {
                default_validation_context: Some(validation),
                validation_context_sds_secret_config: Some(sds(ROOT_SECRET)),
                ..Default::default()
            },
        )),
        alpn_protocols: alpn,
        ..Default::default()
    }
}

/// In-mesh mTLS for proxyless gRPC, as Istio sends it: gRPC reads the
/// certificate and roots from the certificate providers of its bootstrap
/// (instance `default`: the workload certificate `default`, the roots
/// `ROOTCA`), not SDS; the server's SPIFFE ID is checked as for Envoy.
fn provider_context(subject_alt_names: &[String]) -> CommonTlsContext {
    let instance = |name: &str| CertificateProviderPluginInstance {
        instance_name: "default".into(),
        certificate_name: name.into(),
    };
    let names = subject_alt_names
        .iter()
        .map(|san| StringMatcher { match_pattern: Some(MatchPattern::Exact(san.clone())), ..Default::default() });
    // gRPC reads `match_subject_alt_names` (gRFC A29), as Istio sends it.
    #[allow(deprecated)]
    let validation = CertificateValidationContext {
        ca_certificate_provider_instance: Some(instance(ROOT_SECRET)),
        match_subject_alt_names: names.collect(),
        ..Default::default()
    };
    CommonTlsContext {
        tls_certificate_provider_instance: Some(instance(WORKLOAD_SECRET)),
        validation_context_type: Some(ValidationContextType::ValidationContext(validation)),
        ..Default::default()
    }
}

/// SIMPLE and MUTUAL origination with files (DestinationRule `tls`).
fn file_client_context(tls: &UpstreamTls) -> CommonTlsContext {
    let validation = (!tls.insecure_skip_verify).then(|| CertificateValidationContext {
        trusted_ca: file(&tls.ca_certificates),
        match_typed_subject_alt_names: tls
            .subject_alt_names
            .iter()
            .map(|san| san_matcher(SAN_DNS, MatchPattern::Exact(san.clone())))
            .collect(),
        ..Default::default()
    });
    let certificates = match &tls.client_certificate {
        Some(_) => vec![certificate(file(&tls.client_certificate), file(&tls.private_key))],
        None => Vec::new(),
    };
    CommonTlsContext {
        tls_certificates: certificates,
        validation_context_type: validation.map(ValidationContextType::ValidationContext),
        alpn_protocols: tls.alpn.clone(),
        ..Default::default()
    }
}

/// SIMPLE and MUTUAL origination with a `credentialName` over SDS, as
/// Istio builds it: the server is checked against the credential's CA
/// (`kubernetes://NAME-cacert`), and MUTUAL presents its certificate.
fn credential_client_context(tls: &UpstreamTls, name: &str) -> CommonTlsContext {
    let validation = (!tls.insecure_skip_verify).then(|| {
        let names = tls.subject_alt_names.iter().map(|san| san_matcher(SAN_DNS, MatchPattern::Exact(san.clone())));
        ValidationContextType::CombinedValidationContext(CombinedCertificateValidationContext {
            default_validation_context: Some(CertificateValidationContext {
                match_typed_subject_alt_names: names.collect(),
                ..Default::default()
            }),
            validation_context_sds_secret_config: Some(sds(&SecretRef::Roots(name.to_string()).sds_name())),
            ..Default::default()
        })
    });
    let certificates = match tls.mode.as_str() {
        "MUTUAL" => vec![sds(&SecretRef::Certificate(name.to_string()).sds_name())],
        _ => Vec::new(),
    };
    CommonTlsContext {
        tls_certificate_sds_secret_configs: certificates,
        validation_context_type: validation,
        alpn_protocols: tls.alpn.clone(),
        ..Default::default()
    }
}

/// A gateway server's certificate: its `credentialName` over SDS (and, for
/// MUTUAL, the client CA as `kubernetes://NAME-cacert`, as Istio names
/// it), or files.
fn file_or_credential_server_context(tls: &ServerTls, mutual: bool) -> Option<CommonTlsContext> {
    let mut common = CommonTlsContext { alpn_protocols: tls.alpn.clone(), ..Default::default() };
    if let Some(name) = &tls.credential_name {
        common.tls_certificate_sds_secret_configs = vec![sds(&SecretRef::Certificate(name.clone()).sds_name())];
        if mutual {
            common.validation_context_type = Some(ValidationContextType::ValidationContextSdsSecretConfig(sds(
                &SecretRef::Roots(name.clone()).sds_name(),
            )));
        }
        return Some(common);
    }
    tls.certificate_chain.as_ref()?;
    common.tls_certificates = vec![certificate(file(&tls.certificate_chain), file(&tls.private_key))];
    if mutual && tls.ca_certificates.is_some() {
        common.validation_context_type = Some(ValidationContextType::ValidationContext(CertificateValidationContext {
            trusted_ca: file(&tls.ca_certificates),
            ..Default::default()
        }));
    }
    Some(common)
}

/// The credentials `cfg`'s resources refer to over SDS, as the two
/// functions above name them.
pub(super) fn credential_refs(cfg: &ProxyConfig) -> BTreeSet<SecretRef> {
    let mut refs = BTreeSet::new();
    let servers = cfg.listeners.iter().flat_map(|l| &l.filter_chains).filter_map(|c| c.tls.as_ref());
    for tls in servers.filter(|t| t.mode == "SIMPLE" || t.mode == "MUTUAL") {
        if let Some(name) = &tls.credential_name {
            refs.insert(SecretRef::Certificate(name.clone()));
            if tls.mode == "MUTUAL" {
                refs.insert(SecretRef::Roots(name.clone()));
            }
        }
    }
    let origination = cfg.clusters.iter().filter_map(|c| c.tls.as_ref());
    for tls in origination.filter(|t| t.mode == "SIMPLE" || t.mode == "MUTUAL") {
        if let Some(name) = &tls.credential_name {
            if !tls.insecure_skip_verify {
                refs.insert(SecretRef::Roots(name.clone()));
            }
            if tls.mode == "MUTUAL" {
                refs.insert(SecretRef::Certificate(name.clone()));
            }
        }
    }
    refs
}

fn certificate(chain: Option<DataSource>, key: Option<DataSource>) -> TlsCertificate {
    TlsCertificate { certificate_chain: chain, private_key: key, ..Default::default() }
}

fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig { name: name.to_string(), sds_config: Some(ads()) }
}

fn san_matcher(san_type: i32, pattern: MatchPattern) -> SubjectAltNameMatcher {
    SubjectAltNameMatcher {
        san_type,
        matcher: Some(StringMatcher { match_pattern: Some(pattern), ..Default::default() }),
        ..Default::default()
    }
}

fn socket(config: envoy_types::pb::google::protobuf::Any) -> TransportSocket {
    TransportSocket { name: TLS_SOCKET.into(), config_type: Some(SocketConfig::TypedConfig(config)) }
}
