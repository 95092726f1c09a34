//! `IstioCertificateService/CreateCertificate` over gRPC and TLS, as
//! istiod serves it on 15012: the caller is authenticated (a token in
//! the `authorization` metadata, or its client certificate), then its
//! CSR is signed for the identities it proved, and nothing else.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use mesh_core::certificate::CertificateInfo;
use prost::Message;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::authn::{self, Authenticator, Credentials};
use super::authority::{CertificateAuthority, SignError};
use super::proto::{IstioCertificateRequest, IstioCertificateResponse, CREATE_CERTIFICATE};
use crate::grpc::{self, Caller, GrpcStatus};

/// What the CA has done, as Istio's `citadel_server_*` metrics count it.
#[derive(Debug, Default)]
pub struct CaStats {
    /// CSRs received.
    pub csr: AtomicU64,
    /// Callers that proved no identity.
    pub authn_failures: AtomicU64,
    /// CSRs refused after authentication (bad CSR, identity not proven,
    /// lifetime too long).
    pub sign_errors: AtomicU64,
    /// Certificates issued.
    pub issued: AtomicU64,
}

/// The CA's gRPC service.
#[derive(Clone)]
pub struct CaServer {
    ca: Arc<CertificateAuthority>,
    authenticators: Arc<[Arc<dyn Authenticator>]>,
    stats: Arc<CaStats>,
}

impl CaServer {
    pub fn new(ca: Arc<CertificateAuthority>, authenticators: Vec<Arc<dyn Authenticator>>) -> CaServer {
        CaServer { ca, authenticators: authenticators.into(), stats: Arc::default() }
    }

    pub fn stats(&self) -> &Arc<CaStats> {
        &self.stats
    }

    /// One CSR, from a caller that showed `credentials`.
    pub async fn create_certificate(
        &self,
        request: &IstioCertificateRequest,
        credentials: &Credentials<'_>,
    ) -> Result<IstioCertificateResponse, GrpcStatus> {
        self.stats.csr.fetch_add(1, Ordering::Relaxed);
        let ids = match authn::authenticate(&self.authenticators, credentials).await {
            Ok(ids) => ids,
            Err(e) => {
                self.stats.authn_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(remote = %credentials.remote, error = %e, "CSR refused");
                return Err(GrpcStatus::new(GrpcStatus::UNAUTHENTICATED, e.to_string()));
            }
        };
        let ttl = Duration::from_secs(u64::try_from(request.validity_duration).unwrap_or(0));
        match self.ca.sign(&request.csr, &ids, ttl) {
            Ok(issued) => {
                self.stats.issued.fetch_add(1, Ordering::Relaxed);
                let names: Vec<String> = ids.iter().map(ToString::to_string).collect();
                tracing::debug!(remote = %credentials.remote, identities = %names.join(","), "certificate issued");
                Ok(IstioCertificateResponse { cert_chain: issued.cert_chain })
            }
            Err(e) => {
                self.stats.sign_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(remote = %credentials.remote, error = %e, "CSR refused");
                let code = match e {
                    SignError::NotProven { .. } | SignError::NoIdentity => GrpcStatus::PERMISSION_DENIED,
                    SignError::BadCsr(_) | SignError::TtlTooLong { .. } => GrpcStatus::INVALID_ARGUMENT,
                    SignError::SignerExpired(_) | SignError::Signing(_) => GrpcStatus::INTERNAL,
                };
                Err(GrpcStatus::new(code, format!("CSR signing error: {e}")))
            }
        }
    }

    /// Serves the CA over TLS on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        tls: Arc<rustls::ServerConfig>,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        grpc::serve(listener, Some(tls), shutdown, move |req, caller| {
            let server = self.clone();
            async move { server.call(req, &caller).await }
        })
        .await
    }

    /// One call: `CreateCertificate`, or `UNIMPLEMENTED`.
    pub async fn call(
        &self,
        req: http::Request<hyper::body::Incoming>,
        caller: &Caller,
    ) -> http::Response<grpc::GrpcBody> {
        if req.uri().path() != CREATE_CERTIFICATE {
            let status = GrpcStatus::new(GrpcStatus::UNIMPLEMENTED, format!("unknown method {}", req.uri().path()));
            return grpc::status_response(&status);
        }
        let token = grpc::bearer_token(req.headers());
        let credentials = Credentials {
            bearer_token: token.as_deref(),
            peer_certificate: caller.peer_certificate.as_deref(),
            remote: caller.remote,
        };
        let answer = match grpc::request_messages::<IstioCertificateRequest>(req, grpc::MAX_MESSAGE).next().await {
            Some(Ok(request)) => self.create_certificate(&request, &credentials).await,
            Some(Err(status)) => Err(status),
            None => Err(GrpcStatus::new(GrpcStatus::INVALID_ARGUMENT, "no request message")),
        };
        match answer {
            Ok(response) => grpc::unary_response(response.encode_to_vec()),
            Err(status) => grpc::status_response(&status),
        }
    }
}

/// The TLS side of the CA's port: a certificate for `dns_names` issued
/// by the CA itself and renewed at half its life, and client
/// certificates asked for (not required: a first CSR proves itself with
/// a token) and verified against the CA's roots.
pub fn tls_config(ca: Arc<CertificateAuthority>, dns_names: Vec<String>) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.root_pem().as_bytes()) {
        roots.add(cert.map_err(|e| format!("root-cert.pem: {e}"))?).map_err(|e| format!("root-cert.pem: {e}"))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| e.to_string())?;
    let resolver = Arc::new(SelfIssued { ca, dns_names, current: Mutex::new(None) });
    resolver.renewed().ok_or("the CA could not issue its own server certificate")?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    let mut config = config;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The CA port's own certificate, issued again once half its life passed.
#[derive(Debug)]
struct SelfIssued {
    ca: Arc<CertificateAuthority>,
    dns_names: Vec<String>,
    current: Mutex<Option<(Arc<CertifiedKey>, SystemTime)>>,
}

impl SelfIssued {
    fn renewed(&self) -> Option<Arc<CertifiedKey>> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((key, renew_at)) = current.as_ref() {
            if SystemTime::now() < *renew_at {
                return Some(key.clone());
            }
        }
        let (chain, key_pem) = self.ca.issue_server_certificate(&self.dns_names).ok()?;
        let certs: Vec<CertificateDer<'static>> = chain
            .iter()
            .flat_map(|pem| CertificateDer::pem_slice_iter(pem.as_bytes()))
            .collect::<Result<_, _>>()
            .ok()?;
        let info = CertificateInfo::from_der(certs.first()?).ok()?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).ok()?;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let certified = Arc::new(CertifiedKey::from_der(certs, key, &provider).ok()?);
        let half_life = info.remaining(SystemTime::now()) / 2;
        *current = Some((certified.clone(), SystemTime::now() + half_life));
        Some(certified)
    }
}

impl ResolvesServerCert for SelfIssued {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.renewed()
    }
}
