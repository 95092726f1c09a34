//! What an operator must see besides request counters, in `/ready`,
//! `/stats`, Prometheus and the admin server: listeners that could not
//! bind, and config that was rejected while the last good one serves.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use mesh_core::store::Rejected;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Shared by the listeners, the config loop and the admin server.
#[derive(Debug, Default)]
pub struct ProxyStatus {
    /// Listeners of the config in force that are not bound, by name: the
    /// address and the error.
    listeners_down: Mutex<BTreeMap<String, String>>,
    /// Binds that failed (Envoy: `listener_manager.listener_create_failure`).
    pub bind_failures: Counter,
    listeners_down_now: Gauge,
    /// The config store's rejections in force (resources or files not
    /// applied), replaced as a whole with each update.
    store_rejected: Mutex<Vec<Rejected>>,
    /// Why the last config did not compile, until one does.
    config_rejected: Mutex<Option<String>>,
    /// Configs or resources rejected (Envoy: `update_rejected`).
    pub rejections: Counter,
    /// Certificate files (gateway TLS) that changed and could not be used;
    /// the last good ones kept serving.
    pub certificate_reload_failures: Counter,
}

impl ProxyStatus {
    /// Put the status metrics in the Prometheus registry.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "mesh_listener_bind_failures",
            "Listeners that could not bind their address",
            self.bind_failures.clone(),
        );
        registry.register(
            "mesh_listeners_down",
            "Listeners of the config in force not bound",
            self.listeners_down_now.clone(),
        );
        registry.register(
            "mesh_config_rejected",
            "Configs or config resources rejected (the last good one kept serving)",
            self.rejections.clone(),
        );
        registry.register(
            "mesh_certificate_reload_failures",
            "Certificate files that changed and could not be used (the last good ones kept serving)",
            self.certificate_reload_failures.clone(),
        );
    }

    pub fn listener_down(&self, name: &str, address: &str, error: &str) {
        self.bind_failures.inc();
        let mut down = lock(&self.listeners_down);
        down.insert(name.to_string(), format!("{address}: {error}"));
        self.listeners_down_now.set(i64::try_from(down.len()).unwrap_or(i64::MAX));
    }

    /// The listener is bound, or no longer in the config.
    pub fn listener_up(&self, name: &str) {
        let mut down = lock(&self.listeners_down);
        if down.remove(name).is_some() {
            self.listeners_down_now.set(i64::try_from(down.len()).unwrap_or(i64::MAX));
        }
    }

    /// Each listener down: its name, then its address and error.
    pub fn listeners_down(&self) -> Vec<(String, String)> {
        lock(&self.listeners_down).iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// The config store's rejections now; each one not there before is
    /// counted.
    pub fn store_rejections(&self, now: Vec<Rejected>) {
        let mut in_force = lock(&self.store_rejected);
        let new = now.iter().filter(|r| !in_force.contains(r)).count();
        self.rejections.inc_by(u64::try_from(new).unwrap_or(u64::MAX));
        *in_force = now;
    }

    /// A config (from a stream or xDS) did not compile: `None` once one
    /// does.
    pub fn config_rejected(&self, error: Option<String>) {
        if error.is_some() {
            self.rejections.inc();
        }
        *lock(&self.config_rejected) = error;
    }

    /// Rejections in force: where, then why.
    pub fn rejections_in_force(&self) -> Vec<(String, String)> {
        let config = lock(&self.config_rejected).clone().map(|e| ("proxy config".to_string(), e));
        let store = lock(&self.store_rejected).iter().map(|r| (r.source.clone(), r.error.clone())).collect::<Vec<_>>();
        config.into_iter().chain(store).collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
