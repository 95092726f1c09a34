//! TLS termination for gateway listeners, per Istio `tls.mode`: `SIMPLE`
//! (a server certificate), `MUTUAL` (also a client certificate, checked
//! against a CA) and `ISTIO_MUTUAL` (the workload's own certificate,
//! clients from the mesh). Certificates come from files
//! (`serverCertificate`, `privateKey`, `caCertificates`) or a
//! `credentialName` (a Kubernetes Secret, through a
//! [`CredentialSource`]); both are read again when they change. Each chain
//! has its own rustls config; the ClientHello's SNI picks the chain (the
//! first is the default), and so whether a client certificate is asked
//! for. ALPN offers h2 and http/1.1.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use mesh_core::credentials::CredentialSource;
use mesh_core::proxy_config::{ChainAction, Listener, ServerTls, TrafficDirection};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

use crate::mtls::WorkloadIdentity;
use crate::status::ProxyStatus;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("listener `{listener}`: {what} `{path}`: {reason}")]
    File { listener: String, what: &'static str, path: String, reason: String },
    #[error(
        "listener `{listener}`: TLS mode {mode} needs serverCertificate and privateKey files, or a credentialName"
    )]
    NoCertificate { listener: String, mode: String },
    #[error("listener `{listener}`: TLS mode MUTUAL needs caCertificates to check client certificates against")]
    NoClientCa { listener: String },
    #[error("listener `{listener}`: TLS mode ISTIO_MUTUAL needs a workload certificate, and this proxy has none")]
    NoIdentity { listener: String },
    #[error("listener `{listener}`: credentialName `{name}` needs a credential source (Kubernetes Secrets: --kubernetes or --kubeconfig)")]
    NoCredentialSource { listener: String, name: String },
    #[error("listener `{listener}`: {0}", listener = .1)]
    Rustls(rustls::Error, String),
}

/// Where a listener's certificates come from besides files.
#[derive(Clone)]
pub struct Credentials {
    pub identity: Option<WorkloadIdentity>,
    pub source: Option<Arc<dyn CredentialSource>>,
    /// Where `credentialName` Secrets are looked up: the gateway's own.
    pub namespace: String,
}

/// A terminating chain: the names it serves, its config (swapped when its
/// certificates change; none while its credential is missing), and its
/// route table.
struct Chain {
    server_names: Vec<String>,
    config: ArcSwapOption<rustls::ServerConfig>,
    /// HTTP with a route table, or TCP on to clusters.
    action: ChainAction,
    /// What the config was built from, to build it again.
    tls: ServerTls,
    /// The files' modification times and sizes, or the credential
    /// source's version, when last read.
    stamp: Mutex<Stamp>,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
struct Stamp {
    files: Vec<Option<(SystemTime, u64)>>,
    credentials: u64,
}

impl Chain {
    fn stamp_now(&self, credentials: &Credentials) -> Stamp {
        let files =
            [&self.tls.certificate_chain, &self.tls.private_key, &self.tls.ca_certificates].into_iter().flatten();
        Stamp {
            files: files.map(|f| std::fs::metadata(f).ok().and_then(|m| Some((m.modified().ok()?, m.len())))).collect(),
            credentials: credentials
                .source
                .as_ref()
                .filter(|_| self.tls.credential_name.is_some())
                .map_or(0, |s| s.version()),
        }
    }
}

/// The TLS side of a listener: its chains by SNI.
#[derive(Clone)]
pub struct TlsListener {
    chains: Arc<Vec<Chain>>,
    credentials: Credentials,
}

impl TlsListener {
    fn chain(&self, sni: Option<&str>) -> Option<&Chain> {
        let sni = sni.map(str::to_ascii_lowercase);
        let found = sni.as_deref().and_then(|name| {
            self.chains.iter().find(|c| c.server_names.iter().any(|n| mesh_core::translate::host_matches(n, name)))
        });
        // A chain naming no server is the default; for SNI-less clients
        // of HTTPS servers that all name theirs, the first.
        found.or_else(|| self.chains.iter().find(|c| c.server_names.is_empty())).or(self.chains.first())
    }

    /// The handshake, with the config of the chain the SNI picks; the
    /// stream and what that chain does.
    pub async fn accept<IO: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: IO,
    ) -> std::io::Result<(TlsStream<IO>, ChainAction)> {
        let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
        let chain = self
            .chain(start.client_hello().server_name())
            .ok_or_else(|| std::io::Error::other("no TLS chain on the listener"))?;
        let config = chain.config.load_full().ok_or_else(|| {
            std::io::Error::other(format!(
                "credentialName `{}` not found",
                chain.tls.credential_name.as_deref().unwrap_or("")
            ))
        })?;
        let stream = start.into_stream(config).await?;
        Ok((stream, chain.action.clone()))
    }

    /// `None` when the listener terminates no TLS. A chain whose
    /// credential is not there yet is kept, refusing handshakes, until it
    /// comes.
    pub fn for_listener(listener: &Listener, credentials: &Credentials) -> Result<Option<TlsListener>, TlsError> {
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
            let config = chain_config(&listener.name, tls, credentials)?;
            let chain = Chain {
                server_names: chain.server_names.clone(),
                config: ArcSwapOption::new(config),
                action: chain.action.clone(),
                tls: tls.clone(),
                stamp: Mutex::default(),
            };
            *chain.stamp.lock().unwrap_or_else(PoisonError::into_inner) = chain.stamp_now(credentials);
            chains.push(chain);
        }
        Ok((!chains.is_empty()).then(|| TlsListener { chains: Arc::new(chains), credentials: credentials.clone() }))
    }

    /// Reads the chains' certificates again wherever their files or
    /// credentials changed, every `interval` until `stop`: new connections
    /// get the new certificate, open ones keep theirs, and certificates
    /// that cannot be used leave the last good config serving (counted).
    pub async fn follow_certificates(
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
                let now = chain.stamp_now(&self.credentials);
                let mut seen = chain.stamp.lock().unwrap_or_else(PoisonError::into_inner);
                if *seen == now {
                    continue;
                }
                *seen = now;
                match chain_config(&listener, &chain.tls, &self.credentials) {
                    Ok(Some(config)) => {
                        tracing::info!(%listener, "TLS certificate changed: reloaded");
                        chain.config.store(Some(config));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        status.certificate_reload_failures.inc();
                        tracing::error!(%listener, error = %e, "TLS certificate refused; the last good one keeps serving")
                    }
                }
            }
        }
    }
}

/// A chain's certificate, key and client CA as PEM, and where each came
/// from (for errors).
struct Pem {
    cert: (String, String),
    key: (String, String),
    ca: Option<(String, String)>,
}

/// The chain's PEM from its credential or its files; `None` while its
/// credential is missing.
fn pem(listener: &str, tls: &ServerTls, credentials: &Credentials) -> Result<Option<Pem>, TlsError> {
    let name = || listener.to_string();
    if let (Some(credential), None) = (&tls.credential_name, &tls.certificate_chain) {
        let source = credentials
            .source
            .as_ref()
            .ok_or_else(|| TlsError::NoCredentialSource { listener: name(), name: credential.clone() })?;
        let Some(found) = source.credential(&credentials.namespace, credential) else {
            tracing::error!(listener, credential, namespace = %credentials.namespace, "credentialName not found: the server refuses handshakes until it is");
            return Ok(None);
        };
        let from = format!("credentialName {}/{credential}", credentials.namespace);
        return Ok(Some(Pem {
            cert: (found.certificate_chain, from.clone()),
            key: (found.private_key, from.clone()),
            ca: found.ca_certificates.map(|ca| (ca, from)),
        }));
    }
    let (Some(cert), Some(key)) = (&tls.certificate_chain, &tls.private_key) else {
        return Err(TlsError::NoCertificate { listener: name(), mode: tls.mode.clone() });
    };
    let read = |what, path: &String| {
        std::fs::read_to_string(path).map(|text| (text, path.clone())).map_err(|e| TlsError::File {
            listener: name(),
            what,
            path: path.clone(),
            reason: e.to_string(),
        })
    };
    let ca = tls.ca_certificates.as_ref().map(|path| read("caCertificates", path)).transpose()?;
    Ok(Some(Pem { cert: read("serverCertificate", cert)?, key: read("privateKey", key)?, ca }))
}

/// One chain's rustls config, as its mode says; `None` while its
/// credential is missing.
fn chain_config(
    listener: &str,
    tls: &ServerTls,
    credentials: &Credentials,
) -> Result<Option<Arc<rustls::ServerConfig>>, TlsError> {
    let name = || listener.to_string();
    if tls.mode == mesh_core::mtls::ISTIO_MUTUAL {
        // Its ALPN takes Istio's in-mesh protocols besides h2 and
        // http/1.1: a sidecar offers only those.
        let identity = credentials.identity.as_ref().ok_or_else(|| TlsError::NoIdentity { listener: name() })?;
        return Ok(Some(identity.server_config()));
    }
    let Some(pem) = pem(listener, tls, credentials)? else { return Ok(None) };
    let bad = |what, (_, from): &(String, String), reason: String| TlsError::File {
        listener: name(),
        what,
        path: from.clone(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.cert.0.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| bad("serverCertificate", &pem.cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("serverCertificate", &pem.cert, "no certificate".into()));
    }
    let key =
        PrivateKeyDer::from_pem_slice(pem.key.0.as_bytes()).map_err(|e| bad("privateKey", &pem.key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e, name()))?;
    let builder = if tls.mode == "MUTUAL" {
        let ca = pem.ca.as_ref().ok_or_else(|| TlsError::NoClientCa { listener: name() })?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca.0.as_bytes()) {
            let cert = cert.map_err(|e| bad("caCertificates", ca, e.to_string()))?;
            roots.add(cert).map_err(|e| bad("caCertificates", ca, e.to_string()))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| bad("caCertificates", ca, e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| TlsError::Rustls(e, name()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}
