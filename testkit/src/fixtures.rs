//! The Istio-format fixture files in `testkit/fixtures/istio` (see the
//! README there): config written for these tests, kept in the repository.

use std::path::PathBuf;

/// The fixture tree's root.
pub fn istio_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join("istio")
}

/// One fixture file (`bookinfo/subsets.yaml`); panics naming it when it
/// is not there.
pub fn istio(path: &str) -> PathBuf {
    let file = istio_dir().join(path);
    assert!(file.is_file(), "fixture {} is missing (testkit/fixtures/istio/{path})", file.display());
    file
}

/// A fixture file's text.
pub fn read(path: &str) -> String {
    let file = istio(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("fixture {}: {e}", file.display()))
}

/// Every `.yaml` file under the fixture tree (or under `sub`), in path order.
pub fn yaml_files(sub: &str) -> Vec<PathBuf> {
    fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("fixtures {}: {e}", dir.display()));
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&istio_dir().join(sub), &mut files);
    files.sort();
    files
}
