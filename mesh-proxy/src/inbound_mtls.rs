//! Inbound Istio mTLS on a sidecar's capture listener: the port's filter
//! chains say whether a connection must be mTLS (STRICT), may be either
//! (PERMISSIVE: told apart by the first byte, a TLS handshake record or
//! not, as Envoy's TLS inspector does), or is plaintext (DISABLE).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mesh_core::proxy_config::{FilterChain, Listener};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::mtls::peer::PeerIdentity;
use crate::mtls::WorkloadIdentity;

/// How a port takes connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboundMtls {
    Off,
    Sniff,
    Required,
}

impl InboundMtls {
    /// The mode of `port` from the listener's chains for it.
    pub fn for_port(listener: &Listener, port: u16) -> InboundMtls {
        let chains = port_chains(listener, port);
        let (mut mtls, mut plain) = (false, false);
        for chain in chains {
            match &chain.tls {
                Some(tls) if tls.mode == mesh_core::mtls::ISTIO_MUTUAL => mtls = true,
                Some(_) => {}
                None => plain = true,
            }
        }
        match (mtls, plain) {
            (true, true) => InboundMtls::Sniff,
            (true, false) => InboundMtls::Required,
            _ => InboundMtls::Off,
        }
    }
}

/// The capture listener's chains for connections to `port`: the port's
/// own, else the catch-all ones (no port: Istio's passthrough chains).
pub fn port_chains(listener: &Listener, port: u16) -> impl Iterator<Item = &FilterChain> + Clone {
    let own = listener.filter_chains.iter().any(|c| c.destination_port == Some(port));
    let wanted = if own { Some(port) } else { None };
    listener.filter_chains.iter().filter(move |c| c.destination_port == wanted)
}

/// An accepted inbound connection.
pub enum Accepted {
    Plain(TcpStream),
    Mtls(Box<TlsStream<TcpStream>>, Arc<PeerIdentity>),
}

/// The first record type of a TLS connection: a handshake.
const TLS_HANDSHAKE: u8 = 0x16;

/// Takes `stream` as `mode` says: `None` when the connection is refused
/// (a plaintext client on a STRICT port, a failed handshake, no workload
/// certificate here), counted in the identity's stats.
pub async fn accept(
    stream: TcpStream,
    mode: InboundMtls,
    identity: Option<&WorkloadIdentity>,
    handshake_timeout: Duration,
) -> Option<Accepted> {
    // A client that waits for the server to speak first is plaintext.
    let starts_tls = || async {
        let mut first = [0u8; 1];
        matches!(tokio::time::timeout(handshake_timeout, stream.peek(&mut first)).await, Ok(Ok(1)) if first[0] == TLS_HANDSHAKE)
    };
    match mode {
        InboundMtls::Off => return Some(Accepted::Plain(stream)),
        InboundMtls::Sniff if !starts_tls().await => return Some(Accepted::Plain(stream)),
        // Not TLS on a STRICT port: closed without a byte (no TLS alert an
        // HTTP client would read as a response), as Envoy closes a
        // connection no filter chain matches.
        InboundMtls::Required if !starts_tls().await => {
            if let Some(identity) = identity {
                identity.stats().inbound_handshake_failures.fetch_add(1, Ordering::Relaxed);
            }
            tracing::debug!("plaintext connection on a STRICT mTLS port closed");
            return None;
        }
        InboundMtls::Sniff | InboundMtls::Required => {}
    }
    let Some(identity) = identity else {
        tracing::warn!("inbound mTLS connection refused: this proxy has no workload certificate");
        return None;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config());
    let failed = |reason: String| {
        identity.stats().inbound_handshake_failures.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%reason, "inbound mTLS handshake failed");
        None
    };
    let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return failed(e.to_string()),
        Err(_) => return failed("timed out".into()),
    };
    let peer = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|leaf| identity.peer(leaf, true));
    match peer {
        Some(peer) => Some(Accepted::Mtls(Box::new(tls), peer)),
        None => failed("the client certificate has no SPIFFE ID".into()),
    }
}
