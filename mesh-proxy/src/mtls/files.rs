//! Certificates mounted as files, as Istio supports for proxies without a
//! CA client: `cert-chain.pem` (the leaf, then its chain), `key.pem` and
//! `root-cert.pem` in one directory. Read at start, then again whenever a
//! file's modification time or size changes; a set that cannot be used
//! (half-written, a key of another certificate) is refused and the last
//! good one keeps serving.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_core::certificate::WorkloadCertificate;

use super::WorkloadIdentity;

pub const CERT_CHAIN: &str = "cert-chain.pem";
pub const KEY: &str = "key.pem";
pub const ROOT_CERT: &str = "root-cert.pem";

/// Reads the three files of `dir`.
pub fn load(dir: &Path) -> Result<WorkloadCertificate, String> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
    };
    let chain = read(CERT_CHAIN)?;
    let key = read(KEY)?;
    let roots = read(ROOT_CERT)?;
    WorkloadCertificate::new(chain, key, roots).map_err(|e| format!("{}: {e}", dir.join(CERT_CHAIN).display()))
}

/// Loads `dir` into `identity` now (an error if it cannot be used), then
/// in a task every `interval` when the files changed.
pub fn follow(identity: &WorkloadIdentity, dir: PathBuf, interval: Duration) -> Result<(), String> {
    let install = |identity: &WorkloadIdentity, dir: &Path| -> Result<(), String> {
        let certificate = load(dir).inspect_err(|_| {
            identity.stats().certificate_errors.fetch_add(1, Ordering::Relaxed);
        })?;
        identity.install(Arc::new(certificate)).map_err(|e| format!("{}: {e}", dir.display()))
    };
    install(identity, &dir)?;
    let identity = identity.clone();
    tokio::spawn(async move {
        let mut seen = stamp(&dir);
        loop {
            tokio::time::sleep(interval).await;
            let now = stamp(&dir);
            if now == seen {
                continue;
            }
            seen = now;
            if let Err(e) = install(&identity, &dir) {
                tracing::error!(dir = %dir.display(), error = %e, "certificate files refused; the last good ones keep serving");
            }
        }
    });
    Ok(())
}

/// The files' modification times and sizes.
fn stamp(dir: &Path) -> Vec<Option<(SystemTime, u64)>> {
    [CERT_CHAIN, KEY, ROOT_CERT]
        .iter()
        .map(|name| std::fs::metadata(dir.join(name)).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
        .collect()
}
