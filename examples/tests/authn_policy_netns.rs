//! Istio's authentication-policy task, end to end: `foo` and `bar` have
//! sidecars, `legacy` has none; a `sleep` client and an `httpbin` server
//! in each, every one a pod (a network namespace on one bridge, iptables
//! capture for the sidecars), the control plane as the CA. For each of
//! the 9 pairs `sleep.X -> httpbin.Y`, on an HTTP/1.1 port (8000) and an
//! HTTP/2 one (8001), the HTTP code (000 for a reset), under: nothing
//! applied; mesh-wide STRICT; servers of an unexpected identity; STRICT
//! with auto mTLS off, then with a `*.local` ISTIO_MUTUAL DestinationRule;
//! an AuthorizationPolicy in foo allowing only namespace bar; a Sidecar
//! making foo REGISTRY_ONLY. httpbin also listens on a port no Service
//! declares (8090): reached through the proxies' passthrough both ways,
//! plaintext, so refused under STRICT (and from foo under REGISTRY_ONLY).
//!
//! Run three times: with mesh-proxy sidecars everywhere (reading the
//! config files), with Envoy 1.40 sidecars everywhere (all over xDS,
//! secrets over SDS), and with Envoy in foo next to mesh-proxy in bar, so
//! every pair of proxies meets under each policy: the codes must be the
//! same.
//! Needs root (`ip netns`, `iptables`, UID 1337); CI runs as root.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::netns::{get, in_ns, write_readable, Pod, World};
use common::secure::SecureBootstrap;
use common::{wait_until, Proc};
use mesh_testkit::netns::python;

const NAMESPACES: [&str; 3] = ["foo", "bar", "legacy"];
/// httpbin's ports: HTTP/1.1, and HTTP/2 between the sidecars.
const PORTS: [u16; 2] = [8000, 8001];
/// An httpbin port no Service declares: Istio's passthrough, outbound and
/// inbound, under the workload's PeerAuthentication.
const UNDECLARED: u16 = 8090;

/// The proxy a namespace's pods run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sidecar {
    MeshProxy,
    Envoy,
}

fn registry_yaml(httpbin_ips: &BTreeMap<&str, String>, sleep_ips: &BTreeMap<&str, String>) -> String {
    let ports = "[{name: http, port: 8000}, {name: http2, port: 8001}]";
    let mut y = String::new();
    for ns in NAMESPACES {
        let sidecar = if ns == "legacy" { "" } else { ", security.istio.io/tlsMode: istio" };
        y.push_str(&format!("---\napiVersion: v1\nkind: Service\nmetadata: {{name: httpbin, namespace: {ns}}}\nspec:\n  ports: {ports}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: httpbin, namespace: {ns}, labels: {{kubernetes.io/service-name: httpbin}}}}\naddressType: IPv4\nports: {ports}\nendpoints:\n- addresses: [{ip}]\n  targetRef: {{kind: Pod, name: httpbin, namespace: {ns}}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: httpbin, namespace: {ns}, labels: {{app: httpbin{sidecar}}}}}\nspec: {{serviceAccountName: httpbin}}\nstatus: {{phase: Running, podIP: {ip}}}\n", ip = httpbin_ips[ns]));
        y.push_str(&format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: sleep, namespace: {ns}, labels: {{app: sleep{sidecar}}}}}\nspec: {{serviceAccountName: sleep}}\nstatus: {{phase: Running, podIP: {ip}}}\n", ip = sleep_ips[ns]));
    }
    y
}

/// One sidecar pod: its namespace, app and network namespace.
#[derive(Clone, Copy)]
struct SidecarPod<'a> {
    ns: &'a str,
    app: &'a str,
    pod: &'a Pod,
}

/// What the sidecars are started with.
struct Setup {
    dir: PathBuf,
    node_ip: String,
    node_ns: String,
    /// Per namespace with sidecars.
    proxies: BTreeMap<&'static str, Sidecar>,
}

impl Setup {
    fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    /// mesh-proxy's flags: the config files, and the CA for its
    /// certificate (and `auto_off`'s MeshConfig).
    fn mesh_proxy(&self, p: SidecarPod<'_>, auto_off: bool) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &p.pod.ns, "setpriv", "--reuid=1337", "--regid=1337", "--clear-groups"])
            .arg(self.path("sidecar"))
            .arg("--config")
            .arg(self.path("config"))
            .args(["--ip", &p.pod.ip, "--labels", &format!("app={}", p.app), "--name", p.app, "--namespace", p.ns])
            .args(["--ca-address", &format!("{}:15012", self.node_ip), "--ca-root"])
            .arg(self.path("ca/root-cert.pem"))
            .arg("--token-file")
            .arg(self.path(&format!("{}-{}.tok", p.ns, p.app)))
            .args(["--service-account", p.app]);
        if auto_off {
            command.arg("--mesh-config").arg(self.path("mesh-auto-off.yaml"));
        }
        command.env("RUST_LOG", "warn").stdout(Stdio::null());
        command
    }

    /// Envoy on the control plane's secure port: the sample secure
    /// bootstrap as a sidecar of this pod, its own bootstrap token.
    fn envoy(&self, p: SidecarPod<'_>) -> Command {
        let node_id = format!("sidecar~{}~{}.{ns}~{ns}.svc.cluster.local", p.pod.ip, p.app, ns = p.ns);
        let (labels, token, root) =
            (format!("app: {}", p.app), format!("token-{}-{}", p.ns, p.app), self.path("ca/root-cert.pem"));
        let bootstrap = SecureBootstrap {
            node_id: &node_id,
            namespace: p.ns,
            labels: &labels,
            xds: (&self.node_ip, 15012),
            admin_port: 15000,
            token: &token,
            root: &root,
            api_type: "GRPC",
        }
        .render();
        let file = self.path(&format!("envoy-{}-{}.yaml", p.ns, p.app));
        write_readable(&file, &bootstrap);
        let log = std::fs::File::create(self.path(&format!("envoy-{}-{}.log", p.ns, p.app))).expect("a log file");
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &p.pod.ns, "setpriv", "--reuid=1337", "--regid=1337", "--clear-groups"])
            .arg(self.path("envoy"))
            .arg("-c")
            .arg(file)
            .args(["--disable-hot-restart", "--concurrency", "1", "-l", "warn"])
            // A connection opened before a policy changed keeps its filter
            // chain until drained (Istio runs Envoy with 45 s, gradual):
            // drained at once here, so the table settles within the wait.
            .args(["--drain-strategy", "immediate", "--drain-time-s", "2"])
            .stdout(Stdio::null())
            .stderr(log);
        command
    }

    /// The sidecars of foo and bar's pods, ready and holding a
    /// certificate; iptables capture set up first unless `captured`.
    fn start(&self, pods: &[SidecarPod<'_>], auto_off: bool, captured: bool) -> Vec<Proc> {
        let mut procs = Vec::new();
        for p in pods {
            // As Istio's init container does, before the proxy starts: a
            // connection the proxy opened before (its xDS stream) would
            // have its answers captured as inbound once the rules exist.
            if !captured {
                in_ns(&p.pod.ns, &[env!("CARGO_BIN_EXE_mesh-iptables"), "--apply"]);
            }
            let mut command = match self.proxies[p.ns] {
                Sidecar::MeshProxy => self.mesh_proxy(*p, auto_off),
                Sidecar::Envoy => self.envoy(*p),
            };
            procs.push(Proc(command.spawn().expect("a sidecar")));
        }
        let ready =
            "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:15000/ready', timeout=1).status)";
        let certified = "import urllib.request; print('spiffe://' in urllib.request.urlopen('http://127.0.0.1:15000/certs', timeout=1).read().decode())";
        for p in pods {
            assert!(
                wait_until(Duration::from_secs(30), || python(&p.pod.ns, ready).as_deref() == Ok("200")),
                "{:?} sidecar of {}/{} not ready",
                self.proxies[p.ns],
                p.ns,
                p.app
            );
            // Envoy holds (and lists) a certificate only while its config
            // uses one, and is not ready before it came.
            let holds = || python(&p.pod.ns, certified).as_deref() == Ok("True");
            let envoy = self.proxies[p.ns] == Sidecar::Envoy;
            assert!(envoy || wait_until(Duration::from_secs(10), holds), "no certificate in {}/{}", p.ns, p.app);
        }
        procs
    }

    /// The control plane in the node namespace: xDS, and the CA on the
    /// bridge; `mesh_config` its MeshConfig.
    fn control_plane(&self, mesh_config: Option<&Path>) -> Proc {
        let (ip, node_ns) = (&self.node_ip, &self.node_ns);
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", node_ns, env!("CARGO_BIN_EXE_control-plane"), "--config"])
            .arg(self.path("config"))
            .args(["--xds-listen", &format!("{ip}:15010"), "--debug", &format!("{ip}:15014")])
            .arg("--ca-dir")
            .arg(self.path("ca"))
            .args(["--ca-listen", &format!("{ip}:15012"), "--bootstrap-tokens"])
            .arg(self.path("tokens"))
            .env("RUST_LOG", "warn");
        if let Some(mesh) = mesh_config {
            command.arg("--mesh-config").arg(mesh);
        }
        let cp = Proc(command.spawn().expect("the control plane"));
        let ready = format!(
            "import urllib.request; print(urllib.request.urlopen('http://{ip}:15014/ready', timeout=1).status)"
        );
        assert!(
            wait_until(Duration::from_secs(20), || python(node_ns, &ready).as_deref() == Ok("200")),
            "control plane not ready"
        );
        std::fs::set_permissions(self.path("ca"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        cp
    }
}

/// The pods' httpbin apps, one demo-backend per port.
fn start_apps(httpbins: &BTreeMap<&str, Pod>) -> Vec<Proc> {
    let mut apps = Vec::new();
    for pod in httpbins.values() {
        for port in PORTS.into_iter().chain([UNDECLARED]) {
            let child = Command::new("ip")
                .args(["netns", "exec", &pod.ns, env!("CARGO_BIN_EXE_demo-backend"), "--version", "httpbin"])
                .args(["--host", "0.0.0.0", "--port", &port.to_string()])
                .stdout(Stdio::null())
                .spawn()
                .expect("httpbin");
            apps.push(Proc(child));
        }
    }
    apps
}

/// The files: the registry, tokens, the proxies' binaries, readable by
/// UID 1337.
fn write_files(dir: &Path, httpbins: &BTreeMap<&'static str, Pod>, sleeps: &BTreeMap<&'static str, Pod>) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let config = dir.join("config");
    std::fs::create_dir(&config).expect("a dir");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let ips = |pods: &BTreeMap<&'static str, Pod>| {
        pods.iter().map(|(k, p)| (*k, p.ip.clone())).collect::<BTreeMap<&str, String>>()
    };
    write_readable(&config.join("registry.yaml"), &registry_yaml(&ips(httpbins), &ips(sleeps)));
    let mut tokens = String::new();
    for ns in ["foo", "bar"] {
        for app in ["sleep", "httpbin"] {
            tokens.push_str(&format!("spiffe://cluster.local/ns/{ns}/sa/{app} token-{ns}-{app}\n"));
            write_readable(&dir.join(format!("{ns}-{app}.tok")), &format!("token-{ns}-{app}"));
        }
    }
    write_readable(&dir.join("tokens"), &tokens);
    for (name, bin) in
        [("sidecar", PathBuf::from(env!("CARGO_BIN_EXE_sidecar"))), ("envoy", mesh_testkit::envoy::binary())]
    {
        std::fs::copy(&bin, dir.join(name)).unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    write_readable(&dir.join("mesh-auto-off.yaml"), "enableAutoMtls: false\n");
}

/// The codes of every pair on every port, `X->Y:PORT`.
type Table = BTreeMap<String, String>;

fn table_of(sleeps: &BTreeMap<&str, Pod>, httpbins: &BTreeMap<&str, Pod>) -> Table {
    let mut codes = Table::new();
    for from in NAMESPACES {
        for to in NAMESPACES {
            for port in PORTS.into_iter().chain([UNDECLARED]) {
                let url = format!("http://{}:{port}/headers", httpbins[to].ip);
                let (code, _) = get(&sleeps[from].ns, &url, &format!("httpbin.{to}.svc.cluster.local:{port}"));
                codes.insert(format!("{from}->{to}:{port}"), code);
            }
        }
    }
    codes
}

/// `base` with the pairs `from -> to` (both declared ports) set to `code`.
fn with(base: &Table, froms: &[&str], tos: &[&str], code: &str) -> Table {
    let mut t = base.clone();
    for from in froms {
        for to in tos {
            for port in PORTS {
                t.insert(format!("{from}->{to}:{port}"), code.to_string());
            }
        }
    }
    t
}

/// `base` with every client's call of `tos` on the undeclared port set to
/// `code`.
fn undeclared(base: &Table, tos: &[&str], code: &str) -> Table {
    let mut t = base.clone();
    for from in NAMESPACES {
        for to in tos {
            t.insert(format!("{from}->{to}:{UNDECLARED}"), code.to_string());
        }
    }
    t
}

/// Waits (up to 30 s) for the table to become `expected`; a clear
/// difference if it does not.
fn expect_table(
    what: &str,
    expected: &Table,
    sleeps: &BTreeMap<&str, Pod>,
    httpbins: &BTreeMap<&str, Pod>,
    logs: &dyn Fn() -> String,
) {
    let mut last = Table::new();
    let settled = wait_until(Duration::from_secs(30), || {
        last = table_of(sleeps, httpbins);
        last == *expected
    });
    if !settled {
        // Each differing pair again, with what its answer said.
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(k, v)| last.get(*k) != Some(v))
            .map(|(k, v)| {
                let (pair, port) = k.split_once(':').unwrap_or((k, ""));
                let (from, to) = pair.split_once("->").unwrap_or((pair, ""));
                let url = format!("http://{}:{port}/headers", httpbins[to].ip);
                let (code, body) = get(&sleeps[from].ns, &url, &format!("httpbin.{to}.svc.cluster.local:{port}"));
                format!("{k}: {code} (expected {v}) {}", body.lines().next().unwrap_or(""))
            })
            .collect();
        panic!("{what}: {} pairs differ:\n{}\n{}", wrong.len(), wrong.join("\n"), logs());
    }
}

fn istio_authentication_policy_task(in_foo: Sidecar, in_bar: Sidecar) {
    let uid = String::from_utf8(Command::new("id").arg("-u").output().expect("id").stdout).unwrap_or_default();
    assert_eq!(uid.trim(), "0", "this test needs root: ip netns, iptables, and running the proxy as UID 1337");
    let mut world = World::new();
    let mut sleeps = BTreeMap::new();
    let mut httpbins = BTreeMap::new();
    for (i, ns) in NAMESPACES.iter().enumerate() {
        sleeps.insert(*ns, world.pod(&format!("s{i}"), 10 + i as u8));
        httpbins.insert(*ns, world.pod(&format!("h{i}"), 20 + i as u8));
    }
    let _apps = start_apps(&httpbins);
    let dir = tempfile::tempdir().expect("a temp dir");
    write_files(dir.path(), &httpbins, &sleeps);
    let setup = Setup {
        dir: dir.path().to_path_buf(),
        node_ip: world.node_ip(),
        node_ns: world.node.clone(),
        proxies: [("foo", in_foo), ("bar", in_bar)].into(),
    };
    let mut cp = setup.control_plane(None);
    let sidecar_pods: Vec<SidecarPod<'_>> = ["foo", "bar"]
        .iter()
        .flat_map(|ns| {
            ["sleep", "httpbin"].map(|app| SidecarPod {
                ns,
                app,
                pod: if app == "sleep" { &sleeps[ns] } else { &httpbins[ns] },
            })
        })
        .collect();
    let mut sidecars = setup.start(&sidecar_pods, false, false);
    let logs = || envoy_logs(&setup, &sidecar_pods);
    let expect = |what: &str, expected: &Table| expect_table(what, expected, &sleeps, &httpbins, &logs);

    // 1. Nothing applied: PERMISSIVE, auto mTLS. Sidecar to sidecar is
    // mTLS: httpbin sees the client's identity.
    let all_200 = undeclared(&with(&Table::new(), &NAMESPACES, &NAMESPACES, "200"), &NAMESPACES, "200");
    expect("nothing applied", &all_200);
    for (from, to) in [("foo", "bar"), ("bar", "foo")] {
        let url = format!("http://{}:8000/headers", httpbins[to].ip);
        let (_, body) = get(&sleeps[from].ns, &url, &format!("httpbin.{to}.svc.cluster.local:8000"));
        assert!(
            body.contains(&format!("x-forwarded-client-cert: By=spiffe://cluster.local/ns/{to}/sa/httpbin;"))
                && body.contains(&format!("URI=spiffe://cluster.local/ns/{from}/sa/sleep")),
            "{from} -> {to}: {body}"
        );
    }
    let url = format!("http://{}:8000/headers", httpbins["foo"].ip);
    let (_, body) = get(&sleeps["legacy"].ns, &url, "httpbin.foo.svc.cluster.local:8000");
    assert!(!body.contains("x-forwarded-client-cert"), "plaintext from legacy: {body}");
    if in_bar == Sidecar::MeshProxy {
        mesh_proxy_metrics(&sleeps, &httpbins, in_foo);
    }

    // 2. Mesh-wide STRICT.
    let strict = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec:\n  mtls: {mode: STRICT}\n";
    write_readable(&setup.path("config/strict.yaml"), strict);
    // The undeclared port is plaintext from every client (Istio's
    // PassthroughCluster has no TLS): refused in foo and bar.
    let strict_table = undeclared(&with(&all_200, &["legacy"], &["foo", "bar"], "000"), &["foo", "bar"], "000");
    expect("mesh-wide STRICT", &strict_table);

    // Secure naming: a server that is not the service account the client
    // expects is refused by either proxy as the client.
    let mut wrong = String::new();
    for ns in ["foo", "bar"] {
        wrong.push_str(&format!("---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: httpbin, namespace: {ns}}}\nspec:\n  host: httpbin.{ns}.svc.cluster.local\n  trafficPolicy:\n    tls: {{mode: ISTIO_MUTUAL, subjectAltNames: [\"spiffe://cluster.local/ns/{ns}/sa/not-httpbin\"]}}\n"));
    }
    write_readable(&setup.path("config/wrong-names.yaml"), &wrong);
    expect("servers of an unexpected identity", &with(&strict_table, &["foo", "bar"], &["foo", "bar"], "503"));
    std::fs::remove_file(setup.path("config/wrong-names.yaml")).expect("removed");
    expect("mesh-wide STRICT again", &strict_table);

    // 3. Istio's older table: auto mTLS off (the sidecar's MeshConfig for
    // mesh-proxy, the control plane's for Envoy).
    drop(sidecars);
    if in_foo == Sidecar::Envoy || in_bar == Sidecar::Envoy {
        drop(cp);
        cp = setup.control_plane(Some(&setup.path("mesh-auto-off.yaml")));
    }
    sidecars = setup.start(&sidecar_pods, true, true);
    let off_table = with(&strict_table, &["foo", "bar"], &["foo", "bar"], "503");
    expect("STRICT, auto mTLS off", &off_table);
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: default, namespace: istio-system}\nspec:\n  host: '*.local'\n  trafficPolicy:\n    tls: {mode: ISTIO_MUTUAL}\n";
    write_readable(&setup.path("config/dr.yaml"), dr);
    expect("STRICT, auto mTLS off, ISTIO_MUTUAL everywhere", &with(&strict_table, &["foo", "bar"], &["legacy"], "503"));
    std::fs::remove_file(setup.path("config/dr.yaml")).expect("removed");
    drop(sidecars);
    if in_foo == Sidecar::Envoy || in_bar == Sidecar::Envoy {
        drop(cp);
        cp = setup.control_plane(None);
    }
    let _sidecars = setup.start(&sidecar_pods, false, true);
    expect("mesh-wide STRICT, auto mTLS back on", &strict_table);

    // 4. Only bar may call foo.
    let policy = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: only-bar, namespace: foo}\nspec:\n  action: ALLOW\n  rules: [{from: [{source: {namespaces: [bar]}}]}]\n";
    write_readable(&setup.path("config/authz.yaml"), policy);
    let mut authz_table = with(&strict_table, &["foo"], &["foo"], "403");
    authz_table = with(&authz_table, &["legacy"], &["foo"], "000");
    expect("only bar may call foo", &authz_table);
    let (code, body) = get(&sleeps["foo"].ns, &url, "httpbin.foo.svc.cluster.local:8000");
    assert_eq!((code.as_str(), body.trim()), ("403", "RBAC: access denied"), "foo -> foo");

    // 5. foo's sidecars only reach the registry (REGISTRY_ONLY): legacy's
    // undeclared port is closed to them; the services still answer.
    let sidecar = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: foo}\nspec:\n  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n";
    write_readable(&setup.path("config/sidecar.yaml"), sidecar);
    let mut locked = authz_table.clone();
    locked.insert(format!("foo->legacy:{UNDECLARED}"), "000".into());
    expect("foo REGISTRY_ONLY", &locked);
    drop(cp);
}

/// httpbin.bar's mesh-proxy reports the mTLS request from foo's sleep
/// (whichever proxy foo runs), and foo's the plaintext one from legacy.
fn mesh_proxy_metrics(sleeps: &BTreeMap<&str, Pod>, httpbins: &BTreeMap<&str, Pod>, in_foo: Sidecar) {
    let metrics = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:15090/stats/prometheus', timeout=1).read().decode())";
    let series = |pod: &Pod| python(&pod.ns, metrics).unwrap_or_default();
    let bar = series(&httpbins["bar"]);
    assert!(
        bar.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("reporter=\"destination\"")
            && l.contains("source_principal=\"spiffe://cluster.local/ns/foo/sa/sleep\"")
            && l.contains("destination_principal=\"spiffe://cluster.local/ns/bar/sa/httpbin\"")
            && l.contains("connection_security_policy=\"mutual_tls\"")),
        "{bar}"
    );
    if in_foo != Sidecar::MeshProxy {
        return;
    }
    let sleep_foo = series(&sleeps["foo"]);
    assert!(
        sleep_foo.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("reporter=\"source\"")
            && l.contains("source_principal=\"spiffe://cluster.local/ns/foo/sa/sleep\"")
            && l.contains("destination_principal=\"spiffe://cluster.local/ns/bar/sa/httpbin\"")),
        "{sleep_foo}"
    );
    let httpbin_foo = series(&httpbins["foo"]);
    assert!(
        httpbin_foo.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("connection_security_policy=\"none\"")
            && l.contains("source_principal=\"unknown\"")),
        "{httpbin_foo}"
    );
}

/// The Envoy sidecars' log tails and inbound clusters, for a failure's
/// message.
fn envoy_logs(setup: &Setup, pods: &[SidecarPod<'_>]) -> String {
    let syncz = format!(
        "import urllib.request; print(urllib.request.urlopen('http://{}:15014/debug/syncz', timeout=1).read().decode())",
        setup.node_ip
    );
    let syncz = python(&setup.node_ns, &syncz).unwrap_or_else(|e| e);
    let mut out = format!("control plane's syncz:\n{syncz}\n");
    let clusters = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:15000/clusters', timeout=1).read().decode())";
    for p in pods.iter().filter(|p| setup.proxies[p.ns] == Sidecar::Envoy) {
        let log = std::fs::read_to_string(setup.path(&format!("envoy-{}-{}.log", p.ns, p.app))).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        let listeners = "import urllib.request, json\nd = json.loads(urllib.request.urlopen('http://127.0.0.1:15000/config_dump?resource=dynamic_listeners', timeout=1).read())\nfor l in d['configs']:\n  st = l.get('active_state', {}).get('listener', {})\n  if st.get('name') != 'virtualInbound': continue\n  for c in st.get('filter_chains', []):\n    print(json.dumps(c.get('filter_chain_match')), [f['name'] for f in c['filters']], [h.get('name') for f in c['filters'] for h in f.get('typed_config', {}).get('http_filters', [])])";
        out.push_str(&format!("virtualInbound chains:\n{}\n", python(&p.pod.ns, listeners).unwrap_or_else(|e| e)));
        let inbound = python(&p.pod.ns, clusters).unwrap_or_default();
        let inbound: Vec<&str> =
            inbound.lines().filter(|l| l.starts_with("inbound") && !l.contains("::observability_name")).collect();
        out.push_str(&format!(
            "--- Envoy {}/{}: log\n{}\ninbound clusters:\n{}\n",
            p.ns,
            p.app,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            inbound.join("\n")
        ));
    }
    out
}

#[test]
fn istio_authentication_policy_task_with_mesh_proxy_sidecars() {
    istio_authentication_policy_task(Sidecar::MeshProxy, Sidecar::MeshProxy);
}

#[test]
fn istio_authentication_policy_task_with_envoy_and_mesh_proxy_sidecars() {
    istio_authentication_policy_task(Sidecar::Envoy, Sidecar::MeshProxy);
}

#[test]
fn istio_authentication_policy_task_with_envoy_sidecars() {
    istio_authentication_policy_task(Sidecar::Envoy, Sidecar::Envoy);
}
