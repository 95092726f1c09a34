//! Listeners: a socket per listener of the config, added and removed as the
//! config changes, each serving HTTP/1.1 and HTTP/2 (h2c prior knowledge)
//! or proxying TCP, and draining gracefully when removed or stopped.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use mesh_core::proxy_config::{ChainAction, Listener, TrafficDirection};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::forward::{Forwarder, Ingress};
use crate::tls::TlsListener;

/// Slow clients get this long to send their request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

struct Running {
    address: SocketAddr,
    /// The listener's config, to notice when it must be rebound.
    config: Listener,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// The listeners currently bound.
pub struct Listeners {
    running: HashMap<String, Running>,
    bind_ip: Option<IpAddr>,
    drain: Duration,
}

impl Listeners {
    pub fn new(bind_ip: Option<IpAddr>, drain: Duration) -> Listeners {
        Listeners { running: HashMap::new(), bind_ip, drain }
    }

    /// Bind what the config has and is not bound; drain what it no longer
    /// has. Sidecar capture listeners (original destination) are left to
    /// the sidecar's own code.
    pub async fn reconcile(&mut self, listeners: &[Listener], forwarder: &Arc<Forwarder>) {
        let wanted: HashMap<&str, &Listener> =
            listeners.iter().filter(|l| !l.use_original_dst).map(|l| (l.name.as_str(), l)).collect();
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|n| wanted.get(n.as_str()).is_none_or(|l| **l != self.running[*n].config))
            .cloned()
            .collect();
        for name in gone {
            if let Some(r) = self.running.remove(&name) {
                tracing::info!(listener = %name, "draining listener");
                let _ = r.stop.send(true);
            }
        }
        for (name, l) in wanted {
            if self.running.contains_key(name) {
                continue;
            }
            let ip = self.bind_ip.unwrap_or_else(|| l.address.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])));
            let socket = match TcpListener::bind((ip, l.port)).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(listener = %name, port = l.port, "cannot bind: {e}");
                    continue;
                }
            };
            let tls = match TlsListener::for_listener(l) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!("{e}; the listener is not started");
                    continue;
                }
            };
            let address = socket.local_addr().unwrap_or_else(|_| SocketAddr::new(ip, l.port));
            let (stop, stopped) = watch::channel(false);
            let task = tokio::spawn(serve(socket, l.clone(), tls, Arc::clone(forwarder), stopped, self.drain));
            tracing::info!(listener = %name, %address, "listening");
            self.running.insert(name.to_string(), Running { address, config: l.clone(), stop, task });
        }
    }

    pub fn addresses(&self) -> Vec<(String, SocketAddr)> {
        let mut v: Vec<_> = self.running.iter().map(|(n, r)| (n.clone(), r.address)).collect();
        v.sort();
        v
    }

    /// Stop accepting everywhere and wait for connections to finish, up to
    /// the drain deadline.
    pub async fn shutdown(&mut self) {
        for r in self.running.values() {
            let _ = r.stop.send(true);
        }
        for (_, r) in self.running.drain() {
            let _ = r.task.await;
        }
    }
}

async fn serve(
    socket: TcpListener,
    config: Listener,
    tls: Option<TlsListener>,
    forwarder: Arc<Forwarder>,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
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
        let _ = stream.set_nodelay(true);
        if let Some(clusters) = &tcp {
            tokio::spawn(proxy_tcp(stream, clusters.clone(), Arc::clone(&forwarder)));
            continue;
        }
        let mut ingress =
            Ingress { listener: config.name.clone(), port: config.port, peer, route_config: None, scheme: "http" };
        let forwarder = Arc::clone(&forwarder);
        let builder = builder.clone();
        let graceful_watch = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = |ingress: Ingress| {
                hyper::service::service_fn(move |req| {
                    let forwarder = Arc::clone(&forwarder);
                    let ingress = ingress.clone();
                    async move { Ok::<_, Infallible>(forwarder.handle(req, &ingress).await) }
                })
            };
            let result = match tls {
                None => {
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service(ingress)).into_owned();
                    graceful_watch.watch(conn).await
                }
                Some(tls) => {
                    let stream = match tokio::time::timeout(HEADER_READ_TIMEOUT, tls.acceptor.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!("TLS handshake: {e}");
                            return;
                        }
                        Err(_) => return,
                    };
                    ingress.route_config = tls.route_config(stream.get_ref().1.server_name());
                    ingress.scheme = "https";
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service(ingress)).into_owned();
                    graceful_watch.watch(conn).await
                }
            };
            if let Err(e) = result {
                tracing::debug!("connection: {e}");
            }
        });
    }
    drop(socket);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(drain) => tracing::warn!(listener = %config.name, "drain deadline passed with connections open"),
    }
}

/// A `tcp` route: the weighted cluster's endpoint, bytes copied both ways.
async fn proxy_tcp(
    mut downstream: TcpStream,
    clusters: Vec<mesh_core::proxy_config::WeightedCluster>,
    forwarder: Arc<Forwarder>,
) {
    let live = forwarder.live.load_full();
    let Some(chosen) = mesh_core::routing::pick_weighted(&clusters, fastrand::u64(..)) else { return };
    let Some(cluster) = live.clusters.get(&chosen.cluster) else { return };
    let Some(host) = cluster.pick(None, &[]) else { return };
    let Some(_permit) = cluster.breaker.try_acquire(mesh_core::resilience::circuit_breaker::Resource::Connections)
    else {
        return;
    };
    let connect =
        tokio::time::timeout(cluster.config.connect_timeout, TcpStream::connect(cluster.addresses[host])).await;
    match connect {
        Ok(Ok(mut upstream)) => {
            let _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
        }
        _ => {
            if let Some(o) = &cluster.outlier {
                o.record(host, mesh_core::resilience::outlier::Observation::LocalOriginFailure, cluster.now());
            }
        }
    }
}
