//! Bad input: each case gives a precise, located error, and what was
//! served before keeps serving.

mod common;

use std::path::Path;

use adapter_static::{Problem, Severity, StaticOptions, StaticSource};
use mesh_core::config::{Kind, ResourceKey, Spec};
use mesh_core::ConfigStore;

const GOOD: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
";

fn key(kind: Kind, name: &str) -> ResourceKey {
    ResourceKey { kind, namespace: "default".into(), name: name.into() }
}

fn reviews_subset(source: &StaticSource) -> Option<String> {
    let r = ConfigStore::get(source, &key(Kind::VirtualService, "reviews"))?;
    let Spec::VirtualService(vs) = &r.spec else { return None };
    vs.http[0].route[0].destination.subset.clone()
}

fn errors(source: &StaticSource) -> Vec<Problem> {
    source.status().problems.into_iter().filter(|p| p.severity == Severity::Error).collect()
}

/// Start from the good config in `dir/reviews.yaml`.
fn good_source(dir: &Path) -> StaticSource {
    common::write(&dir.join("reviews.yaml"), GOOD);
    let source = StaticSource::load(StaticOptions::new([dir]));
    assert!(errors(&source).is_empty(), "{:?}", errors(&source));
    assert_eq!(reviews_subset(&source).as_deref(), Some("v1"));
    source
}

/// The one error of the last reload, checked field by field.
fn expect_error(
    source: &StaticSource,
    file: &str,
    line: Option<usize>,
    resource: Option<&str>,
    field: Option<&str>,
    message: &str,
) {
    let errs = errors(source);
    let found = errs.iter().any(|p| {
        p.file().is_some_and(|f| f.ends_with(file))
            && line.is_none_or(|l| p.location.as_ref().is_some_and(|loc| loc.line == l))
            && p.resource.as_deref() == resource
            && p.field.as_deref() == field
            && p.message.contains(message)
    });
    assert!(
        found,
        "expected {file}:{line:?} {resource:?} {field:?} `{message}`, got:\n{}",
        errs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn malformed_yaml_keeps_the_last_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let source = good_source(dir.path());
    common::write(
        &dir.path().join("reviews.yaml"),
        &GOOD.replace("subset: v1}", "subset: v2").replace("hosts: [reviews]", "hosts: [reviews"),
    );
    source.reload();
    expect_error(&source, "reviews.yaml", Some(1), None, None, "not valid YAML");
    assert!(errors(&source)[0].message.contains("the last good version keeps serving"));
    assert_eq!(reviews_subset(&source).as_deref(), Some("v1"), "the old VirtualService still serves");
    assert!(
        ConfigStore::get(&source, &key(Kind::DestinationRule, "reviews")).is_some(),
        "and the rest of the file too"
    );
    // Fixing the file brings the edit in.
    common::write(&dir.path().join("reviews.yaml"), &GOOD.replace("subset: v1}", "subset: v2}"));
    source.reload();
    assert!(errors(&source).is_empty());
    assert_eq!(reviews_subset(&source).as_deref(), Some("v2"));
}

#[test]
fn wrong_types_missing_fields_bad_regex_and_durations_are_located() {
    // (the http block from line 7, resource, the line of the field or of
    // the nearest one present, field, message)
    let cases: &[(&str, &str, usize, &str, &str)] = &[
        (
            "  - route:\n    - destination: {host: reviews, subset: v3}\n      weight: lots\n",
            "VirtualService default/reviews",
            9,
            "spec.http[0].route[0].weight",
            "invalid type: string \"lots\", expected i32",
        ),
        (
            "  - match:\n    - uri: {regex: \"/v[0-9\"}\n    route:\n    - destination: {host: reviews, subset: v3}\n",
            "VirtualService default/reviews",
            8,
            "spec.http[0].match[0].uri.regex",
            "invalid regex `/v[0-9`",
        ),
        (
            "  - timeout: 5 minutes\n    route:\n    - destination: {host: reviews, subset: v3}\n",
            "VirtualService default/reviews",
            7,
            "spec.http[0].timeout",
            "unknown unit",
        ),
        (
            "  - route:\n    - destination: {subset: v3}\n",
            "VirtualService default/reviews",
            8,
            "spec.http[0].route[0].destination.host",
            "destination host is required",
        ),
    ];
    for (http, resource, line, field, message) in cases {
        let dir = tempfile::tempdir().unwrap();
        let source = good_source(dir.path());
        let (vs, dr) = GOOD.split_once("---\n").unwrap();
        let head = &vs[..vs.find("  http:\n").unwrap() + "  http:\n".len()];
        common::write(&dir.path().join("reviews.yaml"), &format!("{head}{http}---\n{dr}"));
        source.reload();
        expect_error(&source, "reviews.yaml", Some(*line), Some(resource), Some(field), message);
        assert_eq!(
            reviews_subset(&source).as_deref(),
            Some("v1"),
            "{field}: the last good VirtualService keeps serving"
        );
    }
}

#[test]
fn a_resource_without_a_name_or_kind_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let source = good_source(dir.path());
    common::write(&dir.path().join("more.yaml"), "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {namespace: default}\nspec: {}\n---\napiVersion: v1\nmetadata: {name: x}\n");
    source.reload();
    expect_error(&source, "more.yaml", Some(3), None, Some("metadata.name"), "is required");
    expect_error(&source, "more.yaml", Some(6), None, Some("kind"), "`kind` is required");
    assert_eq!(reviews_subset(&source).as_deref(), Some("v1"));
}

#[test]
fn duplicate_resources_keep_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let source = good_source(dir.path());
    common::write(&dir.path().join("zz-copy.yaml"), &GOOD.replace("subset: v1}", "subset: v9}"));
    source.reload();
    expect_error(
        &source,
        "zz-copy.yaml",
        Some(1),
        Some("VirtualService default/reviews"),
        None,
        "defined twice; the first definition, at",
    );
    assert_eq!(reviews_subset(&source).as_deref(), Some("v1"));
}

#[test]
fn oversized_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let source = good_source(dir.path());
    // 50 MB of valid YAML comments, over the 16 MiB default limit.
    let big = dir.path().join("big.yaml");
    let line = format!("# {}\n", "x".repeat(1021));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&big).unwrap());
    for _ in 0..(50 * 1024) {
        std::io::Write::write_all(&mut f, line.as_bytes()).unwrap();
    }
    drop(f);
    source.reload();
    let errs = errors(&source);
    assert!(
        errs.iter()
            .any(|p| p.path.as_deref() == Some(big.as_path()) && p.message.contains("over the 16777216-byte limit")),
        "{errs:?}"
    );
    assert_eq!(reviews_subset(&source).as_deref(), Some("v1"));
}

#[test]
fn nul_byte_keeps_the_last_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let source = good_source(dir.path());
    let mut bytes = GOOD.replace("subset: v1}", "subset: v2}").into_bytes();
    bytes.insert(40, 0);
    std::fs::write(dir.path().join("reviews.yaml"), bytes).unwrap();
    source.reload();
    let errs = errors(&source);
    assert!(errs.iter().any(|p| p.message.contains("contains a NUL byte (line 2, byte 40)") && p.message.contains("keeps serving")), "{errs:?}");
    assert_eq!(reviews_subset(&source).as_deref(), Some("v1"));
}

#[cfg(unix)]
#[test]
fn directory_symlink_loop_is_reported_and_the_rest_loads() {
    let dir = tempfile::tempdir().unwrap();
    let source = good_source(dir.path());
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::os::unix::fs::symlink(dir.path(), dir.path().join("sub/back-to-top")).unwrap();
    source.reload();
    let status = source.status();
    assert!(status.problems.iter().any(|p| p.message.contains("symlink loop")), "{:?}", status.problems);
    assert_eq!(status.files, 1, "reviews.yaml read once, not once per loop turn");
    assert_eq!(reviews_subset(&source).as_deref(), Some("v1"));
}

const UNKNOWN: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: ratings}\nspec:\n  host: ratings\n  trafficPolcy: {}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualServce\nmetadata: {name: typo}\nspec: {}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata: {name: not-read}\nspec: {}\n";

/// As `istioctl validate`: an unknown field of an Istio kind and a kind
/// Istio does not have in its API group are errors, at their own lines;
/// kinds outside Istio's groups, and Istio kinds the mesh does not read,
/// are skipped with a warning.
#[test]
fn unknown_fields_and_misspelled_istio_kinds_are_errors_at_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    let source = good_source(dir.path());
    common::write(&dir.path().join("extra.yaml"), UNKNOWN);
    source.reload();
    expect_error(
        &source,
        "extra.yaml",
        Some(14),
        Some("DestinationRule default/ratings"),
        Some("spec.trafficPolcy"),
        "unknown field (a typo?); the resource is not applied",
    );
    expect_error(
        &source,
        "extra.yaml",
        Some(17),
        Some("VirtualServce default/typo"),
        Some("kind"),
        "`VirtualServce` is no kind of networking.istio.io/v1 (a typo? it has DestinationRule, EnvoyFilter, Gateway",
    );
    assert_eq!(errors(&source).len(), 2, "{:?}", errors(&source));
    assert!(ConfigStore::get(&source, &key(Kind::DestinationRule, "ratings")).is_none(), "not applied");
    let warnings: Vec<String> = source.status().problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(warnings.iter().filter(|w| w.contains("v1 ConfigMap")).count(), 1, "{warnings:?}");
    assert!(warnings.iter().any(|w| w.contains("networking.istio.io/v1 WorkloadGroup")), "{warnings:?}");
}

#[test]
fn unknown_fields_are_warnings_when_allowed() {
    let dir = tempfile::tempdir().unwrap();
    common::write(&dir.path().join("extra.yaml"), UNKNOWN);
    let mut options = StaticOptions::new([dir.path()]);
    options.loader.allow_unknown_fields = true;
    let source = StaticSource::load(options);
    let status = source.status();
    assert_eq!(status.errors, 1, "the misspelled kind stays an error: {:?}", status.problems);
    assert!(
        status.problems.iter().any(|p| p.severity == Severity::Warning
            && p.to_string().contains("extra.yaml:14 (document 3): warning: DestinationRule default/ratings: spec.trafficPolcy: unknown field")),
        "{:?}",
        status.problems
    );
    assert!(
        ConfigStore::get(&source, &key(Kind::DestinationRule, "ratings")).is_some(),
        "applied without the unknown field"
    );
}

#[test]
fn status_counts_loads_with_errors() {
    let dir = tempfile::tempdir().unwrap();
    let source = good_source(dir.path());
    common::write(&dir.path().join("bad.yaml"), "kind: [\n");
    source.reload();
    source.reload();
    std::fs::remove_file(dir.path().join("bad.yaml")).unwrap();
    let status = source.reload();
    assert_eq!((status.loads_total, status.loads_with_errors_total, status.errors), (4, 2, 0));
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["loads_with_errors_total"], 2);
}
