//! Istio's authentication-policy task, end to end: `foo` and `bar` have
//! sidecars, `legacy` has none; a `sleep` client and an `httpbin` server
//! in each, every one a pod (a network namespace on one bridge, iptables
//! capture for the sidecars), the control plane as the CA. For each of
//! the 9 pairs `sleep.X -> httpbin.Y:8000` the HTTP code (000 for a
//! reset), under: nothing applied; mesh-wide STRICT; STRICT with auto
//! mTLS off, then with a `*.local` ISTIO_MUTUAL DestinationRule; an
//! AuthorizationPolicy in foo allowing only namespace bar.
//! Needs root (`ip netns`, `iptables`, UID 1337); CI runs as root.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{wait_until, Proc};
use mesh_testkit::netns::{python, run};

const NAMESPACES: [&str; 3] = ["foo", "bar", "legacy"];

fn in_ns(ns: &str, args: &[&str]) {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    run(&full);
}

/// A GET from inside `ns`: the status (000 when the connection failed),
/// and the body.
fn get(ns: &str, url: &str, host: &str) -> (String, String) {
    let code = format!(
        "import urllib.request, urllib.error\nreq = urllib.request.Request('{url}', headers={{'Host': '{host}'}})\ntry:\n    r = urllib.request.urlopen(req, timeout=5); print(r.status); print(r.read().decode())\nexcept urllib.error.HTTPError as e:\n    print(e.code); print(e.read().decode())\nexcept Exception:\n    print('000')"
    );
    let out = python(ns, &code).unwrap_or_else(|e| format!("000\n{e}"));
    let (status, body) = out.split_once('\n').unwrap_or((&out, ""));
    (status.trim().to_string(), body.to_string())
}

/// The namespaces and links of the test; all deleted when dropped.
struct Network {
    names: Vec<String>,
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in self.names.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

struct Pod {
    ns: String,
    ip: String,
}

/// A world of pods on one bridge, in a `node` namespace that also runs
/// the control plane.
struct World {
    net: Network,
    prefix: String,
    subnet: String,
    node: String,
}

impl World {
    fn new() -> World {
        let n = std::process::id() % 150 + 50;
        let prefix = format!("mauth{n}");
        let node = format!("{prefix}node");
        let _ = Command::new("ip").args(["netns", "del", &node]).stderr(Stdio::null()).status();
        run(&["ip", "netns", "add", &node]);
        let world = World { net: Network { names: vec![node.clone()] }, prefix, subnet: format!("10.81.{n}"), node };
        in_ns(&world.node, &["ip", "link", "add", "br0", "type", "bridge"]);
        in_ns(&world.node, &["ip", "addr", "add", &format!("{}.1/24", world.subnet), "dev", "br0"]);
        in_ns(&world.node, &["ip", "link", "set", "br0", "up"]);
        in_ns(&world.node, &["ip", "link", "set", "lo", "up"]);
        world
    }

    fn node_ip(&self) -> String {
        format!("{}.1", self.subnet)
    }

    /// A pod namespace with address `.host` on the bridge.
    fn pod(&mut self, name: &str, host: u8) -> Pod {
        let ns = format!("{}{name}", self.prefix);
        let _ = Command::new("ip").args(["netns", "del", &ns]).stderr(Stdio::null()).status();
        run(&["ip", "netns", "add", &ns]);
        self.net.names.push(ns.clone());
        let (outer, inner) = (
            format!("{}o{host}", &self.prefix[..9.min(self.prefix.len())]),
            format!("{}i{host}", &self.prefix[..9.min(self.prefix.len())]),
        );
        run(&["ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner]);
        run(&["ip", "link", "set", &outer, "netns", &self.node]);
        run(&["ip", "link", "set", &inner, "netns", &ns]);
        in_ns(&self.node, &["ip", "link", "set", &outer, "master", "br0"]);
        in_ns(&self.node, &["ip", "link", "set", &outer, "up"]);
        let ip = format!("{}.{host}", self.subnet);
        in_ns(&ns, &["ip", "addr", "add", &format!("{ip}/24"), "dev", &inner]);
        in_ns(&ns, &["ip", "link", "set", &inner, "up"]);
        in_ns(&ns, &["ip", "link", "set", "lo", "up"]);
        Pod { ns, ip }
    }
}

/// A file the proxies (UID 1337) can read.
fn write_readable(path: &Path, text: &str) {
    std::fs::write(path, text).expect("written");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
}

fn registry_yaml(httpbin_ips: &BTreeMap<&str, String>, sleep_ips: &BTreeMap<&str, String>) -> String {
    let mut y = String::new();
    for ns in NAMESPACES {
        let sidecar = if ns == "legacy" { "" } else { ", security.istio.io/tlsMode: istio" };
        y.push_str(&format!("---\napiVersion: v1\nkind: Service\nmetadata: {{name: httpbin, namespace: {ns}}}\nspec:\n  ports: [{{name: http, port: 8000}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: httpbin, namespace: {ns}, labels: {{kubernetes.io/service-name: httpbin}}}}\naddressType: IPv4\nports: [{{name: http, port: 8000}}]\nendpoints:\n- addresses: [{ip}]\n  targetRef: {{kind: Pod, name: httpbin, namespace: {ns}}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: httpbin, namespace: {ns}, labels: {{app: httpbin{sidecar}}}}}\nspec: {{serviceAccountName: httpbin}}\nstatus: {{phase: Running, podIP: {ip}}}\n", ip = httpbin_ips[ns]));
        y.push_str(&format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: sleep, namespace: {ns}, labels: {{app: sleep{sidecar}}}}}\nspec: {{serviceAccountName: sleep}}\nstatus: {{phase: Running, podIP: {ip}}}\n", ip = sleep_ips[ns]));
    }
    y
}

/// The running sidecars: killed (by PID, waited on) when dropped.
struct Sidecars {
    _procs: Vec<Proc>,
}

/// The sidecars of foo and bar's pods, with `extra` flags; ready, and
/// capturing.
fn start_sidecars(
    pods: &[(&str, &str, &Pod)],
    bin: &Path,
    config: &Path,
    identity_flags: &dyn Fn(&str, &str) -> Vec<String>,
    captured: bool,
) -> Sidecars {
    let mut procs = Vec::new();
    for (ns, app, pod) in pods {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &pod.ns, "setpriv", "--reuid=1337", "--regid=1337", "--clear-groups"])
            .arg(bin)
            .arg("--config")
            .arg(config)
            .args(["--ip", &pod.ip, "--labels", &format!("app={app}"), "--name", app, "--namespace", ns])
            .args(identity_flags(ns, app))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        procs.push(Proc(command.spawn().expect("a sidecar")));
    }
    let ready =
        "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:15000/ready', timeout=1).status)";
    let certified = "import urllib.request; print('spiffe://' in urllib.request.urlopen('http://127.0.0.1:15000/certs', timeout=1).read().decode())";
    for (_, _, pod) in pods {
        assert!(
            wait_until(Duration::from_secs(30), || python(&pod.ns, ready).as_deref() == Ok("200")),
            "sidecar in {} not ready",
            pod.ns
        );
        assert!(
            wait_until(Duration::from_secs(10), || python(&pod.ns, certified).as_deref() == Ok("True")),
            "no certificate in {}",
            pod.ns
        );
        if !captured {
            in_ns(&pod.ns, &[env!("CARGO_BIN_EXE_mesh-iptables"), "--apply"]);
        }
    }
    Sidecars { _procs: procs }
}

/// The config version every sidecar serves.
fn versions(pods: &[(&str, &str, &Pod)]) -> Vec<String> {
    let code = "import urllib.request, json; print(json.loads(urllib.request.urlopen('http://127.0.0.1:15000/config_dump', timeout=1).read())['version'])";
    pods.iter().map(|(_, _, pod)| python(&pod.ns, code).unwrap_or_default()).collect()
}

/// Writes `file` and waits until each of `pods` (those whose config it
/// changes) applied a new config.
fn apply(config: &Path, file: &str, text: &str, pods: &[(&str, &str, &Pod)]) {
    let before = versions(pods);
    write_readable(&config.join(file), text);
    assert!(
        wait_until(Duration::from_secs(15), || versions(pods).iter().zip(&before).all(|(now, was)| now != was)),
        "{file} was not applied by every sidecar"
    );
}

#[test]
fn istio_authentication_policy_task() {
    let uid = String::from_utf8(Command::new("id").arg("-u").output().expect("id").stdout).unwrap_or_default();
    assert_eq!(uid.trim(), "0", "this test needs root: ip netns, iptables, and running the proxy as UID 1337");
    let mut world = World::new();
    let mut sleeps = BTreeMap::new();
    let mut httpbins = BTreeMap::new();
    for (i, ns) in NAMESPACES.iter().enumerate() {
        sleeps.insert(*ns, world.pod(&format!("s{i}"), 10 + i as u8));
        httpbins.insert(*ns, world.pod(&format!("h{i}"), 20 + i as u8));
    }
    let _apps: Vec<Proc> = httpbins
        .values()
        .map(|pod| {
            let child = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &pod.ns,
                    env!("CARGO_BIN_EXE_demo-backend"),
                    "--version",
                    "httpbin",
                    "--host",
                    "0.0.0.0",
                    "--port",
                    "8000",
                ])
                .stdout(Stdio::null())
                .spawn()
                .expect("httpbin");
            Proc(child)
        })
        .collect();

    // Files: the registry, tokens, the proxies' binary, readable by 1337.
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = |p: &str| -> PathBuf { dir.path().join(p) };
    let config = path("config");
    std::fs::create_dir(&config).expect("a dir");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let ips =
        |pods: &BTreeMap<&'static str, Pod>| pods.iter().map(|(k, p)| (*k, p.ip.clone())).collect::<BTreeMap<_, _>>();
    write_readable(&config.join("registry.yaml"), &registry_yaml(&ips(&httpbins), &ips(&sleeps)));
    let mut tokens = String::new();
    for ns in ["foo", "bar"] {
        for app in ["sleep", "httpbin"] {
            tokens.push_str(&format!("spiffe://cluster.local/ns/{ns}/sa/{app} token-{ns}-{app}\n"));
            write_readable(&path(&format!("{ns}-{app}.tok")), &format!("token-{ns}-{app}"));
        }
    }
    write_readable(&path("tokens"), &tokens);
    let sidecar_bin = path("sidecar");
    std::fs::copy(env!("CARGO_BIN_EXE_sidecar"), &sidecar_bin).expect("copied");
    std::fs::set_permissions(&sidecar_bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    write_readable(&path("mesh-auto-off.yaml"), "enableAutoMtls: false\n");

    // The control plane, in the node namespace: the CA on the bridge.
    let node_ip = world.node_ip();
    let ca_dir = path("ca");
    let _cp = Proc(
        Command::new("ip")
            .args(["netns", "exec", &world.node, env!("CARGO_BIN_EXE_control-plane"), "--config"])
            .arg(&config)
            .args(["--xds-listen", &format!("{node_ip}:15010"), "--debug", &format!("{node_ip}:15014")])
            .arg("--ca-dir")
            .arg(&ca_dir)
            .args(["--ca-listen", &format!("{node_ip}:15012"), "--bootstrap-tokens"])
            .arg(path("tokens"))
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("the control plane"),
    );
    let ready = format!(
        "import urllib.request; print(urllib.request.urlopen('http://{node_ip}:15014/ready', timeout=1).status)"
    );
    assert!(
        wait_until(Duration::from_secs(20), || python(&world.node, &ready).as_deref() == Ok("200")),
        "control plane not ready"
    );
    std::fs::set_permissions(&ca_dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let sidecar_pods: Vec<(&str, &str, &Pod)> =
        ["foo", "bar"].iter().flat_map(|ns| [(*ns, "sleep", &sleeps[ns]), (*ns, "httpbin", &httpbins[ns])]).collect();
    let root = ca_dir.join("root-cert.pem");
    let ca_address = format!("{node_ip}:15012");
    let identity = |auto_off: bool| {
        let (root, ca_address, token_dir, mesh) =
            (root.clone(), ca_address.clone(), dir.path().to_path_buf(), path("mesh-auto-off.yaml"));
        move |ns: &str, app: &str| {
            let mut flags = vec![
                "--ca-address".to_string(),
                ca_address.clone(),
                "--ca-root".into(),
                root.to_string_lossy().into_owned(),
                "--token-file".into(),
                token_dir.join(format!("{ns}-{app}.tok")).to_string_lossy().into_owned(),
                "--service-account".into(),
                app.into(),
            ];
            if auto_off {
                flags.extend(["--mesh-config".into(), mesh.to_string_lossy().into_owned()]);
            }
            flags
        }
    };
    let mut sidecars = start_sidecars(&sidecar_pods, &sidecar_bin, &config, &identity(false), false);

    // The 9 pairs' codes, X -> Y.
    let table = || -> BTreeMap<String, String> {
        let mut codes = BTreeMap::new();
        for from in NAMESPACES {
            for to in NAMESPACES {
                let url = format!("http://{}:8000/headers", httpbins[to].ip);
                let (code, _) = get(&sleeps[from].ns, &url, &format!("httpbin.{to}.svc.cluster.local:8000"));
                codes.insert(format!("{from}->{to}"), code);
            }
        }
        codes
    };
    let mut all_200 = BTreeMap::new();
    for from in NAMESPACES {
        for to in NAMESPACES {
            all_200.insert(format!("{from}->{to}"), "200".to_string());
        }
    }

    // 1. Nothing applied: PERMISSIVE, auto mTLS. Sidecar to sidecar is
    // mTLS: httpbin sees the client's identity.
    assert_eq!(table(), all_200, "nothing applied");
    let (_, body) = get(
        &sleeps["foo"].ns,
        &format!("http://{}:8000/headers", httpbins["bar"].ip),
        "httpbin.bar.svc.cluster.local:8000",
    );
    assert!(
        body.contains("x-forwarded-client-cert: By=spiffe://cluster.local/ns/bar/sa/httpbin;")
            && body.contains("URI=spiffe://cluster.local/ns/foo/sa/sleep"),
        "{body}"
    );
    let (_, body) = get(
        &sleeps["legacy"].ns,
        &format!("http://{}:8000/headers", httpbins["foo"].ip),
        "httpbin.foo.svc.cluster.local:8000",
    );
    assert!(!body.contains("x-forwarded-client-cert"), "plaintext from legacy: {body}");
    // httpbin.bar's sidecar reports the mTLS request from foo's sleep, and
    // foo's the plaintext one from legacy.
    let metrics = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:15090/stats/prometheus', timeout=1).read().decode())";
    let series = |ns: &str| python(&httpbins[ns].ns, metrics).unwrap_or_default();
    let bar = series("bar");
    assert!(
        bar.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("reporter=\"destination\"")
            && l.contains("source_principal=\"spiffe://cluster.local/ns/foo/sa/sleep\"")
            && l.contains("destination_principal=\"spiffe://cluster.local/ns/bar/sa/httpbin\"")
            && l.contains("connection_security_policy=\"mutual_tls\"")),
        "{bar}"
    );
    let sleep_foo = python(&sleeps["foo"].ns, metrics).unwrap_or_default();
    assert!(
        sleep_foo.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("reporter=\"source\"")
            && l.contains("source_principal=\"spiffe://cluster.local/ns/foo/sa/sleep\"")
            && l.contains("destination_principal=\"spiffe://cluster.local/ns/bar/sa/httpbin\"")),
        "{sleep_foo}"
    );
    let foo = series("foo");
    assert!(
        foo.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("connection_security_policy=\"none\"")
            && l.contains("source_principal=\"unknown\"")),
        "{foo}"
    );

    // 2. Mesh-wide STRICT.
    let strict = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec:\n  mtls: {mode: STRICT}\n";
    let servers: Vec<(&str, &str, &Pod)> =
        sidecar_pods.iter().copied().filter(|(_, app, _)| *app == "httpbin").collect();
    apply(&config, "strict.yaml", strict, &servers);
    let mut strict_table = all_200.clone();
    for to in ["foo", "bar"] {
        strict_table.insert(format!("legacy->{to}"), "000".into());
    }
    assert_eq!(table(), strict_table, "mesh-wide STRICT");

    // 3. Istio's older table: auto mTLS off.
    drop(sidecars);
    sidecars = start_sidecars(&sidecar_pods, &sidecar_bin, &config, &identity(true), true);
    let mut off_table = strict_table.clone();
    for from in ["foo", "bar"] {
        for to in ["foo", "bar"] {
            off_table.insert(format!("{from}->{to}"), "503".into());
        }
    }
    assert_eq!(table(), off_table, "STRICT, auto mTLS off");
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: default, namespace: istio-system}\nspec:\n  host: '*.local'\n  trafficPolicy:\n    tls: {mode: ISTIO_MUTUAL}\n";
    apply(&config, "dr.yaml", dr, &sidecar_pods);
    let mut dr_table = strict_table.clone();
    for from in ["foo", "bar"] {
        dr_table.insert(format!("{from}->legacy"), "503".into());
    }
    assert_eq!(table(), dr_table, "STRICT, auto mTLS off, ISTIO_MUTUAL everywhere");
    std::fs::remove_file(config.join("dr.yaml")).expect("removed");
    drop(sidecars);
    let _sidecars = start_sidecars(&sidecar_pods, &sidecar_bin, &config, &identity(false), true);

    // 4. Only bar may call foo.
    let policy = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: only-bar, namespace: foo}\nspec:\n  action: ALLOW\n  rules: [{from: [{source: {namespaces: [bar]}}]}]\n";
    let in_foo: Vec<(&str, &str, &Pod)> = sidecar_pods.iter().copied().filter(|(ns, _, _)| *ns == "foo").collect();
    apply(&config, "authz.yaml", policy, &in_foo);
    let url = format!("http://{}:8000/headers", httpbins["foo"].ip);
    assert_eq!(get(&sleeps["bar"].ns, &url, "httpbin.foo.svc.cluster.local:8000").0, "200", "bar -> foo");
    let (code, body) = get(&sleeps["foo"].ns, &url, "httpbin.foo.svc.cluster.local:8000");
    assert_eq!((code.as_str(), body.trim()), ("403", "RBAC: access denied"), "foo -> foo");
}
