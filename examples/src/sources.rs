//! Where the binaries read the mesh from: files, Kubernetes, Consul, or
//! several (in that order of preference: the first definition of a
//! service wins, endpoints are the union, config is the union).

use std::path::PathBuf;
use std::sync::Arc;

use adapter_consul::api::{AgentOptions, ConsulClient};
use adapter_consul::catalog::Naming;
use adapter_consul::{ConsulKvStore, ConsulRegistry, RegistryOptions, WatchOptions};
use adapter_k8s::{KubeOptions, KubeSource, LabelSelector};
use adapter_static::{FileWatch, StaticSource};
use mesh_core::registry::AggregateRegistry;
use mesh_core::store::AggregateConfigStore;
use mesh_core::{ConfigStore, ServiceRegistry};

use crate::scrape::Scrape;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct SourceArgs {
    /// Files or directories of Istio YAML (and Kubernetes Services,
    /// EndpointSlices, Pods), reloaded on change.
    #[arg(long, num_args = 1..)]
    pub config: Vec<PathBuf>,
    /// Apply Istio resources from --config with fields the mesh does not
    /// know (with a warning) instead of rejecting them, as
    /// `istioctl validate` would.
    #[arg(long)]
    pub allow_unknown_fields: bool,
    /// Read services and Istio CRDs from the Kubernetes cluster of this
    /// kubeconfig file.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Read from Kubernetes: in a pod, its cluster (the service account);
    /// elsewhere $KUBECONFIG or ~/.kube/config.
    #[arg(long)]
    pub kubernetes: bool,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Istio's discovery selectors: only namespaces whose labels match one
    /// of them (kubectl syntax, e.g. `istio-discovery=enabled`) are seen.
    #[arg(long)]
    pub discovery_selector: Vec<String>,
    /// Write what is wrong with an invalid Istio object to its status
    /// (needs `patch` on the kinds' `/status`).
    #[arg(long)]
    pub write_status: bool,
    /// Read services from this Consul agent (`127.0.0.1:8500`,
    /// `https://consul:8501`); the token and TLS files also come from
    /// CONSUL_HTTP_TOKEN, CONSUL_CACERT, CONSUL_CLIENT_CERT/KEY.
    #[arg(long)]
    pub consul: Option<String>,
    #[arg(long, requires = "consul")]
    pub consul_token: Option<String>,
    #[arg(long, requires = "consul")]
    pub consul_datacenter: Option<String>,
    #[arg(long, requires = "consul")]
    pub consul_ca: Option<PathBuf>,
    /// Also read Istio YAML from the keys under this Consul KV prefix.
    #[arg(long, requires = "consul")]
    pub consul_kv_prefix: Option<String>,
    /// Consul services are `<name>.<domain>` in the mesh.
    #[arg(long, default_value = "service.consul")]
    pub consul_domain: String,
    /// The namespace Consul services belong to (where their
    /// DestinationRules and Sidecar visibility are looked up).
    #[arg(long, default_value = "default")]
    pub consul_namespace: String,
}

/// The mesh's sources, running.
pub struct Sources {
    pub store: Arc<dyn ConfigStore>,
    pub registry: Arc<dyn ServiceRegistry>,
    pub files: Option<Arc<StaticSource>>,
    pub kube: Option<Arc<KubeSource>>,
    pub consul: Option<Arc<ConsulRegistry>>,
    pub consul_kv: Option<Arc<ConsulKvStore>>,
    /// The Kubernetes client, when Kubernetes is a source (TokenReview).
    pub kube_client: Option<kube::Client>,
    /// Reloads the files while it lives.
    _watch: Option<FileWatch>,
}

impl SourceArgs {
    pub fn is_empty(&self) -> bool {
        self.config.is_empty() && self.kubeconfig.is_none() && !self.kubernetes && self.consul.is_none()
    }

    fn uses_kubernetes(&self) -> bool {
        self.kubeconfig.is_some() || self.kubernetes
    }

    /// Start every source given. Kubernetes is still syncing when this
    /// returns: see [`Sources::ready`].
    pub async fn start(&self) -> Result<Sources, Box<dyn std::error::Error>> {
        if self.is_empty() {
            return Err("give --config, --kubeconfig, --kubernetes or --consul".into());
        }
        let mut stores: Vec<Arc<dyn ConfigStore>> = Vec::new();
        let mut registries: Vec<Arc<dyn ServiceRegistry>> = Vec::new();
        let (mut kube, mut kube_client) = (None, None);
        if self.uses_kubernetes() {
            let client = self.kube_client().await?;
            kube_client = Some(client.clone());
            let source = Arc::new(KubeSource::start(client, self.kube_options()?));
            stores.push(source.clone());
            registries.push(source.clone());
            kube = Some(source);
        }
        let (mut consul, mut consul_kv) = (None, None);
        if let Some(address) = &self.consul {
            let mut agent = AgentOptions::new(address.clone());
            agent.token = self.consul_token.clone();
            agent.datacenter = self.consul_datacenter.clone();
            agent.ca_file = self.consul_ca.clone();
            let client = ConsulClient::new(&agent.with_env()).map_err(|e| format!("--consul: {e}"))?;
            tracing::info!(agent = %address, "reading Consul");
            let naming = Naming { domain: self.consul_domain.clone(), namespace: self.consul_namespace.clone() };
            let options = RegistryOptions { naming, ..RegistryOptions::default() };
            let registry = Arc::new(ConsulRegistry::start(client.clone(), options));
            registries.push(registry.clone());
            consul = Some(registry);
            if let Some(prefix) = &self.consul_kv_prefix {
                let store = Arc::new(ConsulKvStore::start(client, prefix, WatchOptions::default()));
                stores.push(store.clone());
                consul_kv = Some(store);
            }
        }
        let (mut files, mut watch) = (None, None);
        if !self.config.is_empty() {
            let (source, w) = crate::watched_config(self.config.clone(), self.allow_unknown_fields)?;
            stores.push(source.clone());
            registries.push(source.clone());
            (files, watch) = (Some(source), Some(w));
        }
        let store: Arc<dyn ConfigStore> =
            if stores.len() == 1 { stores.remove(0) } else { Arc::new(AggregateConfigStore::new(stores)) };
        let registry: Arc<dyn ServiceRegistry> =
            if registries.len() == 1 { registries.remove(0) } else { Arc::new(AggregateRegistry::new(registries)) };
        Ok(Sources { store, registry, files, kube, consul, consul_kv, kube_client, _watch: watch })
    }

    async fn kube_client(&self) -> Result<kube::Client, Box<dyn std::error::Error>> {
        let config = match &self.kubeconfig {
            Some(path) => {
                let file = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))?;
                kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                    .await
                    .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))?
            }
            None => kube::Config::infer().await.map_err(|e| format!("--kubernetes: {e}"))?,
        };
        tracing::info!(server = %config.cluster_url, "reading Kubernetes");
        Ok(kube::Client::try_from(config)?)
    }

    fn kube_options(&self) -> Result<KubeOptions, Box<dyn std::error::Error>> {
        let discovery_selectors = self
            .discovery_selector
            .iter()
            .map(|s| LabelSelector::parse(s).map_err(|e| format!("--discovery-selector: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(KubeOptions {
            cluster_domain: self.cluster_domain.clone(),
            discovery_selectors,
            write_status: self.write_status,
            ..KubeOptions::default()
        })
    }
}

impl Sources {
    /// Resolves once every source has its initial state, so that nothing
    /// is pushed or served from a half-known mesh.
    pub async fn ready(&self) {
        if let Some(kube) = &self.kube {
            if !kube.is_ready() {
                tracing::info!("waiting for the Kubernetes watches to list");
            }
            kube.ready().await;
        }
        if let Some(consul) = &self.consul {
            if !consul.is_ready() {
                tracing::info!("waiting for the Consul catalog");
            }
            consul.ready().await;
        }
        if let Some(kv) = &self.consul_kv {
            kv.ready().await;
        }
    }

    /// The sources' own health, for `/metrics`.
    pub fn metrics(&self, scrape: &mut Scrape) {
        if let Some(kube) = &self.kube {
            let s = kube.status();
            scrape.gauge("mesh_k8s_synced", "Every Kubernetes watch has listed once", u64::from(s.synced));
            scrape.gauge("mesh_k8s_invalid_objects", "Istio objects skipped as invalid now", s.invalid.len() as u64);
            scrape.counter("mesh_k8s_invalid_objects_reported", "Invalid Istio objects reported", s.invalid_total);
            scrape.counter("mesh_k8s_lists", "Lists done by the Kubernetes watches", s.lists_total);
            scrape.counter("mesh_k8s_watch_errors", "Kubernetes watch errors", s.watch_errors_total);
        }
        if let Some(consul) = &self.consul {
            let s = consul.status();
            scrape.gauge(
                "mesh_consul_synced",
                "The Consul catalog and its services answered once",
                u64::from(s.synced),
            );
            scrape.counter("mesh_consul_requests", "Blocking queries sent to Consul", s.requests_total);
            scrape.counter("mesh_consul_errors", "Failed Consul queries", s.errors_total);
            scrape.counter("mesh_consul_index_resets", "Consul indexes that went backwards", s.index_resets_total);
        }
        if let Some(kv) = &self.consul_kv {
            scrape.gauge("mesh_consul_kv_problems", "Consul KV keys not applied", kv.status().problems.len() as u64);
        }
        if let Some(files) = &self.files {
            let s = files.status();
            scrape.gauge("mesh_config_errors", "Config file errors in the last load", s.errors as u64);
            scrape.counter(
                "mesh_config_loads_with_errors",
                "Config loads that found errors",
                s.loads_with_errors_total,
            );
        }
    }
}
