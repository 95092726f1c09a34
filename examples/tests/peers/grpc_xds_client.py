"""Proxyless gRPC through xDS: resolves `xds:///TARGET` with the bootstrap
in GRPC_XDS_BOOTSTRAP, makes N calls to /demo.Echo/Say and prints a JSON
object counting the x-backend-version of the answers (errors by code)."""
import json
import sys

import grpc

target, calls = sys.argv[1], int(sys.argv[2])
channel = grpc.insecure_channel(f"xds:///{target}")
say = channel.unary_unary("/demo.Echo/Say")
counts = {}
for _ in range(calls):
    try:
        _, call = say.with_call(b"hi", timeout=15, wait_for_ready=True)
        key = dict(call.initial_metadata() or ()).get("x-backend-version", "?")
    except grpc.RpcError as e:
        # One failure is enough to fail the test: stop rather than wait out every call.
        counts[f"error {e.code().name}: {e.details()}"] = 1
        break
    counts[key] = counts.get(key, 0) + 1
print(json.dumps(counts), flush=True)
