//! Which connections carry Istio mutual TLS, decided as Pilot decides it.
//!
//! Outbound, per cluster: a DestinationRule's `tls` wins (`ISTIO_MUTUAL`
//! gets Istio's SNI and the destination's service accounts as the
//! identities to expect, unless the rule names its own); with none, auto
//! mTLS sends mTLS to the endpoints that have a sidecar
//! (`security.istio.io/tlsMode: istio`) and plaintext to the rest, unless
//! the mesh turned it off, the service is outside the mesh, or the
//! destination's namespace disables mTLS.
//!
//! Inbound, per workload port: the effective PeerAuthentication mode
//! becomes filter chains as Envoy's are: STRICT an mTLS chain only,
//! DISABLE a plaintext chain only, PERMISSIVE both, told apart by the
//! first bytes of the connection.

use crate::config::networking::ClientTlsSettings;
use crate::mesh_config::MeshConfig;
use crate::model::{Endpoint, Service};
use crate::peer_authentication::MtlsMode;
use crate::proxy_config::{ServerTls, UpstreamTls};

/// The label Istio puts on workloads with a sidecar.
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";

/// `ISTIO_MUTUAL`: the workload's own certificate, the mesh's roots.
pub const ISTIO_MUTUAL: &str = "ISTIO_MUTUAL";

/// ALPN an Istio sidecar offers in the mesh (metadata exchange, then
/// Istio); `h2` is added for HTTP/2 clusters.
pub const ALPN_IN_MESH: [&str; 2] = ["istio-peer-exchange", "istio"];

/// Does this endpoint take mTLS (it has a sidecar)?
pub fn endpoint_mtls_ready(endpoint: &Endpoint) -> bool {
    endpoint.labels.get(TLS_MODE_LABEL).map(String::as_str) == Some("istio")
}

/// Istio's SNI for in-mesh mTLS: `outbound_.9080_.v1_.reviews.default.svc.cluster.local`.
pub fn istio_sni(port: u16, subset: Option<&str>, host: &str) -> String {
    format!("outbound_.{port}_.{}_.{host}", subset.unwrap_or(""))
}

/// The identities a destination's workloads may present (Istio's secure
/// naming): its endpoints' service accounts as SPIFFE IDs of the mesh's
/// trust domain, and a ServiceEntry's `subjectAltNames`; sorted, without
/// repeats.
pub fn service_identities(trust_domain: &str, service: &Service, endpoints: &[Endpoint]) -> Vec<String> {
    let namespace = &service.namespace;
    let mut ids: Vec<String> = endpoints
        .iter()
        .filter_map(|e| e.service_account.as_deref())
        .map(|sa| format!("spiffe://{trust_domain}/ns/{namespace}/sa/{sa}"))
        .chain(service.subject_alt_names.iter().cloned())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// What a cluster needs to decide its TLS.
pub struct Destination<'a> {
    pub service: &'a Service,
    pub port: u16,
    pub subset: Option<&'a str>,
    pub http2: bool,
    /// The identities its endpoints run as.
    pub identities: Vec<String>,
    /// The destination namespace's PeerAuthentication mode (no selector).
    pub namespace_mode: MtlsMode,
}

/// The TLS of an outbound cluster: `None` for plaintext.
pub fn upstream_tls(
    rule: Option<&ClientTlsSettings>,
    destination: &Destination<'_>,
    mesh: &MeshConfig,
) -> Option<UpstreamTls> {
    let istio = |rule: Option<&ClientTlsSettings>, auto: bool| {
        let mut alpn: Vec<String> = ALPN_IN_MESH.iter().map(|s| s.to_string()).collect();
        if destination.http2 {
            alpn.push("h2".into());
        }
        UpstreamTls {
            mode: ISTIO_MUTUAL.into(),
            ca_certificates: None,
            client_certificate: None,
            private_key: None,
            credential_name: None,
            sni: Some(
                rule.and_then(|r| r.sni.clone())
                    .unwrap_or_else(|| istio_sni(destination.port, destination.subset, &destination.service.hostname)),
            ),
            subject_alt_names: rule
                .map(|r| r.subject_alt_names.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| destination.identities.clone()),
            insecure_skip_verify: rule.and_then(|r| r.insecure_skip_verify).unwrap_or(false),
            alpn,
            auto,
        }
    };
    if let Some(rule) = rule {
        return match rule.mode.as_deref().unwrap_or("SIMPLE") {
            "DISABLE" => None,
            ISTIO_MUTUAL => Some(istio(Some(rule), false)),
            mode => Some(UpstreamTls {
                mode: mode.to_string(),
                ca_certificates: rule.ca_certificates.clone(),
                client_certificate: rule.client_certificate.clone(),
                private_key: rule.private_key.clone(),
                credential_name: rule.credential_name.clone(),
                sni: rule.sni.clone(),
                subject_alt_names: rule.subject_alt_names.clone(),
                insecure_skip_verify: rule.insecure_skip_verify.unwrap_or(false),
                alpn: Vec::new(),
                auto: false,
            }),
        };
    }
    let auto =
        mesh.enable_auto_mtls && !destination.service.mesh_external && destination.namespace_mode != MtlsMode::Disable;
    auto.then(|| istio(None, true))
}

/// The trust domains an in-mesh peer's identity may be of.
pub fn peer_trust_domains(mesh: &MeshConfig) -> Vec<String> {
    std::iter::once(&mesh.trust_domain).chain(&mesh.trust_domain_aliases).cloned().collect()
}

/// The inbound chains' TLS for a port in `mode`: `Some` is an mTLS chain,
/// `None` a plaintext one.
pub fn inbound_chains(mode: MtlsMode, mesh: &MeshConfig) -> Vec<Option<ServerTls>> {
    let mtls = || ServerTls {
        mode: ISTIO_MUTUAL.into(),
        certificate_chain: None,
        private_key: None,
        ca_certificates: None,
        credential_name: None,
        alpn: ["h2", "http/1.1", "istio-peer-exchange", "istio"].map(String::from).to_vec(),
        peer_trust_domains: peer_trust_domains(mesh),
    };
    match mode {
        MtlsMode::Strict => vec![Some(mtls())],
        MtlsMode::Disable => vec![None],
        MtlsMode::Permissive => vec![Some(mtls()), None],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Service;

    fn destination(service: &Service, mode: MtlsMode) -> Destination<'_> {
        Destination {
            service,
            port: 9080,
            subset: Some("v1"),
            http2: false,
            identities: vec!["spiffe://cluster.local/ns/default/sa/reviews".into()],
            namespace_mode: mode,
        }
    }

    fn rule(yaml: &str) -> ClientTlsSettings {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn auto_mtls_when_no_rule_sets_tls() {
        let svc = Service::http("reviews.default.svc.cluster.local", "default", 9080);
        let mesh = MeshConfig::default();
        let tls = upstream_tls(None, &destination(&svc, MtlsMode::Permissive), &mesh).unwrap();
        assert!(tls.auto);
        assert_eq!(tls.mode, "ISTIO_MUTUAL");
        assert_eq!(tls.sni.as_deref(), Some("outbound_.9080_.v1_.reviews.default.svc.cluster.local"));
        assert_eq!(tls.subject_alt_names, vec!["spiffe://cluster.local/ns/default/sa/reviews".to_string()]);
        assert_eq!(tls.alpn, vec!["istio-peer-exchange".to_string(), "istio".into()]);
        assert!(upstream_tls(None, &destination(&svc, MtlsMode::Disable), &mesh).is_none());
        let off = MeshConfig { enable_auto_mtls: false, ..MeshConfig::default() };
        assert!(upstream_tls(None, &destination(&svc, MtlsMode::Strict), &off).is_none());
        let external = Service { mesh_external: true, ..svc.clone() };
        assert!(upstream_tls(None, &destination(&external, MtlsMode::Permissive), &mesh).is_none());
    }

    #[test]
    fn a_rule_wins_over_auto_mtls() {
        let svc = Service::http("reviews.default.svc.cluster.local", "default", 9080);
        let mesh = MeshConfig::default();
        let d = destination(&svc, MtlsMode::Permissive);
        assert!(upstream_tls(Some(&rule("mode: DISABLE")), &d, &mesh).is_none());
        let explicit = upstream_tls(Some(&rule("mode: ISTIO_MUTUAL")), &d, &mesh).unwrap();
        assert!(!explicit.auto, "every endpoint, labeled or not");
        let named = upstream_tls(
            Some(&rule("mode: ISTIO_MUTUAL\nsni: x.example\nsubjectAltNames: [spiffe://td/ns/a/sa/b]")),
            &d,
            &mesh,
        )
        .unwrap();
        assert_eq!(named.sni.as_deref(), Some("x.example"));
        assert_eq!(named.subject_alt_names, vec!["spiffe://td/ns/a/sa/b".to_string()]);
        let simple = upstream_tls(Some(&rule("mode: SIMPLE\ncaCertificates: /etc/ca.pem")), &d, &mesh).unwrap();
        assert_eq!((simple.mode.as_str(), simple.ca_certificates.as_deref()), ("SIMPLE", Some("/etc/ca.pem")));
    }

    #[test]
    fn peer_authentication_modes_become_chains() {
        assert_eq!(
            inbound_chains(MtlsMode::Strict, &MeshConfig::default()).iter().map(Option::is_some).collect::<Vec<_>>(),
            [true]
        );
        assert_eq!(
            inbound_chains(MtlsMode::Disable, &MeshConfig::default()).iter().map(Option::is_some).collect::<Vec<_>>(),
            [false]
        );
        assert_eq!(
            inbound_chains(MtlsMode::Permissive, &MeshConfig::default())
                .iter()
                .map(Option::is_some)
                .collect::<Vec<_>>(),
            [true, false]
        );
    }
}
