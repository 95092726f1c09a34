//! Configs applied as they come: compiled, swapped in whole, listeners
//! reconciled. A config that does not compile never replaces the one
//! serving; it is counted and shown in the admin server.

use std::sync::Arc;

use futures_util::stream::{BoxStream, StreamExt};
use mesh_core::ProxyConfig;
use tokio::sync::{watch, Mutex};

use crate::forward::Forwarder;
use crate::listener::Listeners;
use crate::live::{LiveConfig, SharedConfig};
use crate::status::ProxyStatus;
use crate::AfterConfig;

pub(crate) struct ConfigLoop {
    pub configs: BoxStream<'static, ProxyConfig>,
    pub live: SharedConfig,
    pub forwarder: Arc<Forwarder>,
    pub listeners: Arc<Mutex<Listeners>>,
    pub status: Arc<ProxyStatus>,
    /// Each version applied.
    pub version: watch::Sender<String>,
    /// Where to say that the first config's listeners could not all bind;
    /// `None`: run degraded instead.
    pub failure: Option<watch::Sender<Option<String>>>,
    pub drain: watch::Receiver<bool>,
    pub after_config: Option<AfterConfig>,
}

pub(crate) async fn run(mut l: ConfigLoop) {
    let mut first = true;
    loop {
        let config = tokio::select! {
            c = l.configs.next() => match c { Some(c) => c, None => return },
            _ = l.drain.changed() => return,
        };
        if config.version == l.live.load().config.version {
            continue;
        }
        let v = config.version.clone();
        let compiled = match LiveConfig::compile(
            config,
            &l.live.load(),
            &l.forwarder.upstreams,
            &l.forwarder.jwks,
            &l.forwarder.tracing,
        ) {
            Ok(compiled) => compiled,
            Err(e) => {
                tracing::error!(version = %v, "config rejected, the previous one keeps serving: {e}");
                l.status.config_rejected(Some(format!("version {v}: {e}")));
                continue;
            }
        };
        l.status.config_rejected(None);
        let listener_config = compiled.config.listeners.clone();
        l.live.store(Arc::new(compiled));
        l.listeners.lock().await.reconcile(&listener_config, &l.forwarder).await;
        if std::mem::take(&mut first) {
            fail_if_listeners_down(&l.status, l.failure.as_ref());
        }
        tracing::info!(version = %v, "config applied");
        let _ = l.version.send(v);
        if let Some(hook) = &l.after_config {
            hook();
        }
    }
}

/// A listener of the first config that did not bind fails the proxy's
/// start, as Envoy fails on one it cannot bind, unless running degraded.
fn fail_if_listeners_down(status: &ProxyStatus, failure: Option<&watch::Sender<Option<String>>>) {
    let down = status.listeners_down();
    let Some(failure) = failure.filter(|_| !down.is_empty()) else { return };
    let text: Vec<String> = down.iter().map(|(name, why)| format!("listener {name} on {why}")).collect();
    let _ = failure.send(Some(text.join("; ")));
}
