//! The service model: what services exist and where their endpoints are,
//! independent of the platform that said so.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub type Labels = BTreeMap<String, String>;

/// Istio's protocol of a port, from its `protocol` field or its name prefix
/// (`http-web`, `grpc`, ...), as Istio's protocol selection does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Https,
    Tls,
    Tcp,
    Unknown,
}

impl Protocol {
    pub fn parse(text: &str) -> Protocol {
        match text.to_ascii_lowercase().as_str() {
            "http" | "http1" => Protocol::Http,
            "http2" | "h2c" => Protocol::Http2,
            "grpc" | "grpc-web" => Protocol::Grpc,
            "https" => Protocol::Https,
            "tls" => Protocol::Tls,
            "tcp" | "mongo" | "redis" | "mysql" => Protocol::Tcp,
            _ => Protocol::Unknown,
        }
    }

    /// The protocol a port declares: explicit protocol first, then the port
    /// name's prefix before `-`.
    pub fn of_port(protocol: Option<&str>, name: &str) -> Protocol {
        match protocol.map(Protocol::parse) {
            Some(p) if p != Protocol::Unknown => p,
            _ => Protocol::parse(name.split('-').next().unwrap_or(name)),
        }
    }

    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
    /// The port endpoints listen on when they do not name their own.
    pub target_port: Option<u16>,
}

/// How the proxy finds addresses for a service (ServiceEntry `resolution`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Resolution {
    /// Endpoints are listed by the registry.
    #[default]
    Static,
    /// Endpoints are DNS names the proxy resolves.
    Dns,
    /// Traffic goes to the address the client dialed.
    Passthrough,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Service {
    /// Fully qualified: `reviews.default.svc.cluster.local`.
    pub hostname: String,
    pub namespace: String,
    pub ports: Vec<ServicePort>,
    pub labels: Labels,
    /// Virtual IPs (ClusterIP, ServiceEntry addresses).
    pub addresses: Vec<String>,
    pub resolution: Resolution,
    pub mesh_external: bool,
    /// Identities its workloads may present beyond their service
    /// accounts (a ServiceEntry's `subjectAltNames`): secure naming.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

impl Service {
    /// A plain in-mesh service with one HTTP port (`http`), as a
    /// Kubernetes Service with a ClusterIP is.
    pub fn http(hostname: &str, namespace: &str, port: u16) -> Service {
        Service {
            hostname: hostname.into(),
            namespace: namespace.into(),
            ports: vec![ServicePort { name: "http".into(), port, protocol: Protocol::Http, target_port: None }],
            labels: Labels::new(),
            addresses: Vec::new(),
            resolution: Resolution::Static,
            mesh_external: false,
            subject_alt_names: Vec::new(),
        }
    }

    pub fn port(&self, number: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == number)
    }
}

/// Where a workload runs: `region/zone/subzone`, each part optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Locality {
    pub fn parse(text: &str) -> Locality {
        let mut parts = text.splitn(3, '/').map(str::to_string);
        Locality {
            region: parts.next().unwrap_or_default(),
            zone: parts.next().unwrap_or_default(),
            subzone: parts.next().unwrap_or_default(),
        }
    }
}

impl fmt::Display for Locality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.region, self.zone, self.subzone)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Health {
    #[default]
    Healthy,
    Unhealthy,
    /// Terminating: finish what is in flight, take nothing new.
    Draining,
}

/// One workload instance of a service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    /// An IP, or a DNS name for DNS-resolved services.
    pub address: String,
    /// Port by service port name, when the workload's port differs from the
    /// service's target port.
    pub ports: BTreeMap<String, u16>,
    pub labels: Labels,
    pub locality: Locality,
    pub weight: u32,
    pub health: Health,
    pub service_account: Option<String>,
    /// The workload that runs it (a pod's Deployment, a WorkloadEntry),
    /// for telemetry; `None` when the platform does not say.
    #[serde(default)]
    pub workload: Option<String>,
}

impl Endpoint {
    pub fn new(address: impl Into<String>) -> Endpoint {
        Endpoint {
            address: address.into(),
            ports: BTreeMap::new(),
            labels: Labels::new(),
            locality: Locality::default(),
            weight: 1,
            health: Health::Healthy,
            service_account: None,
            workload: None,
        }
    }

    /// The port this endpoint serves `port` on.
    pub fn port_for(&self, port: &ServicePort) -> u16 {
        self.ports.get(&port.name).copied().or(port.target_port).unwrap_or(port.port)
    }
}

/// A service together with its current endpoints: the unit a registry
/// publishes. Endpoint-only changes keep the same `service` Arc, so
/// consumers can tell them apart cheaply.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServiceState {
    pub service: Arc<Service>,
    pub endpoints: Arc<[Endpoint]>,
}

/// `true` when every selector label is on the workload (an empty selector
/// selects everything), as Kubernetes label selectors work.
pub fn labels_match(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
