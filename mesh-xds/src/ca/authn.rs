//! Who is asking for a certificate: the CA signs only identities a caller
//! proves. Each [`Authenticator`] reads one kind of proof; the first that
//! accepts wins, as in Istio's CA server. Kubernetes service-account
//! tokens are checked by a TokenReview (adapter-k8s); this module holds
//! the proofs that need no platform: a per-workload bootstrap token, and
//! the caller's own still-valid certificate (renewal).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use async_trait::async_trait;
use mesh_core::certificate::CertificateInfo;
use mesh_core::identity::{SpiffeId, TrustDomains};

/// What a caller showed.
#[derive(Clone, Copy, Debug)]
pub struct Credentials<'a> {
    /// The token of gRPC's `authorization: Bearer <token>` metadata.
    pub bearer_token: Option<&'a str>,
    /// The client certificate of the caller's TLS connection, already
    /// verified by the TLS layer against the CA's roots.
    pub peer_certificate: Option<&'a CertificateInfo>,
    pub remote: SocketAddr,
}

/// One kind of proof.
#[async_trait]
pub trait Authenticator: Send + Sync {
    /// For errors and logs: `bootstrap-token`, `kubernetes`, `certificate`.
    fn name(&self) -> &str;

    /// `Ok(None)` when the caller showed nothing this authenticator reads;
    /// `Err` when it did and the proof failed.
    async fn authenticate(&self, credentials: &Credentials<'_>) -> Result<Option<Vec<SpiffeId>>, String>;
}

/// No authenticator accepted the caller.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the caller proved no identity: {}", if .0.is_empty() { "it showed no token and no client certificate".to_string() } else { .0.join("; ") })]
pub struct Unauthenticated(pub Vec<String>);

/// The identities the first accepting authenticator grants.
pub async fn authenticate(
    authenticators: &[std::sync::Arc<dyn Authenticator>],
    credentials: &Credentials<'_>,
) -> Result<Vec<SpiffeId>, Unauthenticated> {
    let mut reasons = Vec::new();
    for authenticator in authenticators {
        match authenticator.authenticate(credentials).await {
            Ok(Some(ids)) if !ids.is_empty() => return Ok(ids),
            Ok(_) => {}
            Err(reason) => reasons.push(format!("{}: {reason}", authenticator.name())),
        }
    }
    Err(Unauthenticated(reasons))
}

/// Per-workload bootstrap tokens, for workloads outside Kubernetes: a
/// file of lines `<spiffe-id> <token>` (`#` starts a comment). A token
/// proves the identity beside it.
pub struct BootstrapTokens {
    by_token: HashMap<String, SpiffeId>,
}

impl BootstrapTokens {
    pub fn from_file(path: &Path) -> Result<BootstrapTokens, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        BootstrapTokens::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<BootstrapTokens, String> {
        let mut by_token = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(id), Some(token), None) = (fields.next(), fields.next(), fields.next()) else {
                return Err(format!("line {}: expected `<spiffe-id> <token>`", n + 1));
            };
            let id: SpiffeId = id.parse().map_err(|e| format!("line {}: {e}", n + 1))?;
            if by_token.insert(token.to_string(), id).is_some() {
                return Err(format!("line {}: the token is given twice", n + 1));
            }
        }
        Ok(BootstrapTokens { by_token })
    }
}

#[async_trait]
impl Authenticator for BootstrapTokens {
    fn name(&self) -> &str {
        "bootstrap-token"
    }

    async fn authenticate(&self, credentials: &Credentials<'_>) -> Result<Option<Vec<SpiffeId>>, String> {
        let Some(token) = credentials.bearer_token else { return Ok(None) };
        // Compared in full against every token, so timing tells nothing.
        let mut found = None;
        for (known, id) in &self.by_token {
            if constant_time_eq(known.as_bytes(), token.as_bytes()) {
                found = Some(id.clone());
            }
        }
        match found {
            Some(id) => Ok(Some(vec![id])),
            // Another authenticator (Kubernetes) may know the token.
            None => Err("the token is not a known bootstrap token".into()),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The caller's current certificate, verified by the TLS layer: renewal
/// by a workload that already holds an identity. Only SPIFFE IDs of the
/// trust domains are granted.
pub struct ClientCertificate {
    pub trust_domains: TrustDomains,
}

#[async_trait]
impl Authenticator for ClientCertificate {
    fn name(&self) -> &str {
        "certificate"
    }

    async fn authenticate(&self, credentials: &Credentials<'_>) -> Result<Option<Vec<SpiffeId>>, String> {
        let Some(cert) = credentials.peer_certificate else { return Ok(None) };
        let ids = cert.spiffe_ids();
        if ids.is_empty() {
            return Err(format!("the client certificate (serial {}) has no SPIFFE ID", cert.serial));
        }
        let (ours, foreign): (Vec<SpiffeId>, Vec<SpiffeId>) =
            ids.into_iter().partition(|id| self.trust_domains.accepts(id));
        if ours.is_empty() {
            let names: Vec<String> = foreign.iter().map(ToString::to_string).collect();
            return Err(format!("{} is not of trust domain {}", names.join(", "), self.trust_domains.own));
        }
        Ok(Some(ours))
    }
}
