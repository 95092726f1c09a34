"""A real gRPC server for the proxy tests: /demo.Echo/Say answers
b"echo:" + request, or fails with UNAVAILABLE when the request is b"fail".
With a version argument (`grpc_echo_server.py v2`) it also sends it as the
`x-backend-version` header. Prints its port, then serves until killed."""
import sys
from concurrent import futures

import grpc


def say(request, context):
    if request == b"fail":
        context.abort(grpc.StatusCode.UNAVAILABLE, "told to fail")
    if len(sys.argv) > 1:
        context.send_initial_metadata((("x-backend-version", sys.argv[1]),))
    context.set_trailing_metadata((("x-echo-trailer", "present"),))
    return b"echo:" + request


server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers(
    (grpc.method_handlers_generic_handler("demo.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)}),)
)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
server.wait_for_termination()
