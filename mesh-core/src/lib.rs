//! # mesh-core
//!
//! The model and the decisions of the mesh, with no sockets: what Istio's
//! Pilot knows and what Envoy decides per request, as plain data and pure
//! functions that any proxy or control plane can embed.
//!
//! | module | what it holds |
//! |---|---|
//! | [`config`] | Istio resources (VirtualService, DestinationRule, ...) decoded from YAML with field-path errors, and validated as Istio does |
//! | [`model`] | services, ports, endpoints, localities |
//! | [`workload`] | workloads as telemetry names them: controller names, canonical service and revision |
//! | [`service_entry`] | ServiceEntry and WorkloadEntry as services and endpoints |
//! | [`registry`] | [`ServiceRegistry`]: services and endpoints from a platform, plus aggregation |
//! | [`store`] | [`ConfigStore`]: Istio resources by kind, plus aggregation |
//! | [`keyed`] | the snapshot-plus-changes shape both share (`Reset`, `Upsert`, `Delete`) |
//! | [`mesh`] | a store and a registry followed as one debounced, consistent snapshot stream |
//! | [`translate`] | config + registry + proxy identity -> [`ProxyConfig`] |
//! | [`sidecar_scope`] | the Sidecar resource of a proxy: the services it sees, its outbound traffic policy |
//! | [`proxy_config`] | the compiled, Envoy-shaped config one proxy runs |
//! | [`analyze`] | cross-resource checks (`istioctl analyze`): unknown hosts and subsets, unused subsets, unserved gateways, conflicts, unreachable routes |
//! | [`routing`] | route tables: host and first-match route lookup, weighted destinations |
//! | [`lb`] | round robin, random, least request (P2C), ring hash, Maglev, locality |
//! | [`resilience`] | retries and backoff, circuit breakers, outlier detection |
//! | [`fault`] | fault injection decisions |
//! | [`rate_limit`] | the local rate limit token bucket |
//! | [`path`] | request path normalization before routing and authorization (Istio's `pathNormalization`) |
//! | [`identity`] | SPIFFE IDs and the trust domains a proxy accepts |
//! | [`credentials`] | TLS credentials by name (a Gateway's `credentialName`), from the platform |
//! | `certificate` | what an X.509 certificate says: SPIFFE IDs, serial, validity (feature `x509`) |
//! | [`mesh_config`] | Istio's MeshConfig settings translation reads: trust domain, auto mTLS, root namespace |
//! | [`mtls`] | which connections carry Istio mTLS: DestinationRule TLS, auto mTLS, PeerAuthentication as inbound chains |
//! | [`peer_authentication`] | PeerAuthentication merged for a workload (mesh, namespace, workload, port) |
//! | [`jwt`] | RequestAuthentication: JWT providers, where tokens are found, verified claims |
//! | [`expression`] | Envoy's attribute expressions (CEL) over a request, as Telemetry tag overrides and access log filters use them |
//! | [`telemetry`] | the Telemetry API merged for a proxy: tracing providers and sampling, access logging, metrics |
//! | [`authz`] | AuthorizationPolicy evaluation |
//! | [`rbac`] | Envoy's RBAC filter as received over xDS, judged as Envoy judges it |
//! | [`filter`] | [`Filter`]: user code in the request path |
//!
//! ## A custom filter
//!
//! A filter implements only the phases it needs; this one answers requests
//! without an API key and tags the rest.
//!
//! ```
//! use async_trait::async_trait;
//! use bytes::Bytes;
//! use mesh_core::filter::{Filter, FilterContext, FilterError, RequestAction, RequestHead, ResponseHead};
//!
//! struct ApiKey {
//!     key: String,
//! }
//!
//! /// Per-request state, kept in the context's extensions.
//! #[derive(Clone)]
//! struct Authenticated;
//!
//! #[async_trait]
//! impl Filter for ApiKey {
//!     fn name(&self) -> &str {
//!         "api-key"
//!     }
//!
//!     async fn on_request(&self, req: &mut RequestHead, ctx: &mut FilterContext) -> Result<RequestAction, FilterError> {
//!         match req.headers.get("x-api-key") {
//!             Some(k) if k.as_bytes() == self.key.as_bytes() => {
//!                 req.headers.remove("x-api-key");
//!                 ctx.extensions.insert(Authenticated);
//!                 Ok(RequestAction::Continue)
//!             }
//!             _ => Ok(RequestAction::Respond(
//!                 http::Response::builder()
//!                     .status(401)
//!                     .body(Bytes::from_static(b"missing or wrong x-api-key\n"))
//!                     .map_err(|e| FilterError::new("api-key", e.to_string()))?,
//!             )),
//!         }
//!     }
//!
//!     async fn on_response(&self, resp: &mut ResponseHead, ctx: &mut FilterContext) -> Result<(), FilterError> {
//!         if ctx.extensions.get::<Authenticated>().is_some() {
//!             resp.headers.insert("x-authenticated", http::HeaderValue::from_static("true"));
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let chain = mesh_core::filter::FilterChain::new(vec![std::sync::Arc::new(ApiKey { key: "s3cret".into() })]);
//! let (mut req, _) = http::Request::get("/").header("x-api-key", "s3cret").body(()).unwrap().into_parts();
//! let mut ctx = FilterContext::new("req-1", None);
//! let action = chain.on_request(&mut req, &mut ctx).await.unwrap();
//! assert!(matches!(action, RequestAction::Continue));
//! let (mut resp, _) = http::Response::new(()).into_parts();
//! chain.on_response(&mut resp, &mut ctx).await.unwrap();
//! assert_eq!(resp.headers["x-authenticated"], "true");
//! # });
//! ```
//!
//! ## From Istio YAML to a routing decision
//!
//! ```
//! use std::sync::Arc;
//! use mesh_core::{config, store::MemoryConfigStore, registry::MemoryRegistry, ConfigStore, ServiceRegistry};
//! use mesh_core::mesh::MeshSnapshot;
//! use mesh_core::translate::{translate, ProxyIdentity};
//! use mesh_core::model::{Endpoint, Protocol, Resolution, Service, ServicePort};
//! use mesh_core::routing::{RequestView, RouteTable};
//!
//! let store = MemoryConfigStore::new();
//! for doc in config::parse_documents(r#"
//! apiVersion: networking.istio.io/v1
//! kind: VirtualService
//! metadata: {name: reviews, namespace: default}
//! spec:
//!   hosts: [reviews]
//!   http:
//!   - match:
//!     - headers: {end-user: {exact: jason}}
//!     route:
//!     - destination: {host: reviews, subset: v2}
//!   - route:
//!     - destination: {host: reviews, subset: v3}
//! "#).unwrap() {
//!     if let config::Decoded::Istio { resource, .. } = config::decode(doc, "default").unwrap() {
//!         store.upsert(resource);
//!     }
//! }
//! let registry = MemoryRegistry::new("example");
//! registry.upsert(Service {
//!     hostname: "reviews.default.svc.cluster.local".into(),
//!     namespace: "default".into(),
//!     ports: vec![ServicePort { name: "http".into(), port: 9080, protocol: Protocol::Http, target_port: None }],
//!     labels: Default::default(),
//!     addresses: vec![],
//!     resolution: Resolution::Static,
//!     mesh_external: false,
//!     subject_alt_names: Vec::new(),
//! }, vec![Endpoint::new("10.0.0.1")]);
//!
//! let mesh = MeshSnapshot { config: store.snapshot(), services: registry.snapshot() };
//! let proxy = ProxyIdentity::sidecar("productpage-v1", "default", Default::default());
//! let cfg = translate(&mesh, &proxy);
//! let table = RouteTable::new(cfg.route_config("9080").unwrap().clone()).unwrap();
//! let (head, _) = http::Request::get("http://reviews:9080/").header("end-user", "jason").body(()).unwrap().into_parts();
//! let hit = table.find(&RequestView::from_parts(&head, 9080)).unwrap();
//! let mesh_core::proxy_config::RouteAction::Forward { clusters } = &hit.route.action else { unreachable!() };
//! assert_eq!(clusters[0].cluster, "outbound|9080|v2|reviews.default.svc.cluster.local");
//! ```

pub mod analyze;
pub mod authz;
#[cfg(feature = "x509")]
pub mod certificate;
pub mod config;
pub mod credentials;
pub mod expression;
pub mod fault;
pub mod filter;
pub mod identity;
pub mod jwt;
pub mod keyed;
pub mod lb;
pub mod mesh;
pub mod mesh_config;
pub mod model;
pub mod mtls;
pub mod path;
pub mod peer_authentication;
pub mod proxy_config;
pub mod rate_limit;
pub mod rbac;
pub mod registry;
pub mod resilience;
pub mod routing;
pub mod service_entry;
pub mod sidecar_scope;
pub mod store;
pub mod telemetry;
pub mod translate;
pub mod workload;

pub use filter::Filter;
pub use proxy_config::ProxyConfig;
pub use registry::ServiceRegistry;
pub use store::ConfigStore;

/// The README's snippets, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
