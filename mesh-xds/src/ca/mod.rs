//! Citadel's job: the mesh's certificate authority, its CSR API, and the
//! workload side that asks it for certificates.
//!
//! | module | what it holds |
//! |---|---|
//! | [`authority`] | the CA's key and certificates (Istio's `cacerts` layout, or a kept self-signed root) and workload certificates signed as istiod signs them |
//! | [`authn`] | who a caller is: bootstrap tokens, its current certificate; the seam for Kubernetes TokenReview |
//! | [`proto`] | `istio.v1.auth.IstioCertificateService` messages |
//! | [`server`] | `CreateCertificate` over gRPC and TLS, with `citadel_server_*` counts |
//! | [`client`] | a workload's key, CSR and renewal at half life |

pub mod authn;
pub mod authority;
pub mod client;
pub mod proto;
pub mod server;
