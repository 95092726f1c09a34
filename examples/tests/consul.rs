//! The gateway on Consul: services from the fake Consul agent's catalog
//! (adapter-consul's example, a child process) pointing at real backends,
//! Istio config from its KV store; health and KV changes change routing.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{fake_server, free_port, reviews_backends, send, versions, wait_until, Gateway};

fn put(agent: &str, path: &str, body: &str) {
    let out = send(agent, "PUT", path, body);
    assert_eq!(out.status, 200, "PUT {path}: {out:?}");
}

fn register(agent: &str, version: &str, port: u16, check: &str) {
    let id = format!("reviews-{version}");
    let body = serde_json::json!({
        "Node": format!("node-{version}"), "Address": "127.0.0.1",
        "Service": {"ID": id, "Service": "reviews", "Tags": [format!("version={version}")], "Port": port,
                    "Meta": {"protocol": "http"}},
        "Check": {"CheckID": format!("service:{id}"), "Name": "http", "Status": check, "ServiceID": id}
    });
    put(agent, "/v1/catalog/register", &body.to_string());
}

fn routes(port: u16, http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: {port}, name: http, protocol: HTTP}}\n    hosts: [\"*\"]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  host: reviews.dc1.consul\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n  - {{name: v3, labels: {{version: v3}}}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n{http}"
    )
}

#[test]
fn gateway_routes_on_the_consul_catalog_and_kv() {
    let (_backends, [p1, p2, p3]) = reviews_backends();
    let (_consul, agent) = fake_server("fake_consul", &[]);
    for (version, port) in [("v1", p1), ("v2", p2), ("v3", p3)] {
        register(&agent, version, port, "passing");
    }
    let port = free_port();
    let split = "  - match:\n    - headers: {end-user: {exact: jason}}\n    route:\n    - destination: {host: reviews.dc1.consul, subset: v2}\n  - route:\n    - destination: {host: reviews.dc1.consul, subset: v1}\n      weight: 80\n    - destination: {host: reviews.dc1.consul, subset: v3}\n      weight: 20\n";
    put(&agent, "/v1/kv/mesh/reviews.yaml", &routes(port, split));

    // Named in a domain of our own, as `--consul-domain` allows.
    let source = ["--consul", &agent, "--consul-kv-prefix", "mesh/", "--consul-domain", "dc1.consul"];
    let g = Gateway::launch(&source, port, &[], Stdio::null());
    assert_eq!(versions(&g, 20, "/", &[("end-user", "jason")]), [("v2".to_string(), 20)].into());
    let seen = versions(&g, 500, "/", &[]);
    let v1 = seen.get("v1").copied().unwrap_or(0);
    assert!((370..=430).contains(&v1) && v1 + seen.get("v3").copied().unwrap_or(0) == 500, "80/20 gave {seen:?}");

    // v1's check goes critical: its subset is left with nowhere to go
    // (503, as Envoy answers), v3 keeps its share.
    register(&agent, "v1", p1, "critical");
    assert!(
        wait_until(Duration::from_secs(10), || {
            let seen = versions(&g, 40, "/", &[]);
            !seen.contains_key("v1") && seen.contains_key("v3") && seen.contains_key("status 503")
        }),
        "v1 should have left"
    );
    // A KV edit: all to v2.
    put(
        &agent,
        "/v1/kv/mesh/reviews.yaml",
        &routes(port, "  - route:\n    - destination: {host: reviews.dc1.consul, subset: v2}\n"),
    );
    assert!(
        wait_until(Duration::from_secs(10), || versions(&g, 10, "/", &[]) == [("v2".to_string(), 10)].into()),
        "the KV edit should route everything to v2"
    );
}
