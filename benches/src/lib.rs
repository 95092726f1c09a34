//! Fixtures shared by the criterion benches in `benches/`: synthetic route
//! tables, endpoint sets and meshes of a given size.

pub mod alloc;

use mesh_core::config::Resource;
use mesh_core::lb::Host;
use mesh_core::model::{Endpoint, Protocol, Resolution, Service, ServicePort};
use mesh_core::proxy_config::{HeaderMatcher, Route, RouteConfig, RouteMatch, StringMatcher, VirtualHost};

/// What each route of a synthetic table matches on.
#[derive(Clone, Copy, Debug)]
pub enum MatchKind {
    Prefix,
    Exact,
    Header,
    Regex,
}

impl MatchKind {
    pub const ALL: [MatchKind; 4] = [MatchKind::Prefix, MatchKind::Exact, MatchKind::Header, MatchKind::Regex];

    pub fn name(self) -> &'static str {
        match self {
            MatchKind::Prefix => "prefix",
            MatchKind::Exact => "exact",
            MatchKind::Header => "header",
            MatchKind::Regex => "regex",
        }
    }
}

/// A route config with one virtual host of `n` routes, route `i` matching
/// path `/svc{i}/...` (or header `x-svc: svc{i}`), each to its own cluster.
pub fn route_config(n: usize, kind: MatchKind) -> RouteConfig {
    let routes = (0..n)
        .map(|i| {
            let m = match kind {
                MatchKind::Prefix => {
                    RouteMatch { uri: Some(StringMatcher::Prefix(format!("/svc{i}/"))), ..Default::default() }
                }
                MatchKind::Exact => {
                    RouteMatch { uri: Some(StringMatcher::Exact(format!("/svc{i}/api"))), ..Default::default() }
                }
                MatchKind::Header => RouteMatch {
                    headers: vec![HeaderMatcher {
                        name: "x-svc".into(),
                        matcher: StringMatcher::Exact(format!("svc{i}")),
                        invert: false,
                    }],
                    ..Default::default()
                },
                MatchKind::Regex => {
                    RouteMatch { uri: Some(StringMatcher::Regex(format!("/svc{i}/v[0-9]+/.*"))), ..Default::default() }
                }
            };
            Route {
                matches: vec![m],
                ..Route::forward(&format!("r{i}"), &format!("outbound|80||svc{i}.default.svc.cluster.local"))
            }
        })
        .collect();
    RouteConfig {
        name: "bench".into(),
        virtual_hosts: vec![VirtualHost {
            name: "api.example.com:80".into(),
            domains: vec!["api.example.com".into(), "api.example.com:80".into()],
            routes,
        }],
    }
}

/// A request head that hits route `i` of [`route_config`].
pub fn request_for(i: usize, kind: MatchKind) -> http::request::Parts {
    let path = match kind {
        MatchKind::Prefix => format!("/svc{i}/items/42"),
        MatchKind::Exact => format!("/svc{i}/api"),
        MatchKind::Header => "/items/42".to_string(),
        MatchKind::Regex => format!("/svc{i}/v2/items"),
    };
    let mut b = http::Request::get(format!("http://api.example.com{path}"))
        .header("user-agent", "bench")
        .header("accept", "*/*");
    if let MatchKind::Header = kind {
        b = b.header("x-svc", format!("svc{i}"));
    }
    b.body(()).map(|r| r.into_parts().0).unwrap_or_else(|e| panic!("{e}"))
}

pub fn hosts(n: usize) -> Vec<Host> {
    (0..n).map(|i| Host::new(&format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256), 8080, 1)).collect()
}

/// A mesh of `services` services with `endpoints_per_service` endpoints and
/// a VirtualService + DestinationRule (two subsets) for each.
pub fn mesh(services: usize, endpoints_per_service: usize) -> (Vec<Resource>, Vec<(Service, Vec<Endpoint>)>) {
    let mut config = Vec::new();
    let mut registry = Vec::new();
    for s in 0..services {
        let name = format!("svc{s}");
        let yaml = format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  hosts: [{name}]\n  http:\n  - match:\n    - headers: {{end-user: {{exact: jason}}}}\n    route:\n    - destination: {{host: {name}, subset: v2}}\n  - route:\n    - destination: {{host: {name}, subset: v1}}\n      weight: 90\n    - destination: {{host: {name}, subset: v2}}\n      weight: 10\n"
        );
        config.push(Resource::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}")));
        let dr = format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  host: {name}\n  trafficPolicy:\n    outlierDetection: {{consecutive5xxErrors: 5}}\n  subsets:\n  - name: v1\n    labels: {{version: v1}}\n  - name: v2\n    labels: {{version: v2}}\n"
        );
        config.push(Resource::from_yaml(&dr).unwrap_or_else(|e| panic!("{e}")));
        let service = Service {
            hostname: format!("{name}.default.svc.cluster.local"),
            namespace: "default".into(),
            ports: vec![ServicePort {
                name: "http".into(),
                port: 80,
                protocol: Protocol::Http,
                target_port: Some(8080),
            }],
            labels: Default::default(),
            addresses: vec![],
            resolution: Resolution::Static,
            mesh_external: false,
            subject_alt_names: Vec::new(),
        };
        let endpoints = (0..endpoints_per_service)
            .map(|e| {
                let mut ep = Endpoint::new(format!("10.{}.{}.{}", s / 256, s % 256, e + 1));
                ep.labels.insert("version".into(), if e % 2 == 0 { "v1" } else { "v2" }.into());
                ep
            })
            .collect();
        registry.push((service, endpoints));
    }
    (config, registry)
}

/// Write a file set for adapter-static: `services` Kubernetes Services with
/// their EndpointSlices (`endpoints_per_service` endpoints each) in one
/// file, and one file per service with its VirtualService and
/// DestinationRule. Returns the path of service `i`'s routing file.
pub fn write_static_mesh(
    dir: &std::path::Path,
    services: usize,
    endpoints_per_service: usize,
) -> impl Fn(usize) -> std::path::PathBuf {
    use std::fmt::Write as _;
    let mut kube = String::new();
    for s in 0..services {
        let _ = write!(
            kube,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc{s}, namespace: default}}\nspec:\n  clusterIP: 10.96.{}.{}\n  ports:\n  - {{name: http, port: 80, targetPort: 8080}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc{s}-x\n  namespace: default\n  labels: {{kubernetes.io/service-name: svc{s}}}\naddressType: IPv4\nports:\n- {{name: http, port: 8080}}\nendpoints:\n",
            s / 256,
            s % 256
        );
        for e in 0..endpoints_per_service {
            let _ =
                writeln!(kube, "- addresses: [10.{}.{}.{}]\n  conditions: {{ready: true}}", s / 256, s % 256, e + 1);
        }
    }
    std::fs::write(dir.join("cluster.yaml"), kube).unwrap_or_else(|e| panic!("{e}"));
    let routes = dir.join("routes");
    std::fs::create_dir_all(&routes).unwrap_or_else(|e| panic!("{e}"));
    for s in 0..services {
        std::fs::write(routes.join(format!("svc{s}.yaml")), routing_yaml(s, 90)).unwrap_or_else(|e| panic!("{e}"));
    }
    move |s| routes.join(format!("svc{s}.yaml"))
}

/// Service `s`'s VirtualService (a `v1_weight` / rest split) and
/// DestinationRule.
pub fn routing_yaml(s: usize, v1_weight: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: svc{s}, namespace: default}}\nspec:\n  hosts: [svc{s}]\n  http:\n  - match:\n    - headers: {{end-user: {{exact: jason}}}}\n    route:\n    - destination: {{host: svc{s}, subset: v2}}\n  - route:\n    - destination: {{host: svc{s}, subset: v1}}\n      weight: {v1_weight}\n    - destination: {{host: svc{s}, subset: v2}}\n      weight: {}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc{s}, namespace: default}}\nspec:\n  host: svc{s}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n",
        100 - v1_weight
    )
}
