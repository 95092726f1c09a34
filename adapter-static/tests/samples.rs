//! Every fixture file loads (with the shop's Kubernetes objects and pods),
//! and the loaded mesh routes as the fixtures say.

mod common;

use adapter_static::{Severity, StaticOptions, StaticSource};
use mesh_core::config::Kind;
use mesh_core::mesh::MeshSnapshot;
use mesh_core::translate::{translate, ProxyIdentity};
use mesh_core::{ConfigStore, ServiceRegistry};
use mesh_testkit::fixtures;

#[test]
fn every_fixture_file_loads_without_errors() {
    let files = fixtures::yaml_files("");
    assert!(files.len() >= 19);
    for file in files {
        let source =
            StaticSource::load(StaticOptions::new([file.clone(), common::bookinfo_kube(), common::bookinfo_pods()]));
        let status = source.status();
        let errors: Vec<String> =
            status.problems.iter().filter(|p| p.severity == Severity::Error).map(|p| p.to_string()).collect();
        assert!(errors.is_empty(), "{}:\n{}", file.display(), errors.join("\n"));
        assert!(status.services >= 4, "{}: bookinfo services missing", file.display());
    }
}

#[test]
fn the_whole_tree_loads_and_reports_only_duplicates_and_skipped_kinds() {
    let source = StaticSource::load(StaticOptions::new([fixtures::istio_dir(), common::bookinfo_pods()]));
    let status = source.status();
    for p in &status.problems {
        let ok = p.message.contains("defined twice") || p.message.contains("is not a kind the mesh reads");
        assert!(ok, "unexpected: {p}");
    }
    // The many `reviews` VirtualServices of the fixtures share one name:
    // the first (in path order) is used and the others are reported.
    assert!(status.problems.iter().any(
        |p| p.message.contains("defined twice") && p.resource.as_deref() == Some("VirtualService default/reviews")
    ));
    // One warning per skipped kind, not one per object (two HTTPRoutes).
    let routes = status.problems.iter().filter(|p| p.message.contains("HTTPRoute")).count();
    assert_eq!(routes, 1);
    assert!(ConfigStore::snapshot(&source).keys().any(|k| k.kind == Kind::ServiceEntry));
}

#[test]
fn bookinfo_from_files_routes_jason_to_v2() {
    let source = StaticSource::load(StaticOptions::new([
        fixtures::istio("bookinfo/subsets.yaml"),
        fixtures::istio("bookinfo/routes/reviews-jason-v2-else-v3.yaml"),
        common::bookinfo_kube(),
        common::bookinfo_pods(),
    ]));
    assert_eq!(source.status().errors, 0, "{:?}", source.status().problems);
    let services = ServiceRegistry::snapshot(&source);
    let reviews = &services["reviews.default.svc.cluster.local"];
    assert_eq!(reviews.endpoints.len(), 3, "pods matched by the Service selector");
    assert_eq!(reviews.service.ports[0].port, 9080);
    let mesh = MeshSnapshot::read(&source, &source);
    let cfg = translate(&mesh, &ProxyIdentity::sidecar("productpage-v1", "default", Default::default()));
    let v2 = cfg.load_assignment("outbound|9080|v2|reviews.default.svc.cluster.local").unwrap();
    assert_eq!(v2.endpoints.iter().map(|e| e.address.as_str()).collect::<Vec<_>>(), ["10.3.0.2"]);
    let origin = &source.origins()[&mesh_core::config::ResourceKey {
        kind: Kind::VirtualService,
        namespace: "default".into(),
        name: "reviews".into(),
    }];
    assert!(origin.file.ends_with("reviews-jason-v2-else-v3.yaml"));
}

#[test]
fn kubectl_list_with_endpoint_slices_serves_offline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.yaml");
    common::write(
        &path,
        r#"apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: shop}
  spec:
    clusterIP: 10.96.1.1
    ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: grpc-api, port: 9000, targetPort: grpc}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: web-abc12
    namespace: shop
    labels: {kubernetes.io/service-name: web}
  addressType: IPv4
  ports:
  - {name: http, port: 8080}
  - {name: grpc-api, port: 9090}
  endpoints:
  - addresses: [10.0.0.5]
    conditions: {ready: true}
    zone: us-east-1a
    targetRef: {kind: Pod, name: web-1, namespace: shop}
  - addresses: [10.0.0.6]
    conditions: {ready: false}
"#,
    );
    let source = StaticSource::load(StaticOptions::new([path]));
    assert_eq!(source.status().errors, 0, "{:?}", source.status().problems);
    let services = ServiceRegistry::snapshot(&source);
    let web = &services["web.shop.svc.cluster.local"];
    assert_eq!(web.service.addresses, ["10.96.1.1"]);
    assert_eq!(web.service.ports[1].protocol, mesh_core::model::Protocol::Grpc);
    let e = &web.endpoints[0];
    assert_eq!((e.port_for(&web.service.ports[0]), e.port_for(&web.service.ports[1])), (8080, 9090));
    assert_eq!(e.locality.zone, "us-east-1a");
    assert_eq!(web.endpoints[1].health, mesh_core::model::Health::Unhealthy);
}
