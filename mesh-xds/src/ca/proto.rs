//! Istio's CA API, `istio.v1.auth.IstioCertificateService` (istio/api
//! `security/v1alpha1/ca.proto`): one unary call, a CSR in, the signed
//! chain out.

use envoy_types::pb::google::protobuf::Struct;

/// The gRPC path of `CreateCertificate`.
pub const CREATE_CERTIFICATE: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";

#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateRequest {
    /// The PEM CSR; only its public key is used.
    #[prost(string, tag = "1")]
    pub csr: String,
    /// The lifetime asked for, in seconds; 0 for the CA's default.
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
    /// Opaque metadata from the node (Istio sends its ClusterID).
    #[prost(message, optional, tag = "4")]
    pub metadata: Option<Struct>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateResponse {
    /// The leaf, its chain, and last the root bundle.
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}
