#!/usr/bin/env python3
"""Tracing benchmark: the load benchmark's gateway route with tracing off,
at Istio's default 1% and at 100% (spans to a Zipkin sink, a child process
that reads and drops them), and at 100% to a collector that is down (its
port closed), in one run. One machine: read the figures as ratios against
tracing off.

  python3 benches/load/tracebench.py [--duration 10] [--connections 50]
      [--rounds 3] [--gateway NAME=PATH]

Goals (issue 31): at most 3% of the throughput lost at 1%, at most 15% at
100%; a collector that is down costs the request path no more than one
that is up. The spans each run sent, dropped (queue full) and failed come from
the gateway's `mesh_tracing_spans_total`.

Needs what loadbench.py needs.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import loadbench as lb  # noqa: E402

SINK = """
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def do_POST(self):
        self.rfile.read(int(self.headers.get('content-length', 0)))
        self.send_response(202)
        self.send_header('content-length', '0')
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), Sink).serve_forever()
"""


def telemetry(percent):
    return f"""---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  tracing: [{{providers: [{{name: zipkin}}], randomSamplingPercentage: {percent}}}]
"""


def spans(metrics_port):
    """`mesh_tracing_spans_total` by result."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/stats/prometheus", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("mesh_tracing_spans_total{"):
            result = line.split('result="', 1)[1].split('"', 1)[0]
            out[result] = out.get(result, 0) + float(line.rsplit(" ", 1)[1])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gateway", default=os.path.join(lb.TARGET, lb.PROFILE, "gateway"))
    args = ap.parse_args()
    args.idle_connections = 0
    backend_bin = os.path.join(lb.TARGET, lb.PROFILE, "demo-backend")
    for b in (backend_bin, args.gateway):
        if not os.path.exists(b):
            sys.exit(f"{b} missing: {lb.BUILD}")
    work = tempfile.mkdtemp(prefix="tracebench-")
    sink_port, backend_port = lb.free_port(), lb.free_port()
    sink = lb.start([sys.executable, "-c", SINK, str(sink_port)])
    backend = lb.start(["taskset", "-c", "0", backend_bin, "--host", "127.0.0.1", "--port", str(backend_port), "--version", "v1"], env=lb.ONE_WORKER)
    mesh_configs = {}
    for name, zipkin_port in (("up", sink_port), ("down", lb.free_port())):
        mesh_configs[name] = os.path.join(work, f"mesh-config-{name}.yaml")
        open(mesh_configs[name], "w").write(f"extensionProviders:\n- name: zipkin\n  zipkin: {{service: 127.0.0.1, port: {zipkin_port}}}\n")
    counted = {}
    try:
        lb.wait_port(backend_port)
        lb.wait_port(sink_port)
        jobs = []
        cases = (("tracing off", None, "up"), ("tracing 1%", 1, "up"), ("tracing 100%", 100, "up"), ("100%, down", 100, "down"))
        for label, percent, collector in cases:
            d = tempfile.mkdtemp(dir=work)
            port, metrics_port = lb.free_port(), lb.free_port()
            lb.mesh_config(d, port, backend_port, lb.SMALL)
            if percent is not None:
                open(os.path.join(d, "mesh.yaml"), "a").write(telemetry(percent))
            cmd = lb.gateway_cmd(args.gateway, d, metrics_port) + ["--mesh-config", mesh_configs[collector]]
            launch = lb.launcher(cmd, port, env=dict(lb.ONE_WORKER, RUST_LOG="error"))

            def counting(launch=launch, label=label, metrics_port=metrics_port):
                pid, port, h2, done = launch()

                def stop():
                    try:
                        counted[label] = spans(metrics_port)
                    except OSError:
                        pass
                    done()
                return pid, port, h2, stop
            jobs.append((label, counting))
        per_round = {name: [] for name, _ in jobs}
        for n in range(args.rounds):
            for name, launch in jobs if n % 2 == 0 else jobs[::-1]:
                per_round[name].append(lb.measure(name, launch, "/hello", args, backend.pid, connections=False))
    finally:
        lb.stop(backend)
        lb.stop(sink)
        shutil.rmtree(work, ignore_errors=True)
    report(args, per_round, counted)


def report(args, per_round, counted):
    rows = {name: lb.median_row(rounds) for name, rounds in per_round.items()}
    off = rows["tracing off"]
    print(f"\n{args.connections} connections, {args.duration}s each, median of {args.rounds} rounds")
    print(f"{'':16}{'req/s':>10}{'/ off':>8}{'p50 ms':>9}{'p99 ms':>9}{'cpu µs/req':>11}{'h2 req/s':>10}{'/ off':>8}  spans (last run)")
    for name, r in rows.items():
        print(f"{name:16}{r['rps']:>10.0f}{r['rps'] / off['rps']:>8.3f}{r['p50']:>9.3f}{r['p99']:>9.3f}{r['cpu_per_1k'] * 1000:>11.2f}"
              f"{r['h2_rps']:>10.0f}{r['h2_rps'] / max(off['h2_rps'], 1):>8.3f}  {counted.get(name, {})}")
    print("\nreq/s by round: " + "; ".join(f"{name} " + " ".join(f"{r['rps']:.0f}" for r in rounds) for name, rounds in per_round.items()))


if __name__ == "__main__":
    main()
