#!/usr/bin/env python3
"""Builds the gateway with profile-guided optimization: an instrumented
build runs the load benchmark's traffic, and the benchmarked build is compiled
again with the counts it wrote (`-Cprofile-use`).

  python3 benches/load/pgo.py [--seconds 10]

Prints the path of the optimized binary (under CARGO_TARGET_DIR/pgo, apart
from the plain benchmarked build); measure it against the plain one with
`loadbench.py --gateway pgo=PATH --gateway mesh-proxy=TARGET/bench-release/gateway`.

Why: under load the request path runs more code than the 32 KiB L1
instruction cache holds (benches/README.md, "Where the CPU goes"). With
counts, LLVM lays each function's hot blocks together, moves cold ones
out of line and inlines by how often a call runs, not by guesses.

Needs `llvm-profdata` of the LLVM major version rustc was built with
(`rustc -vV`; Debian: `apt-get install llvm-22` for rustc 1.95), the
demo-backend of the benchmarked build (`loadbench.BUILD`), wrk
and h2load. The profile is of this source tree and toolchain: rebuild it
after changing either (a stale one is not an error, just less use).
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
import loadbench as lb  # noqa: E402

WORKSPACE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def llvm_major():
    """The LLVM major version rustc was built with."""
    out = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout
    return re.search(r"^LLVM version: (\d+)", out, re.M).group(1)


def profdata_tool(llvm_major):
    """An llvm-profdata whose raw-profile format is rustc's: same major."""
    for name in (f"llvm-profdata-{llvm_major}", "llvm-profdata"):
        path = shutil.which(name)
        if not path:
            continue
        version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
        if re.search(rf"LLVM version {llvm_major}\.", version):
            return path
    sys.exit(f"no llvm-profdata of LLVM {llvm_major} (rustc's): apt-get install llvm-{llvm_major}")


def build(target_dir, rustflags):
    """The gateway built with `rustflags`. Not with `--target`, which would
    keep the flags off build scripts and proc macros but change every
    symbol's hash, so that examples/gateway.order (written from the plain
    build) would name 268 of its 1,614 functions instead of 1,471; what the instrumented build scripts
    write is cleared before the training run."""
    env = dict(os.environ, CARGO_TARGET_DIR=target_dir, RUSTFLAGS=rustflags, MESH_PACK_RELATIVE_RELOCS="1")
    command = ["cargo", "build", "--profile", lb.PROFILE, "-p", "examples", "--bin", "gateway"]
    subprocess.run(command, cwd=WORKSPACE, env=env, check=True)
    return os.path.join(target_dir, lb.PROFILE, "gateway")


def train(gateway_bin, backend_bin, seconds):
    """The benchmark's traffic through `gateway_bin`: the small config over
    HTTP/1.1 and h2c, then the 1,000-route one. Each run exits on SIGTERM,
    which writes its counts."""
    work = tempfile.mkdtemp(prefix="pgo-train-")
    backend_port = lb.free_port()
    backend = lb.start([backend_bin, "--host", "0.0.0.0", "--port", str(backend_port), "--version", "v1"], env=lb.ONE_WORKER)
    configs = [
        (lb.SMALL, "/hello", True),
        ({"prefixes": lb.MANY_ROUTES, "addresses": lb.MANY_ADDRESSES}, lb.LARGE_PATH, False),
    ]
    try:
        lb.wait_port(backend_port)
        for n, (routes, path, h2) in enumerate(configs):
            d = os.path.join(work, str(n))
            os.mkdir(d)
            port = lb.free_port()
            lb.mesh_config(d, port, backend_port, routes)
            gateway = lb.start(lb.gateway_cmd(gateway_bin, d), env=dict(lb.ONE_WORKER, RUST_LOG="error"))
            try:
                lb.wait_port(port)
                load = [["wrk", "-t1", "-c50", f"-d{seconds}s", f"http://127.0.0.1:{port}{path}"]]
                if h2:
                    load.append(["h2load", "-c50", "-m10", f"-D{max(seconds // 2, 1)}", f"http://127.0.0.1:{port}{path}"])
                for cmd in load:
                    subprocess.run(["taskset", "-c", "1"] + cmd, capture_output=True, timeout=seconds + 60, check=True)
            finally:
                lb.stop(gateway)
            # Counts are written at exit: one killed or failed wrote none.
            if gateway.returncode != 0:
                sys.exit(f"the instrumented gateway exited {gateway.returncode}: its counts may be missing")
    finally:
        lb.stop(backend)
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10, help="seconds of each load")
    args = ap.parse_args()
    profdata = profdata_tool(llvm_major())
    for tool in ("wrk", "h2load", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: apt-get install wrk nghttp2-client util-linux")
    backend_bin = os.path.join(lb.TARGET, lb.PROFILE, "demo-backend")
    if not os.path.exists(backend_bin):
        sys.exit(f"{backend_bin} missing: {lb.BUILD}")

    pgo_dir = os.path.abspath(os.path.join(lb.TARGET, "pgo"))
    raw_dir = os.path.join(pgo_dir, "raw")
    instrumented = build(os.path.join(pgo_dir, "generate"), f"-Cprofile-generate={raw_dir}")
    shutil.rmtree(raw_dir, ignore_errors=True)
    os.makedirs(raw_dir)
    train(instrumented, backend_bin, args.seconds)
    raws = glob.glob(os.path.join(raw_dir, "*.profraw"))
    if not raws:
        sys.exit(f"the instrumented gateway wrote no profile to {raw_dir}")
    merged = os.path.join(pgo_dir, "gateway.profdata")
    subprocess.run([profdata, "merge", "-o", merged] + raws, check=True)
    optimized = build(os.path.join(pgo_dir, "use"), f"-Cprofile-use={merged}")
    print(optimized)


if __name__ == "__main__":
    main()
