"""A JWKS (and OpenID discovery) server for the JWT tests.

Serves the files of the directory given as its argument, read again on
every request, as application/json. Special paths:
    /slow/NAME   answers NAME after 30 seconds
    /fail/NAME   answers 500
    /__hits/NAME the number of requests for NAME so far
Prints its port on the first line of stdout.
"""

import collections
import http.server
import os
import sys
import threading
import time

root = sys.argv[1]
hits = collections.Counter()
lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, code, body):
        data = body.encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path = self.path.split("?")[0].lstrip("/")
        if path.startswith("__hits/"):
            with lock:
                return self.answer(200, str(hits[path[len("__hits/"):]]))
        with lock:
            hits[path] += 1
        if path.startswith("slow/"):
            time.sleep(30)
            path = path[len("slow/"):]
        if path.startswith("fail/"):
            return self.answer(500, "{\"error\": \"down\"}")
        file = os.path.join(root, path)
        if not os.path.isfile(file):
            return self.answer(404, "{}")
        with open(file) as f:
            return self.answer(200, f.read())

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
