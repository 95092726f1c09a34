//! A raw HTTP/1.1 client: the bytes a test writes go on the wire as they
//! are, and the whole answer comes back, so framing can be tested too.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// How long a test waits for a server to finish answering.
const READ_TIMEOUT: Duration = Duration::from_secs(15);

/// An answer, parsed leniently (for tests, not for the proxy).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The first header of that name, any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Send `request` to `addr` (`127.0.0.1:PORT`) and read until the server
/// closes (or the read timeout); the answer as text.
pub fn raw(addr: &str, request: &[u8]) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.write_all(request)?;
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Send `request` and read one answer: up to the end its framing gives
/// (a length, or the last chunk), without waiting for the server to close
/// (Envoy holds a connection it closes open for a second).
fn one_answer(addr: &str, request: &[u8]) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.write_all(request)?;
    let mut out = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
        if answer_complete(&out) {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Whether `bytes` hold a whole answer by its own framing.
fn answer_complete(bytes: &[u8]) -> bool {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    let body = &bytes[end + 4..];
    if head.starts_with("http/1.1 1") {
        return false;
    }
    let field = |name: &str| head.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()));
    if field("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        return body.ends_with(b"0\r\n\r\n");
    }
    match field("content-length:").and_then(|v| v.parse::<usize>().ok()) {
        Some(length) => body.len() >= length,
        None => head.starts_with("http/1.1 204") || head.starts_with("http/1.1 304"),
    }
}

/// [`raw`] to a port on 127.0.0.1.
pub fn raw_port(port: u16, request: &[u8]) -> std::io::Result<String> {
    raw(&format!("127.0.0.1:{port}"), request)
}

/// One request on its own connection (`Connection: close`), with `Host:
/// host`, the extra headers and a body (a `Content-Length` is added when
/// the body is not empty); the parsed answer, or the text that did not
/// parse as the error.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Response, String> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    let text = one_answer(addr, req.as_bytes()).map_err(|e| format!("{method} {path} to {addr}: {e}"))?;
    parse(&text).ok_or_else(|| format!("{method} {path} to {addr}: unparsable answer {text:?}"))
}

/// A GET to a port on 127.0.0.1 that must be answered.
pub fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> Response {
    request(&format!("127.0.0.1:{port}"), "GET", path, "test.example.com", headers, "")
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A GET whose failure is `None` (for polling a server coming up).
pub fn try_get(addr: &str, path: &str) -> Option<Response> {
    request(addr, "GET", path, "test", &[], "").ok()
}

/// A status line, headers, and a body de-chunked when it is chunked.
pub fn parse(text: &str) -> Option<Response> {
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked { dechunk(body)? } else { body.to_string() };
    Some(Response { status, headers, body })
}

/// A chunked body's data (extensions and trailers dropped).
pub fn dechunk(mut rest: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = size.split(';').next()?.trim();
        let size = usize::from_str_radix(size, 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_and_chunked_answers() {
        let r = parse("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nhi").unwrap();
        assert_eq!((r.status, r.header("x-a"), r.body.as_str()), (200, Some("b"), "hi"));
        let r =
            parse("HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n1\r\nd\r\n0\r\n\r\n")
                .unwrap();
        assert_eq!((r.status, r.body.as_str()), (404, "abcd"));
        assert!(parse("HTTP/1.1 200 OK\r\n").is_none(), "no end of head");
        assert!(dechunk("zz\r\n").is_none());
    }
}
