#!/usr/bin/env python3
"""Writes examples/gateway.order: the gateway's functions that run at
startup and under load, hottest first, for the linker to lay out side by
side (examples/build.rs passes it as --symbol-ordering-file).

  python3 benches/load/orderfile.py [--gateway PATH] [--out PATH]

Why: the kernel maps a binary's code in 64 KiB chunks around each page
touched, so the 1,600 functions that run, spread over 16 MB of .text, kept
7-8 MB of it resident. Packed together they fit in under 3 MB.

How: the benchmarked gateway runs under `valgrind --tool=callgrind` on the load
benchmark's small config through startup, wrk (HTTP/1.1) and h2load (h2c)
load, a metrics scrape and a shutdown; every function of the binary that
ran is listed by its self cost. Symbol names carry the toolchain's and the
dependencies' hashes, and generic or LTO-local functions' names change
with the code around them: regenerate after a toolchain or dependency
upgrade or a change to code that runs at startup or per request
(loadbench.py prints how many names the binary still has; a stale file
does no harm beyond idle RSS: names it lacks keep the default layout).

Needs the benchmarked build (`loadbench.BUILD`),
valgrind, wrk and h2load.
"""
import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import loadbench as lb  # noqa: E402


def self_costs(callgrind_out, binary):
    """Self cost (instructions) by mangled name of each function of
    `binary` that ran. Expects --compress-strings=no: every `ob=`/`fn=`
    line carries its name. A cost line after `calls=` is the callee's
    inclusive cost, not the caller's own."""
    costs = collections.Counter()
    obj = fn = None
    skip_next = False
    for line in open(callgrind_out):
        if skip_next:
            skip_next = False
            continue
        if line.startswith("ob="):
            obj = line[3:].strip()
        elif line.startswith("fn="):
            fn = line[3:].strip()
        elif line.startswith("calls="):
            skip_next = True
        elif line[:1].isdigit() or line[:1] in "+-*":
            if fn and obj and os.path.realpath(obj) == binary:
                costs[fn] += int(line.split()[-1])
    return costs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", default=os.path.join(lb.TARGET, lb.PROFILE, "gateway"))
    ap.add_argument("--out", default=lb.ORDER_FILE)
    args = ap.parse_args()
    binary = os.path.realpath(args.gateway)
    backend_bin = os.path.join(lb.TARGET, lb.PROFILE, "demo-backend")
    for b in (binary, backend_bin):
        if not os.path.exists(b):
            sys.exit(f"{b} missing: {lb.BUILD}")
    missing = [tool for tool in ("valgrind", "wrk", "h2load", "nm") if not shutil.which(tool)]
    if missing:
        sys.exit(f"{', '.join(missing)} not found: apt-get install valgrind wrk nghttp2-client binutils")

    work = tempfile.mkdtemp(prefix="orderfile-")
    profile = os.path.join(work, "callgrind.out")
    backend_port, port, metrics_port = lb.free_port(), lb.free_port(), lb.free_port()
    backend = lb.start([backend_bin, "--host", "127.0.0.1", "--port", str(backend_port), "--version", "v1"], env=lb.ONE_WORKER)
    try:
        lb.wait_port(backend_port)
        lb.mesh_config(work, port, backend_port, lb.SMALL)
        gateway = lb.start([
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={profile}", "--compress-strings=no",
            "--compress-pos=no", "--demangle=no",
        ] + lb.gateway_cmd(binary, work, metrics_port), env=dict(lb.ONE_WORKER, RUST_LOG="error"))
        try:
            # Valgrind runs the gateway some 50x slower: a long start.
            lb.wait_port(port, limit=120)
            for cmd in (["wrk", "-t1", "-c10", "-d3s", f"http://127.0.0.1:{port}/hello"],
                        ["h2load", "-c4", "-m4", "-D2", f"http://127.0.0.1:{port}/hello"]):
                subprocess.run(cmd, capture_output=True, timeout=60, check=True)
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30).read()
        finally:
            gateway.terminate()
            gateway.wait(timeout=120)
    finally:
        lb.stop(backend)
    costs = self_costs(profile, binary)
    symbols = lb.defined_symbols(binary)
    ordered = [name for name, _ in costs.most_common() if name in symbols]
    if len(ordered) < 100:
        sys.exit(f"only {len(ordered)} functions of {binary} found in {profile}: did the gateway run?")
    with open(args.out, "w") as f:
        f.write("# The gateway's functions that run at startup and under load, hottest first:\n"
                "# the linker packs them together (examples/build.rs). Written by\n"
                "# benches/load/orderfile.py; regenerate when loadbench.py says it is stale.\n")
        f.write("".join(name + "\n" for name in ordered))
    print(f"{len(ordered)} functions ({len(costs)} ran in the binary) written to {args.out}")


if __name__ == "__main__":
    main()
