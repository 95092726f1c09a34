//! TLS contexts back to mesh-core's settings. The node's own certificate
//! and roots over SDS (`default`, `ROOTCA`) are in-mesh mTLS, which
//! mesh-proxy does with its workload identity; `kubernetes://NAME` is a
//! gateway credential. Any other certificate source cannot be enforced
//! and is refused (the resource is NACKed), never served without TLS.

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, CertificateValidationContext, CommonTlsContext, DownstreamTlsContext,
    TlsCertificate, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use mesh_core::mtls::ISTIO_MUTUAL;
use mesh_core::proxy_config::{ServerTls, UpstreamTls};

use super::file;
use crate::sds::{ROOT_SECRET, WORKLOAD_SECRET};

const KUBERNETES: &str = "kubernetes://";

/// Where a context's certificate comes from.
enum Source<'a> {
    None,
    Files(&'a TlsCertificate),
    /// The node's workload certificate (`default`).
    Mesh,
    /// A gateway credential, `kubernetes://NAME`.
    Credential(String),
}

fn source(common: &CommonTlsContext) -> Result<Source<'_>, String> {
    if common.tls_certificate_provider_instance.is_some() {
        return Err("certificate provider instances are not supported".into());
    }
    match (common.tls_certificates.as_slice(), common.tls_certificate_sds_secret_configs.as_slice()) {
        ([], []) => Ok(Source::None),
        ([one], []) => Ok(Source::Files(one)),
        ([], [one]) if one.name == WORKLOAD_SECRET => Ok(Source::Mesh),
        ([], [one]) => match one.name.strip_prefix(KUBERNETES) {
            Some(name) if !name.is_empty() => Ok(Source::Credential(name.to_string())),
            _ => Err(format!(
                "SDS secret {:?}: only `{WORKLOAD_SECRET}` and `{KUBERNETES}NAME` are served to mesh-proxy",
                one.name
            )),
        },
        _ => Err("exactly one certificate is supported".into()),
    }
}

/// The plain validation context, and whether the roots are the mesh's
/// (`ROOTCA` over SDS).
fn validation(common: &CommonTlsContext) -> Result<(Option<&CertificateValidationContext>, bool), String> {
    match &common.validation_context_type {
        None => Ok((None, false)),
        Some(ValidationContextType::ValidationContext(v)) => Ok((Some(v), false)),
        Some(ValidationContextType::CombinedValidationContext(c)) => {
            match c.validation_context_sds_secret_config.as_ref().map(|s| s.name.as_str()) {
                Some(ROOT_SECRET) => Ok((c.default_validation_context.as_ref(), true)),
                other => Err(format!("validation context over SDS {other:?}: only `{ROOT_SECRET}` is served")),
            }
        }
        Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => match s.name.strip_prefix(KUBERNETES) {
            Some(_) => Ok((None, false)),
            None => Err(format!("validation context over SDS {:?}: only `{KUBERNETES}NAME-cacert` is served", s.name)),
        },
        Some(_) => Err("this validation context type is not supported".into()),
    }
}

fn san_patterns(v: Option<&CertificateValidationContext>) -> impl Iterator<Item = &MatchPattern> {
    v.into_iter()
        .flat_map(|v| &v.match_typed_subject_alt_names)
        .filter_map(|m| m.matcher.as_ref()?.match_pattern.as_ref())
}

pub(super) fn upstream(ctx: UpstreamTlsContext, auto: bool) -> Result<UpstreamTls, String> {
    let common = ctx.common_tls_context.unwrap_or_default();
    let (v, mesh_roots) = validation(&common)?;
    let exact_names = san_patterns(v)
        .filter_map(|p| match p {
            MatchPattern::Exact(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    let sni = (!ctx.sni.is_empty()).then_some(ctx.sni);
    let mut tls = UpstreamTls {
        mode: "SIMPLE".into(),
        ca_certificates: v.and_then(|v| file(v.trusted_ca.as_ref())),
        client_certificate: None,
        private_key: None,
        credential_name: None,
        sni,
        subject_alt_names: exact_names,
        insecure_skip_verify: v.is_none() && !mesh_roots,
        alpn: common.alpn_protocols.clone(),
        auto,
    };
    match source(&common)? {
        Source::Mesh if mesh_roots => tls.mode = ISTIO_MUTUAL.into(),
        Source::Mesh => return Err(format!("the workload certificate needs the mesh's roots (`{ROOT_SECRET}`)")),
        Source::Files(c) => {
            tls.mode = "MUTUAL".into();
            tls.client_certificate = file(c.certificate_chain.as_ref());
            tls.private_key = file(c.private_key.as_ref());
        }
        Source::None => {}
        Source::Credential(name) => return Err(format!("client credential {KUBERNETES}{name} is not supported")),
    }
    Ok(tls)
}

pub(super) fn downstream(ctx: &DownstreamTlsContext) -> Result<ServerTls, String> {
    let common = ctx.common_tls_context.clone().unwrap_or_default();
    let mutual = ctx.require_client_certificate.as_ref().is_some_and(|b| b.value);
    let (v, mesh_roots) = validation(&common)?;
    let mut tls = ServerTls {
        mode: if mutual { "MUTUAL" } else { "SIMPLE" }.into(),
        certificate_chain: None,
        private_key: None,
        ca_certificates: v.and_then(|v| file(v.trusted_ca.as_ref())),
        credential_name: None,
        alpn: common.alpn_protocols.clone(),
        peer_trust_domains: Vec::new(),
    };
    match source(&common)? {
        Source::Mesh if mesh_roots && mutual => {
            tls.mode = ISTIO_MUTUAL.into();
            tls.peer_trust_domains = san_patterns(v)
                .filter_map(|p| match p {
                    MatchPattern::Prefix(p) => {
                        p.strip_prefix("spiffe://").map(|td| td.trim_end_matches('/').to_string())
                    }
                    _ => None,
                })
                .collect();
        }
        Source::Mesh => {
            return Err(
                "the workload certificate is served only with client certificates checked against `ROOTCA`".into()
            )
        }
        Source::Files(c) => {
            tls.certificate_chain = file(c.certificate_chain.as_ref());
            tls.private_key = file(c.private_key.as_ref());
        }
        Source::Credential(name) => tls.credential_name = Some(name),
        Source::None => return Err("a server certificate is required".into()),
    }
    Ok(tls)
}
