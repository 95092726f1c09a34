//! The workload identity options the gateway and the sidecar share: where
//! the certificate comes from (a CA over CreateCertificate, or files), and
//! the mesh settings (MeshConfig) that decide mTLS.

use std::path::PathBuf;
use std::time::Duration;

use mesh_core::identity::SpiffeId;
use mesh_core::mesh_config::MeshConfig;
use mesh_proxy::mtls::{files, WorkloadIdentity};
use mesh_xds::ca::client::{CaClientOptions, Proof};

/// A MeshConfig file's settings (`mesh` of Istio's `istio` ConfigMap), or
/// Istio's defaults without one.
pub fn load_mesh_config(path: Option<&std::path::Path>) -> Result<MeshConfig, String> {
    let Some(path) = path else { return Ok(MeshConfig::default()) };
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    MeshConfig::from_yaml(&path.display().to_string(), &text)
}

#[derive(clap::Args, Debug, Default)]
pub struct IdentityArgs {
    /// Istio's MeshConfig (the `mesh` key of the `istio` ConfigMap):
    /// trustDomain, trustDomainAliases, enableAutoMtls, rootNamespace.
    #[arg(long, value_name = "FILE")]
    pub mesh_config: Option<PathBuf>,
    /// Certificates mounted as files, Istio's layout: cert-chain.pem,
    /// key.pem, root-cert.pem; reloaded when they change.
    #[arg(long, value_name = "DIR", conflicts_with = "ca_address")]
    pub cert_dir: Option<PathBuf>,
    /// Ask this CA for the workload certificate and renew it at half its
    /// life (istiod's 15012; the control-plane binary's --ca-listen).
    #[arg(long, value_name = "HOST:PORT", requires = "ca_root")]
    pub ca_address: Option<String>,
    /// The roots the CA's own certificate must chain to (Istio's
    /// istio-ca-root-cert; the control plane's root-cert.pem).
    #[arg(long, value_name = "FILE")]
    pub ca_root: Option<PathBuf>,
    /// The name the CA's certificate carries.
    #[arg(long, default_value = "istiod.istio-system.svc")]
    pub ca_server_name: String,
    /// The token that proves the identity to the CA: a Kubernetes
    /// service-account token, or a bootstrap token. Read for each request.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The workload's service account: its identity is
    /// spiffe://<trust domain>/ns/<namespace>/sa/<this>.
    #[arg(long, default_value = "default")]
    pub service_account: String,
}

impl IdentityArgs {
    /// The MeshConfig file's settings, or Istio's defaults.
    pub fn mesh_config(&self) -> Result<MeshConfig, String> {
        load_mesh_config(self.mesh_config.as_deref())
    }

    /// The workload identity the options give (`None` without a CA or
    /// files): loaded, or asked for and waited on briefly, so the first
    /// connections find it.
    pub async fn start(&self, namespace: &str, mesh: &MeshConfig) -> Result<Option<WorkloadIdentity>, String> {
        let identity = WorkloadIdentity::new(mesh.trust_domains());
        if let Some(dir) = &self.cert_dir {
            files::follow(&identity, dir.clone(), Duration::from_secs(1))?;
            return Ok(Some(identity));
        }
        let Some(address) = &self.ca_address else { return Ok(None) };
        let root_path = self.ca_root.as_ref().ok_or("--ca-address needs --ca-root")?;
        let ca_roots_pem =
            std::fs::read_to_string(root_path).map_err(|e| format!("--ca-root {}: {e}", root_path.display()))?;
        let id = SpiffeId::new(&mesh.trust_domain, namespace, &self.service_account).map_err(|e| e.to_string())?;
        let options = CaClientOptions {
            address: address.clone(),
            server_name: self.ca_server_name.clone(),
            ca_roots_pem,
            identity: id.clone(),
            proof: self.token_file.clone().map_or(Proof::CertificateOnly, Proof::TokenFile),
            ttl: Duration::ZERO,
        };
        let (tx, mut rx) = tokio::sync::watch::channel(None);
        identity.follow(rx.clone());
        tokio::spawn(mesh_xds::ca::client::keep_certificate(options, tx));
        let first = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(Option::is_some)).await;
        if first.is_err() {
            tracing::warn!(%id, %address, "no workload certificate yet: mTLS waits for it, STRICT ports refuse connections");
        }
        Ok(Some(identity))
    }
}
