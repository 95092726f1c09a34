//! `demo-backend --version v1 [--port 0] [--fail-every N]`: a backend for
//! demos and tests. Prints `listening on ADDR` once it accepts.

use clap::Parser;
use examples::backend::{serve, Backend};

#[derive(Parser)]
#[command(about = "A demo HTTP backend that says which version answered")]
struct Args {
    #[arg(long, default_value = "v1")]
    version: String,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port.
    #[arg(long, default_value_t = 0)]
    port: u16,
    #[arg(long)]
    instance: Option<String>,
    /// Answer 503 to every N-th request (0: never).
    #[arg(long, default_value_t = 0)]
    fail_every: u64,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let socket = tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await?;
    let addr = socket.local_addr()?;
    println!("listening on {addr}");
    let instance = args.instance.unwrap_or_else(|| format!("{}-{}", args.version, addr.port()));
    serve(socket, Backend { version: args.version, instance, fail_every: args.fail_every }).await;
    Ok(())
}
