//! TLS termination for gateway listeners, per Istio `tls.mode`: `SIMPLE`
//! (a server certificate from `serverCertificate` and `privateKey`
//! files), `MUTUAL` (also a client certificate, checked against
//! `caCertificates`) and `ISTIO_MUTUAL` (the workload's own certificate,
//! clients from the mesh). Each chain has its own rustls config; the
//! ClientHello's SNI picks the chain (the first is the default), and so
//! whether a client certificate is asked for. ALPN offers h2 and http/1.1.

use std::sync::Arc;

use mesh_core::proxy_config::{ChainAction, Listener, ServerTls, TrafficDirection};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::mtls::WorkloadIdentity;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("listener `{listener}`: {what} `{path}`: {reason}")]
    File { listener: String, what: &'static str, path: String, reason: String },
    #[error("listener `{listener}`: TLS mode {mode} needs serverCertificate and privateKey files (credentialName secrets are not read from files)")]
    NoCertificate { listener: String, mode: String },
    #[error("listener `{listener}`: TLS mode MUTUAL needs caCertificates to check client certificates against")]
    NoClientCa { listener: String },
    #[error("listener `{listener}`: TLS mode ISTIO_MUTUAL needs a workload certificate, and this proxy has none")]
    NoIdentity { listener: String },
    #[error("listener `{listener}`: {0}", listener = .1)]
    Rustls(rustls::Error, String),
}

/// A terminating chain: the names it serves, its config, and its route
/// table.
#[derive(Debug)]
struct Chain {
    server_names: Vec<String>,
    config: Arc<rustls::ServerConfig>,
    route_config: Option<String>,
}

/// The TLS side of a listener: its chains by SNI.
#[derive(Clone, Debug)]
pub struct TlsListener {
    chains: Arc<Vec<Chain>>,
}

impl TlsListener {
    fn chain(&self, sni: Option<&str>) -> Option<&Chain> {
        let sni = sni.map(str::to_ascii_lowercase);
        let found = sni.as_deref().and_then(|name| {
            self.chains.iter().find(|c| c.server_names.iter().any(|n| mesh_core::translate::host_matches(n, name)))
        });
        found.or(self.chains.first())
    }

    /// The handshake, with the config of the chain the SNI picks; the
    /// stream and that chain's route table.
    pub async fn accept(&self, stream: TcpStream) -> std::io::Result<(TlsStream<TcpStream>, Option<String>)> {
        let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
        let chain = self
            .chain(start.client_hello().server_name())
            .ok_or_else(|| std::io::Error::other("no TLS chain on the listener"))?;
        let stream = start.into_stream(chain.config.clone()).await?;
        Ok((stream, chain.route_config.clone()))
    }

    /// `None` when the listener terminates no TLS.
    pub fn for_listener(
        listener: &Listener,
        identity: Option<&WorkloadIdentity>,
    ) -> Result<Option<TlsListener>, TlsError> {
        let mut chains = Vec::new();
        for chain in &listener.filter_chains {
            let Some(tls) = &chain.tls else { continue };
            if tls.mode == "PASSTHROUGH" || tls.mode == "AUTO_PASSTHROUGH" {
                continue;
            }
            // A sidecar's inbound mTLS is the workload identity's
            // (`inbound_mtls`), not a file certificate's.
            if listener.direction == TrafficDirection::Inbound && tls.mode == mesh_core::mtls::ISTIO_MUTUAL {
                continue;
            }
            let route_config = match &chain.action {
                ChainAction::Http { route_config, .. } => Some(route_config.clone()),
                ChainAction::Tcp { .. } => None,
            };
            let config = chain_config(listener, tls, identity)?;
            chains.push(Chain { server_names: chain.server_names.clone(), config, route_config });
        }
        Ok((!chains.is_empty()).then(|| TlsListener { chains: Arc::new(chains) }))
    }
}

/// One chain's rustls config, as its mode says.
fn chain_config(
    listener: &Listener,
    tls: &ServerTls,
    identity: Option<&WorkloadIdentity>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let name = || listener.name.clone();
    if tls.mode == mesh_core::mtls::ISTIO_MUTUAL {
        // Its ALPN takes Istio's in-mesh protocols besides h2 and
        // http/1.1: a sidecar offers only those.
        let identity = identity.ok_or_else(|| TlsError::NoIdentity { listener: name() })?;
        return Ok(identity.server_config());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let file_error =
        |what, path: &String, reason: String| TlsError::File { listener: name(), what, path: path.clone(), reason };
    let (Some(cert_path), Some(key_path)) = (&tls.certificate_chain, &tls.private_key) else {
        return Err(TlsError::NoCertificate { listener: name(), mode: tls.mode.clone() });
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .and_then(|it| it.collect())
        .map_err(|e| file_error("serverCertificate", cert_path, e.to_string()))?;
    if certs.is_empty() {
        return Err(file_error("serverCertificate", cert_path, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| file_error("privateKey", key_path, e.to_string()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e, name()))?;
    let builder = if tls.mode == "MUTUAL" {
        let ca_path = tls.ca_certificates.as_ref().ok_or_else(|| TlsError::NoClientCa { listener: name() })?;
        let mut roots = rustls::RootCertStore::empty();
        let cas =
            CertificateDer::pem_file_iter(ca_path).map_err(|e| file_error("caCertificates", ca_path, e.to_string()))?;
        for ca in cas {
            let ca = ca.map_err(|e| file_error("caCertificates", ca_path, e.to_string()))?;
            roots.add(ca).map_err(|e| file_error("caCertificates", ca_path, e.to_string()))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| file_error("caCertificates", ca_path, e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| TlsError::Rustls(e, name()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
