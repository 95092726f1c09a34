#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The fixtures' Kubernetes objects of the shop (Services, Deployments).
pub fn bookinfo_kube() -> PathBuf {
    mesh_testkit::fixtures::istio("bookinfo/kubernetes.yaml")
}

/// The shop's pods, as `kubectl get pods -o yaml` shows them running.
pub fn bookinfo_pods() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/bookinfo-pods.yaml")
}

pub fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}
