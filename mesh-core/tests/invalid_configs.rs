//! Config Istio rejects is rejected here too, with an error naming the
//! resource, the field path and the reason.

use mesh_core::config::{self, ConfigError};

/// Decode one document and return its error's text.
fn error_of(yaml: &str) -> String {
    let doc = match config::parse_documents(yaml) {
        Ok(mut docs) => docs.remove(0),
        Err(e) => return e.to_string(),
    };
    match config::decode(doc, "default") {
        Ok(_) => panic!("expected an error for:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

fn vs(http: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: bookinfo}}\nspec:\n  hosts: [reviews]\n  http:\n{http}")
}

fn dr(spec: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews, namespace: bookinfo}}\nspec:\n{spec}")
}

#[test]
fn each_invalid_resource_gets_a_precise_message() {
    let cases: Vec<(String, &str)> = vec![
        (
            vs("  - match:\n    - uri: {regex: \"/api/(v1\"}\n    route:\n    - destination: {host: reviews}\n"),
            "VirtualService bookinfo/reviews: spec.http[0].match[0].uri.regex: invalid regex `/api/(v1`",
        ),
        (
            vs("  - match:\n    - uri: {prefix: /a}\n"),
            "VirtualService bookinfo/reviews: spec.http[0].route: an HTTP route needs a route destination, a redirect, a direct response or a delegate",
        ),
        (
            vs("  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: -10\n    - destination: {host: reviews, subset: v2}\n      weight: 110\n"),
            "VirtualService bookinfo/reviews: spec.http[0].route[0].weight: weight -10 must not be negative",
        ),
        (
            vs("  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 0\n    - destination: {host: reviews, subset: v2}\n      weight: 0\n"),
            "VirtualService bookinfo/reviews: spec.http[0].route: the destinations' weights total 0: at least one must be positive",
        ),
        (
            vs("  - timeout: 10\n    route:\n    - destination: {host: reviews}\n"),
            "VirtualService bookinfo/reviews: spec.http[0].timeout: invalid type: integer `10`, expected a string",
        ),
        (
            vs("  - timeout: \"10\"\n    route:\n    - destination: {host: reviews}\n"),
            "VirtualService bookinfo/reviews: spec.http[0].timeout: duration `10` has a number with no unit",
        ),
        (
            vs("  - retries: {attempts: 3, perTryTimeout: 2 seconds}\n    route:\n    - destination: {host: reviews}\n"),
            "VirtualService bookinfo/reviews: spec.http[0].retries.perTryTimeout: duration `2 seconds` has unknown unit ` seconds`",
        ),
        (
            vs("  - retries: {attempts: 3, retryOn: \"5xx,sometimes\"}\n    route:\n    - destination: {host: reviews}\n"),
            "VirtualService bookinfo/reviews: spec.http[0].retries.retryOn: `sometimes` is not a retry condition",
        ),
        (
            vs("  - mirror: {host: reviews, subset: v2}\n    mirrorPercentage: {value: 150}\n    route:\n    - destination: {host: reviews}\n"),
            "VirtualService bookinfo/reviews: spec.http[0].mirrorPercentage.value: mirror percentage 150 must be between 0 and 100",
        ),
        (
            vs("  - rewrite: {authority: new.example.com}\n    headers:\n      request:\n        set: {host: other.example.com}\n    route:\n    - destination: {host: reviews}\n"),
            "VirtualService bookinfo/reviews: spec.http[0].rewrite.authority: the authority is rewritten twice",
        ),
        (
            vs("  - fault:\n      abort: {httpStatus: 700}\n    route:\n    - destination: {host: reviews}\n"),
            "VirtualService bookinfo/reviews: spec.http[0].fault.abort.httpStatus: status 700 must be between 200 and 599",
        ),
        (
            vs("  - fault:\n      delay: {fixedDelay: 5s, percentage: {value: 101}}\n    route:\n    - destination: {host: reviews}\n"),
            "VirtualService bookinfo/reviews: spec.http[0].fault.delay.percentage.value: percentage 101 must be between 0 and 100",
        ),
        (
            vs("  - route:\n    - destination: {host: \"rev iews\"}\n"),
            "VirtualService bookinfo/reviews: spec.http[0].route[0].destination.host: host `rev iews` is not a valid DNS name",
        ),
        (
            vs("  - redirect: {uri: /new, redirectCode: 200}\n"),
            "VirtualService bookinfo/reviews: spec.http[0].redirect.redirectCode: 200 is not a redirect code",
        ),
        (
            vs("  - route:\n    - destination: {host: reviews, subset: V_1}\n"),
            "VirtualService bookinfo/reviews: spec.http[0].route[0].destination.subset: subset `V_1` is not a valid DNS-1123 label",
        ),
        (
            vs("  - route:\n    - destination: {host: reviews}\n      weight: heavy\n"),
            "VirtualService bookinfo/reviews: spec.http[0].route[0].weight: invalid type: string \"heavy\", expected i32",
        ),
        (
            dr("  host: reviews\n  subsets:\n  - name: v1\n    labels: {version: v1}\n  - name: v1\n    labels: {version: v2}\n"),
            "DestinationRule bookinfo/reviews: spec.subsets[1].name: duplicate subset name `v1`",
        ),
        (
            dr("  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      simple: ROUND_ROBIN\n      consistentHash: {httpHeaderName: x-user}\n"),
            "DestinationRule bookinfo/reviews: spec.trafficPolicy.loadBalancer: only one of simple or consistentHash may be set",
        ),
        (
            dr("  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      consistentHash: {httpHeaderName: x-user, maglev: {tableSize: 1000}}\n"),
            "DestinationRule bookinfo/reviews: spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize: table size 1000 must be a prime number",
        ),
        (
            dr("  host: reviews\n  trafficPolicy:\n    outlierDetection: {maxEjectionPercent: 150, baseEjectionTime: 30x}\n"),
            "DestinationRule bookinfo/reviews: spec.trafficPolicy.outlierDetection.maxEjectionPercent: must be between 0 and 100",
        ),
        (
            dr("  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      simple: FASTEST\n"),
            "DestinationRule bookinfo/reviews: spec.trafficPolicy.loadBalancer.simple: unknown variant `FASTEST`",
        ),
        (
            dr("  subsets: []\n"),
            "DestinationRule bookinfo/reviews: spec.host: host is required",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [\"*\"]\n".into(),
            "Gateway default/gw: spec.servers[0].tls: a HTTPS server needs tls settings",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  servers:\n  - port: {number: 8443, name: web, protocol: HTTP}\n    hosts: [\"*\"]\n    tls: {mode: ISTIO_MUTUAL}\n".into(),
            "Gateway default/gw: spec.servers[0].tls: a plaintext HTTP port cannot terminate TLS (only httpsRedirect): use protocol HTTPS",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext}\nspec:\n  hosts: [api.example.com]\n  ports:\n  - {number: 443, name: https, protocol: TLS}\n  - {number: 443, name: https2, protocol: TLS}\n  resolution: STATIC\n".into(),
            "ServiceEntry default/ext: spec.ports[1].number: port 443 is declared twice",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo}\nspec:\n  rules:\n  - from:\n    - source: {ipBlocks: [\"10.0.0.0/33\"]}\n".into(),
            "AuthorizationPolicy foo/p: spec.rules[0].from[0].source.ipBlocks[0]: `10.0.0.0/33` is not an IP address or CIDR block",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo}\nspec:\n  rules:\n  - to:\n    - operation: {paths: [\"/a*b\"]}\n".into(),
            "AuthorizationPolicy foo/p: spec.rules[0].to[0].operation.paths[0]: `/a*b`: `*` is allowed only as a prefix or a suffix",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo}\nspec:\n  action: CUSTOM\n  rules: [{}]\n".into(),
            "AuthorizationPolicy foo/p: spec.provider: CUSTOM action needs a provider",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {namespace: x}\nspec: {}\n".into(),
            "VirtualService : metadata.name: is required",
        ),
        ("apiVersion: networking.istio.io/v1\nmetadata: {name: x}\n".into(), "`kind` is required"),
        ("- just\n- a list\n".into(), "a resource must be a mapping"),
        ("kind: [unclosed\n".into(), "YAML syntax"),
    ];
    let mut failures = Vec::new();
    for (yaml, expected) in &cases {
        let got = error_of(yaml);
        if !got.contains(expected) {
            failures.push(format!("expected: {expected}\n     got: {got}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases wrong:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[test]
fn all_problems_of_a_resource_are_reported_together() {
    let doc = config::parse_documents(&vs(
        "  - timeout: forever\n    route:\n    - destination: {host: reviews}\n      weight: -1\n    - destination: {host: reviews}\n      weight: 0\n",
    ))
    .unwrap()
    .remove(0);
    let Err(ConfigError::Invalid(problems)) = config::decode(doc, "default") else {
        panic!("expected validation errors")
    };
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["spec.http[0].route[0].weight", "spec.http[0].route", "spec.http[0].timeout"]);
}
