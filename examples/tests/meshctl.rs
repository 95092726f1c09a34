//! `meshctl` run as users run it.

use std::path::Path;
use std::process::Command;

use mesh_testkit::fixtures;

fn meshctl(args: &[&str], paths: &[&Path]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .args(paths)
        .env_remove("NO_COLOR")
        .output()
        .expect("run meshctl");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn validate_passes_good_config() {
    let file = fixtures::istio("bookinfo/routes/all-v1.yaml");
    let (code, out) = meshctl(&["validate"], &[&file]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 errors, 0 warnings in 1 file (4 resources, 0 services)"), "{out}");
    assert!(!out.contains('\x1b'), "no colour when not on a terminal");
}

#[test]
fn validate_reports_each_problem_with_file_and_line_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: ok}\nspec: {host: ok}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n      weight: -5\n    - destination: {host: reviews}\n      weight: 5\n    timeout: soon\n",
    )
    .unwrap();
    let (code, out) = meshctl(&["validate"], &[&bad]);
    assert_eq!(code, 1, "{out}");
    let shown = bad.display().to_string();
    // Each at its field's own line.
    assert!(out.contains(&format!("{shown}:14: error VirtualService default/reviews spec.http[0].route[0].weight: weight -5 must not be negative")), "{out}");
    assert!(
        out.contains(&format!(
            "{shown}:17: error VirtualService default/reviews spec.http[0].timeout: duration `soon`"
        )),
        "{out}"
    );
    assert!(out.contains("2 errors, 0 warnings in 1 file (1 resource, 0 services)"), "{out}");
}

/// As `istioctl validate`: a misspelled field or kind is an error (exit 1),
/// not a warning that lets `weigth: 90` through as weight 0.
#[test]
fn validate_fails_on_unknown_fields_and_kinds_unless_fields_are_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo.yaml");
    std::fs::write(
        &typo,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 10\n    - destination: {host: reviews, subset: v2}\n      weigth: 90\n---\napiVersion: security.istio.io/v1\nkind: AuthorisationPolicy\nmetadata: {name: deny}\nspec: {}\n",
    )
    .unwrap();
    let shown = typo.display().to_string();
    let (code, out) = meshctl(&["validate"], &[&typo]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "{shown}:11: error VirtualService default/reviews spec.http[0].route[1].weigth: unknown field"
        )),
        "{out}"
    );
    assert!(out.contains(&format!("{shown}:14: error AuthorisationPolicy default/deny kind: `AuthorisationPolicy` is no kind of security.istio.io/v1")), "{out}");
    let (code, out) = meshctl(&["--allow-unknown-fields", "validate"], &[&typo]);
    assert_eq!(code, 1, "the misspelled kind is still an error: {out}");
    assert!(
        out.contains(&format!("{shown}:11: warning VirtualService default/reviews spec.http[0].route[1].weigth")),
        "{out}"
    );
}

#[test]
fn analyze_finds_cross_resource_problems() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.yaml");
    std::fs::write(
        &routes,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v9}\n  - match: [{uri: {prefix: /x}}]\n    route:\n    - destination: {host: nowhere}\n",
    )
    .unwrap();
    let bookinfo = fixtures::istio("bookinfo/kubernetes.yaml");
    let (code, out) = meshctl(&["analyze"], &[&routes, &bookinfo]);
    assert_eq!(code, 1, "{out}");
    for expected in [
        "spec.http[0].route[0].destination.subset: no DestinationRule for `reviews.default.svc.cluster.local` defines subset `v9`",
        "spec.http[1]: this route never matches: spec.http[0] before it matches every request",
        "spec.http[1].route[0].destination.host: no service in the registry is `nowhere.default.svc.cluster.local`",
    ] {
        assert!(out.contains(expected), "missing `{expected}` in:\n{out}");
    }
    // validate alone does not look across resources.
    let (code, _) = meshctl(&["validate"], &[&routes, &bookinfo]);
    assert_eq!(code, 0);
}

#[test]
fn colour_on_request_and_grouping_by_file() {
    let (code, out) = meshctl(
        &["--color", "always", "analyze"],
        &[&fixtures::istio("bookinfo/ingress.yaml"), &fixtures::istio("bookinfo/subsets.yaml")],
    );
    assert_eq!(code, 1);
    assert!(out.contains("\x1b[31merror\x1b[0m"), "{out:?}");
    let gw = out.find("ingress.yaml\x1b[0m\n").expect("a header per file");
    let dr = out.find("subsets.yaml\x1b[0m\n").expect("a header per file");
    assert!(gw < dr, "files in path order");
}
