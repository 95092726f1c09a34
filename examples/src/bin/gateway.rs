//! `gateway --config PATH...`: an Istio ingress gateway from files.
//!
//! Serves the Gateway resources that select it (by default it is Istio's
//! `istio-ingressgateway`, labels `istio=ingressgateway`), with the
//! VirtualServices bound to them; reloads the files on change; admin on
//! 15000 and Prometheus on 15090; drains on SIGTERM and exits 0.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::Parser;
use mesh_core::translate::ProxyIdentity;
use mesh_proxy::{ConfigSource, ProxyBuilder};

#[derive(Parser)]
#[command(about = "An Istio-config ingress gateway", version)]
struct Args {
    /// Files or directories of Istio YAML (and Kubernetes Services, EndpointSlices, Pods).
    #[arg(long, required = true, num_args = 1..)]
    config: Vec<std::path::PathBuf>,
    #[arg(long, default_value = "istio-ingressgateway")]
    name: String,
    #[arg(long, default_value = "istio-system")]
    namespace: String,
    /// The gateway workload's labels, which Gateway selectors match.
    #[arg(long, default_value = "istio=ingressgateway", value_delimiter = ',')]
    labels: Vec<String>,
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:15090")]
    metrics: SocketAddr,
    /// Bind listeners on this address rather than 0.0.0.0.
    #[arg(long)]
    bind: Option<IpAddr>,
    /// Seconds to let requests in flight finish when draining.
    #[arg(long, default_value_t = 5)]
    drain_timeout: u64,
    /// A JSON access log line per request on stdout.
    #[arg(long)]
    access_log: bool,
    /// Seconds a client may take to send its request headers.
    #[arg(long, default_value_t = 10)]
    header_read_timeout: u64,
    /// Worker threads; 1 runs everything on one thread, with no work
    /// stealing (as Envoy's `--concurrency 1`). Default: one per core.
    #[arg(long)]
    workers: Option<usize>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    examples::runtime(args.workers)?.block_on(run(args))
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    examples::init_tracing();
    let labels = examples::parse_labels(&args.labels)?;
    let (files, _watch) = examples::watched_config(args.config)?;
    let identity = ProxyIdentity::gateway(&args.name, &args.namespace, labels);
    let mut builder = ProxyBuilder::new(ConfigSource::mesh(files.clone(), files, identity))
        .admin(args.admin)
        .metrics(args.metrics)
        .drain_timeout(Duration::from_secs(args.drain_timeout))
        .access_log(args.access_log)
        .header_read_timeout(Duration::from_secs(args.header_read_timeout));
    if let Some(ip) = args.bind {
        builder = builder.bind_ip(ip);
    }
    let proxy = builder.start().await?;
    examples::serve_until_stopped(proxy).await?;
    Ok(())
}
