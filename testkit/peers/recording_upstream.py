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
    /__raw/NAME  is answered with the canned response NAME (below), as
              bytes, malformed or not; the connection then reads on

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


# Upstream answers for the framing differential: each name is a way an
# upstream can frame (or misframe) a response.
RAW = {
    "ok_length": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    "ok_chunked": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "ok_chunked_trailer": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-t: 1\r\n\r\n",
    "ok_no_reason": b"HTTP/1.1 200\r\ncontent-length: 2\r\n\r\nok",
    "length_and_chunked": b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "chunked_and_length": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "two_equal_lengths": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok",
    "two_lengths": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok!",
    "length_list": b"HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\nok",
    "length_plus": b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok",
    "length_negative": b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\nok",
    "length_hex": b"HTTP/1.1 200 OK\r\ncontent-length: 0x2\r\n\r\nok",
    "coding_gzip": b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nok",
    "coding_gzip_chunked": b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "coding_chunked_chunked": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "coding_identity": b"HTTP/1.1 200 OK\r\ntransfer-encoding: identity\r\ncontent-length: 2\r\n\r\nok",
    "status_text": b"HTTP/1.1 abc OK\r\ncontent-length: 2\r\n\r\nok",
    "status_four_digits": b"HTTP/1.1 1000 OK\r\ncontent-length: 2\r\n\r\nok",
    "version_2": b"HTTP/2.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
    "version_garbage": b"HTTX/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    "bare_lf_lines": b"HTTP/1.1 200 OK\ncontent-length: 2\n\nok",
    "folded_field": b"HTTP/1.1 200 OK\r\nx-a: 1\r\n x-b: 2\r\ncontent-length: 2\r\n\r\nok",
    "space_before_colon": b"HTTP/1.1 200 OK\r\ncontent-length : 2\r\n\r\nok",
    "nul_in_value": b"HTTP/1.1 200 OK\r\nx-a: a\x00b\r\ncontent-length: 2\r\n\r\nok",
    "bad_name": b"HTTP/1.1 200 OK\r\nx(a): 1\r\ncontent-length: 2\r\n\r\nok",
    "chunk_size_text": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
    "chunk_ext_bare_lf": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;a\nb\r\nok\r\n0\r\n\r\n",
    "chunk_no_crlf": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n",
    "trailer_request_line": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nHTTP/1.1 200 OK\r\n\r\n",
    "no_content_with_body": b"HTTP/1.1 204 No Content\r\ncontent-length: 2\r\n\r\nok",
    "not_modified_with_body": b"HTTP/1.1 304 Not Modified\r\ncontent-length: 2\r\n\r\nok",
    "continue_then_ok": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    "unasked_switch": b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
    "head_too_large": b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * (100 * 1024) + b"\r\ncontent-length: 2\r\n\r\nok",
    "extra_bytes_after_body": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nextra",
}

# Answered and then the connection closed: bodies cut short.
RAW_THEN_CLOSE = {
    "length_cut_short": b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nok",
    "chunked_cut_short": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n",
    "until_close": b"HTTP/1.1 200 OK\r\n\r\nok",
    "http_1_0_until_close": b"HTTP/1.0 200 OK\r\n\r\nok",
    "nothing": b"",
}


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
            if target.startswith("/__raw/"):
                name = target[len("/__raw/"):]
                if name in RAW_THEN_CLOSE:
                    sock.sendall(RAW_THEN_CLOSE[name])
                    return
                sock.sendall(RAW[name])
                continue
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
