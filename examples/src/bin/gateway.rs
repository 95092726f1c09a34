//! `gateway --config PATH...`: an Istio ingress gateway from files (or
//! `--xds-server URL`: from a control plane).
//!
//! Serves the Gateway resources that select it (by default it is Istio's
//! `istio-ingressgateway`, labels `istio=ingressgateway`), with the
//! VirtualServices bound to them; reloads the files on change; admin on
//! 15000 and Prometheus on 15090; drains on SIGTERM and exits 0.

use std::net::IpAddr;

use clap::Parser;
use mesh_core::translate::ProxyIdentity;
use mesh_proxy::ProxyBuilder;

/// Per request the proxy allocates a few small objects (headers, the
/// log record); glibc's malloc took 7% of the gateway's CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "An Istio-config ingress gateway", version)]
struct Args {
    #[command(flatten)]
    proxy: examples::ProxyArgs,
    #[arg(long, default_value = "istio-ingressgateway")]
    name: String,
    #[arg(long, default_value = "istio-system")]
    namespace: String,
    /// The gateway workload's labels, which Gateway selectors match.
    #[arg(long, default_value = "istio=ingressgateway", value_delimiter = ',')]
    labels: Vec<String>,
    /// Bind listeners on this address rather than 0.0.0.0.
    #[arg(long)]
    bind: Option<IpAddr>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    examples::runtime(args.proxy.workers)?.block_on(run(args))
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    examples::init_tracing();
    let labels = examples::parse_labels(&args.labels)?;
    let identity = ProxyIdentity::gateway(&args.name, &args.namespace, labels);
    let (source, sources) = examples::config_source(&args.proxy, identity).await?;
    let builder = args.proxy.apply(ProxyBuilder::new(source));
    let mut builder = args.proxy.apply_identity(builder, &args.namespace).await?;
    // Gateway servers' credentialName: Secrets, when Kubernetes is a source.
    if let Some(client) = sources.as_ref().and_then(|s| s.kube_client.clone()) {
        builder = builder.credentials(examples::secret_credentials(client).await);
    }
    if let Some(ip) = args.bind {
        builder = builder.bind_ip(ip);
    }
    let proxy = builder.start().await?;
    proxy.serve_until_shutdown().await?;
    Ok(())
}
