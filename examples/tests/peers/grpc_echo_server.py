"""A real gRPC server for the proxy tests: /demo.Echo/Say answers
b"echo:" + request, or fails with UNAVAILABLE when the request is b"fail".
Prints its port, then serves until killed."""
from concurrent import futures

import grpc


def say(request, context):
    if request == b"fail":
        context.abort(grpc.StatusCode.UNAVAILABLE, "told to fail")
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
