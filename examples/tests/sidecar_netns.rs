//! The sidecar capturing a pod's traffic both ways, in a network namespace
//! with iptables, as Istio's sidecar does. Needs root (`ip netns`,
//! `iptables`, running the proxy as UID 1337); CI runs as root.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Proc;

/// The pod's network namespace; deleting it removes its veth and rules.
struct Pod {
    ns: String,
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

use mesh_testkit::netns::{python as in_pod, run};

#[test]
fn sidecar_captures_a_pods_traffic_both_ways() {
    let uid = String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout).unwrap();
    assert_eq!(uid.trim(), "0", "this test needs root: ip netns, iptables, and running the proxy as UID 1337");
    let n = std::process::id() % 200 + 20;
    let (ns, vh, vp) = (format!("meshpod{n}"), format!("mvh{n}"), format!("mvp{n}"));
    let (host_ip, pod_ip, vip, db_vip) =
        (format!("10.77.{n}.1"), format!("10.77.{n}.2"), format!("10.96.{n}.10"), format!("10.96.{n}.11"));
    let _ = Command::new("ip").args(["netns", "del", &ns]).stderr(Stdio::null()).status();
    run(&["ip", "netns", "add", &ns]);
    let pod = Pod { ns: ns.clone() };
    run(&["ip", "link", "add", &vh, "type", "veth", "peer", "name", &vp]);
    run(&["ip", "link", "set", &vp, "netns", &ns]);
    run(&["ip", "addr", "add", &format!("{host_ip}/24"), "dev", &vh]);
    run(&["ip", "link", "set", &vh, "up"]);
    for args in [
        vec!["ip", "addr", "add", &format!("{pod_ip}/24"), "dev", &vp],
        vec!["ip", "link", "set", &vp, "up"],
        vec!["ip", "link", "set", "lo", "up"],
        vec!["ip", "route", "add", "default", "via", &host_ip],
    ] {
        let mut full = vec!["ip", "netns", "exec", &ns];
        full.extend(args.iter().map(|s| &**s));
        run(&full);
    }

    // reviews v1 and v2 run outside the pod; the app inside it.
    let host_backend = |version: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_demo-backend"))
            .args(["--version", version, "--host", &host_ip])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        (Proc(child), line.trim().rsplit(':').next().unwrap().parse::<u16>().unwrap())
    };
    let (_v1, p1) = host_backend("v1");
    let (_v2, p2) = host_backend("v2");
    let _app = Proc(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                env!("CARGO_BIN_EXE_demo-backend"),
                "--version",
                "app",
                "--host",
                "0.0.0.0",
                "--port",
                "8080",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // A port of the app no Service declares.
    let _undeclared = Proc(
        Command::new("ip")
            .args(["netns", "exec", &ns, env!("CARGO_BIN_EXE_demo-backend"), "--version", "side", "--host", "0.0.0.0"])
            .args(["--port", "8090"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // The proxy runs as UID 1337, so its files must be readable by it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sidecar = dir.path().join("sidecar");
    std::fs::copy(env!("CARGO_BIN_EXE_sidecar"), &sidecar).unwrap();
    std::fs::set_permissions(&sidecar, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o755)).unwrap();
    let slice = |name: &str, svc: &str, ip: &str, port: u16, pod: &str, labels: &str| {
        format!("---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: default, labels: {{kubernetes.io/service-name: {svc}}}}}\naddressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints:\n- addresses: [{ip}]\n  targetRef: {{kind: Pod, name: {pod}, namespace: default}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: default, labels: {labels}}}\nstatus: {{phase: Running, podIP: {ip}}}\n")
    };
    let mesh = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  clusterIP: {vip}\n  ports: [{{name: http, port: 9080}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: db, namespace: default}}\nspec:\n  clusterIP: {db_vip}\n  ports: [{{name: tcp-db, port: 5432}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: db, namespace: default, labels: {{kubernetes.io/service-name: db}}}}\naddressType: IPv4\nports: [{{name: tcp-db, port: {p1}}}]\nendpoints:\n- addresses: [{host_ip}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: productpage, namespace: default}}\nspec:\n  ports: [{{name: http, port: 8080}}]\n{}{}{}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  host: reviews\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {{host: reviews, subset: v2}}\n",
        slice("reviews-v1", "reviews", &host_ip, p1, "reviews-v1", "{app: reviews, version: v1}"),
        slice("reviews-v2", "reviews", &host_ip, p2, "reviews-v2", "{app: reviews, version: v2}"),
        slice("productpage", "productpage", &pod_ip, 8080, "productpage-v1", "{app: productpage, version: v1}"),
    );
    let mesh_file = config.join("mesh.yaml");
    std::fs::write(&mesh_file, mesh).unwrap();
    std::fs::set_permissions(&mesh_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let _sidecar = Proc(
        Command::new("ip")
            .args(["netns", "exec", &ns, "setpriv", "--reuid=1337", "--regid=1337", "--clear-groups"])
            .arg(&sidecar)
            .arg("--config")
            .arg(&config)
            .args(["--ip", &pod_ip, "--labels", "app=productpage,version=v1", "--name", "productpage-v1"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ready =
        "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:15000/ready', timeout=1).status)";
    assert!(
        common::wait_until(Duration::from_secs(20), || in_pod(&ns, ready).as_deref() == Ok("200")),
        "sidecar not ready"
    );
    run(&["ip", "netns", "exec", &ns, env!("CARGO_BIN_EXE_mesh-iptables"), "--apply"]);

    // Outbound: the app calls the reviews VIP; iptables sends it to 15001,
    // and the VirtualService sends it to v2.
    let call = format!("import urllib.request; r = urllib.request.urlopen('http://{vip}:9080/', timeout=5); print(r.headers['x-backend-version'])");
    for _ in 0..5 {
        assert_eq!(in_pod(&ns, &call).as_deref(), Ok("v2"), "outbound through the sidecar");
    }

    // A TCP service: the captured connection is relayed byte for byte (the
    // backend behind it happens to speak HTTP, which shows it arrived).
    let tcp = format!("import urllib.request; r = urllib.request.urlopen('http://{db_vip}:5432/', timeout=5); print(r.headers['x-backend-version'])");
    assert_eq!(in_pod(&ns, &tcp).as_deref(), Ok("v1"), "TCP through the sidecar");

    // Inbound: a caller outside the pod reaches the app through 15006.
    let r = common::parse(
        &mesh_testkit::http::raw(
            &format!("{pod_ip}:8080"),
            b"GET /headers HTTP/1.1\r\nHost: productpage\r\nConnection: close\r\n\r\n",
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!((r.status, r.header("x-backend-version")), (200, Some("app")));
    assert!(
        r.body.contains(&format!("x-forwarded-for: {host_ip}")),
        "the request went through the sidecar: {}",
        r.body
    );
    assert!(r.body.contains("x-request-id: "), "{}", r.body);

    // An app that sets http_proxy instead.
    let proxied = format!("import urllib.request as u; o = u.build_opener(u.ProxyHandler({{'http': 'http://127.0.0.1:15080'}})); print(o.open('http://{vip}:9080/', timeout=5).headers['x-backend-version'])");
    assert_eq!(in_pod(&ns, &proxied).as_deref(), Ok("v2"), "the explicit proxy port routes too");

    // A port no Service declares passes through (PERMISSIVE by default)...
    let plaintext = |port: u16| {
        let request = b"GET / HTTP/1.1\r\nHost: productpage\r\nConnection: close\r\n\r\n";
        mesh_testkit::http::raw(&format!("{pod_ip}:{port}"), request).ok().and_then(|r| common::parse(&r))
    };
    let side = plaintext(8090).map(|r| (r.status, r.header("x-backend-version").map(str::to_string)));
    assert_eq!(side, Some((200, Some("side".to_string()))), "passthrough to an undeclared port");
    // ...and under STRICT, plaintext is refused there as on declared ports.
    let strict = config.join("strict.yaml");
    std::fs::write(&strict, "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec:\n  mtls: {mode: STRICT}\n").unwrap();
    std::fs::set_permissions(&strict, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(
        common::wait_until(Duration::from_secs(20), || plaintext(8080).is_none()),
        "STRICT never reached the sidecar"
    );
    assert!(plaintext(8090).is_none(), "STRICT covers ports no Service declares");

    // The app calls an address the mesh does not know: passed on
    // (ALLOW_ANY, Istio's default)...
    let direct = format!("import urllib.request; r = urllib.request.urlopen('http://{host_ip}:{p1}/', timeout=5); print(r.headers['x-backend-version'])");
    assert_eq!(in_pod(&ns, &direct).as_deref(), Ok("v1"), "ALLOW_ANY: on to where it was going");
    // ...until a Sidecar says REGISTRY_ONLY: closed and counted as Istio's
    // BlackHoleCluster; a host the mesh does not know on a known HTTP port
    // is answered 502; services in the registry still route.
    let locked = config.join("sidecar.yaml");
    std::fs::write(&locked, "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: default}\nspec:\n  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n").unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(
        common::wait_until(Duration::from_secs(20), || in_pod(&ns, &direct).is_err()),
        "REGISTRY_ONLY never closed the unknown destination"
    );
    assert_eq!(in_pod(&ns, &call).as_deref(), Ok("v2"), "REGISTRY_ONLY: the registry's services still route");
    let unknown_host = format!("import urllib.request as u, urllib.error as e\ntry:\n  u.urlopen(u.Request('http://{vip}:9080/', headers={{'Host': 'api.example.com'}}), timeout=5); print(200)\nexcept e.HTTPError as x:\n  print(x.code)");
    assert_eq!(in_pod(&ns, &unknown_host).as_deref(), Ok("502"), "REGISTRY_ONLY: an unknown host");
    let metrics = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:15090/stats/prometheus', timeout=1).read().decode())";
    let series = in_pod(&ns, metrics).unwrap_or_default();
    assert!(
        series.lines().any(|l| l.starts_with("istio_tcp_connections_opened_total{")
            && l.contains("destination_service_name=\"BlackHoleCluster\"")
            && l.contains("response_flags=\"UH\"")),
        "the black hole is counted: {series}"
    );
    drop(pod);
}
