//! The README's first command: Istio's helloworld sample behind the
//! gateway. Starts helloworld v1 (127.0.0.1:5001) and v2 (127.0.0.1:5002)
//! and a gateway on the bundled config (`examples/config/helloworld`), which
//! sends `/hello` 90% to v1 and 10% to v2 on port 8080:
//!
//! ```text
//! for i in $(seq 100); do curl -s localhost:8080/hello; done | sort | uniq -c
//! ```

use std::sync::Arc;

use adapter_static::{StaticOptions, StaticSource};
use examples::backend::{serve, Backend};
use futures_util::FutureExt;
use mesh_proxy::{default_gateway_identity, ConfigSource, ProxyBuilder};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    examples::init_tracing();
    for (version, port) in [("v1", 5001), ("v2", 5002)] {
        let socket = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| format!("helloworld {version} on port {port}: {e}"))?;
        tokio::spawn(serve(
            socket,
            Backend { version: version.into(), instance: format!("helloworld-{version}-local"), fail_every: 0 },
        ));
    }
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/helloworld");
    let files = Arc::new(StaticSource::load(StaticOptions::new([config])));
    let _watch = files.watch_files()?;
    let proxy = ProxyBuilder::new(ConfigSource::mesh(files.clone(), files, default_gateway_identity()))
        .admin("127.0.0.1:15000".parse()?)
        .metrics("127.0.0.1:15090".parse()?)
        .start()
        .await?;
    let version = tokio::select! {
        v = proxy.wait_for_version_change("", std::time::Duration::from_secs(10)) => v.ok_or("no config within 10 s")?,
        failure = proxy.failed() => return Err(format!("the gateway cannot serve: {failure}").into()),
    };
    // A listener that could not bind fails the start as the first config
    // is applied, before the version is out.
    if let Some(failure) = proxy.failed().now_or_never() {
        return Err(format!("the gateway cannot serve: {failure}").into());
    }
    for (name, addr) in proxy.listener_addresses().await {
        println!("gateway listener {name} on {addr} (config {version})");
    }
    println!("try: for i in $(seq 100); do curl -s localhost:8080/hello; done | sort | uniq -c");
    println!("admin: curl localhost:15000/clusters; metrics: curl localhost:15090/stats/prometheus");
    proxy.serve_until_shutdown().await?;
    Ok(())
}
