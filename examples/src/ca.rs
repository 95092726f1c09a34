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
use mesh_xds::ca::proto::CREATE_CERTIFICATE;
use mesh_xds::ca::server::{self, CaServer, CaStats};
use mesh_xds::grpc;
use mesh_xds::sds::SecretIssuer;
use mesh_xds::server::{AdsServer, StreamSecurity};

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
    /// Loads or makes the CA and serves istiod's secure port until the
    /// process ends: `CreateCertificate`, and `ads` for streams that prove
    /// who they are (and get their secrets over SDS: their certificate,
    /// and with Kubernetes the gateway credentials of their namespace,
    /// read from Secrets). `None` when no
    /// `--ca-dir` was given. The stats are the CA's.
    pub async fn start(
        &self,
        kube: Option<kube::Client>,
        ads: AdsServer,
        trust_domains: TrustDomains,
    ) -> Result<Option<Arc<CaStats>>, Box<dyn std::error::Error>> {
        let Some(dir) = &self.ca_dir else { return Ok(None) };
        let ttl = Duration::from_secs(self.workload_cert_ttl);
        let lifetimes = Lifetimes { default: ttl, ..Lifetimes::default() };
        let ca = Arc::new(CertificateAuthority::load_or_create(dir, &trust_domains.own, lifetimes)?);
        let credentials: Option<Arc<dyn mesh_core::credentials::CredentialSource>> = match &kube {
            Some(client) => Some(crate::secret_credentials(client.clone()).await),
            None => None,
        };
        let authenticators: Arc<[Arc<dyn Authenticator>]> = self.authenticators(kube, trust_domains)?.into();
        let tls = server::tls_config(ca.clone(), self.ca_dns_names.clone())?;
        let listener = tokio::net::TcpListener::bind(self.ca_listen).await?;
        tracing::info!(ca = %listener.local_addr()?, root = %dir.join("root-cert.pem").display(), "CA and secure xDS serving");
        let ca_server = CaServer::new(ca.clone(), authenticators.to_vec());
        let stats = ca_server.stats().clone();
        let ads =
            ads.with_security(StreamSecurity { authenticators, secrets: SecretIssuer::new(ca, ttl), credentials });
        tokio::spawn(grpc::serve(listener, Some(tls), std::future::pending(), move |req, caller| {
            let (ca_server, ads) = (ca_server.clone(), ads.clone());
            async move {
                if req.uri().path() == CREATE_CERTIFICATE {
                    ca_server.call(req, &caller).await
                } else {
                    ads.call(req, caller)
                }
            }
        }));
        Ok(Some(stats))
    }

    /// Bootstrap tokens, then Kubernetes tokens, then the caller's own
    /// certificate: the first that accepts wins.
    fn authenticators(
        &self,
        kube: Option<kube::Client>,
        trust_domains: TrustDomains,
    ) -> Result<Vec<Arc<dyn Authenticator>>, String> {
        let mut authenticators: Vec<Arc<dyn Authenticator>> = Vec::new();
        if let Some(path) = &self.bootstrap_tokens {
            authenticators.push(Arc::new(BootstrapTokens::from_file(path)?));
        }
        if let Some(client) = kube {
            let audiences = vec![self.token_audience.clone()];
            authenticators.push(Arc::new(KubernetesTokens {
                client,
                audiences,
                trust_domain: trust_domains.own.clone(),
            }));
        }
        authenticators.push(Arc::new(ClientCertificate { trust_domains }));
        Ok(authenticators)
    }
}
