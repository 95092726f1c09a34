//! `sidecar --config PATH --ip POD_IP --labels app=reviews,version=v1`: the
//! proxy next to one workload. Captured outbound traffic arrives on 15001,
//! inbound on 15006 (see `mesh-iptables`); apps that set `http_proxy` can
//! use 15080. Run it as the UID the iptables rules exclude (1337).

use std::net::SocketAddr;

use clap::Parser;
use mesh_core::translate::ProxyIdentity;
use mesh_proxy::ProxyBuilder;

/// Per request the proxy allocates a few small objects (headers, the
/// log record); glibc's malloc took 7% of the gateway's CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "An Istio-config sidecar proxy", version)]
struct Args {
    #[command(flatten)]
    proxy: examples::ProxyArgs,
    /// The workload's name (its Deployment's, say), for metrics; without
    /// it, the registry's name for the endpoint at --ip.
    #[arg(long, default_value = "")]
    name: String,
    #[arg(long, default_value = "default")]
    namespace: String,
    /// The workload's labels (sourceLabels, selectors).
    #[arg(long, default_value = "", value_delimiter = ',')]
    labels: Vec<String>,
    /// The workload's IP: finds the services it serves inbound.
    #[arg(long)]
    ip: Option<String>,
    /// An explicit HTTP proxy port for apps that set http_proxy.
    #[arg(long, default_value = "127.0.0.1:15080")]
    http_proxy: SocketAddr,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    examples::runtime(args.proxy.workers)?.block_on(run(args))
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    examples::init_tracing();
    let labels = examples::parse_labels(&args.labels)?;
    let mut identity = ProxyIdentity::sidecar(&args.name, &args.namespace, labels);
    identity.ip = args.ip;
    let (source, _watch) = examples::config_source(&args.proxy, identity).await?;
    let builder = args.proxy.apply(ProxyBuilder::new(source)).http_proxy(args.http_proxy);
    let proxy = args.proxy.apply_identity(builder, &args.namespace).await?.start().await?;
    proxy.serve_until_shutdown().await?;
    Ok(())
}
