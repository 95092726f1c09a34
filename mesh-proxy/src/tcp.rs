//! TCP connections: a `tcp` route's cluster, or Istio's passthrough
//! clusters where nothing is configured for the port (its black hole
//! under REGISTRY_ONLY); bytes copied both
//! ways and counted in Istio's TCP metrics. On inbound and gateway
//! listeners each connection is first judged by the AuthorizationPolicies
//! (Envoy's network RBAC filter), before anything is connected upstream:
//! a denied peer gets no byte of the upstream's, not even its greeting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_core::authz::{AuthzRequest, Decision};
use tokio::net::TcpStream;

use crate::forward::Forwarder;
use crate::live::LiveConfig;
use crate::metrics::tcp::Metered;
use crate::metrics::TcpExchange;
use crate::mtls::peer::PeerIdentity;
use crate::response_flags::Flag;

/// Where inbound passthrough connections come from (Istio's).
const INBOUND_PASSTHROUGH_SOURCE: [u8; 4] = [127, 0, 0, 6];

/// Istio's passthrough clusters: straight on to where the connection was
/// going (an inbound one, on listener `inbound`, once authorized, as
/// Istio's passthrough chains carry the RBAC filter too; `peer`: its mTLS
/// identity).
pub(crate) async fn passthrough<IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    downstream: IO,
    addresses: (SocketAddr, Option<SocketAddr>),
    to: SocketAddr,
    inbound: Option<&str>,
    peer: Option<Arc<PeerIdentity>>,
    forwarder: &Forwarder,
) {
    let cluster = if inbound.is_some() {
        mesh_core::translate::INBOUND_PASSTHROUGH
    } else {
        mesh_core::translate::OUTBOUND_PASSTHROUGH
    };
    let peer = peer.as_deref();
    if inbound.is_some_and(|listener| denied(&forwarder.live.load(), listener, peer, addresses, to)) {
        let exchange =
            TcpExchange { cluster, service: "", peer, upstream: None, downstream: addresses, flag: Flag::Denied };
        drop(forwarder.metrics.tcp_open(&exchange, &forwarder.live.load().telemetry));
        return;
    }
    let connect = async {
        match inbound {
            // From 127.0.0.6, as Istio's InboundPassthroughClusterIpv4:
            // iptables lets it through instead of capturing it again.
            Some(_) if to.is_ipv4() => {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::from((INBOUND_PASSTHROUGH_SOURCE, 0)))?;
                socket.connect(to).await
            }
            _ => TcpStream::connect(to).await,
        }
    };
    let connected = tokio::time::timeout(Duration::from_secs(10), connect).await;
    let flag = if matches!(connected, Ok(Ok(_))) { Flag::None } else { Flag::ConnectFailure };
    let exchange = TcpExchange { cluster, service: "", peer, upstream: Some((to, None)), downstream: addresses, flag };
    let meter = forwarder.metrics.tcp_open(&exchange, &forwarder.live.load().telemetry);
    let mut downstream = Metered::new(downstream, meter);
    if let Ok(Ok(mut upstream)) = connected {
        let _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
    }
}

/// Istio's BlackHoleCluster: a REGISTRY_ONLY sidecar's connection to what
/// the mesh does not know, closed and counted (no healthy upstream, as
/// Envoy's cluster without endpoints reports it).
pub(crate) fn blackhole(downstream: (SocketAddr, Option<SocketAddr>), forwarder: &Forwarder) {
    let exchange = TcpExchange {
        cluster: mesh_core::translate::BLACKHOLE,
        service: "",
        peer: None,
        upstream: None,
        downstream,
        flag: Flag::NoHealthyUpstream,
    };
    drop(forwarder.metrics.tcp_open(&exchange, &forwarder.live.load().telemetry));
}

/// A `tcp` route's clusters, for a connection from and to `addresses`.
pub(crate) struct TcpRoute {
    pub clusters: Vec<mesh_core::proxy_config::WeightedCluster>,
    pub addresses: (SocketAddr, Option<SocketAddr>),
    /// Where the client was going: the original destination on a capture
    /// listener (its port is the policies' `ports`).
    pub destination: SocketAddr,
    /// Inbound or gateway traffic: authorized first. Never a sidecar's
    /// outbound (Istio puts RBAC on inbound chains only).
    pub authorize: bool,
    /// The listener it came in on (whose chain may carry RBAC).
    pub listener: String,
    pub forwarder: Arc<Forwarder>,
}

/// A `tcp` route: the weighted cluster's endpoint, bytes copied both ways,
/// counted in Istio's TCP metrics (`peer`: the client's mTLS identity).
pub(crate) async fn proxy_tcp<IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    downstream: IO,
    peer: Option<Arc<PeerIdentity>>,
    TcpRoute { clusters, addresses, destination, authorize, listener, forwarder }: TcpRoute,
) {
    let live = forwarder.live.load_full();
    if authorize && denied(&live, &listener, peer.as_deref(), addresses, destination) {
        let exchange = TcpExchange {
            cluster: "",
            service: "",
            peer: peer.as_deref(),
            upstream: None,
            downstream: addresses,
            flag: Flag::Denied,
        };
        drop(forwarder.metrics.tcp_open(&exchange, &live.telemetry));
        return;
    }
    let Some(chosen) = mesh_core::routing::pick_weighted(&clusters, fastrand::u64(..)) else { return };
    let Some(cluster) = live.clusters.get(&chosen.cluster) else { return };
    let meter = |flag: Flag, host: Option<usize>| {
        let upstream = host.map(|h| (cluster.addresses[h], cluster.workloads[h].as_ref().map(|(w, _)| &**w)));
        let exchange = TcpExchange {
            cluster: &cluster.config.name,
            service: &cluster.config.service,
            peer: peer.as_deref(),
            upstream,
            downstream: addresses,
            flag,
        };
        forwarder.metrics.tcp_open(&exchange, &live.telemetry)
    };
    let Some(host) = cluster.pick(None, &[]) else {
        drop(meter(Flag::NoHealthyUpstream, None));
        return;
    };
    let Some(_permit) = cluster.breaker.try_acquire(mesh_core::resilience::circuit_breaker::Resource::Connections)
    else {
        drop(meter(Flag::Overflow, Some(host)));
        return;
    };
    let connect =
        tokio::time::timeout(cluster.config.connect_timeout, TcpStream::connect(cluster.addresses[host])).await;
    match connect {
        Ok(Ok(mut upstream)) => {
            let mut downstream = Metered::new(downstream, meter(Flag::None, Some(host)));
            let _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
        }
        _ => {
            drop(meter(Flag::ConnectFailure, Some(host)));
            if let Some(o) = &cluster.outlier {
                o.record(host, mesh_core::resilience::outlier::Observation::LocalOriginFailure, cluster.now());
            }
        }
    }
}

/// Whether the AuthorizationPolicies (or, over xDS, the chain's network
/// RBAC) refuse this connection, judged on what a connection has: the
/// peer's address and mTLS identity, and where it was going.
fn denied(
    live: &LiveConfig,
    listener: &str,
    peer: Option<&PeerIdentity>,
    (remote, _): (SocketAddr, Option<SocketAddr>),
    destination: SocketAddr,
) -> bool {
    let rbac = live.rbac_for(listener, destination.port(), true);
    if live.authorizer.is_empty() && rbac.is_none() {
        return false;
    }
    let no_headers = http::HeaderMap::new();
    let request = AuthzRequest {
        source_ip: Some(remote.ip()),
        remote_ip: None,
        source_principal: peer.map(|p| p.principal.as_str()),
        peer_uri: peer.map(|p| p.uri.as_str()),
        request_auth: None,
        host: "",
        method: "",
        path: "",
        port: destination.port(),
        headers: &no_headers,
        destination_ip: Some(destination.ip()),
        sni: None,
    };
    let mut decision = live.authorizer.evaluate_connection(&request);
    if let (Decision::Allow, Some(rbac)) = (&decision, rbac) {
        decision = rbac.evaluate(&request);
    }
    if let Decision::Deny { policy } = &decision {
        tracing::debug!(%remote, %destination, policy = policy.as_deref().unwrap_or("none"), "connection denied by RBAC");
    }
    decision != Decision::Allow
}
