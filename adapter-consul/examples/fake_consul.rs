//! A fake Consul agent (see `adapter_consul::fake`) as a process, for tests
//! and benches: `fake_consul --listen 127.0.0.1:0 [--acl-token T]
//! [--tls-cert F --tls-key F] [--seed-services N --seed-instances M]`.
//! Prints `listening on ADDR` once it accepts connections.

use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    #[arg(long, default_value = "dc1")]
    datacenter: String,
    #[arg(long)]
    acl_token: Option<String>,
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed_services: usize,
    #[arg(long, default_value_t = 0)]
    seed_instances: usize,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let options = adapter_consul::fake::FakeOptions {
        datacenter: args.datacenter,
        acl_token: args.acl_token,
        tls: args.tls_cert.zip(args.tls_key),
        seed_services: args.seed_services,
        seed_instances: args.seed_instances,
    };
    adapter_consul::fake::serve(listener, options).await
}
