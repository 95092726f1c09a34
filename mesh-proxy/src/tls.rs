//! TLS termination for gateway listeners (Istio `tls.mode: SIMPLE` with
//! `serverCertificate` and `privateKey` files): one rustls config per
//! listener, the certificate chosen by SNI among the listener's filter
//! chains, ALPN offering h2 and http/1.1.

use std::sync::Arc;

use mesh_core::proxy_config::{ChainAction, Listener};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("listener `{listener}`: {what} `{path}`: {reason}")]
    File { listener: String, what: &'static str, path: String, reason: String },
    #[error("listener `{listener}`: TLS mode {mode} needs serverCertificate and privateKey files (credentialName secrets are not read from files)")]
    NoCertificate { listener: String, mode: String },
    #[error("listener `{listener}`: {0}", listener = .1)]
    Rustls(rustls::Error, String),
}

/// A terminating chain: the names it serves, its key, and its route table.
#[derive(Debug)]
struct Chain {
    server_names: Vec<String>,
    key: Arc<CertifiedKey>,
    route_config: Option<String>,
}

/// Picks the certificate by SNI; the first chain is the default.
#[derive(Debug)]
struct BySni(Vec<Chain>);

impl BySni {
    fn chain(&self, sni: Option<&str>) -> Option<&Chain> {
        let sni = sni.map(str::to_ascii_lowercase);
        let found = sni.as_deref().and_then(|name| {
            self.0.iter().find(|c| c.server_names.iter().any(|n| mesh_core::translate::host_matches(n, name)))
        });
        found.or(self.0.first())
    }
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.chain(hello.server_name()).map(|c| Arc::clone(&c.key))
    }
}

/// The TLS side of a listener: an acceptor, and the route table for a
/// negotiated server name.
#[derive(Clone)]
pub struct TlsListener {
    pub acceptor: tokio_rustls::TlsAcceptor,
    chains: Arc<BySni>,
}

impl TlsListener {
    pub fn route_config(&self, sni: Option<&str>) -> Option<String> {
        self.chains.chain(sni).and_then(|c| c.route_config.clone())
    }

    /// `None` when the listener terminates no TLS.
    pub fn for_listener(listener: &Listener) -> Result<Option<TlsListener>, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut chains = Vec::new();
        for chain in &listener.filter_chains {
            let Some(tls) = &chain.tls else { continue };
            if tls.mode == "PASSTHROUGH" || tls.mode == "AUTO_PASSTHROUGH" {
                continue;
            }
            let (Some(cert_path), Some(key_path)) = (&tls.certificate_chain, &tls.private_key) else {
                return Err(TlsError::NoCertificate { listener: listener.name.clone(), mode: tls.mode.clone() });
            };
            let file_error = |what, path: &String, reason: String| TlsError::File {
                listener: listener.name.clone(),
                what,
                path: path.clone(),
                reason,
            };
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
                .and_then(|it| it.collect())
                .map_err(|e| file_error("serverCertificate", cert_path, e.to_string()))?;
            if certs.is_empty() {
                return Err(file_error("serverCertificate", cert_path, "no certificate in the file".into()));
            }
            let key = PrivateKeyDer::from_pem_file(key_path)
                .map_err(|e| file_error("privateKey", key_path, e.to_string()))?;
            let key = CertifiedKey::from_der(certs, key, &provider)
                .map_err(|e| TlsError::Rustls(e, listener.name.clone()))?;
            let route_config = match &chain.action {
                ChainAction::Http { route_config, .. } => Some(route_config.clone()),
                ChainAction::Tcp { .. } => None,
            };
            chains.push(Chain { server_names: chain.server_names.clone(), key: Arc::new(key), route_config });
        }
        if chains.is_empty() {
            return Ok(None);
        }
        let chains = Arc::new(BySni(chains));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e, listener.name.clone()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&chains) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Some(TlsListener { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)), chains }))
    }
}
