//! A workload's side of the CA: a new key and CSR, sent to
//! `CreateCertificate` over TLS with a token or the current certificate
//! as proof, and renewed at half the certificate's life with jitter, as
//! Istio's agent does. Each certificate is published on a watch channel
//! the data plane builds its TLS configs from.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Full};
use mesh_core::certificate::WorkloadCertificate;
use mesh_core::identity::SpiffeId;
use prost::Message;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::sync::watch;

use super::proto::{IstioCertificateRequest, IstioCertificateResponse, CREATE_CERTIFICATE};

/// How a workload proves who it is.
#[derive(Clone, Debug)]
pub enum Proof {
    /// A token file, read again for every request (Kubernetes rotates
    /// projected service-account tokens).
    TokenFile(std::path::PathBuf),
    /// A token given as is.
    Token(String),
    /// Only the current certificate: renewal without a token.
    CertificateOnly,
}

#[derive(Clone, Debug)]
pub struct CaClientOptions {
    /// `host:port` of the CA (istiod's 15012).
    pub address: String,
    /// The name the CA's certificate must carry (`istiod.istio-system.svc`).
    pub server_name: String,
    /// The roots the CA's certificate must chain to (Istio's
    /// `istio-ca-root-cert`), PEM.
    pub ca_roots_pem: String,
    pub identity: SpiffeId,
    pub proof: Proof,
    /// The lifetime asked for; zero for the CA's default.
    pub ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CaClientError {
    #[error("CA {address}: {reason}")]
    Transport { address: String, reason: String },
    #[error("CA {address} refused the CSR for {identity}: {message} (gRPC status {code})")]
    Refused { address: String, identity: String, code: u32, message: String },
    #[error("CA {address}: the answer is no certificate chain for {identity}: {reason}")]
    BadAnswer { address: String, identity: String, reason: String },
    #[error("{0}")]
    Local(String),
}

/// Asks the CA once for a certificate of `options.identity`, proving it
/// with `options.proof` and, when given, the `current` certificate.
pub async fn request_certificate(
    options: &CaClientOptions,
    current: Option<&WorkloadCertificate>,
) -> Result<WorkloadCertificate, CaClientError> {
    let key = KeyPair::generate().map_err(|e| CaClientError::Local(format!("a new key: {e}")))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let uri = options.identity.to_string().try_into().map_err(|e| CaClientError::Local(format!("{e}")))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    let csr =
        params.serialize_request(&key).and_then(|c| c.pem()).map_err(|e| CaClientError::Local(format!("CSR: {e}")))?;
    let token = match &options.proof {
        Proof::TokenFile(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| CaClientError::Local(format!("token file {}: {e}", path.display())))?
                .trim()
                .to_string(),
        ),
        Proof::Token(t) => Some(t.clone()),
        Proof::CertificateOnly => None,
    };
    let request = IstioCertificateRequest {
        csr,
        validity_duration: i64::try_from(options.ttl.as_secs()).unwrap_or(i64::MAX),
        metadata: None,
    };
    let response = call(options, token.as_deref(), current, request).await?;
    let bad = |reason: &str| CaClientError::BadAnswer {
        address: options.address.clone(),
        identity: options.identity.to_string(),
        reason: reason.into(),
    };
    // Istio's answer: the leaf, its chain, and the root bundle last.
    let Some((roots, chain)) = response.cert_chain.split_last() else { return Err(bad("an empty chain")) };
    if chain.is_empty() {
        return Err(bad("no leaf before the root"));
    }
    let certificate = WorkloadCertificate::new(chain.concat(), key.serialize_pem(), roots.clone())
        .map_err(|e| bad(&e.to_string()))?;
    if !certificate.leaf.spiffe_ids().contains(&options.identity) {
        return Err(bad(&format!("the certificate names {:?}", certificate.leaf.uris)));
    }
    Ok(certificate)
}

/// Keeps a certificate of `options.identity` on `tx`: the first at once,
/// each next at half the current one's remaining life (jittered by up
/// to a tenth, so a fleet started together does not renew together),
/// retrying with capped backoff on failure while the current one serves.
pub async fn keep_certificate(options: CaClientOptions, tx: watch::Sender<Option<Arc<WorkloadCertificate>>>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let current = tx.borrow().clone();
        match request_certificate(&options, current.as_deref()).await {
            Ok(certificate) => {
                backoff = Duration::from_millis(200);
                let life = certificate.leaf.remaining(SystemTime::now());
                tracing::info!(identity = %options.identity, serial = %certificate.leaf.serial, ?life, "workload certificate issued");
                if tx.send(Some(Arc::new(certificate))).is_err() {
                    return;
                }
                let half = life / 2;
                let jitter = half.mul_f64(fastrand::f64() * 0.1);
                tokio::time::sleep(half - jitter).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "workload certificate not renewed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// One unary gRPC call over TLS (HTTP/2), the current certificate as the
/// client certificate when there is one.
async fn call(
    options: &CaClientOptions,
    token: Option<&str>,
    current: Option<&WorkloadCertificate>,
    request: IstioCertificateRequest,
) -> Result<IstioCertificateResponse, CaClientError> {
    let transport = |reason: String| CaClientError::Transport { address: options.address.clone(), reason };
    let tls = client_config(options, current).map_err(transport)?;
    let server_name = ServerName::try_from(options.server_name.clone()).map_err(|e| transport(e.to_string()))?;
    let tcp = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(&options.address))
        .await
        .map_err(|_| transport("connect timed out".into()))?
        .map_err(|e| transport(format!("connect: {e}")))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(server_name, tcp)
        .await
        .map_err(|e| transport(format!("TLS: {e}")))?;
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .map_err(|e| transport(format!("HTTP/2: {e}")))?;
    tokio::spawn(connection);
    let body = request.encode_to_vec();
    let mut framed = Vec::with_capacity(5 + body.len());
    framed.push(0);
    framed.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    framed.extend_from_slice(&body);
    let mut req = http::Request::post(format!("https://{}{CREATE_CERTIFICATE}", options.server_name))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers");
    if let Some(token) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req.body(Full::new(Bytes::from(framed))).map_err(|e| transport(e.to_string()))?;
    let response = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
        .await
        .map_err(|_| transport("no answer in 30 s".into()))?
        .map_err(|e| transport(format!("HTTP/2: {e}")))?;
    let headers = response.headers().clone();
    let collected = response.into_body().collect().await.map_err(|e| transport(format!("HTTP/2: {e}")))?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let status =
        |name: &str| trailers.get(name).or_else(|| headers.get(name)).and_then(|v| v.to_str().ok()).map(str::to_string);
    let code: u32 = status("grpc-status").and_then(|c| c.parse().ok()).unwrap_or(2);
    if code != 0 {
        let message = status("grpc-message")
            .map(|m| percent_encoding::percent_decode_str(&m).decode_utf8_lossy().into_owned())
            .unwrap_or_default();
        return Err(CaClientError::Refused {
            address: options.address.clone(),
            identity: options.identity.to_string(),
            code,
            message,
        });
    }
    let mut data = collected.to_bytes();
    if data.len() < 5 {
        return Err(transport("no message in the answer".into()));
    }
    data.advance(5);
    IstioCertificateResponse::decode(data).map_err(|e| transport(format!("bad message: {e}")))
}

fn client_config(
    options: &CaClientOptions,
    current: Option<&WorkloadCertificate>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(options.ca_roots_pem.as_bytes()) {
        roots.add(cert.map_err(|e| format!("CA roots: {e}"))?).map_err(|e| format!("CA roots: {e}"))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let usable = current.filter(|c| c.leaf.valid_at(SystemTime::now()));
    let mut config = match usable {
        Some(current) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(current.chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            let key = PrivateKeyDer::from_pem_slice(current.key_pem.as_bytes()).map_err(|e| e.to_string())?;
            builder.with_client_auth_cert(chain, key).map_err(|e| e.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
