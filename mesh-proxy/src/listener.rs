//! Listeners: a socket per listener of the config, added and removed as the
//! config changes, each serving HTTP/1.1 ([`crate::downstream`]) and HTTP/2
//! (h2c prior knowledge or ALPN `h2`, on hyper's server) or proxying TCP, and
//! draining gracefully when removed or stopped.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mesh_core::proxy_config::{ChainAction, FilterChain, Listener, TrafficDirection};
use mesh_core::translate::{BLACKHOLE, INBOUND_PASSTHROUGH};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::body::{self, BoxError};
use crate::downstream::{self, drained, Io, Rewind, Served};
use crate::forward::{Forwarder, Ingress};
use crate::inbound_mtls::{self, Accepted, InboundMtls};
use crate::limits::DownstreamLimits;
use crate::mtls::peer::PeerIdentity;
use crate::mtls::WorkloadIdentity;
use crate::sni;
use crate::status::ProxyStatus;
use crate::tcp::{blackhole, passthrough, proxy_tcp, TcpRoute};
use crate::tls::{Credentials, TlsListener};

struct Running {
    address: SocketAddr,
    /// The listener's config, to notice when it changes.
    config: Listener,
    /// The bound socket: a changed listener on the same address keeps it
    /// (a new bind would race the old task's close: EADDRINUSE), as
    /// Envoy updates a listener's filter chains in place.
    socket: Arc<TcpListener>,
    stop: watch::Sender<bool>,
    /// Resolves once drained, to the connections still open at the
    /// drain deadline.
    task: tokio::task::JoinHandle<usize>,
}

/// The listeners currently bound.
pub struct Listeners {
    running: HashMap<String, Running>,
    bind_ip: Option<IpAddr>,
    drain: Duration,
    /// Timeouts and limits of every downstream connection.
    limits: DownstreamLimits,
    /// Where listeners that cannot bind are reported.
    status: Arc<ProxyStatus>,
    /// The certificates: inbound mTLS, gateway credentials.
    credentials: Credentials,
}

/// A listening socket with this accept queue (by default as long as the
/// kernel allows: tokio's `bind` asks for 1,024 and got 128 on some
/// kernels, and 2,000 connections opening at once took 5 s) (and `SO_REUSEADDR`, as
/// `TcpListener::bind` sets it).
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

impl Listeners {
    pub fn new(
        bind_ip: Option<IpAddr>,
        drain: Duration,
        limits: DownstreamLimits,
        status: Arc<ProxyStatus>,
        credentials: Credentials,
    ) -> Listeners {
        Listeners { running: HashMap::new(), bind_ip, drain, limits, status, credentials }
    }

    /// Bind what the config has and is not bound; drain what it no longer
    /// has. Listeners with `bind_to_port: false` (a sidecar's per-port
    /// listeners) get their connections from the capture listener.
    pub async fn reconcile(&mut self, listeners: &[Listener], forwarder: &Arc<Forwarder>) {
        let wanted: HashMap<&str, &Listener> =
            listeners.iter().filter(|l| l.bind_to_port).map(|l| (l.name.as_str(), l)).collect();
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|n| wanted.get(n.as_str()).is_none_or(|l| **l != self.running[*n].config))
            .cloned()
            .collect();
        let mut sockets: HashMap<String, Arc<TcpListener>> = HashMap::new();
        for name in gone {
            if let Some(r) = self.running.remove(&name) {
                tracing::info!(listener = %name, "draining listener");
                let _ = r.stop.send(true);
                let same_place = wanted
                    .get(name.as_str())
                    .is_some_and(|l| (&l.address, l.port) == (&r.config.address, r.config.port));
                if same_place {
                    sockets.insert(name, r.socket);
                }
            }
        }
        for (name, _) in self.status.listeners_down() {
            if !wanted.contains_key(name.as_str()) {
                self.status.listener_up(&name);
            }
        }
        for (name, l) in wanted {
            if self.running.contains_key(name) {
                continue;
            }
            match self.start(l, forwarder, sockets.remove(name)) {
                Ok(running) => {
                    self.status.listener_up(name);
                    self.running.insert(name.to_string(), running);
                }
                Err((address, e)) => {
                    tracing::error!(listener = %name, %address, "listener not started: {e}");
                    self.status.listener_down(name, &address, &e);
                }
            }
        }
    }

    /// Bind one listener (or take over `socket`, its old one) and serve
    /// it; the address it wanted and why not.
    fn start(
        &self,
        l: &Listener,
        forwarder: &Arc<Forwarder>,
        socket: Option<Arc<TcpListener>>,
    ) -> Result<Running, (String, String)> {
        let ip = match self.bind_ip {
            Some(ip) => ip,
            None => l
                .address
                .parse()
                .map_err(|_| (format!("{}:{}", l.address, l.port), format!("`{}` is not an IP address", l.address)))?,
        };
        let wanted = SocketAddr::new(ip, l.port);
        let socket = match socket {
            Some(socket) => socket,
            None => {
                Arc::new(bind(wanted, self.limits.listen_backlog).map_err(|e| (wanted.to_string(), e.to_string()))?)
            }
        };
        let tls = TlsListener::for_listener(l, &self.credentials).map_err(|e| (wanted.to_string(), e.to_string()))?;
        let address = socket.local_addr().unwrap_or(wanted);
        let (stop, stopped) = watch::channel(false);
        if let Some(tls) = &tls {
            let status = Arc::clone(&self.status);
            tokio::spawn(tls.clone().follow_certificates(
                l.name.clone(),
                Duration::from_secs(1),
                status,
                stopped.clone(),
            ));
        }
        let serving = Serving {
            config: l.clone(),
            tls,
            identity: self.credentials.identity.clone(),
            forwarder: Arc::clone(forwarder),
            drain: self.drain,
            settings: self.limits,
        };
        let task = tokio::spawn(serve(Arc::clone(&socket), serving, stopped));
        tracing::info!(listener = %l.name, %address, "listening");
        Ok(Running { address, config: l.clone(), socket, stop, task })
    }

    pub fn addresses(&self) -> Vec<(String, SocketAddr)> {
        let mut v: Vec<_> = self.running.iter().map(|(n, r)| (n.clone(), r.address)).collect();
        v.sort();
        v
    }

    /// Stop accepting everywhere and wait for connections to finish, up to
    /// the drain deadline.
    pub async fn shutdown(&mut self) -> usize {
        for r in self.running.values() {
            let _ = r.stop.send(true);
        }
        let mut cut_off = 0;
        for (_, r) in self.running.drain() {
            cut_off += r.task.await.unwrap_or(0);
        }
        cut_off
    }
}

/// What a listener's accept loop serves with.
struct Serving {
    config: Listener,
    tls: Option<TlsListener>,
    identity: Option<WorkloadIdentity>,
    forwarder: Arc<Forwarder>,
    drain: Duration,
    settings: DownstreamLimits,
}

async fn serve(socket: Arc<TcpListener>, serving: Serving, mut stop: watch::Receiver<bool>) -> usize {
    let Serving { config, tls, identity, forwarder, drain, settings } = serving;
    let connections = Connections::new(settings.max_connections);
    let by_sni = (!config.use_original_dst && sni::routes_by_sni(&config.filter_chains))
        .then(|| Arc::new(config.filter_chains.clone()));
    let tcp = config.filter_chains.iter().find_map(|c| match &c.action {
        ChainAction::Tcp { clusters } if config.direction != TrafficDirection::Outbound || !config.use_original_dst => {
            Some(clusters.clone())
        }
        _ => None,
    });
    loop {
        let (stream, peer) = tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Some(slot) = connections.slot() else {
            // Over the listener's limit: closed at once, as Envoy does.
            forwarder.stats.overflow.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let mut plain = Ingress::new(config.name.clone(), config.port, peer);
        plain.local = stream.local_addr().ok();
        plain.outbound = config.direction == TrafficDirection::Outbound;
        plain.inbound = config.direction == TrafficDirection::Inbound;
        let addresses = (peer, plain.local);
        if let Some(chains) = &by_sni {
            let (open, draining) = connections.open();
            let forwarder = Arc::clone(&forwarder);
            let connection = Connection { forwarder, ingress: plain, settings, draining, _open: open, _slot: slot };
            tokio::spawn(connection.serve_by_sni(stream, Arc::clone(chains), tls.clone()));
            continue;
        }
        let (ingress, mtls) = match target(&stream, &config, tcp.as_ref(), &forwarder, plain) {
            Target::Http(ingress, mtls) => (ingress, mtls),
            Target::Tcp(clusters, mtls, destination) => {
                let (forwarder, identity) = (Arc::clone(&forwarder), identity.clone());
                let authorize = config.direction != TrafficDirection::Outbound;
                let listener = config.name.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let tcp = TcpRoute { clusters, addresses, destination, authorize, listener, forwarder };
                    match inbound_mtls::accept(stream, mtls, identity.as_ref(), settings.header_timeout).await {
                        Some(Accepted::Plain(stream)) => proxy_tcp(stream, None, tcp).await,
                        Some(Accepted::Mtls(stream, peer)) => proxy_tcp(*stream, Some(peer), tcp).await,
                        None => {}
                    }
                });
                continue;
            }
            Target::Passthrough(to, mtls) => {
                let (forwarder, identity) = (Arc::clone(&forwarder), identity.clone());
                let inbound = (config.direction == TrafficDirection::Inbound).then(|| config.name.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    let (inbound, forwarder) = (inbound.as_deref(), &forwarder);
                    match inbound_mtls::accept(stream, mtls, identity.as_ref(), settings.header_timeout).await {
                        Some(Accepted::Plain(s)) => passthrough(s, addresses, to, inbound, None, forwarder).await,
                        Some(Accepted::Mtls(s, peer)) => {
                            passthrough(*s, addresses, to, inbound, Some(peer), forwarder).await
                        }
                        None => {}
                    }
                });
                continue;
            }
            Target::Closed => {
                forwarder.stats.connection_errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Target::BlackHole => {
                blackhole(addresses, &forwarder);
                continue;
            }
        };
        let (open, draining) = connections.open();
        let connection =
            Connection { forwarder: Arc::clone(&forwarder), ingress, settings, draining, _open: open, _slot: slot };
        // Plain and TLS connections are separate tasks: one task's size is
        // its largest state, and a plain connection should not carry room
        // for a TLS session.
        match (&tls, mtls) {
            (_, InboundMtls::Sniff | InboundMtls::Required) => {
                tokio::spawn(connection.serve_inbound(stream, mtls, identity.clone()))
            }
            (None, InboundMtls::Off) => tokio::spawn(connection.serve_plain(stream)),
            (Some(tls), InboundMtls::Off) => tokio::spawn(connection.serve_tls(stream, tls.clone())),
        };
    }
    drop(socket);
    let cut_off = connections.drain(drain).await;
    if cut_off > 0 {
        tracing::warn!(listener = %config.name, connections = cut_off, "drain deadline passed with requests in flight");
    }
    cut_off
}

/// What a downstream connection's task holds besides its socket.
struct Connection {
    forwarder: Arc<Forwarder>,
    ingress: Ingress,
    settings: DownstreamLimits,
    draining: watch::Receiver<bool>,
    /// The listener's count of open connections, while this one runs.
    _open: mpsc::Sender<()>,
    /// One of the listener's connection slots, while this one runs.
    _slot: Slot,
}

impl Connection {
    async fn serve_plain<IO: Io>(mut self, stream: IO) {
        let result = serve_http(stream, false, self.settings, &mut self.draining, &self.forwarder, &self.ingress).await;
        self.finish(result);
    }

    /// A gateway port whose chains differ by SNI and include TCP: the
    /// ClientHello picks the chain, which passes the connection through,
    /// terminates its TLS, or serves it plain. No chain for the name:
    /// closed, as Envoy closes a connection no filter chain matches.
    async fn serve_by_sni(self, mut stream: TcpStream, chains: Arc<Vec<FilterChain>>, tls: Option<TlsListener>) {
        let stats = &self.forwarder.stats;
        let hello = tokio::time::timeout(self.settings.header_timeout, sni::read_client_hello(&mut stream)).await;
        let (name, read) = match hello {
            Ok(Ok(hello)) => hello,
            Ok(Err(_)) => {
                stats.connection_errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(_) => {
                stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let Some(chain) = sni::pick(&chains, name.as_deref()) else {
            tracing::debug!(listener = %self.ingress.listener, sni = ?name, "no filter chain for the server name");
            stats.connection_errors.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let stream = Rewind::new(read, stream);
        let terminates =
            chain.tls.as_ref().is_some_and(|t| !matches!(t.mode.as_str(), "PASSTHROUGH" | "AUTO_PASSTHROUGH"));
        match (&chain.action, terminates.then_some(tls).flatten()) {
            (_, Some(tls)) => self.serve_tls(stream, tls).await,
            (ChainAction::Tcp { clusters }, None) => proxy_tcp(stream, None, self.tcp_route(clusters.clone())).await,
            (ChainAction::Http { .. }, None) => self.serve_plain(stream).await,
        }
    }

    /// This connection's TCP route to `clusters`, authorized unless it is
    /// a sidecar's outbound.
    fn tcp_route(&self, clusters: Vec<mesh_core::proxy_config::WeightedCluster>) -> TcpRoute {
        let ingress = &self.ingress;
        TcpRoute {
            clusters,
            addresses: (ingress.peer, ingress.local),
            destination: ingress.local.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], ingress.port))),
            authorize: !ingress.outbound,
            listener: ingress.listener.clone(),
            forwarder: Arc::clone(&self.forwarder),
        }
    }

    async fn serve_tls<IO: Io>(mut self, stream: IO, tls: TlsListener) {
        let stats = &self.forwarder.stats;
        // The handshake's state and the session are boxed: an idle
        // connection's task then holds neither inline, twice over.
        let handshake = Box::pin(tls.accept(stream));
        let (stream, action) = match tokio::time::timeout(self.settings.header_timeout, handshake).await {
            Ok(Ok((stream, action))) => (Box::new(stream), action),
            Ok(Err(e)) => {
                tracing::debug!("TLS handshake: {e}");
                stats.connection_errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(_) => {
                stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let session = stream.get_ref().1;
        self.ingress.scheme = "https";
        // ISTIO_MUTUAL: the mesh client's identity, for authorization.
        let peer = session.peer_certificates().and_then(|c| c.first());
        self.ingress.peer_identity = match (peer, &self.forwarder.identity) {
            (Some(leaf), Some(identity)) => identity.peer(leaf, false),
            (Some(leaf), None) => PeerIdentity::from_leaf(leaf, None).map(Arc::new),
            (None, _) => None,
        };
        self.ingress.route_config = match action {
            ChainAction::Http { route_config, .. } => Some(route_config),
            ChainAction::Tcp { clusters } => {
                let peer = self.ingress.peer_identity.clone();
                return proxy_tcp(stream, peer, self.tcp_route(clusters)).await;
            }
        };
        let h2 = session.alpn_protocol() == Some(b"h2");
        let result = serve_http(stream, h2, self.settings, &mut self.draining, &self.forwarder, &self.ingress).await;
        self.finish(result);
    }

    /// A sidecar's inbound connection on a port that takes mTLS: the
    /// peer's identity goes with each of its requests.
    async fn serve_inbound(mut self, stream: TcpStream, mode: InboundMtls, identity: Option<WorkloadIdentity>) {
        match inbound_mtls::accept(stream, mode, identity.as_ref(), self.settings.header_timeout).await {
            Some(Accepted::Plain(stream)) => self.serve_plain(stream).await,
            Some(Accepted::Mtls(stream, peer)) => {
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                self.ingress.peer_identity = Some(peer);
                let (settings, forwarder) = (self.settings, Arc::clone(&self.forwarder));
                let result = serve_http(stream, h2, settings, &mut self.draining, &forwarder, &self.ingress).await;
                self.finish(result);
            }
            None => {
                self.forwarder.stats.connection_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn finish(&self, result: Result<(), BoxError>) {
        if let Err(e) = result {
            tracing::debug!("connection: {e}");
            self.forwarder.stats.count(&*e);
        }
    }
}

/// One downstream connection: HTTP/1.1 in this task, HTTP/2 (ALPN `h2`,
/// or the h2c preface) on hyper's server.
async fn serve_http<IO: Io>(
    io: IO,
    alpn_h2: bool,
    settings: DownstreamLimits,
    draining: &mut watch::Receiver<bool>,
    forwarder: &Arc<Forwarder>,
    ingress: &Ingress,
) -> Result<(), BoxError> {
    // hyper's HTTP/2 connection is large, and most connections never
    // use it: boxed, so that it takes no room in an HTTP/1.1 task.
    if alpn_h2 {
        return Box::pin(serve_h2(io, &settings, draining, forwarder, ingress)).await;
    }
    match downstream::serve(io, settings, draining, |req| forwarder.answer(req, ingress)).await? {
        Served::Closed => Ok(()),
        Served::Http2(io) => Box::pin(serve_h2(io, &settings, draining, forwarder, ingress)).await,
    }
}

async fn serve_h2<IO: Io>(
    io: IO,
    limits: &DownstreamLimits,
    draining: &mut watch::Receiver<bool>,
    forwarder: &Arc<Forwarder>,
    ingress: &Ingress,
) -> Result<(), BoxError> {
    let forwarder = Arc::clone(forwarder);
    let ingress = Arc::new(ingress.clone());
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let forwarder = Arc::clone(&forwarder);
        let ingress = Arc::clone(&ingress);
        async move { Ok::<_, Infallible>(forwarder.handle(req.map(body::boxed), &ingress).await) }
    });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_request_headers_bytes).unwrap_or(u32::MAX))
        .serve_connection(TokioIo::new(io), service);
    let mut conn = pin!(conn);
    tokio::select! {
        served = conn.as_mut() => served?,
        () = drained(draining) => {
            conn.as_mut().graceful_shutdown();
            conn.await?;
        }
    }
    Ok(())
}

/// A listener's open connections: each holds a token while it runs, and
/// all are told when the listener drains; and the slots that bound how
/// many are open at once.
struct Connections {
    draining: watch::Sender<bool>,
    open: mpsc::Sender<()>,
    closed: mpsc::Receiver<()>,
    open_now: Arc<AtomicUsize>,
    max: Option<usize>,
}

/// Holds one of a listener's connection slots until dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Connections {
    fn new(max: Option<usize>) -> Connections {
        let (open, closed) = mpsc::channel(1);
        Connections { draining: watch::channel(false).0, open, closed, open_now: Arc::default(), max }
    }

    /// A slot for a new connection; `None` with every slot taken.
    fn slot(&self) -> Option<Slot> {
        let before = self.open_now.fetch_add(1, Ordering::Relaxed);
        let slot = Slot(Arc::clone(&self.open_now));
        self.max.is_none_or(|max| before < max).then_some(slot)
    }

    /// A new connection's token and drain signal.
    fn open(&self) -> (mpsc::Sender<()>, watch::Receiver<bool>) {
        (self.open.clone(), self.draining.subscribe())
    }

    /// Tell every connection to finish, and wait up to `deadline` for
    /// the last to close; the connections still open then (idle ones close
    /// at once, so these had requests in flight).
    async fn drain(self, deadline: Duration) -> usize {
        let Connections { draining, open, mut closed, open_now, .. } = self;
        let _ = draining.send(true);
        drop(open);
        // `None` once every token has been dropped.
        match tokio::time::timeout(deadline, closed.recv()).await {
            Ok(_) => 0,
            Err(_) => open_now.load(Ordering::Relaxed),
        }
    }
}

/// What to do with an accepted connection, and whether it takes mTLS.
enum Target {
    Http(Ingress, InboundMtls),
    /// A `tcp` route, and where the client was going.
    Tcp(Vec<mesh_core::proxy_config::WeightedCluster>, InboundMtls, SocketAddr),
    /// On to where it was going: Istio's passthrough (inbound: to a port
    /// no Service declares, with mTLS as PeerAuthentication says).
    Passthrough(SocketAddr, InboundMtls),
    /// No chain takes it.
    Closed,
    /// Outbound to what the mesh does not know, under REGISTRY_ONLY.
    BlackHole,
}

fn target(
    stream: &TcpStream,
    listener: &Listener,
    tcp: Option<&Vec<mesh_core::proxy_config::WeightedCluster>>,
    forwarder: &Forwarder,
    mut ingress: Ingress,
) -> Target {
    if !listener.use_original_dst {
        let here = ingress.local.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], listener.port)));
        return match tcp {
            Some(clusters) => Target::Tcp(clusters.clone(), InboundMtls::Off, here),
            None => Target::Http(ingress, InboundMtls::Off),
        };
    }
    // A capture listener: the connection was redirected here by iptables;
    // serve it as the listener for where it was going would.
    let Some(original) = original_destination(stream) else { return Target::Http(ingress, InboundMtls::Off) };
    let mtls = match listener.direction {
        TrafficDirection::Inbound => InboundMtls::for_port(listener, original.port()),
        _ => InboundMtls::Off,
    };
    let live = forwarder.live.load();
    let chain_action = match listener.direction {
        TrafficDirection::Inbound => inbound_mtls::port_chains(listener, original.port())
            .next()
            .map(|c| (c.action.clone(), listener.name.clone())),
        _ => live
            .config
            .listeners
            .iter()
            .filter(|l| !l.use_original_dst && l.port == original.port())
            .find(|l| l.address == original.ip().to_string())
            .or_else(|| {
                live.config
                    .listeners
                    .iter()
                    .find(|l| !l.use_original_dst && l.port == original.port() && l.address == "0.0.0.0")
            })
            .and_then(|l| l.filter_chains.first().map(|c| (c.action.clone(), l.name.clone()))),
    };
    match chain_action {
        Some((ChainAction::Http { route_config, .. }, name)) => {
            ingress.listener = name;
            ingress.port = original.port();
            ingress.route_config = Some(route_config);
            Target::Http(ingress, mtls)
        }
        Some((ChainAction::Tcp { clusters }, _)) if is_only(&clusters, INBOUND_PASSTHROUGH) => {
            Target::Passthrough(original, mtls)
        }
        Some((ChainAction::Tcp { clusters }, _)) => Target::Tcp(clusters, mtls, original),
        // Outbound with no listener for it: Istio's PassthroughCluster, or
        // its BlackHoleCluster under REGISTRY_ONLY (the capture listener's
        // own chain says which).
        None if listener.direction != TrafficDirection::Inbound => match listener.filter_chains.first() {
            Some(c) if matches!(&c.action, ChainAction::Tcp { clusters } if is_only(clusters, BLACKHOLE)) => {
                Target::BlackHole
            }
            _ => Target::Passthrough(original, InboundMtls::Off),
        },
        // Inbound with no chain: closed, as Envoy closes a connection no
        // filter chain matches.
        None => Target::Closed,
    }
}

fn is_only(clusters: &[mesh_core::proxy_config::WeightedCluster], name: &str) -> bool {
    matches!(clusters, [only] if only.cluster == name)
}

/// Where a connection redirected by iptables (`REDIRECT`) was going.
fn original_destination(stream: &TcpStream) -> Option<SocketAddr> {
    let sockaddr = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::OriginalDst).ok()?;
    let ip = std::net::Ipv4Addr::from(u32::from_be(sockaddr.sin_addr.s_addr));
    let original = SocketAddr::new(ip.into(), u16::from_be(sockaddr.sin_port));
    // Not redirected: the "original" destination is this socket itself.
    (stream.local_addr().ok() != Some(original)).then_some(original)
}

/// Serve an explicit HTTP proxy port (apps with `http_proxy` set): routes
/// come from the route table of the port in each request's authority.
pub async fn serve_http_proxy(
    socket: TcpListener,
    forwarder: Arc<Forwarder>,
    mut stop: watch::Receiver<bool>,
    settings: DownstreamLimits,
    drain: Duration,
) {
    let port = socket.local_addr().map_or(0, |a| a.port());
    let connections = Connections::new(None);
    loop {
        let (stream, peer) = tokio::select! {
            a = socket.accept() => match a { Ok(a) => a, Err(_) => continue },
            _ = stop.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let mut ingress = Ingress::new("explicitOutbound".into(), port, peer);
        ingress.local = stream.local_addr().ok();
        ingress.route_by_authority_port = true;
        ingress.outbound = true;
        let Some(slot) = connections.slot() else { continue };
        let (open, draining) = connections.open();
        let connection =
            Connection { forwarder: Arc::clone(&forwarder), ingress, settings, draining, _open: open, _slot: slot };
        tokio::spawn(connection.serve_plain(stream));
    }
    drop(socket);
    let cut_off = connections.drain(drain).await;
    if cut_off > 0 {
        tracing::warn!(
            connections = cut_off,
            "explicit HTTP proxy port: drain deadline passed with requests in flight"
        );
    }
}
