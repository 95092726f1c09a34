#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub fn istio_testdata() -> PathBuf {
    std::env::var("MESH_ISTIO_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/istio"))
}

pub fn bookinfo_kube() -> PathBuf {
    istio_testdata().join("samples/bookinfo/platform/kube/bookinfo.yaml")
}

pub fn bookinfo_pods() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/bookinfo-pods.yaml")
}

/// Wait for `cond` to hold, checking every few milliseconds, up to `limit`.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

pub fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}
