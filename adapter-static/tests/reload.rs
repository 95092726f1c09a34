//! Hot reload through the file watcher, the ways files really change.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use adapter_static::{StaticOptions, StaticSource};
use futures_util::StreamExt;
use mesh_core::config::{Kind, ResourceKey, Spec};
use mesh_core::ConfigStore;

fn reviews(subset: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {{host: reviews, subset: {subset}}}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  host: reviews\n  subsets:\n  - {{name: {subset}, labels: {{version: {subset}}}}}\n"
    )
}

fn vs_key() -> ResourceKey {
    ResourceKey { kind: Kind::VirtualService, namespace: "default".into(), name: "reviews".into() }
}

fn subset(source: &StaticSource) -> Option<String> {
    let r = ConfigStore::get(source, &vs_key())?;
    let Spec::VirtualService(vs) = &r.spec else { return None };
    vs.http[0].route[0].destination.subset.clone()
}

/// Wait until `cond` holds, re-checking on every change the source
/// publishes; fail after 10 s.
async fn until(source: &Arc<StaticSource>, what: &str, cond: impl Fn(&StaticSource) -> bool) {
    let mut changes = ConfigStore::watch(&**source);
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while !cond(source) {
            changes.next().await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for {what}; status: {:?}", source.status());
}

fn start(paths: &[&Path]) -> (Arc<StaticSource>, adapter_static::FileWatch) {
    let mut options = StaticOptions::new(paths.iter().map(|p| p.to_path_buf()));
    options.debounce = Duration::from_millis(50);
    let source = Arc::new(StaticSource::load(options));
    let watch = source.watch_files().expect("watch files");
    (source, watch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_rename_over_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("reviews.yaml");
    common::write(&file, &reviews("v1"));
    let (source, _watch) = start(&[dir.path()]);
    assert_eq!(subset(&source).as_deref(), Some("v1"));

    common::write(&file, &reviews("v2"));
    until(&source, "the edit", |s| subset(s).as_deref() == Some("v2")).await;

    // An editor's save: write a temp file, rename it over the original.
    let tmp = dir.path().join(".reviews.yaml.swp");
    common::write(&tmp, &reviews("v3"));
    std::fs::rename(&tmp, &file).unwrap();
    until(&source, "the rename", |s| subset(s).as_deref() == Some("v3")).await;

    std::fs::remove_file(&file).unwrap();
    until(&source, "the delete", |s| subset(s).is_none()).await;
    assert_eq!(source.status().resources, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_a_single_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("reviews.yaml");
    common::write(&file, &reviews("v1"));
    common::write(&dir.path().join("other.yaml"), &reviews("ignored"));
    let (source, _watch) = start(&[&file]);
    assert_eq!(subset(&source).as_deref(), Some("v1"));
    common::write(&file, &reviews("v2"));
    until(&source, "the edit", |s| subset(s).as_deref() == Some("v2")).await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_symlink_swap() {
    // The layout kubelet makes for a mounted ConfigMap:
    //   ..2026_11_21_v1/reviews.yaml
    //   ..data -> ..2026_11_21_v1
    //   reviews.yaml -> ..data/reviews.yaml
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("..2026_11_21_v1")).unwrap();
    common::write(&root.join("..2026_11_21_v1/reviews.yaml"), &reviews("v1"));
    symlink("..2026_11_21_v1", root.join("..data")).unwrap();
    symlink("..data/reviews.yaml", root.join("reviews.yaml")).unwrap();
    let (source, _watch) = start(&[root]);
    assert_eq!(subset(&source).as_deref(), Some("v1"));
    assert_eq!(source.status().files, 1, "the timestamped directory is not read twice");

    // The update: a new timestamped directory, a new symlink renamed over
    // `..data` in one step, the old directory removed.
    std::fs::create_dir(root.join("..2026_11_21_v2")).unwrap();
    common::write(&root.join("..2026_11_21_v2/reviews.yaml"), &reviews("v2"));
    symlink("..2026_11_21_v2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join("..2026_11_21_v1")).unwrap();
    until(&source, "the ConfigMap swap", |s| subset(s).as_deref() == Some("v2")).await;
    assert_eq!(source.status().errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_edit_keeps_serving_and_the_fix_applies_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("reviews.yaml");
    common::write(&file, &reviews("v1"));
    let (source, _watch) = start(&[dir.path()]);
    common::write(&file, &reviews("v2").replace("subset: v2}", "subset: \"-bad-\"}"));
    until(&source, "the error to be reported", |s| s.status().errors > 0).await;
    assert_eq!(subset(&source).as_deref(), Some("v1"));
    let status = source.status();
    assert!(status.problems[0].to_string().contains("spec.http[0].route[0].destination.subset"), "{status:?}");
    assert_eq!(status.loads_with_errors_total, 1);
    common::write(&file, &reviews("v3"));
    until(&source, "the fix", |s| subset(s).as_deref() == Some("v3")).await;
    assert_eq!(source.status().errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_100_edits_ends_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("reviews.yaml");
    common::write(&file, &reviews("s0"));
    let (source, _watch) = start(&[dir.path()]);
    // Every state a watcher sees must be whole: a VirtualService and its
    // DestinationRule from the same edit.
    let mut changes = ConfigStore::watch(&*source);
    let mut state = mesh_core::store::ConfigSnapshot::new();
    for i in 1..=100 {
        common::write(&file, &reviews(&format!("s{i}")));
    }
    let subset_of = |state: &mesh_core::store::ConfigSnapshot, kind: Kind| {
        let r = state.get(&ResourceKey { kind, namespace: "default".into(), name: "reviews".into() })?;
        match &r.spec {
            Spec::VirtualService(vs) => vs.http[0].route[0].destination.subset.clone(),
            Spec::DestinationRule(dr) => Some(dr.subsets[0].name.clone()),
            _ => None,
        }
    };
    let done = tokio::time::timeout(Duration::from_secs(10), async {
        let mut events = 0;
        loop {
            let Some(event) = changes.next().await else { panic!("the stream ended") };
            event.apply(&mut state);
            events += 1;
            let (vs, dr) = (subset_of(&state, Kind::VirtualService), subset_of(&state, Kind::DestinationRule));
            assert_eq!(vs, dr, "after event {events} a watcher holds a state no edit made");
            if vs.as_deref() == Some("s100") {
                return;
            }
        }
    })
    .await;
    assert!(done.is_ok(), "the last edit never arrived: {:?}", source.status());
    let status = source.status();
    assert_eq!(status.errors, 0);
    assert!(status.loads_total < 50, "edits were debounced into few loads, not {}", status.loads_total);
    let dr = ConfigStore::get(
        &*source,
        &ResourceKey { kind: Kind::DestinationRule, namespace: "default".into(), name: "reviews".into() },
    )
    .unwrap();
    let Spec::DestinationRule(dr) = &dr.spec else { panic!() };
    assert_eq!(dr.subsets[0].name, "s100", "both resources from the final edit");
}
