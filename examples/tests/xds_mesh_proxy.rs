//! mesh-proxy driven over xDS: the gateway binary with `--xds-server` against the
//! control-plane binary routes exactly as the gateway reading the same
//! files itself, and follows edits of them; it enforces the local rate
//! limit of an EnvoyFilter as Envoy's local_ratelimit filter.

mod common;

use std::collections::BTreeMap;

use common::{control_plane, free_port, reviews_backends, routes, versions, write_mesh, Gateway, Service};

const RULES: &str = "  - match:\n    - headers: {end-user: {exact: jason}}\n    route:\n    - destination: {host: reviews, subset: v2}\n  - match:\n    - headers: {end-user: {exact: bob}}\n    fault:\n      abort: {httpStatus: 418, percentage: {value: 100}}\n    route:\n    - destination: {host: reviews, subset: v1}\n  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 80\n    - destination: {host: reviews, subset: v3}\n      weight: 20\n";

/// What the bookinfo-style rules above give through a gateway.
fn observe(g: &Gateway) -> (BTreeMap<String, usize>, BTreeMap<String, usize>, BTreeMap<String, usize>) {
    (
        versions(g, 20, "/", &[("end-user", "jason")]),
        versions(g, 10, "/", &[("end-user", "bob")]),
        versions(g, 500, "/", &[]),
    )
}

#[test]
fn gateway_over_xds_routes_as_from_files_and_follows_edits() {
    let (_backends, [p1, p2, p3]) = reviews_backends();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_mesh(dir.path(), port, &[Service { name: "reviews", backends: &[("v1", p1), ("v2", p2), ("v3", p3)] }], "");
    std::fs::write(dir.path().join("routes.yaml"), routes("reviews", RULES)).unwrap();

    let from_files = {
        let g = Gateway::start(dir.path(), port);
        observe(&g)
    };
    let (_cp, xds, _debug) = control_plane(dir.path());
    let g = Gateway::start_xds(&format!("http://127.0.0.1:{xds}"), port);
    let over_xds = observe(&g);

    for (what, files, xds) in [("jason", &from_files.0, &over_xds.0), ("bob", &from_files.1, &over_xds.1)] {
        assert_eq!(files, xds, "{what}: files gave {files:?}, xDS {xds:?}");
    }
    assert_eq!(over_xds.0, [("v2".to_string(), 20)].into());
    assert_eq!(over_xds.1, [("status 418".to_string(), 10)].into());
    for (source, split) in [("files", &from_files.2), ("xDS", &over_xds.2)] {
        let v1 = split.get("v1").copied().unwrap_or(0);
        assert_eq!(v1 + split.get("v3").copied().unwrap_or(0), 500, "{source}: {split:?}");
        assert!((370..=430).contains(&v1), "{source}: 80/20 split gave {split:?}");
    }

    // An edit of the files reaches the xDS-driven gateway.
    g.apply(
        dir.path(),
        "routes.yaml",
        &routes("reviews", "  - route:\n    - destination: {host: reviews, subset: v3}\n"),
    );
    assert_eq!(versions(&g, 20, "/", &[]), [("v3".to_string(), 20)].into());
}

/// The control plane sends an EnvoyFilter's local rate limit as Envoy's
/// local_ratelimit filter on the gateway's chain; mesh-proxy takes it:
/// three requests a minute, then 429 with the filter's header.
#[test]
fn gateway_over_xds_enforces_the_local_rate_limit_filter() {
    let (_backends, [p1, _, _]) = reviews_backends();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_mesh(dir.path(), port, &[Service { name: "reviews", backends: &[("v1", p1)] }], "");
    std::fs::write(
        dir.path().join("routes.yaml"),
        routes("reviews", "  - route:\n    - destination: {host: reviews}\n"),
    )
    .unwrap();
    std::fs::write(dir.path().join("ratelimit.yaml"), common::LOCAL_RATE_LIMIT_FILTER).unwrap();
    let (_cp, xds, _debug) = control_plane(dir.path());
    let g = Gateway::start_xds(&format!("http://127.0.0.1:{xds}"), port);
    let statuses: Vec<u16> = (0..4).map(|_| common::get(port, "/", &[]).status).collect();
    assert_eq!(statuses, [200, 200, 200, 429]);
    let limited = common::get(port, "/", &[]);
    assert_eq!((limited.status, limited.header("x-local-rate-limit")), (429, Some("true")));
    drop(g);
}
