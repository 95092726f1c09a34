//! # adapter-k8s
//!
//! Kubernetes as the mesh's platform, as Istio's Kubernetes controller and
//! its CRD client read it: Services, EndpointSlices, Pods and Nodes are the
//! [`ServiceRegistry`](mesh_core::ServiceRegistry); Istio's CRDs, in
//! whichever version the cluster serves, are the
//! [`ConfigStore`](mesh_core::ConfigStore). Built on kube-rs's watchers.
//!
//! - Hostnames are `name.namespace.svc.<cluster domain>`; a port's protocol
//!   comes from `appProtocol`, then Istio's name prefix (`http-*`,
//!   `grpc-*`); ExternalName services resolve by DNS; headless services
//!   keep their pod endpoints.
//! - Endpoints come from EndpointSlices: ready is healthy, terminating
//!   drains, not ready is unhealthy; pod labels and service accounts come
//!   along (so DestinationRule subsets select them), locality from the
//!   slice's zone and the node's region.
//! - Istio's discovery selectors limit the namespaces seen.
//! - An invalid Istio object is logged, counted, listed in [`Status`] and
//!   skipped; its last good version keeps applying.
//! - Nothing is published before every watch has listed once
//!   ([`KubeSource::ready`]); a relist (after `410 Gone`, an API server
//!   restart) replaces what was known as one consistent change.
//!
//! | module | what it holds |
//! |---|---|
//! | [`source`] | [`KubeSource`]: the watches, the task that owns the state, publishing, status |
//! | [`cluster`] | the cluster state, indexed by what each event touches |
//! | [`objects`] | the few fields kept from each Kubernetes object |
//! | [`crds`] | Istio's CRDs: served versions, objects to resources |
//! | [`watch`] | kube-rs watchers as `Reset` / `Apply` / `Delete` streams |
//! | [`selector`] | label selectors in kubectl's syntax (discovery selectors) |
//! | [`secrets`] | Secrets as TLS credentials (a Gateway's `credentialName`; needs `list` and `watch` on `secrets`, for gateways only) |
//! | [`token_review`] | who a service-account token belongs to (TokenReview), for the CA |
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use adapter_k8s::{KubeOptions, KubeSource};
//!
//! let client = kube::Client::try_default().await?; // kubeconfig or in-cluster
//! let source = KubeSource::start(client, KubeOptions::default());
//! source.ready().await;
//! // `source` is a ConfigStore and a ServiceRegistry: hand it to
//! // mesh_core::mesh::watch, mesh-proxy or mesh-xds.
//! # Ok(()) }
//! ```

pub mod cluster;
pub mod crds;
pub mod objects;
pub mod secrets;
pub mod selector;
pub mod source;
pub mod token_review;
pub mod watch;

/// What the adapter lists and watches, as `(API group, resource)`: the
/// RBAC it needs is `list` and `watch` on these and nothing else
/// (`examples/deploy/kubernetes/control-plane.yaml`). Namespaces are read
/// only with discovery selectors; Istio kinds only where served.
pub const READS: &[(&str, &str)] = &[
    ("", "services"),
    ("", "pods"),
    ("", "nodes"),
    ("", "namespaces"),
    ("discovery.k8s.io", "endpointslices"),
    ("networking.istio.io", "virtualservices"),
    ("networking.istio.io", "destinationrules"),
    ("networking.istio.io", "gateways"),
    ("networking.istio.io", "serviceentries"),
    ("networking.istio.io", "workloadentries"),
    ("networking.istio.io", "sidecars"),
    ("networking.istio.io", "envoyfilters"),
    ("security.istio.io", "authorizationpolicies"),
    ("security.istio.io", "peerauthentications"),
    ("security.istio.io", "requestauthentications"),
    ("telemetry.istio.io", "telemetries"),
];

pub use selector::LabelSelector;
pub use source::{KubeOptions, KubeSource, Status};

/// The README's snippets, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
