"""A real gRPC client for the proxy tests: calls /demo.Echo/Say through
127.0.0.1:PORT and prints what came back, one line per call."""
import sys

import grpc

channel = grpc.insecure_channel(f"127.0.0.1:{sys.argv[1]}")
say = channel.unary_unary("/demo.Echo/Say")
for message in sys.argv[2:]:
    try:
        response, call = say.with_call(message.encode(), timeout=10)
        trailers = dict(call.trailing_metadata() or ())
        print(f"ok {response.decode()} trailer={trailers.get('x-echo-trailer')}")
    except grpc.RpcError as e:
        print(f"error {e.code().name} {e.details()}")
