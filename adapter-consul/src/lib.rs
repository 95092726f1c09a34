//! # adapter-consul
//!
//! Consul as the mesh's platform, where Istio's Consul adapter left off:
//! the catalog is a [`ServiceRegistry`](mesh_core::ServiceRegistry) and,
//! optionally, Istio YAML under a KV prefix is a
//! [`ConfigStore`](mesh_core::ConfigStore). Both follow Consul with
//! blocking queries, never a poll loop.
//!
//! - Services are `name.service.consul` ([`catalog::Naming`]); instances
//!   come from `/v1/health/service/<name>`: passing and warning serve
//!   (with Consul's `Weights`), critical leaves, maintenance drains; tags
//!   (`version=v2`) and service meta are labels, so DestinationRule subsets
//!   select them; the datacenter and node meta `zone` are the locality;
//!   service meta `service-account` is the instance's service account.
//! - Blocking queries as Consul documents them ([`blocking`]): an index
//!   that goes backwards starts over, 0 is never sent back, failures back
//!   off with jitter, and queries of one watch are never closer than a
//!   floor. A service gets a watch when it appears in the catalog, and
//!   loses it when it leaves.
//! - The ACL token (`X-Consul-Token`) and TLS to the agent, also from
//!   Consul's environment variables ([`api::AgentOptions::with_env`]).
//!
//! | module | what it holds |
//! |---|---|
//! | [`registry`] | [`ConsulRegistry`]: the catalog watch and one watch per service |
//! | [`kv`] | [`ConsulKvStore`]: Istio YAML from a KV prefix |
//! | [`catalog`] | health entries to a service and its endpoints |
//! | [`api`] | Consul's JSON shapes and the HTTP client |
//! | [`query`] | one watch's loop of blocking queries |
//! | [`blocking`] | the index, backoff and pacing rules |
//! | `fake` | an in-memory agent for tests (feature `fake`) |
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use adapter_consul::api::{AgentOptions, ConsulClient};
//! use adapter_consul::{ConsulRegistry, RegistryOptions};
//!
//! let client = ConsulClient::new(&AgentOptions::new("127.0.0.1:8500").with_env())?;
//! let registry = ConsulRegistry::start(client, RegistryOptions::default());
//! registry.ready().await; // the catalog and every service answered once
//! # Ok(()) }
//! ```

pub mod api;
pub mod blocking;
pub mod catalog;
#[cfg(feature = "fake")]
pub mod fake;
pub mod kv;
pub mod query;
pub mod registry;

pub use kv::ConsulKvStore;
pub use query::WatchOptions;
pub use registry::{ConsulRegistry, RegistryOptions};

/// The README's snippets, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
