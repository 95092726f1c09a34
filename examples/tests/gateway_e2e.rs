//! The gateway binary on real traffic: backends and the gateway are child
//! processes on 127.0.0.1.

mod common;

use std::time::{Duration, Instant};

use common::{backend, free_port, reviews_backends, routes, versions, write_mesh, Gateway, Service};

#[test]
fn bookinfo_reviews_rules_on_real_requests_and_edits_without_restart() {
    let (_backends, [p1, p2, p3]) = reviews_backends();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_mesh(dir.path(), port, &[Service { name: "reviews", backends: &[("v1", p1), ("v2", p2), ("v3", p3)] }], "");
    // virtual-service-reviews-jason-v2-v3.yaml, bound to the gateway.
    let jason = routes("reviews", "  - match:\n    - headers: {end-user: {exact: jason}}\n    route:\n    - destination: {host: reviews, subset: v2}\n  - route:\n    - destination: {host: reviews, subset: v3}\n");
    std::fs::write(dir.path().join("routes.yaml"), &jason).unwrap();
    let g = Gateway::start(dir.path(), port);

    assert_eq!(versions(&g, 20, "/reviews/0", &[("end-user", "jason")]), [("v2".to_string(), 20)].into());
    assert_eq!(versions(&g, 20, "/reviews/0", &[("end-user", "alice")]), [("v3".to_string(), 20)].into());

    // virtual-service-reviews-90-10.yaml
    g.apply(dir.path(), "routes.yaml", &routes("reviews", "  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 90\n    - destination: {host: reviews, subset: v2}\n      weight: 10\n"));
    let counts = versions(&g, 1000, "/", &[]);
    let v1 = counts.get("v1").copied().unwrap_or(0);
    assert_eq!(v1 + counts.get("v2").copied().unwrap_or(0), 1000, "{counts:?}");
    assert!((870..=930).contains(&v1), "90/10 split gave {counts:?}");

    // virtual-service-reviews-50-v3.yaml
    g.apply(dir.path(), "routes.yaml", &routes("reviews", "  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 50\n    - destination: {host: reviews, subset: v3}\n      weight: 50\n"));
    let counts = versions(&g, 1000, "/", &[]);
    let v1 = counts.get("v1").copied().unwrap_or(0);
    assert_eq!(v1 + counts.get("v3").copied().unwrap_or(0), 1000, "{counts:?}");
    assert!((440..=560).contains(&v1), "50/50 split gave {counts:?}");
}

#[test]
fn retries_turn_a_flaky_upstreams_503s_into_200s() {
    let (_b, p) = backend("v1", 2); // every second request fails
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_mesh(dir.path(), port, &[Service { name: "flaky", backends: &[("v1", p)] }], "");
    std::fs::write(
        dir.path().join("routes.yaml"),
        routes("flaky", "  - route:\n    - destination: {host: flaky}\n    retries: {attempts: 3, retryOn: 5xx}\n"),
    )
    .unwrap();
    let g = Gateway::start(dir.path(), port);
    assert_eq!(versions(&g, 100, "/", &[]), [("v1".to_string(), 100)].into());

    g.apply(
        dir.path(),
        "routes.yaml",
        &routes("flaky", "  - route:\n    - destination: {host: flaky}\n    retries: {attempts: 0}\n"),
    );
    let counts = versions(&g, 100, "/", &[]);
    assert!(counts.get("status 503").copied().unwrap_or(0) >= 40, "without retries half fail: {counts:?}");
}

/// A `pool` service over these backends (round robin, no retries) with
/// outlier detection after 3 consecutive 5xx, ejecting for `ejection`;
/// with its gateway.
fn outlier_pool(ports: &[u16], ejection: &str) -> (tempfile::TempDir, Gateway) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let policy = format!("  trafficPolicy:\n    loadBalancer: {{simple: ROUND_ROBIN}}\n    outlierDetection: {{consecutive5xxErrors: 3, interval: 500ms, baseEjectionTime: {ejection}, maxEjectionPercent: 100}}\n");
    let backends: Vec<(&str, u16)> = ports.iter().map(|p| ("v1", *p)).collect();
    write_mesh(dir.path(), port, &[Service { name: "pool", backends: &backends }], &policy);
    let route = routes("pool", "  - route:\n    - destination: {host: pool}\n    retries: {attempts: 0}\n");
    std::fs::write(dir.path().join("routes.yaml"), route).unwrap();
    let g = Gateway::start(dir.path(), port);
    (dir, g)
}

#[test]
fn an_outlier_is_ejected_after_consecutive_5xx_and_restored_after_the_ejection_time() {
    let (_good, good) = backend("v1", 0);
    let (_bad, bad) = backend("v1", 1); // always 503
    let (_dir, g) = outlier_pool(&[good, bad], "2s");
    let ejected = |g: &Gateway| {
        let clusters: serde_json::Value = serde_json::from_str(&g.admin_get("/clusters").unwrap().body).unwrap();
        clusters["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "outbound|9080||pool.default.svc.cluster.local")
            .and_then(|c| {
                c["endpoints"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|e| e["address"] == format!("127.0.0.1:{bad}"))
                    .map(|e| e["ejected"].as_bool().unwrap())
            })
            .unwrap()
    };
    // Round robin alternates: 3 failures of the bad host need ~6 requests.
    let first = versions(&g, 10, "/", &[]);
    assert!(first.get("status 503").copied().unwrap_or(0) >= 3, "{first:?}");
    assert!(ejected(&g), "the failing host is ejected");
    assert_eq!(versions(&g, 30, "/", &[]), [("v1".to_string(), 30)].into(), "only the good host while ejected");
    let started = Instant::now();
    assert!(common::wait_until(Duration::from_secs(10), || !ejected(&g)), "restored after the ejection time");
    assert!(started.elapsed() >= Duration::from_millis(500), "not before the 2 s ejection time was (nearly) over");
}

/// A client whose body is malformed or cut short is the client's failure:
/// 400 as Envoy answers, and never an upstream failure. Eight of them used
/// to get both healthy hosts of a cluster ejected (consecutive5xxErrors: 3)
/// and every legitimate request after them a 503.
#[test]
fn client_body_failures_are_400_and_never_eject_healthy_upstreams() {
    let (_a, a) = backend("v1", 0);
    let (_b, b) = backend("v1", 0);
    let (_dir, g) = outlier_pool(&[a, b], "30s");
    let port = g.port;
    for _ in 0..4 {
        // A chunk size that is no number.
        let bad_chunk = common::raw_port(
            port,
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
        )
        .unwrap();
        assert!(bad_chunk.starts_with("HTTP/1.1 400 "), "{bad_chunk}");
        // A body cut short: the client sends 10 of 100 bytes and hangs up.
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        std::io::Write::write_all(&mut s, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
            .unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut cut = String::new();
        let _ = std::io::Read::read_to_string(&mut s, &mut cut);
        assert!(!cut.starts_with("HTTP/1.1 5"), "a client's cut body answered as an upstream failure: {cut}");
    }
    assert_eq!(versions(&g, 20, "/", &[]), [("v1".to_string(), 20)].into(), "both hosts still serve");
    let clusters = g.admin_get("/clusters").unwrap().body;
    assert!(!clusters.contains("\"ejected\": true"), "{clusters}");
    // Nor are they the upstream's in its stats or its circuit breaker.
    let stats = g.admin_get("/stats").unwrap().body;
    let counted = ["upstream_rq_rx_reset", "upstream_rq_pending_overflow", "upstream_rq_active", "ejections_active"];
    let lines: Vec<&str> = stats
        .lines()
        .filter(|l| l.starts_with("cluster.outbound|9080||pool.") && counted.iter().any(|c| l.contains(c)))
        .collect();
    assert_eq!(lines.len(), counted.len(), "{stats}");
    assert!(lines.iter().all(|l| l.ends_with(": 0")), "{lines:?}");
}

/// A listener's accept queue is as long as the kernel allows, as Envoy's
/// (it was 128: 2,000 connections opening at once took 5 s), or what the
/// operator sets.
#[test]
fn listeners_accept_queue_is_the_kernels_or_the_operators() {
    mesh_testkit::peers::require_command("ss", "apt-get install iproute2");
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap().trim().parse().unwrap();
    let (_b, p) = backend("v1", 0);
    let backlog_of = |port: u16| -> u32 {
        let out = std::process::Command::new("ss").args(["-Hltn", &format!("sport = :{port}")]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        // State, Recv-Q, Send-Q (a listener's backlog), ...
        text.split_whitespace().nth(2).and_then(|q| q.parse().ok()).unwrap_or_else(|| panic!("ss: {text:?}"))
    };
    let (dir, port) = one_service("web", p);
    let g = Gateway::start(dir.path(), port);
    assert_eq!(backlog_of(port), somaxconn.min(mesh_proxy::limits::DownstreamLimits::default().listen_backlog));
    drop(g);
    let (dir, port) = one_service("web", p);
    let _g = Gateway::start_with(dir.path(), port, &["--listen-backlog", "256"], std::process::Stdio::null());
    assert_eq!(backlog_of(port), 256.min(somaxconn));
}

#[test]
fn delay_and_abort_faults() {
    let (_b, p) = backend("v1", 0);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_mesh(dir.path(), port, &[Service { name: "ratings", backends: &[("v1", p)] }], "");
    std::fs::write(
        dir.path().join("routes.yaml"),
        routes(
            "ratings",
            "  - match:\n    - headers: {end-user: {exact: jason}}\n    fault:\n      delay: {fixedDelay: 400ms, percentage: {value: 100}}\n    route:\n    - destination: {host: ratings}\n  - match:\n    - headers: {end-user: {exact: bob}}\n    fault:\n      abort: {httpStatus: 418, percentage: {value: 100}}\n    route:\n    - destination: {host: ratings}\n  - route:\n    - destination: {host: ratings}\n",
        ),
    )
    .unwrap();
    let g = Gateway::start(dir.path(), port);
    let t = Instant::now();
    assert_eq!(g.get("/", &[("end-user", "jason")]).status, 200);
    assert!(t.elapsed() >= Duration::from_millis(400), "delayed by the fault");
    let r = g.get("/", &[("end-user", "bob")]);
    assert_eq!((r.status, r.body.as_str()), (418, "fault filter abort"));
    assert_eq!(g.get("/", &[]).status, 200);
}

#[test]
fn circuit_breaker_opens_under_concurrency() {
    let (_b, p) = backend("v1", 0);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_mesh(
        dir.path(),
        port,
        &[Service { name: "slow", backends: &[("v1", p)] }],
        "  trafficPolicy:\n    connectionPool:\n      http: {http2MaxRequests: 2}\n",
    );
    std::fs::write(
        dir.path().join("routes.yaml"),
        routes("slow", "  - route:\n    - destination: {host: slow}\n    retries: {attempts: 0}\n"),
    )
    .unwrap();
    let g = Gateway::start(dir.path(), port);
    let statuses: Vec<(u16, Option<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    let r = common::get(port, "/?delay_ms=600", &[]);
                    (r.status, r.header("x-envoy-overloaded").map(str::to_string))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = statuses.iter().filter(|(s, _)| *s == 200).count();
    let overflow = statuses.iter().filter(|(s, o)| *s == 503 && o.as_deref() == Some("true")).count();
    assert!((1..=3).contains(&ok), "at most 2 in flight (one more may start as one finishes): {statuses:?}");
    assert_eq!(ok + overflow, 8, "{statuses:?}");
    let stats = g.admin_get("/stats").unwrap().body;
    let line = stats
        .lines()
        .find(|l| l.starts_with("cluster.outbound|9080||slow.default.svc.cluster.local.upstream_rq_pending_overflow"))
        .unwrap();
    assert!(!line.ends_with(": 0"), "{line}");
}

#[test]
fn dead_upstream_timeouts_and_no_route() {
    let (_b, p) = backend("v1", 0);
    let dead = free_port(); // nothing listens there
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_mesh(
        dir.path(),
        port,
        &[Service { name: "live", backends: &[("v1", p)] }, Service { name: "dead", backends: &[("v1", dead)] }],
        "",
    );
    std::fs::write(
        dir.path().join("routes.yaml"),
        routes("x", "  - match: [{uri: {prefix: /dead}}]\n    route:\n    - destination: {host: dead}\n  - match: [{uri: {prefix: /slow}}]\n    timeout: 300ms\n    route:\n    - destination: {host: live}\n  - match: [{uri: {prefix: /live}}]\n    route:\n    - destination: {host: live}\n"),
    )
    .unwrap();
    let g = Gateway::start(dir.path(), port);
    let r = g.get("/dead", &[]);
    assert_eq!(r.status, 503);
    assert!(r.body.contains("upstream connect error"), "{}", r.body);
    let t = Instant::now();
    let r = g.get("/slow?delay_ms=3000", &[]);
    assert_eq!((r.status, r.body.as_str()), (504, "upstream request timeout"));
    assert!(t.elapsed() < Duration::from_millis(2500), "answered at the timeout, not after the backend");
    assert_eq!(g.get("/nothing-here", &[]).status, 404);
    assert_eq!(g.get("/live", &[]).status, 200, "and the proxy is still fine");
}

#[test]
fn config_edits_during_a_load_loop_lose_no_request() {
    let (_b1, p1) = backend("v1", 0);
    let (_b2, p2) = backend("v2", 0);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_mesh(dir.path(), port, &[Service { name: "web", backends: &[("v1", p1), ("v2", p2)] }], "");
    let split = |w1: u32| {
        routes("web", &format!("  - route:\n    - destination: {{host: web, subset: v1}}\n      weight: {w1}\n    - destination: {{host: web, subset: v2}}\n      weight: {}\n", 100 - w1))
    };
    std::fs::write(dir.path().join("routes.yaml"), split(100)).unwrap();
    let g = Gateway::start(dir.path(), port);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (failures, total) = std::thread::scope(|s| {
        let load = s.spawn(|| {
            let (mut failures, mut total) = (Vec::new(), 0);
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && total < 5000 && Instant::now() < deadline {
                let r = common::get(port, "/", &[]);
                if r.status != 200 {
                    failures.push(r.status);
                }
                total += 1;
            }
            (failures, total)
        });
        for w1 in [0, 50, 100, 20, 80] {
            g.apply(dir.path(), "routes.yaml", &split(w1));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        load.join().unwrap()
    });
    assert!(total > 50, "the loop ran ({total})");
    assert!(failures.is_empty(), "{} of {total} requests failed: {failures:?}", failures.len());
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_0() {
    let (_b, p) = backend("v1", 0);
    let (dir, port) = one_service("web", p);
    let mut g = Gateway::start(dir.path(), port);
    let in_flight = std::thread::spawn(move || common::get(port, "/?delay_ms=800", &[]).status);
    // SIGTERM once the request is being served upstream.
    let in_flight_upstream = || {
        g.admin_get("/stats").is_some_and(|r| {
            r.body.lines().any(|l| l == "cluster.outbound|9080||web.default.svc.cluster.local.upstream_rq_active: 1")
        })
    };
    assert!(common::wait_until(Duration::from_secs(5), in_flight_upstream), "the request never reached the upstream");
    let pid = g.proc.0.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert_eq!(in_flight.join().unwrap(), 200, "the request in flight finished");
    let status = g.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "no longer accepting");
}

#[test]
fn malformed_requests_get_4xx_and_never_take_the_proxy_down() {
    let (_b, p) = backend("v1", 0);
    let (dir, port) = one_service("web", p);
    let g = Gateway::start(dir.path(), port);
    let status_of = |bytes: &[u8]| {
        common::raw_port(port, bytes).unwrap().split_whitespace().nth(1).map(str::to_string).unwrap_or_default()
    };
    assert_eq!(status_of(b"THIS IS NOT HTTP\r\n\r\n"), "400");
    // Request smuggling: both Content-Length and Transfer-Encoding. As
    // Envoy: 400 and the connection closed, so the request pipelined
    // behind it (which a front proxy may have framed otherwise) is never
    // served.
    let both = common::raw_port(port, b"POST /headers HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(both.starts_with("HTTP/1.1 400 ") && both.contains("connection: close"), "{both}");
    assert_eq!(both.matches("HTTP/1.1 ").count(), 1, "the pipelined request was served: {both}");
    // Transfer codings other than chunked alone: 501, as Envoy.
    assert_eq!(status_of(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"), "501");
    // RFC 9112 3.2: one valid Host.
    assert_eq!(status_of(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"), "400");
    assert_eq!(status_of(b"GET / HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n"), "400");
    assert_eq!(status_of(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd"), "400");
    let huge = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(1024 * 1024));
    assert_eq!(status_of(huge.as_bytes()), "431");
    assert_eq!(g.get("/", &[]).status, 200, "still serving");
    let counted = |stats: &str, name: &str| {
        stats.lines().find_map(|l| l.strip_prefix(&format!("{name}: "))?.parse::<u64>().ok()).unwrap_or(0)
    };
    let stats = g.admin_get("/stats").unwrap().body;
    assert!(counted(&stats, "http.downstream_rq_malformed") >= 3, "malformed requests are counted:\n{stats}");
}

#[test]
fn header_operations_rewrites_redirects_and_direct_responses() {
    let (_b, p) = backend("v1", 0);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_mesh(dir.path(), port, &[Service { name: "web", backends: &[("v1", p)] }], "");
    std::fs::write(
        dir.path().join("routes.yaml"),
        routes(
            "web",
            "  - match: [{uri: {prefix: /re/}}]\n    rewrite: {uriRegexRewrite: {match: \"^/re/(h[a-z]+)/x$\", rewrite: \"/\\\\1\"}}\n    route:\n    - destination: {host: web}\n  - match: [{uri: {prefix: /old}}]\n    redirect: {uri: /new, redirectCode: 308}\n  - match: [{uri: {exact: /health}}]\n    directResponse: {status: 200, body: {string: ok}}\n  - match: [{uri: {prefix: /api/v1}}]\n    rewrite: {uri: /headers}\n    headers:\n      request:\n        set: {x-route: api}\n        remove: [x-secret]\n      response:\n        add: {x-served-by: mesh}\n    route:\n    - destination: {host: web}\n",
        ),
    )
    .unwrap();
    let g = Gateway::start(dir.path(), port);
    let r = g.get("/old/page", &[]);
    assert_eq!((r.status, r.header("location")), (308, Some("http://test.example.com/new")));
    let r = g.get("/re/headers/x", &[]);
    assert!(
        r.status == 200 && r.body.contains("x-request-id"),
        "uriRegexRewrite sent /re/headers/x to /headers: {} {}",
        r.status,
        r.body
    );
    let r = g.get("/health", &[]);
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    let r = g.get("/api/v1", &[("x-secret", "s3cret")]);
    assert_eq!(r.status, 200);
    assert!(r.body.contains("x-route: api"), "{}", r.body);
    assert!(!r.body.contains("x-secret"), "{}", r.body);
    assert!(r.body.contains("x-request-id: "), "a request id is generated: {}", r.body);
    assert!(r.body.contains("x-forwarded-for: 127.0.0.1"), "{}", r.body);
    assert_eq!(r.header("x-served-by"), Some("mesh"));
    assert!(r.header("x-request-id").is_some());
    let trace_headers = [
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("tracestate", "congo=t61rcWkgMzE"),
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ("x-b3-parentspanid", "05e3ac9a4f6e3b90"),
        ("x-b3-sampled", "1"),
        ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"),
        ("x-request-id", "given-id"),
    ];
    let traced = g.get("/api/v1", &trace_headers);
    for (name, value) in &trace_headers {
        assert!(traced.body.contains(&format!("{name}: {value}")), "{name} passes through: {}", traced.body);
    }
    assert_eq!(traced.header("x-request-id"), Some("given-id"));
    // A forwarded-for list grows by the peer; an empty request id is
    // replaced by a generated one.
    let relayed = g.get("/api/v1", &[("x-forwarded-for", "10.0.0.7"), ("x-request-id", "")]);
    assert!(relayed.body.contains("x-forwarded-for: 10.0.0.7, 127.0.0.1\n"), "{}", relayed.body);
    assert_eq!(relayed.header("x-request-id").map(str::len), Some(36), "{:?}", relayed.headers);
}

#[test]
fn websocket_echo_through_the_gateway() {
    let (_b, p) = backend("v1", 0);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_mesh(dir.path(), port, &[Service { name: "ws", backends: &[("v1", p)] }], "");
    std::fs::write(dir.path().join("routes.yaml"), routes("ws", "  - route:\n    - destination: {host: ws}\n"))
        .unwrap();
    let _g = Gateway::start(dir.path(), port);
    let (mut socket, response) =
        tungstenite::connect(format!("ws://127.0.0.1:{port}/ws")).expect("websocket handshake through the gateway");
    assert_eq!(response.status(), 101);
    for i in 0..20 {
        let text = format!("message {i}");
        socket.send(tungstenite::Message::text(text.clone())).unwrap();
        assert_eq!(socket.read().unwrap(), tungstenite::Message::text(text));
    }
    socket.close(None).unwrap();
}

#[test]
fn http2_both_ways() {
    let (_b, p) = backend("v1", 0);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_mesh(dir.path(), port, &[Service { name: "h2", backends: &[("v1", p)] }], "");
    // An `http2` port: the gateway speaks HTTP/2 (h2c) upstream.
    let mesh = std::fs::read_to_string(dir.path().join("mesh.yaml"))
        .unwrap()
        .replace("{name: http, port:", "{name: http2, port:");
    std::fs::write(dir.path().join("mesh.yaml"), mesh).unwrap();
    std::fs::write(dir.path().join("routes.yaml"), routes("h2", "  - route:\n    - destination: {host: h2}\n"))
        .unwrap();
    let _g = Gateway::start(dir.path(), port);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http::<http_body_util::Empty<bytes::Bytes>>();
        for _ in 0..10 {
            let req = http::Request::get(format!("http://127.0.0.1:{port}/"))
                .version(http::Version::HTTP_2)
                .body(http_body_util::Empty::new())
                .unwrap();
            let r = client.request(req).await.expect("HTTP/2 request through the gateway");
            assert_eq!(r.status(), 200);
            assert_eq!(r.version(), http::Version::HTTP_2, "downstream HTTP/2");
            assert_eq!(r.headers()["x-backend-protocol"], "HTTP/2.0", "upstream HTTP/2");
        }
    });
}

#[test]
fn custom_filter_example_guards_the_gateway() {
    let (_b, p) = backend("v1", 0);
    let (dir, port) = one_service("web", p);
    let _proc = common::Proc(
        std::process::Command::new(env!("CARGO_BIN_EXE_custom-filter"))
            .arg("--config")
            .arg(dir.path())
            .env("API_KEY", "s3cret")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(common::wait_until(Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()));
    let denied = common::get(port, "/headers", &[]);
    assert_eq!((denied.status, denied.body.as_str()), (401, "x-api-key required\n"));
    let allowed = common::get(port, "/headers", &[("x-api-key", "s3cret")]);
    assert_eq!(allowed.status, 200);
    assert!(allowed.body.contains("x-authenticated: api-key"), "{}", allowed.body);
}

#[test]
fn custom_filter_example_says_how_it_is_used() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_custom-filter")).args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let (code, help) = run(&["--help"]);
    assert_eq!(code, Some(0), "{help}");
    assert!(help.contains("--config") && help.contains("--api-key"), "{help}");
    let (code, bogus) = run(&["--bogus"]);
    assert_eq!(code, Some(2), "{bogus}");
    assert!(bogus.contains("--bogus"), "{bogus}");
    let (code, missing) = run(&[]);
    assert_eq!(code, Some(2), "no config is an error, not an empty gateway: {missing}");
    assert!(missing.contains("--config"), "{missing}");
}

#[test]
fn cors_preflight_and_response_headers() {
    let (_b, p) = backend("v1", 0);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_mesh(dir.path(), port, &[Service { name: "api", backends: &[("v1", p)] }], "");
    std::fs::write(
        dir.path().join("routes.yaml"),
        routes("api", "  - corsPolicy:\n      allowOrigins: [{exact: \"https://app.example.com\"}, {regex: \"https://.*\\\\.trusted\\\\.org\"}]\n      allowMethods: [GET, POST]\n      allowHeaders: [x-token]\n      exposeHeaders: [x-backend-version]\n      maxAge: 24h\n      allowCredentials: true\n    route:\n    - destination: {host: api}\n"),
    )
    .unwrap();
    let g = Gateway::start(dir.path(), port);
    let pre = common::raw_port(port, b"OPTIONS / HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example.com\r\nAccess-Control-Request-Method: POST\r\nConnection: close\r\n\r\n").unwrap();
    let pre = common::parse(&pre).unwrap();
    assert_eq!(pre.status, 200);
    assert_eq!(pre.header("access-control-allow-origin"), Some("https://app.example.com"));
    assert_eq!(pre.header("access-control-allow-methods"), Some("GET,POST"));
    assert_eq!(pre.header("access-control-max-age"), Some("86400"));
    assert!(pre.header("x-backend-version").is_none(), "answered by the proxy");
    let r = g.get("/", &[("origin", "https://a.trusted.org")]);
    assert_eq!((r.status, r.header("access-control-allow-origin")), (200, Some("https://a.trusted.org")));
    assert_eq!(r.header("access-control-expose-headers"), Some("x-backend-version"));
    let other = g.get("/", &[("origin", "https://evil.example")]);
    assert_eq!((other.status, other.header("access-control-allow-origin")), (200, None));
}

#[test]
fn grpc_calls_status_and_trailers_through_the_gateway() {
    let peers = common::peers();
    let (_server, grpc_port) = common::grpc_echo_server(None);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_mesh(dir.path(), port, &[Service { name: "echo", backends: &[("v1", grpc_port)] }], "");
    let mesh = std::fs::read_to_string(dir.path().join("mesh.yaml"))
        .unwrap()
        .replace("{name: http, port:", "{name: grpc, port:");
    std::fs::write(dir.path().join("mesh.yaml"), mesh).unwrap();
    std::fs::write(
        dir.path().join("routes.yaml"),
        routes("echo", "  - match: [{uri: {prefix: /demo.Echo/}}]\n    route:\n    - destination: {host: echo}\n"),
    )
    .unwrap();
    let g = Gateway::start(dir.path(), port);
    let out = std::process::Command::new("python3")
        .arg(peers.join("grpc_echo_client.py"))
        .arg(port.to_string())
        .args(["hello", "fail", "again"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        ["ok echo:hello trailer=present", "error UNAVAILABLE told to fail", "ok echo:again trailer=present"],
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics = g.admin_get("/stats/prometheus").unwrap().body;
    assert!(
        metrics.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("request_protocol=\"grpc\"")
            && l.contains("grpc_response_status=\"14\"")),
        "gRPC status in the metrics:\n{metrics}"
    );
}

#[test]
fn tls_termination_with_certificates_from_files_and_alpn() {
    let (_b, p) = backend("v1", 0);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cert = common::write_tls_mesh(dir.path(), port, "bookinfo.example.com", p);
    let _g = Gateway::start(dir.path(), port);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for alpn in [&b"http/1.1"[..], &b"h2"[..]] {
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let (status, version, forwarded_proto) = rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("bookinfo.example.com").unwrap();
            let tls = connector.connect(name, tcp).await.expect("TLS handshake with the gateway");
            let io = hyper_util::rt::TokioIo::new(tls);
            let req = |version| {
                http::Request::get("https://bookinfo.example.com/headers")
                    .version(version)
                    .header("host", "bookinfo.example.com")
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap()
            };
            let response = if alpn == b"h2" {
                let (mut send, conn) =
                    hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
                tokio::spawn(conn);
                let mut r = req(http::Version::HTTP_2);
                r.headers_mut().remove("host");
                send.send_request(r).await.unwrap()
            } else {
                let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
                tokio::spawn(conn);
                send.send_request(req(http::Version::HTTP_11)).await.unwrap()
            };
            let (status, version) = (response.status(), response.version());
            let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
            let text = String::from_utf8_lossy(&body).into_owned();
            (status, version, text.lines().any(|l| l == "x-forwarded-proto: https"))
        });
        assert_eq!(status, 200, "over {}", String::from_utf8_lossy(alpn));
        assert_eq!(version, if alpn == b"h2" { http::Version::HTTP_2 } else { http::Version::HTTP_11 });
        assert!(forwarded_proto, "the upstream learns the request came over TLS");
    }
}

/// Config for a gateway that routes everything to one service with one
/// (`v1`) backend: the directory, and the gateway's port.
fn one_service(name: &str, backend_port: u16) -> (tempfile::TempDir, u16) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_mesh(dir.path(), port, &[Service { name, backends: &[("v1", backend_port)] }], "");
    let route = format!("  - route:\n    - destination: {{host: {name}}}\n");
    std::fs::write(dir.path().join("routes.yaml"), routes(name, &route)).unwrap();
    (dir, port)
}

/// A Python upstream speaking raw HTTP/1.1 as `script` says; the script
/// prints its port first.
fn raw_upstream(script: &str) -> (common::Proc, u16) {
    let child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = common::Proc(child);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.0.stdout.take().unwrap()), &mut line).unwrap();
    (child, line.trim().parse().unwrap())
}

/// A raw HTTP/1.1 upstream that reads each request head on a keep-alive
/// connection and calls `answer(c, path)`, which the test defines (after
/// `import socket, threading, time`): it writes what the test wants sent
/// and returns whether to keep the connection.
fn raw_http_upstream(answer: &str) -> (common::Proc, u16) {
    let script = format!(
        r#"import socket, threading, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', 0)); s.listen(64)
print(s.getsockname()[1], flush=True)
{answer}
def serve(c):
    buf = b''
    while True:
        while b'\r\n\r\n' not in buf:
            d = c.recv(65536)
            if not d:
                c.close(); return
            buf += d
        head, buf = buf.split(b'\r\n\r\n', 1)
        if not answer(c, head.split(b' ')[1]):
            c.close(); return
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"#
    );
    raw_upstream(&script)
}

#[test]
fn slow_clients_and_upstreams_that_reset_mid_response() {
    // A raw upstream that promises 1000 bytes, sends 10, and hangs up.
    let (_broken, broken_port) = raw_upstream("import socket\ns = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', 0)); s.listen(16)\nprint(s.getsockname()[1], flush=True)\nwhile True:\n    c, _ = s.accept()\n    c.recv(65536)\n    c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Length: 1000\\r\\n\\r\\n0123456789')\n    c.close()\n");
    let (_b, p) = backend("v1", 0);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_mesh(
        dir.path(),
        port,
        &[
            Service { name: "web", backends: &[("v1", p)] },
            Service { name: "broken", backends: &[("v1", broken_port)] },
        ],
        "",
    );
    std::fs::write(dir.path().join("routes.yaml"), routes("x", "  - match: [{uri: {prefix: /broken}}]\n    route:\n    - destination: {host: broken}\n  - route:\n    - destination: {host: web}\n")).unwrap();
    let g = Gateway::start_with(dir.path(), port, &["--header-read-timeout", "1"], std::process::Stdio::null());

    // Headers are already on their way when the body breaks: the client
    // gets a reset connection (or a visibly short body), never a whole-
    // looking answer.
    for _ in 0..3 {
        let text =
            common::raw_port(port, b"GET /broken HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap_or_default();
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        assert!(text.is_empty() || (text.starts_with("HTTP/1.1 200") && body.len() < 1000), "{text:?}");
    }

    // A client that never finishes its headers is cut off.
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(&mut slow, b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = std::io::Read::read_to_end(&mut slow, &mut buf);
    assert!(started.elapsed() < Duration::from_secs(6), "closed after the 1 s header timeout, not left open");
    assert_eq!(g.get("/", &[]).status, 200, "and the proxy serves on");
    let stats = g.admin_get("/stats").unwrap().body;
    let counted =
        |name: &str| stats.lines().find_map(|l| l.strip_prefix(&format!("{name}: "))?.parse::<u64>().ok()).unwrap_or(0);
    assert!(counted("http.downstream_header_timeout") >= 1, "{stats}");
    assert!(counted("cluster.outbound|9080||broken.default.svc.cluster.local.upstream_rq_rx_reset") >= 1, "{stats}");
}

#[test]
fn istio_json_access_log_and_drain_from_the_admin_server() {
    let (_b, p) = backend("v1", 0);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_mesh(dir.path(), port, &[Service { name: "web", backends: &[("v1", p)] }], "");
    std::fs::write(
        dir.path().join("routes.yaml"),
        routes("web", "  - name: to-web\n    route:\n    - destination: {host: web}\n"),
    )
    .unwrap();
    let mesh_config = dir.path().join("mesh-config.yaml");
    std::fs::write(&mesh_config, "accessLogFile: /dev/stdout\naccessLogEncoding: JSON\n").unwrap();
    let mut g = Gateway::start_with(
        dir.path(),
        port,
        &["--mesh-config", mesh_config.to_str().unwrap()],
        std::process::Stdio::piped(),
    );
    let rx = g.stdout_lines();
    assert_eq!(g.get("/path?q=1", &[("x-request-id", "log-me-1")]).status, 200);
    let entry = loop {
        let line = rx.recv_timeout(Duration::from_secs(5)).expect("an access log line");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON access log");
        if v["request_id"] == "log-me-1" {
            break v;
        }
    };
    assert_eq!(entry["method"], "GET");
    assert_eq!(entry["path"], "/path?q=1");
    assert_eq!((&entry["protocol"], &entry["response_code"]), (&"HTTP/1.1".into(), &200.into()));
    assert_eq!((&entry["response_flags"], &entry["response_code_details"]), (&"-".into(), &"via_upstream".into()));
    assert!(entry["bytes_sent"].as_u64().is_some_and(|b| b > 0), "{entry}");
    assert!(entry["start_time"].as_str().is_some_and(|t| t.ends_with('Z') && t.len() == 24), "{entry}");
    assert!(entry["downstream_remote_address"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{entry}");
    assert_eq!(entry["route_name"], "to-web");
    assert_eq!(entry["upstream_cluster"], "outbound|9080||web.default.svc.cluster.local");
    assert_eq!(entry["upstream_host"], format!("127.0.0.1:{p}"));

    let drain = common::raw_port(
        g.admin,
        b"POST /drain HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert!(drain.starts_with("HTTP/1.1 200"), "{drain}");
    let status = g.wait_exit(Duration::from_secs(10));
    assert!(status.success());
}

#[test]
fn mirroring_ring_hash_tcp_routes_and_listeners_added_and_removed() {
    let (_v1, p1) = backend("v1", 0);
    let (_v2, p2) = backend("v2", 0);
    let (_shadow, ps) = backend("shadow", 0);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let ring = "  trafficPolicy:\n    loadBalancer: {consistentHash: {httpHeaderName: x-user}}\n";
    write_mesh(
        dir.path(),
        port,
        &[
            Service { name: "web", backends: &[("v1", p1), ("v2", p2)] },
            Service { name: "shadow", backends: &[("shadow", ps)] },
        ],
        ring,
    );
    std::fs::write(
        dir.path().join("routes.yaml"),
        routes("web", "  - route:\n    - destination: {host: web}\n    mirror: {host: shadow}\n    mirrorPercentage: {value: 100}\n"),
    )
    .unwrap();
    let g = Gateway::start(dir.path(), port);

    // Ring hash: a user sticks to one endpoint; users spread over both.
    let mut seen = std::collections::BTreeSet::new();
    for user in 0..20 {
        let user = format!("user-{user}");
        let first = g.get("/", &[("x-user", &user)]).header("x-backend-version").unwrap().to_string();
        for _ in 0..5 {
            assert_eq!(
                g.get("/", &[("x-user", &user)]).header("x-backend-version"),
                Some(first.as_str()),
                "{user} must stick"
            );
        }
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2, "users spread over both endpoints: {seen:?}");

    // Mirroring: every answer came from the primary, and the shadow got a
    // copy of each of the 120 requests (fire and forget, so wait_until).
    assert_ne!(g.get("/", &[]).header("x-backend-version"), Some("shadow"));
    let served = || common::get(ps, "/served", &[]).body.trim().parse::<u32>().unwrap_or(0);
    assert!(common::wait_until(Duration::from_secs(5), || served() >= 121), "the shadow saw {} copies", served());

    // A TCP server on a second port, added by an edit, split by weight,
    // then removed by another edit.
    let tcp_port = free_port();
    let tcp_gateway = format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: tcp-gw, namespace: default}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: {tcp_port}, name: tcp, protocol: TCP}}\n    hosts: [\"*\"]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: tcp-routes, namespace: default}}\nspec:\n  hosts: [\"*\"]\n  gateways: [tcp-gw]\n  tcp:\n  - route:\n    - destination: {{host: web, subset: v1}}\n      weight: 100\n    - destination: {{host: web, subset: v2}}\n      weight: 0\n"
    );
    g.apply(dir.path(), "tcp.yaml", &tcp_gateway);
    assert!(
        common::wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", tcp_port)).is_ok()),
        "the new listener is up"
    );
    for _ in 0..5 {
        let r = common::get(tcp_port, "/", &[]);
        assert_eq!(
            (r.status, r.header("x-backend-version")),
            (200, Some("v1")),
            "bytes relayed to the weighted TCP destination"
        );
    }
    let before = g.version();
    std::fs::remove_file(dir.path().join("tcp.yaml")).unwrap();
    assert!(common::wait_until(Duration::from_secs(10), || g.version() != before), "the delete was applied");
    assert!(
        common::wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", tcp_port)).is_err()),
        "the removed listener is gone"
    );
    assert_eq!(g.get("/", &[]).status, 200, "the other listener kept serving");
}

#[test]
fn local_rate_limit_from_an_envoy_filter() {
    let (_b, p) = backend("v1", 0);
    let (dir, port) = one_service("web", p);
    // As in Istio's rate limiting task, for the ingress gateway.
    std::fs::write(
        dir.path().join("ratelimit.yaml"),
        "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: filter-local-ratelimit-gw, namespace: istio-system}\nspec:\n  workloadSelector:\n    labels: {istio: ingressgateway}\n  configPatches:\n    - applyTo: HTTP_FILTER\n      match:\n        context: GATEWAY\n      patch:\n        operation: INSERT_BEFORE\n        value:\n          name: envoy.filters.http.local_ratelimit\n          typed_config:\n            \"@type\": type.googleapis.com/udpa.type.v1.TypedStruct\n            type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit\n            value:\n              stat_prefix: http_local_rate_limiter\n              token_bucket: {max_tokens: 3, tokens_per_fill: 3, fill_interval: 60s}\n              response_headers_to_add:\n              - header: {key: x-local-rate-limit, value: 'true'}\n",
    )
    .unwrap();
    let g = Gateway::start(dir.path(), port);
    let statuses: Vec<u16> = (0..6).map(|_| g.get("/", &[]).status).collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
    let limited = g.get("/", &[]);
    assert_eq!((limited.body.as_str(), limited.header("x-local-rate-limit")), ("local_rate_limited", Some("true")));
    // An edit elsewhere does not refill the bucket.
    g.apply(
        dir.path(),
        "routes.yaml",
        &routes("web", "  - name: renamed\n    route:\n    - destination: {host: web}\n"),
    );
    assert_eq!(g.get("/", &[]).status, 429);
}

#[test]
fn destination_rule_connect_timeout_bounds_a_hanging_connect() {
    // A listener that never accepts, its queue filled: connects hang.
    let mut hang = std::process::Command::new("python3")
        .args(["-c", "import socket, time\ns = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(0)\nprint(s.getsockname()[1], flush=True)\ntime.sleep(120)\n"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(hang.stdout.take().unwrap()), &mut line).unwrap();
    let _hang = common::Proc(hang);
    let hang_port: u16 = line.trim().parse().unwrap();
    let _fillers: Vec<_> = (0..4)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(
                &format!("127.0.0.1:{hang_port}").parse().unwrap(),
                Duration::from_millis(200),
            )
            .ok()
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_mesh(
        dir.path(),
        port,
        &[Service { name: "hang", backends: &[("v1", hang_port)] }],
        "  trafficPolicy:\n    connectionPool:\n      tcp: {connectTimeout: 300ms}\n",
    );
    std::fs::write(
        dir.path().join("routes.yaml"),
        routes("hang", "  - route:\n    - destination: {host: hang}\n    retries: {attempts: 0}\n"),
    )
    .unwrap();
    let g = Gateway::start(dir.path(), port);
    let started = Instant::now();
    let r = g.get("/", &[]);
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "gave up at the 300 ms connect timeout, not the 10 s default ({:?})",
        started.elapsed()
    );
}

#[test]
fn every_load_balancer_on_real_traffic() {
    let (_v1, p1) = backend("v1", 0);
    let (_v2, p2) = backend("v2", 0);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let policy = |lb: &str| format!("  trafficPolicy:\n    loadBalancer: {lb}\n");
    write_mesh(
        dir.path(),
        port,
        &[Service { name: "web", backends: &[("v1", p1), ("v2", p2)] }],
        &policy("{simple: ROUND_ROBIN}"),
    );
    std::fs::write(dir.path().join("routes.yaml"), routes("web", "  - route:\n    - destination: {host: web}\n"))
        .unwrap();
    let g = Gateway::start(dir.path(), port);
    let mesh = std::fs::read_to_string(dir.path().join("mesh.yaml")).unwrap();
    for lb in [
        "{simple: ROUND_ROBIN}",
        "{simple: RANDOM}",
        "{simple: LEAST_REQUEST}",
        "{consistentHash: {httpHeaderName: x-user, maglev: {tableSize: 65537}}}",
        "{consistentHash: {httpQueryParameterName: u, ringHash: {minimumRingSize: 2048}}}",
    ] {
        let text = mesh.replace(&policy("{simple: ROUND_ROBIN}"), &policy(lb));
        if lb != "{simple: ROUND_ROBIN}" {
            g.apply(dir.path(), "mesh.yaml", &text);
        }
        let hashed = lb.contains("consistentHash");
        let counts = versions(&g, 200, "/?u=fixed", &[("x-user", "fixed")]);
        if hashed {
            assert_eq!(counts.len(), 1, "{lb}: one key, one endpoint: {counts:?}");
            let spread: std::collections::BTreeSet<String> = (0..40)
                .map(|i| {
                    g.get(&format!("/?u=user{i}"), &[("x-user", &format!("user{i}"))])
                        .header("x-backend-version")
                        .unwrap_or("?")
                        .to_string()
                })
                .collect();
            assert_eq!(spread.len(), 2, "{lb}: keys spread over both endpoints");
        } else {
            let v1 = counts.get("v1").copied().unwrap_or(0);
            assert!((60..=140).contains(&v1) && v1 + counts.get("v2").copied().unwrap_or(0) == 200, "{lb}: {counts:?}");
        }
    }
}

#[test]
fn per_try_timeouts_bound_each_try() {
    let (_b, p) = backend("v1", 0);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_mesh(dir.path(), port, &[Service { name: "slow", backends: &[("v1", p)] }], "");
    // Every try of a 1 s request times out at 200 ms and is retried (twice),
    // well inside the 3 s route timeout.
    std::fs::write(
        dir.path().join("routes.yaml"),
        routes("slow", "  - timeout: 3s\n    retries: {attempts: 2, perTryTimeout: 200ms, retryOn: 5xx}\n    route:\n    - destination: {host: slow}\n"),
    )
    .unwrap();
    let g = Gateway::start(dir.path(), port);
    let started = Instant::now();
    let r = g.get("/?delay_ms=1000", &[]);
    let took = started.elapsed();
    assert_eq!((r.status, r.body.as_str()), (504, "upstream request timeout"));
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_millis(1500),
        "three tries of 200 ms, not one of 1 s or the 3 s route timeout: {took:?}"
    );
    assert_eq!(g.get("/", &[]).status, 200);
}

#[test]
fn upstream_responses_framed_every_way_http_1_1_allows() {
    // A raw HTTP/1.1 upstream: chunked with an extension and a trailer,
    // sent in pieces; close-delimited (HTTP/1.0, no length); a 100
    // Continue before the answer; and a connection closed after each
    // answer without saying so, which the proxy will have pooled.
    let answer = r#"
def answer(c, path):
    if path == b'/chunked':
        for piece in [b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhel', b'lo\r\n6\r\n wor', b'ld\r\n0\r\nx-trailer: t\r\n\r\n']:
            c.sendall(piece); time.sleep(0.01)
        return True
    if path == b'/close':
        c.sendall(b'HTTP/1.0 200 OK\r\n\r\nuntil the close'); return False
    if path == b'/continue':
        c.sendall(b'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok')
        return True
    c.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nonce'); return False
"#;
    let (_raw, raw_port) = raw_http_upstream(answer);
    let (dir, port) = one_service("raw", raw_port);
    let g = Gateway::start(dir.path(), port);
    for _ in 0..3 {
        let r = g.get("/chunked", &[]);
        assert_eq!((r.status, r.body.as_str()), (200, "hello world"));
        let r = g.get("/continue", &[]);
        assert_eq!((r.status, r.body.as_str()), (201, "ok"));
        let r = g.get("/close", &[]);
        assert_eq!((r.status, r.body.as_str()), (200, "until the close"));
    }
    // Each of these finds the connection of the one before closed (the
    // upstream hung up after answering) and goes out on a new one.
    for _ in 0..10 {
        let r = g.get("/once", &[]);
        assert_eq!((r.status, r.body.as_str()), (200, "once"));
    }
}

/// Upstream answers whose framing Envoy refuses (both Content-Length and
/// chunked, a repeated or listed length, another transfer coding, a broken
/// status line) are a protocol error: 502 with `UPE`, as Envoy answers,
/// never a body framed one way while the client is told another.
#[test]
fn upstream_answers_envoy_refuses_are_502_and_never_desync_the_client() {
    let answer = r#"
ANSWERS = {
    b'/cl-te': b'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n',
    b'/cl-twice': b'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok',
    b'/cl-list': b'HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok',
    b'/gzip': b'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n',
    b'/status': b'HTTP/1.1 abc OK\r\n\r\n',
}
def answer(c, path):
    c.sendall(ANSWERS.get(path, b'HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood'))
    return True
"#;
    let (_raw, raw_port) = raw_http_upstream(answer);
    let (dir, port) = one_service("raw", raw_port);
    let _g = Gateway::start(dir.path(), port);
    for path in ["/cl-te", "/cl-twice", "/cl-list", "/gzip", "/status"] {
        // Two requests on one keep-alive connection: the refused answer,
        // then a good one that must arrive whole and in sync.
        let text = common::raw_port(
            port,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\nGET /good HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        let statuses: Vec<&str> = text.match_indices("HTTP/1.1 ").map(|(i, _)| &text[i + 9..i + 12]).collect();
        assert_eq!(statuses, ["502", "200"], "{path}: {text}");
        assert!(text.contains("reset reason: protocol error"), "{path}: {text}");
        assert!(text.ends_with("good"), "{path}: the next answer out of step: {text}");
    }
}

#[test]
fn max_requests_per_connection() {
    let (_b, p) = backend("v1", 0);
    let (dir, port) = one_service("web", p);
    let g = Gateway::start(dir.path(), port);
    let most = |g: &Gateway| {
        (0..10)
            .map(|_| g.get("/", &[]).header("x-backend-connection-requests").unwrap_or("0").parse::<u32>().unwrap())
            .max()
            .unwrap()
    };
    assert!(most(&g) > 1, "connections are kept alive and reused by default");
    let mesh = std::fs::read_to_string(dir.path().join("mesh.yaml")).unwrap().replace(
        "  subsets:\n",
        "  trafficPolicy:\n    connectionPool:\n      http: {maxRequestsPerConnection: 1}\n  subsets:\n",
    );
    g.apply(dir.path(), "mesh.yaml", &mesh);
    // The connection already open carries one more request, then closes.
    assert_eq!(g.get("/", &[]).status, 200);
    assert_eq!(most(&g), 1, "one request per upstream connection");
    g.apply(dir.path(), "mesh.yaml", &mesh.replace("maxRequestsPerConnection: 1", "maxRequestsPerConnection: 3"));
    assert_eq!(most(&g), 3, "each connection carries up to 3 requests, and no more");
}

#[test]
fn idle_upstream_connections_close_after_the_idle_timeout() {
    let (_b, p) = backend("v1", 0);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_mesh(
        dir.path(),
        port,
        &[Service { name: "web", backends: &[("v1", p)] }],
        "  trafficPolicy:\n    connectionPool:\n      http: {idleTimeout: 1s}\n",
    );
    std::fs::write(dir.path().join("routes.yaml"), routes("web", "  - route:\n    - destination: {host: web}\n"))
        .unwrap();
    let g = Gateway::start(dir.path(), port);
    let on_connection =
        |g: &Gateway| g.get("/", &[]).header("x-backend-connection-requests").unwrap_or("0").parse::<u32>().unwrap();
    let first = on_connection(&g);
    assert_eq!(on_connection(&g), first + 1, "back to back, the pooled connection is reused");
    let idle = || {
        let stats = g.admin_get("/stats").unwrap().body;
        stats.lines().find_map(|l| {
            l.strip_prefix("cluster.outbound|9080||web.default.svc.cluster.local.upstream_cx_idle_http1: ")?
                .parse::<u32>()
                .ok()
        })
    };
    assert_eq!(idle(), Some(1), "one idle pooled connection");
    // A second of timeout leaves room for a loaded machine between the
    // requests above (300 ms once did not).
    assert!(
        common::wait_until(Duration::from_secs(5), || idle() == Some(0)),
        "closed by the pool's sweep at its idle timeout"
    );
    assert_eq!(on_connection(&g), 1, "after 1 s idle the connection was closed and a new one opened");
}
