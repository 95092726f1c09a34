//! The control plane's CA (Citadel's job): its options, the node
//! authenticators it trusts, and the server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mesh_core::identity::{SpiffeId, TrustDomains};
use mesh_xds::ca::authn::{Authenticator, BootstrapTokens, ClientCertificate, Credentials};
use mesh_xds::ca::authority::{CertificateAuthority, Lifetimes};
use mesh_xds::ca::server::{self, CaServer};

#[derive(clap::Args, Debug)]
pub struct CaArgs {
    /// Run the mesh's CA, its key and certificates kept in this directory
    /// (Istio's cacerts layout: ca-cert.pem, ca-key.pem, cert-chain.pem,
    /// root-cert.pem). An empty directory gets a self-signed root on first
    /// start, kept for later starts.
    #[arg(long, value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,
    /// Where the CA serves CreateCertificate (gRPC over TLS; istiod's 15012).
    #[arg(long, default_value = "0.0.0.0:15012")]
    pub ca_listen: SocketAddr,
    /// The names of the CA's own certificate, which clients check.
    #[arg(long, value_delimiter = ',', default_value = "istiod.istio-system.svc")]
    pub ca_dns_names: Vec<String>,
    /// The mesh's trust domain.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Workload certificates live this long unless asked for less
    /// (Istio's DEFAULT_WORKLOAD_CERT_TTL).
    #[arg(long, value_name = "SECONDS", default_value_t = 24 * 3600)]
    pub workload_cert_ttl: u64,
    /// Per-workload bootstrap tokens, for workloads outside Kubernetes:
    /// lines `<spiffe-id> <token>`.
    #[arg(long, value_name = "FILE")]
    pub bootstrap_tokens: Option<PathBuf>,
    /// The audience Kubernetes tokens must be for (Istio's `istio-ca`).
    #[arg(long, default_value = "istio-ca")]
    pub token_audience: String,
}

/// Kubernetes service-account tokens, checked by TokenReview.
struct KubernetesTokens {
    client: kube::Client,
    audiences: Vec<String>,
    trust_domain: String,
}

#[async_trait]
impl Authenticator for KubernetesTokens {
    fn name(&self) -> &str {
        "kubernetes"
    }

    async fn authenticate(&self, credentials: &Credentials<'_>) -> Result<Option<Vec<SpiffeId>>, String> {
        let Some(token) = credentials.bearer_token else { return Ok(None) };
        let account =
            adapter_k8s::token_review::review(&self.client, token, &self.audiences).await.map_err(|e| e.to_string())?;
        let id = SpiffeId::new(&self.trust_domain, &account.namespace, &account.name).map_err(|e| e.to_string())?;
        Ok(Some(vec![id]))
    }
}

impl CaArgs {
    /// Loads or makes the CA and serves it until `shutdown`; `None` when
    /// no `--ca-dir` was given. The stats are the server's.
    pub async fn start(
        &self,
        kube: Option<kube::Client>,
    ) -> Result<Option<(CaServer, tokio::task::JoinHandle<std::io::Result<()>>)>, Box<dyn std::error::Error>> {
        let Some(dir) = &self.ca_dir else { return Ok(None) };
        let lifetimes = Lifetimes { default: Duration::from_secs(self.workload_cert_ttl), ..Lifetimes::default() };
        let ca = Arc::new(CertificateAuthority::load_or_create(dir, &self.trust_domain, lifetimes)?);
        let mut authenticators: Vec<Arc<dyn Authenticator>> = Vec::new();
        if let Some(path) = &self.bootstrap_tokens {
            authenticators.push(Arc::new(BootstrapTokens::from_file(path)?));
        }
        if let Some(client) = kube {
            let audiences = vec![self.token_audience.clone()];
            authenticators.push(Arc::new(KubernetesTokens {
                client,
                audiences,
                trust_domain: self.trust_domain.clone(),
            }));
        }
        let trust_domains = TrustDomains { own: self.trust_domain.clone(), aliases: Vec::new() };
        authenticators.push(Arc::new(ClientCertificate { trust_domains }));
        let tls = server::tls_config(ca.clone(), self.ca_dns_names.clone())?;
        let listener = tokio::net::TcpListener::bind(self.ca_listen).await?;
        tracing::info!(ca = %listener.local_addr()?, root = %dir.join("root-cert.pem").display(), "CA serving");
        let server = CaServer::new(ca, authenticators);
        let task = tokio::spawn(server.clone().serve(listener, tls, std::future::pending()));
        Ok(Some((server, task)))
    }
}
