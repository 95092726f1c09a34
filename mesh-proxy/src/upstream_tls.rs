//! TLS to upstream endpoints, as a cluster's DestinationRule (or auto mTLS)
//! says: `ISTIO_MUTUAL` with the workload's certificate and the
//! destination's expected SPIFFE IDs; `SIMPLE` and `MUTUAL` with the
//! rule's files (`caCertificates`, `clientCertificate`, `privateKey`,
//! `sni`, `subjectAltNames`, `insecureSkipVerify`).
//!
//! A setting the proxy cannot honour (ISTIO_MUTUAL with no workload
//! certificate, a file it cannot read) gives a connector that fails every
//! connection with the reason, never a plaintext one.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use mesh_core::proxy_config::{Cluster, UpstreamTls};
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::mtls::WorkloadIdentity;

/// How a pool's connections are made.
#[derive(Clone, Debug)]
pub enum Origination {
    Tls {
        config: Arc<rustls::ClientConfig>,
        server_name: ServerName<'static>,
    },
    /// The cluster's TLS cannot be honoured: every connection fails so.
    Refused(String),
}

/// A cluster's TLS for one endpoint: `None` for plaintext. Auto mTLS
/// applies only to endpoints with a sidecar.
pub fn for_endpoint(tls: Option<&UpstreamTls>, mtls_ready: bool) -> Option<&UpstreamTls> {
    tls.filter(|t| !t.auto || mtls_ready)
}

/// The origination of `tls` for `cluster`. `None` where auto mTLS meets a
/// proxy without a certificate: it cannot take part, so it speaks
/// plaintext as a workload without a sidecar would (warned).
pub fn origination(cluster: &Cluster, tls: &UpstreamTls, identity: Option<&WorkloadIdentity>) -> Option<Origination> {
    let server_name = tls.sni.clone().unwrap_or_else(|| cluster.service.clone());
    let server_name = match ServerName::try_from(server_name.clone()) {
        Ok(name) => name,
        Err(e) => return Some(Origination::Refused(format!("cluster {}: sni `{server_name}`: {e}", cluster.name))),
    };
    if tls.mode == mesh_core::mtls::ISTIO_MUTUAL {
        let Some(identity) = identity else {
            if tls.auto {
                tracing::warn!(cluster = %cluster.name, "auto mTLS: this proxy has no workload certificate, plaintext to sidecars");
                return None;
            }
            let reason =
                format!("cluster {}: ISTIO_MUTUAL needs a workload certificate, and this proxy has none", cluster.name);
            return Some(Origination::Refused(reason));
        };
        let config = identity.client_config(&cluster.name, &tls.subject_alt_names, &tls.alpn);
        return Some(Origination::Tls { config, server_name });
    }
    if let Some(name) = &tls.credential_name {
        // Origination reads files only; a connection without the
        // credential's certificate or CA would not be what was asked.
        let reason =
            format!("cluster {}: credentialName `{name}` for origination is not supported; use files", cluster.name);
        return Some(Origination::Refused(reason));
    }
    Some(match from_files(cluster, tls) {
        Ok(config) => Origination::Tls { config, server_name },
        Err(reason) => Origination::Refused(format!("cluster {}: {reason}", cluster.name)),
    })
}

/// SIMPLE and MUTUAL: the rule's CA, client certificate and names.
fn from_files(cluster: &Cluster, tls: &UpstreamTls) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let verifier: Arc<dyn ServerCertVerifier> = if tls.insecure_skip_verify {
        Arc::new(SkipVerify)
    } else {
        let Some(ca) = &tls.ca_certificates else {
            return Err("TLS origination needs caCertificates (or insecureSkipVerify)".into());
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("caCertificates `{ca}`: {e}"))? {
            roots
                .add(cert.map_err(|e| format!("caCertificates `{ca}`: {e}"))?)
                .map_err(|e| format!("caCertificates `{ca}`: {e}"))?;
        }
        let names = (!tls.subject_alt_names.is_empty()).then(|| tls.subject_alt_names.clone());
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| format!("caCertificates `{ca}`: {e}"))?;
        match names {
            Some(names) => Arc::new(NamedVerifier { inner: webpki, names }),
            None => webpki,
        }
    };
    let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
    let mut config = if tls.mode == "MUTUAL" {
        let (Some(cert), Some(key)) = (&tls.client_certificate, &tls.private_key) else {
            return Err("MUTUAL needs clientCertificate and privateKey".into());
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|it| it.collect())
            .map_err(|e| format!("clientCertificate `{cert}`: {e}"))?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("privateKey `{key}`: {e}"))?;
        builder.with_client_auth_cert(chain, key).map_err(|e| format!("clientCertificate: {e}"))?
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    tracing::debug!(cluster = %cluster.name, mode = %tls.mode, "TLS origination from files");
    Ok(Arc::new(config))
}

/// `subjectAltNames`: the certificate must be valid for one of these
/// names, whatever the SNI.
#[derive(Debug)]
struct NamedVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    names: Vec<String>,
}

impl ServerCertVerifier for NamedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut last = None;
        for name in &self.names {
            let Ok(name) = ServerName::try_from(name.as_str()) else { continue };
            match self.inner.verify_server_cert(end_entity, intermediates, &name, ocsp, now) {
                Ok(ok) => return Ok(ok),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)))
    }

    crate::mtls::verify::webpki_signatures!();
}

/// `insecureSkipVerify: true`: the user asked for no verification.
#[derive(Debug)]
struct SkipVerify;

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    crate::mtls::verify::webpki_signatures!();
}

/// An upstream connection, plain or TLS.
pub enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl UpstreamIo {
    /// `tcp`, wrapped in TLS when `origination` says so.
    pub async fn over(tcp: TcpStream, origination: Option<&Origination>) -> io::Result<UpstreamIo> {
        match origination {
            None => Ok(UpstreamIo::Plain(tcp)),
            Some(Origination::Refused(reason)) => Err(io::Error::new(io::ErrorKind::PermissionDenied, reason.clone())),
            Some(Origination::Tls { config, server_name }) => {
                let tls = tokio_rustls::TlsConnector::from(config.clone()).connect(server_name.clone(), tcp).await?;
                Ok(UpstreamIo::Tls(Box::new(tls)))
            }
        }
    }

    pub fn tcp(&self) -> &TcpStream {
        match self {
            UpstreamIo::Plain(s) => s,
            UpstreamIo::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }
}
