//! SDS: the secrets a node is sent over ADS, named as Istio's agent names
//! them for Envoy: `default` (the workload certificate and its key),
//! `ROOTCA` (the roots peers must chain to), and a gateway's credentials
//! as `kubernetes://NAME` (certificate and key) and
//! `kubernetes://NAME-cacert` (the CA client certificates must chain to).
//!
//! - [`issuer`]: workload certificates per proven identity, renewed.
//! - [`credentials`]: credentials from the platform, in the node's
//!   namespace only.
//! - [`stream`]: one stream's secrets, merged into its snapshots.

pub mod credentials;
pub mod issuer;
pub mod stream;

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret::Type as SecretType, CertificateValidationContext, Secret, TlsCertificate,
};

pub use credentials::SecretRef;
pub use issuer::{secret_resources, IdentitySecrets, SecretIssuer};
pub use stream::StreamSecrets;

use crate::resources::Resource;

/// The workload certificate and key, as Istio names it.
pub const WORKLOAD_SECRET: &str = "default";
/// The trust bundle, as Istio names it.
pub const ROOT_SECRET: &str = "ROOTCA";

/// A certificate chain and its key as an SDS resource, the PEM inline.
fn certificate_secret(name: &str, chain_pem: &str, key_pem: &str) -> (String, Arc<Resource>) {
    let secret = Secret {
        name: name.into(),
        r#type: Some(SecretType::TlsCertificate(TlsCertificate {
            certificate_chain: inline(chain_pem),
            private_key: inline(key_pem),
            ..Default::default()
        })),
    };
    (name.to_string(), Arc::new(Resource::new(name.to_string(), &secret)))
}

/// Roots to verify peers with as an SDS resource, the PEM inline.
fn roots_secret(name: &str, roots_pem: &str) -> (String, Arc<Resource>) {
    let secret = Secret {
        name: name.into(),
        r#type: Some(SecretType::ValidationContext(CertificateValidationContext {
            trusted_ca: inline(roots_pem),
            ..Default::default()
        })),
    };
    (name.to_string(), Arc::new(Resource::new(name.to_string(), &secret)))
}

fn inline(pem: &str) -> Option<DataSource> {
    Some(DataSource { specifier: Some(Specifier::InlineBytes(pem.as_bytes().to_vec())), ..Default::default() })
}
