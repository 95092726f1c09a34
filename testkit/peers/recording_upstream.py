"""An HTTP/1.1 upstream that records what reaches it, for the request-path
and framing tests.

It parses requests itself (Content-Length or chunked bodies, nothing else)
so that what it reports does not depend on the proxy's codec, and answers
each with a JSON description of the request:

    {"conn": 3, "n": 1, "method": "GET", "target": "/x",
     "headers": [["host", "a"], ...], "body": "..."}

Special targets:
    /__open   answers the number of client connections open now
    /__hang   is read and never answered (the connection stays open)
    /__close* is read and not answered: the connection is closed

With --log FILE, each request is also appended to FILE as a JSON line, and
a request it cannot parse as a line {"conn": N, "error": "..."}.
Prints its port on the first line of stdout.
"""

import json
import socket
import sys
import threading

lock = threading.Lock()
open_connections = 0
log_path = sys.argv[sys.argv.index("--log") + 1] if "--log" in sys.argv else None


def record(entry):
    if log_path:
        with lock, open(log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")


class Closed(Exception):
    pass


class Reader:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def more(self):
        data = self.sock.recv(65536)
        if not data:
            raise Closed()
        self.buf += data

    def line(self):
        while b"\r\n" not in self.buf:
            self.more()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def exactly(self, n):
        while len(self.buf) < n:
            self.more()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data


def read_request(r):
    request_line = r.line()
    while request_line == b"":
        request_line = r.line()
    method, target, version = request_line.decode("latin-1").split(" ")
    headers = []
    while True:
        line = r.line()
        if line == b"":
            break
        name, value = line.split(b":", 1)
        headers.append([name.decode("latin-1").lower(), value.strip(b" \t").decode("latin-1")])
    names = [h[0] for h in headers]
    if "transfer-encoding" in names:
        body = b""
        while True:
            size = int(r.line().split(b";")[0], 16)
            if size == 0:
                while r.line() != b"":
                    pass
                break
            body += r.exactly(size)
            if r.exactly(2) != b"\r\n":
                raise ValueError("chunk not ended by CRLF")
    elif "content-length" in names:
        body = r.exactly(int(dict(headers)["content-length"]))
    else:
        body = b""
    return method, target, version, headers, body


def serve(sock, conn_id):
    global open_connections
    r = Reader(sock)
    n = 0
    try:
        while True:
            method, target, version, headers, body = read_request(r)
            n += 1
            entry = {"conn": conn_id, "n": n, "method": method, "target": target, "version": version,
                     "headers": headers, "body": body.decode("latin-1")}
            record(entry)
            if target.startswith("/__close"):
                return
            if target == "/__hang":
                while True:
                    r.more()
            if target == "/__open":
                with lock:
                    payload = str(open_connections).encode()
            else:
                payload = json.dumps(entry).encode()
            head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(payload)
            sock.sendall(head.encode() + payload)
    except Closed:
        pass
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        record({"conn": conn_id, "error": str(e)})
    except OSError:
        pass
    finally:
        sock.close()
        with lock:
            open_connections -= 1


def main():
    global open_connections
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    print(listener.getsockname()[1], flush=True)
    conn_id = 0
    while True:
        sock, _ = listener.accept()
        conn_id += 1
        with lock:
            open_connections += 1
        threading.Thread(target=serve, args=(sock, conn_id), daemon=True).start()


main()
