//! TLS termination for gateway listeners, per Istio `tls.mode`: `SIMPLE`
//! (a server certificate from `serverCertificate` and `privateKey`
//! files), `MUTUAL` (also a client certificate, checked against
//! `caCertificates`) and `ISTIO_MUTUAL` (the workload's own certificate,
//! clients from the mesh). Each chain has its own rustls config; the
//! ClientHello's SNI picks the chain (the first is the default), and so
//! whether a client certificate is asked for. ALPN offers h2 and http/1.1.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use mesh_core::proxy_config::{ChainAction, Listener, ServerTls, TrafficDirection};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::mtls::WorkloadIdentity;
use crate::status::ProxyStatus;

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

/// A terminating chain: the names it serves, its config (swapped when its
/// files change), and its route table.
#[derive(Debug)]
struct Chain {
    server_names: Vec<String>,
    config: ArcSwap<rustls::ServerConfig>,
    route_config: Option<String>,
    /// What the config was built from, to build it again.
    tls: ServerTls,
    /// The files' modification times and sizes when last read.
    stamp: Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl Chain {
    fn files(&self) -> impl Iterator<Item = &String> {
        [&self.tls.certificate_chain, &self.tls.private_key, &self.tls.ca_certificates].into_iter().flatten()
    }

    fn stamp_now(&self) -> Vec<Option<(SystemTime, u64)>> {
        self.files().map(|f| std::fs::metadata(f).ok().and_then(|m| Some((m.modified().ok()?, m.len())))).collect()
    }
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
        let stream = start.into_stream(chain.config.load_full()).await?;
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
            let config = ArcSwap::new(chain_config(&listener.name, tls, identity)?);
            let mut chain = Chain {
                server_names: chain.server_names.clone(),
                config,
                route_config,
                tls: tls.clone(),
                stamp: Mutex::default(),
            };
            chain.stamp = Mutex::new(chain.stamp_now());
            chains.push(chain);
        }
        Ok((!chains.is_empty()).then(|| TlsListener { chains: Arc::new(chains) }))
    }
}

impl TlsListener {
    /// Reads the chains' certificate files again wherever they changed,
    /// every `interval` until `stop`: new connections get the new
    /// certificate, open ones keep theirs, and files that cannot be used
    /// leave the last good config serving.
    pub async fn follow_files(
        self,
        listener: String,
        interval: Duration,
        status: Arc<ProxyStatus>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.changed() => return,
            }
            for chain in self.chains.iter().filter(|c| c.tls.mode != mesh_core::mtls::ISTIO_MUTUAL) {
                let now = chain.stamp_now();
                let mut seen = chain.stamp.lock().unwrap_or_else(PoisonError::into_inner);
                if *seen == now {
                    continue;
                }
                *seen = now;
                match chain_config(&listener, &chain.tls, None) {
                    Ok(config) => {
                        tracing::info!(%listener, "TLS certificate files changed: reloaded");
                        chain.config.store(config);
                    }
                    Err(e) => {
                        status.certificate_reload_failures.inc();
                        tracing::error!(%listener, error = %e, "TLS certificate files refused; the last good ones keep serving")
                    }
                }
            }
        }
    }
}

/// One chain's rustls config, as its mode says.
fn chain_config(
    listener: &str,
    tls: &ServerTls,
    identity: Option<&WorkloadIdentity>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let name = || listener.to_string();
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
