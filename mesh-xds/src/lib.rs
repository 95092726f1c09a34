//! # mesh-xds
//!
//! Pilot's job: mesh-core's [`ProxyConfig`](mesh_core::ProxyConfig) served
//! over the xDS protocol to Envoy, proxyless gRPC and mesh-proxy; and the
//! client side, so mesh-proxy can be driven by a control plane.
//!
//! The data flow, server side: the mesh (a `ConfigStore` and a
//! `ServiceRegistry`, debounced by `mesh_core::mesh::watch`) goes to the
//! [`generator`], which translates it once per connected node key into a
//! [`cache::Snapshot`] of Envoy resources ([`envoy`]), each encoded once.
//! A stream task per connection drives a protocol state machine
//! ([`sotw`] or [`delta`]) with the client's requests and the snapshots,
//! and [`grpc`] writes the answers. Client side, [`client`] subscribes,
//! turns the resources back into a `ProxyConfig` ([`import`]) and ACKs or
//! NACKs.
//!
//! | module | what it holds |
//! |---|---|
//! | [`envoy`] | `ProxyConfig` -> Envoy v3 listeners, routes, clusters, endpoints |
//! | [`import`] | Envoy v3 resources -> `ProxyConfig`, how mesh-proxy consumes xDS; refusals name resource and field |
//! | [`resources`] | type URLs, encoded resources with content versions, push order |
//! | [`node`] | an xDS `Node` (Istio's id and metadata, gRPC's bootstrap) -> the identity translation needs |
//! | [`cache`] | snapshots per node key, and what a subscription should be sent (SotW and delta) |
//! | [`sotw`] | the state-of-the-world stream protocol as a state machine: ACK, NACK, nonces, push order |
//! | [`delta`] | the incremental stream protocol as a state machine: subscriptions, what the client holds, removals |
//! | [`generator`] | the mesh -> one snapshot per connected node key, rebuilt on change |
//! | [`server`] | the ADS service (SotW and delta) over the generator's snapshots |
//! | [`grpc`] | gRPC framing over hyper's HTTP/2 server, sending shared resource bytes without copies |
//! | [`client`] | an ADS client that feeds mesh-proxy: subscribe, ACK/NACK, warm, reconnect with backoff |
//! | [`status`] | what each node was sent, ACKed and NACKed (`syncz`) |
//! | [`debug`] | JSON views for debug endpoints: `syncz`, a node's config dump |
//! | [`ca`] | the certificate authority, its CSR API (`IstioCertificateService`) and the workload's CSR client |
//! | [`sds`] | secrets: each proven identity's certificate and roots (`default`, `ROOTCA`), renewed; gateway credentials (`kubernetes://NAME`) of its namespace |
//!
//! Security: on the secure port ([`server::AdsServer::serve_tls`], istiod's
//! 15012) streams prove an identity as CSRs do, and get its certificate
//! and roots over SDS ([`sds`]); Envoy's ISTIO_MUTUAL clusters, servers
//! and inbound chains use them, and AuthorizationPolicy becomes its RBAC
//! filters. Gateway `credentialName`s are sent over SDS from the
//! platform's Secrets, in the namespace the stream proved. What a node's
//! resources cannot express is listed per node ([`envoy::Translated`],
//! `syncz`). Proxyless gRPC's ISTIO_MUTUAL names the certificate
//! providers of its bootstrap, as Istio's does. Not translated yet: the
//! `distribute` and `failoverPriority` locality settings.

pub mod ca;
pub mod cache;
pub mod client;
pub mod debug;
pub mod delta;
pub mod envoy;
pub mod generator;
pub mod grpc;
pub mod import;
pub mod node;
pub mod resources;
pub mod sds;
pub mod server;
pub mod sotw;
pub mod status;

/// The README's snippets, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
