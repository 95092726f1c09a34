"""Proxyless gRPC through xDS: resolves `xds:///TARGET` with the bootstrap
in GRPC_XDS_BOOTSTRAP, makes N calls to /demo.Echo/Say and prints a JSON
object counting the x-backend-version of the answers (errors by code).
With a third argument `xds-creds` the channel takes its security from xDS
(mTLS where the cluster says so, certificates from the bootstrap's
certificate providers; plaintext where it says nothing)."""
import json
import sys

import grpc
import grpc.experimental

target, calls = sys.argv[1], int(sys.argv[2])
if sys.argv[3:] == ["xds-creds"]:
    creds = grpc.xds_channel_credentials(grpc.experimental.insecure_channel_credentials())
    channel = grpc.secure_channel(f"xds:///{target}", creds)
else:
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
