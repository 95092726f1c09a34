//! Consul's HTTP API: the JSON shapes the adapter reads (as the API
//! documentation shows them) and a client for blocking queries, with the
//! ACL token and TLS to the agent.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// One entry of `/v1/health/service/<name>`: an instance with its node and
/// checks.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HealthEntry {
    pub node: Node,
    pub service: AgentService,
    pub checks: Vec<Check>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Node {
    #[serde(rename = "ID")]
    pub id: String,
    pub node: String,
    pub address: String,
    pub datacenter: String,
    pub meta: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentService {
    #[serde(rename = "ID")]
    pub id: String,
    pub service: String,
    pub tags: Option<Vec<String>>,
    /// Empty: the node's address.
    pub address: String,
    pub meta: Option<BTreeMap<String, String>>,
    pub port: u16,
    pub weights: Option<Weights>,
}

/// DNS-style weights by health: Consul's own load balancing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Weights {
    pub passing: u32,
    pub warning: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Check {
    #[serde(rename = "CheckID")]
    pub check_id: String,
    pub name: String,
    /// `passing`, `warning`, `critical` (or `maintenance` in some views).
    pub status: String,
    #[serde(rename = "ServiceID")]
    pub service_id: String,
}

/// One entry of `/v1/kv/<prefix>?recurse`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct KvPair {
    pub key: String,
    /// Base64, or null for a key with no value (a "folder").
    pub value: Option<String>,
    pub modify_index: u64,
}

/// How to reach the agent, as Consul's own CLI is told (`CONSUL_HTTP_ADDR`,
/// `CONSUL_HTTP_TOKEN`, `CONSUL_CACERT`, ...).
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// `http://127.0.0.1:8500`, `https://consul.example:8501`, or
    /// `host:port` (http).
    pub address: String,
    /// Sent as `X-Consul-Token`.
    pub token: Option<String>,
    pub datacenter: Option<String>,
    /// CA bundle (PEM) for an `https` agent; the system roots otherwise.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) when the agent verifies clients.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// The `wait` of blocking queries (Consul caps it at 10 minutes).
    pub wait: Duration,
}

impl AgentOptions {
    pub fn new(address: impl Into<String>) -> AgentOptions {
        AgentOptions {
            address: address.into(),
            token: None,
            datacenter: None,
            ca_file: None,
            client_cert: None,
            wait: Duration::from_secs(300),
        }
    }

    /// Fill what is not set from Consul's environment variables.
    pub fn with_env(mut self) -> AgentOptions {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        self.token = self.token.or_else(|| var("CONSUL_HTTP_TOKEN"));
        self.ca_file = self.ca_file.or_else(|| var("CONSUL_CACERT").map(PathBuf::from));
        if self.client_cert.is_none() {
            if let (Some(cert), Some(key)) = (var("CONSUL_CLIENT_CERT"), var("CONSUL_CLIENT_KEY")) {
                self.client_cert = Some((cert.into(), key.into()));
            }
        }
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsulError {
    #[error("consul address {address:?}: {reason}")]
    Address { address: String, reason: String },
    #[error("consul TLS: {0}")]
    Tls(String),
    #[error("GET {path}: {source}")]
    Connect { path: String, source: hyper_util::client::legacy::Error },
    #[error("GET {path}: reading the body: {reason}")]
    Body { path: String, reason: String },
    #[error("GET {path}: HTTP {status}: {body}")]
    Status { path: String, status: StatusCode, body: String },
    #[error("GET {path}: {reason}")]
    Json { path: String, reason: String },
}

type Connector = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// A client of one agent. Cheap to clone.
#[derive(Clone)]
pub struct ConsulClient {
    base: String,
    token: Option<String>,
    datacenter: Option<String>,
    wait: Duration,
    http: Client<Connector, Empty<Bytes>>,
}

/// What a blocking query returned.
#[derive(Debug)]
pub struct Answer<T> {
    /// `None`: 404 (no such key prefix, for KV).
    pub value: Option<T>,
    /// `X-Consul-Index`.
    pub index: u64,
}

fn tls_config(options: &AgentOptions) -> Result<rustls::ClientConfig, ConsulError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let tls = |e: &dyn std::fmt::Display, what: &std::path::Path| ConsulError::Tls(format!("{}: {e}", what.display()));
    let mut roots = rustls::RootCertStore::empty();
    match &options.ca_file {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| tls(&e, path))? {
                roots.add(cert.map_err(|e| tls(&e, path))?).map_err(|e| tls(&e, path))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConsulError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    match &options.client_cert {
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| tls(&e, cert))?
                .collect::<Result<_, _>>()
                .map_err(|e| tls(&e, cert))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| tls(&e, key))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| ConsulError::Tls(e.to_string()))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

impl ConsulClient {
    pub fn new(options: &AgentOptions) -> Result<ConsulClient, ConsulError> {
        let address = options.address.trim_end_matches('/');
        let base = if address.contains("://") { address.to_string() } else { format!("http://{address}") };
        let uri: Uri = base.parse().map_err(|e: http::uri::InvalidUri| ConsulError::Address {
            address: base.clone(),
            reason: e.to_string(),
        })?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(ConsulError::Address { address: base, reason: "must be http(s)://host:port".into() });
        }
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(options)?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        // A blocking query holds its connection up to `wait` (+1/16 jitter).
        let http = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(90)).build(connector);
        Ok(ConsulClient {
            base,
            token: options.token.clone(),
            datacenter: options.datacenter.clone(),
            wait: options.wait,
            http,
        })
    }

    /// A blocking query on `path` (with its own query string, if any) from
    /// `index`; 0 answers at once.
    pub async fn get<T: DeserializeOwned>(&self, path: &str, index: u64) -> Result<Answer<T>, ConsulError> {
        let mut query = Vec::new();
        if index > 0 {
            query.push(format!("index={index}"));
            query.push(format!("wait={}ms", self.wait.as_millis()));
        }
        if let Some(dc) = &self.datacenter {
            query.push(format!("dc={dc}"));
        }
        let separator = if path.contains('?') { '&' } else { '?' };
        let url = if query.is_empty() {
            format!("{}{path}", self.base)
        } else {
            format!("{}{path}{separator}{}", self.base, query.join("&"))
        };
        let mut request = Request::get(&url);
        if let Some(token) = &self.token {
            request = request.header("X-Consul-Token", token);
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| ConsulError::Address { address: url.clone(), reason: e.to_string() })?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|source| ConsulError::Connect { path: path.to_string(), source })?;
        let status = response.status();
        let index = response
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ConsulError::Body { path: path.to_string(), reason: e.to_string() })?
            .to_bytes();
        if status == StatusCode::NOT_FOUND {
            return Ok(Answer { value: None, index });
        }
        if !status.is_success() {
            let body = String::from_utf8_lossy(&body).chars().take(200).collect();
            return Err(ConsulError::Status { path: path.to_string(), status, body });
        }
        let value = serde_json::from_slice(&body)
            .map_err(|e| ConsulError::Json { path: path.to_string(), reason: e.to_string() })?;
        Ok(Answer { value: Some(value), index })
    }
}
