//! Shared pieces of the example binaries.

pub mod backend;

use std::sync::Arc;

use adapter_static::{FileWatch, StaticOptions, StaticSource};
use mesh_core::model::Labels;
use mesh_proxy::ProxyHandle;

/// The proxy's runtime: with one worker, a current-thread runtime (no work
/// stealing, no cross-thread wakeups; 35-40% more requests per second than
/// a one-worker multi-thread runtime in `benches/load`), else one worker per
/// core or the number asked for.
pub fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
        None => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
}

/// Istio config from files, its problems logged, reloaded on change for as
/// long as the returned watch lives.
pub fn watched_config(
    paths: Vec<std::path::PathBuf>,
) -> Result<(Arc<StaticSource>, FileWatch), Box<dyn std::error::Error>> {
    let files = Arc::new(StaticSource::load(StaticOptions::new(paths)));
    for problem in &files.status().problems {
        tracing::warn!("{problem}");
    }
    let watch = files.watch_files().map_err(Box::new)?;
    Ok((files, watch))
}

/// `app=reviews,version=v1` as given to `--labels`.
pub fn parse_labels(pairs: &[String]) -> Result<Labels, String> {
    pairs
        .iter()
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| format!("--labels: `{kv}` is not key=value"))
        })
        .collect()
}

/// Serve until SIGTERM, Ctrl-C or `POST /drain`, then drain.
pub async fn serve_until_stopped(proxy: ProxyHandle) -> std::io::Result<()> {
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: draining"),
        _ = proxy.drain_requested() => tracing::info!("drain requested on the admin server"),
    }
    proxy.drain().await;
    tracing::info!("drained");
    Ok(())
}
