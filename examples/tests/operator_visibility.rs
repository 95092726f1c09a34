//! The gateway binary when it cannot do what it was told: an operator sees
//! it in the exit code, `/ready`, `/stats`, Prometheus and the admin
//! server, never only in the log.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{backend, free_port, routes, versions, write_mesh, Gateway, Proc, Service};

/// The gateway binary on `dir`, not waited for.
fn launch(dir: &std::path::Path, extra: &[&str]) -> (Proc, u16) {
    let admin = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--config", &dir.to_string_lossy(), "--bind", "127.0.0.1"])
        .args(["--admin", &format!("127.0.0.1:{admin}"), "--metrics", &format!("127.0.0.1:{}", free_port())])
        .args(extra)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the gateway");
    (Proc(child), admin)
}

#[test]
fn a_gateway_whose_port_is_taken_exits_1_naming_the_address_unless_degraded_is_allowed() {
    let (_b, backend_port) = backend("v1", 0);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    write_mesh(dir.path(), port, &[Service { name: "web", backends: &[("v1", backend_port)] }], "");
    std::fs::write(dir.path().join("routes.yaml"), routes("web", "  - route:\n    - destination: {host: web}\n"))
        .unwrap();

    let (mut gateway, _) = launch(dir.path(), &[]);
    let status = gateway.wait_exit(Duration::from_secs(20));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut gateway.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")) && stderr.contains("in use"), "{stderr}");

    let (_gateway, admin) = launch(dir.path(), &["--allow-degraded"]);
    let mut ready = None;
    mesh_testkit::wait_until(Duration::from_secs(20), || {
        ready = mesh_testkit::http::try_get(&format!("127.0.0.1:{admin}"), "/ready");
        ready.as_ref().is_some_and(|r| r.body.starts_with("DEGRADED"))
    });
    let ready = ready.expect("the admin server answers");
    assert!(ready.body.contains(&format!("127.0.0.1:{port}")), "{}", ready.body);
}

#[test]
fn a_misspelled_field_is_rejected_the_last_good_version_serves_and_admin_shows_why() {
    let (_v1, p1) = backend("v1", 0);
    let (_v2, p2) = backend("v2", 0);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_mesh(dir.path(), port, &[Service { name: "web", backends: &[("v1", p1), ("v2", p2)] }], "");
    let split = |second_weight: &str| {
        routes(
            "web",
            &format!("  - route:\n    - destination: {{host: web, subset: v1}}\n      weight: 90\n    - destination: {{host: web, subset: v2}}\n      {second_weight}: 10\n"),
        )
    };
    std::fs::write(dir.path().join("routes.yaml"), split("weight")).unwrap();
    let g = Gateway::start(dir.path(), port);
    assert_eq!(versions(&g, 200, "/", &[]).len(), 2, "both subsets serve");

    // `weigth`: Istio's validation rejects it; applied, it would send all
    // traffic to v1.
    std::fs::write(dir.path().join("routes.yaml"), split("weigth")).unwrap();
    let mut rejections = String::new();
    let shown = mesh_testkit::wait_until(Duration::from_secs(10), || {
        rejections = g.admin_get("/config_rejections").map(|r| r.body).unwrap_or_default();
        rejections.contains("weigth")
    });
    assert!(shown, "{rejections}");
    let json: serde_json::Value = serde_json::from_str(&rejections).unwrap();
    let entry = &json["in_force"][0];
    assert!(
        entry["source"].as_str().unwrap().contains("routes.yaml:12 (document 1) VirtualService default/web-routes"),
        "{json}"
    );
    assert!(entry["error"].as_str().unwrap().starts_with("spec.http[0].route[1].weigth: unknown field"), "{json}");
    assert_eq!(json["rejected_total"], 1);
    let counts = versions(&g, 200, "/", &[]);
    assert!(counts.get("v2").copied().unwrap_or(0) > 0, "the last good split still serves: {counts:?}");
    let stats = g.admin_get("/stats").unwrap().body;
    assert!(stats.contains("config.update_rejected: 1"), "{stats}");
    let prometheus = g.admin_get("/stats/prometheus").unwrap().body;
    assert!(prometheus.contains("mesh_config_rejected_total 1"), "{prometheus}");

    // Fixed (the same as the version serving), the rejection is over.
    std::fs::write(dir.path().join("routes.yaml"), split("weight")).unwrap();
    let cleared = mesh_testkit::wait_until(Duration::from_secs(10), || {
        g.admin_get("/config_rejections").is_some_and(|r| r.body.contains("\"in_force\": []"))
    });
    assert!(cleared, "{:?}", g.admin_get("/config_rejections").map(|r| r.body));
}
