//! The raw HTTP/1.1 requests of the framing differential: valid ones, and
//! the smuggling and malformed families front proxies disagree on.

/// One case: a name for the report, and the bytes a client sends on a
/// fresh connection.
pub struct Case {
    pub name: String,
    pub bytes: Vec<u8>,
}

fn case(name: impl Into<String>, bytes: impl AsRef<[u8]>) -> Case {
    Case { name: name.into(), bytes: bytes.as_ref().to_vec() }
}

/// A POST of `body` with these framing fields (each `name: value`).
fn post(fields: &[&str], body: &str) -> Vec<u8> {
    let mut head = String::from("POST /p HTTP/1.1\r\nhost: a\r\n");
    for f in fields {
        head.push_str(f);
        head.push_str("\r\n");
    }
    format!("{head}\r\n{body}").into_bytes()
}

/// The next request a smuggler would hide in a body.
const NEXT: &str = "GET /smuggled HTTP/1.1\r\nhost: a\r\n\r\n";

pub fn requests() -> Vec<Case> {
    let mut cases = vec![
        case("valid get", "GET /v HTTP/1.1\r\nhost: a\r\n\r\n"),
        case("valid post with length", post(&["content-length: 5"], "hello")),
        case("valid chunked post", post(&["transfer-encoding: chunked"], "5\r\nhello\r\n0\r\n\r\n")),
        case("valid pipelined gets", "GET /1 HTTP/1.1\r\nhost: a\r\n\r\nGET /2 HTTP/1.1\r\nhost: a\r\n\r\n"),
        case(
            "valid chunk extension and trailer",
            post(&["transfer-encoding: chunked"], "5;name=\"v\"\r\nhello\r\n0\r\nx-sum: 1\r\n\r\n"),
        ),
        case("valid expect continue", post(&["content-length: 5", "expect: 100-continue"], "hello")),
    ];
    cases.extend(length_and_coding());
    cases.extend(chunk_syntax());
    cases.extend(request_lines());
    cases.extend(fields());
    cases.extend(hosts());
    cases.extend(smuggling());
    cases
}

fn length_and_coding() -> Vec<Case> {
    let chunked = "5\r\nhello\r\n0\r\n\r\n";
    let mut cases = Vec::new();
    for (name, fields) in [
        ("length then chunked", &["content-length: 5", "transfer-encoding: chunked"][..]),
        ("chunked then length", &["transfer-encoding: chunked", "content-length: 5"]),
        ("coding Chunked", &["transfer-encoding: Chunked"]),
        ("coding with leading space", &["transfer-encoding:  chunked"]),
        ("coding with trailing space", &["transfer-encoding: chunked "]),
        ("coding after a tab", &["transfer-encoding:\tchunked"]),
        ("coding chunked, identity", &["transfer-encoding: chunked, identity"]),
        ("coding identity, chunked", &["transfer-encoding: identity, chunked"]),
        ("coding gzip, chunked", &["transfer-encoding: gzip, chunked"]),
        ("coding chunked, chunked", &["transfer-encoding: chunked, chunked"]),
        ("two coding fields", &["transfer-encoding: chunked", "transfer-encoding: chunked"]),
        ("coding xchunked", &["transfer-encoding: xchunked"]),
        ("coding chunked with a vertical tab", &["transfer-encoding: chunked\x0b"]),
        ("coding empty", &["transfer-encoding: "]),
        ("coding with underscore name", &["transfer_encoding: chunked"]),
        ("coding with space before colon", &["transfer-encoding : chunked"]),
    ] {
        cases.push(case(name, post(fields, chunked)));
    }
    cases.push(case("coding identity alone", post(&["transfer-encoding: identity"], "hello")));
    cases.push(case("coding gzip alone", post(&["transfer-encoding: gzip"], "hello")));
    cases.push(case("coding folded", post(&["transfer-encoding:", " chunked"], chunked)));
    cases.push(case("coding in HTTP/1.0", "POST /p HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"));
    for value in ["+5", "-1", "5 5", "5, 5", "5,5", "0x5", "05", " 5 ", "5\t", "", "99999999999999999999", "5a"] {
        cases.push(case(format!("length {value:?}"), post(&[&format!("content-length: {value}")], "hello")));
    }
    cases.push(case("two equal lengths", post(&["content-length: 5", "content-length: 5"], "hello")));
    cases.push(case("two lengths", post(&["content-length: 5", "content-length: 6"], "hello!")));
    cases
}

fn chunk_syntax() -> Vec<Case> {
    let chunked = |body: &str| post(&["transfer-encoding: chunked"], body);
    [
        ("chunk size text", "zz\r\nhello\r\n0\r\n\r\n"),
        ("chunk size negative", "-5\r\nhello\r\n0\r\n\r\n"),
        ("chunk size 0x", "0x5\r\nhello\r\n0\r\n\r\n"),
        ("chunk size trailing space", "5 \r\nhello\r\n0\r\n\r\n"),
        ("chunk size trailing tab", "5\t\r\nhello\r\n0\r\n\r\n"),
        ("chunk size leading space", " 5\r\nhello\r\n0\r\n\r\n"),
        ("chunk size empty", "\r\nhello\r\n0\r\n\r\n"),
        ("chunk size leading zeros", "00005\r\nhello\r\n000\r\n\r\n"),
        ("chunk size overflowing", "ffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
        ("chunk size upper case", "A\r\nhellohello\r\n0\r\n\r\n"),
        ("chunk extension empty", "5;\r\nhello\r\n0\r\n\r\n"),
        ("chunk extension quoted", "5;a=\"x y\"\r\nhello\r\n0\r\n\r\n"),
        ("chunk extension with bare LF", "5;a\nb\r\nhello\r\n0\r\n\r\n"),
        ("chunk extension unclosed quote", "5;a=\"x\r\nhello\r\n0\r\n\r\n"),
        ("chunk size line bare LF", "5\nhello\r\n0\r\n\r\n"),
        ("chunk size line bare CR", "5\rhello\r\n0\r\n\r\n"),
        ("chunk data not followed by CRLF", "5\r\nhelloXX0\r\n\r\n"),
        ("chunk data followed by LF", "5\r\nhello\n0\r\n\r\n"),
        ("last chunk with bare LF", "5\r\nhello\r\n0\n\r\n"),
        ("trailer that is a request line", "5\r\nhello\r\n0\r\nGET /smuggled HTTP/1.1\r\n\r\n"),
        ("trailer folded", "5\r\nhello\r\n0\r\nx-t: 1\r\n folded\r\n\r\n"),
        ("trailer with bare LF", "5\r\nhello\r\n0\r\nx-t: 1\n\r\n"),
        ("trailer with no colon", "5\r\nhello\r\n0\r\nx-t\r\n\r\n"),
    ]
    .into_iter()
    .map(|(name, body)| case(name, chunked(body)))
    .collect()
}

fn request_lines() -> Vec<Case> {
    [
        ("two spaces after method", "GET  /r HTTP/1.1\r\nhost: a\r\n\r\n"),
        ("space after version", "GET /r HTTP/1.1 \r\nhost: a\r\n\r\n"),
        ("no version (HTTP/0.9)", "GET /r\r\n\r\n"),
        ("version 1.2", "GET /r HTTP/1.2\r\nhost: a\r\n\r\n"),
        ("version 2.0", "GET /r HTTP/2.0\r\nhost: a\r\n\r\n"),
        ("version lower case", "GET /r http/1.1\r\nhost: a\r\n\r\n"),
        ("version 1.0", "GET /r HTTP/1.0\r\nhost: a\r\n\r\n"),
        ("method lower case", "get /r HTTP/1.1\r\nhost: a\r\n\r\n"),
        ("method with @", "G@T /r HTTP/1.1\r\nhost: a\r\n\r\n"),
        ("unknown method", "FROB /r HTTP/1.1\r\nhost: a\r\n\r\n"),
        ("absolute form", "GET http://a/r HTTP/1.1\r\nhost: a\r\n\r\n"),
        ("absolute form other host", "GET http://b/r HTTP/1.1\r\nhost: a\r\n\r\n"),
        ("absolute form https", "GET https://a/r HTTP/1.1\r\nhost: a\r\n\r\n"),
        ("authority form", "CONNECT a:443 HTTP/1.1\r\nhost: a:443\r\n\r\n"),
        ("asterisk form", "OPTIONS * HTTP/1.1\r\nhost: a\r\n\r\n"),
        ("fragment in target", "GET /r#frag HTTP/1.1\r\nhost: a\r\n\r\n"),
        ("space in target", "GET /r x HTTP/1.1\r\nhost: a\r\n\r\n"),
        ("non-ASCII in target", "GET /r\u{e9} HTTP/1.1\r\nhost: a\r\n\r\n"),
        ("NUL in target", "GET /r\0 HTTP/1.1\r\nhost: a\r\n\r\n"),
        ("request line bare LF", "GET /r HTTP/1.1\nhost: a\r\n\r\n"),
        ("all lines bare LF", "GET /r HTTP/1.1\nhost: a\n\n"),
        ("leading empty line", "\r\nGET /r HTTP/1.1\r\nhost: a\r\n\r\n"),
        ("dot segments", "GET /a/../r HTTP/1.1\r\nhost: a\r\n\r\n"),
        ("escaped dots", "GET /a/%2e%2e/r HTTP/1.1\r\nhost: a\r\n\r\n"),
        ("backslash", "GET /a\\..\\r HTTP/1.1\r\nhost: a\r\n\r\n"),
        ("bad escape", "GET /a%zz HTTP/1.1\r\nhost: a\r\n\r\n"),
        ("escaped NUL", "GET /a%00 HTTP/1.1\r\nhost: a\r\n\r\n"),
    ]
    .into_iter()
    .map(|(name, text)| case(name, text))
    .collect()
}

fn fields() -> Vec<Case> {
    let get = |fields: &str| format!("GET /f HTTP/1.1\r\nhost: a\r\n{fields}\r\n");
    let many: String = (0..101).map(|i| format!("x-{i}: 1\r\n")).collect();
    let mut cases: Vec<Case> = [
        ("space before colon", "x-a : b\r\n"),
        ("first field folded", " x-a: b\r\n"),
        ("field folded", "x-a: b\r\n c\r\n"),
        ("NUL in value", "x-a: b\0c\r\n"),
        ("CR in value", "x-a: b\rc\r\n"),
        ("field ends with bare LF", "x-a: b\n"),
        ("space in name", "x a: b\r\n"),
        ("empty name", ": b\r\n"),
        ("no colon", "x-a\r\n"),
        ("obs-text in value", "x-a: caf\u{e9}\r\n"),
        ("underscore in name", "x_a: b\r\n"),
        ("tab in value", "x-a: b\tc\r\n"),
        ("DEL in value", "x-a: b\x7fc\r\n"),
        ("upper case length", "CONTENT-LENGTH: 0\r\n"),
        ("connection close", "connection: close\r\n"),
        ("connection names a field", "x-a: b\r\nconnection: x-a\r\n"),
        (
            "h2c upgrade",
            "connection: upgrade, http2-settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
        ),
    ]
    .into_iter()
    .map(|(name, fields)| case(name, get(fields)))
    .collect();
    cases.push(case("101 fields", get(&many)));
    cases.push(case("61 KiB field", get(&format!("x-big: {}\r\n", "a".repeat(61 * 1024)))));
    cases.push(case("59 KiB field", get(&format!("x-big: {}\r\n", "a".repeat(59 * 1024)))));
    cases
}

fn hosts() -> Vec<Case> {
    let with = |fields: &str| format!("GET /h HTTP/1.1\r\n{fields}\r\n");
    [
        ("no host", ""),
        ("two hosts", "host: a\r\nhost: b\r\n"),
        ("two equal hosts", "host: a\r\nhost: a\r\n"),
        ("empty host", "host:\r\n"),
        ("host with space", "host: a b\r\n"),
        ("host with userinfo", "host: u@a\r\n"),
        ("host port out of range", "host: a:99999\r\n"),
        ("host port text", "host: a:x\r\n"),
        ("host IPv6", "host: [::1]:80\r\n"),
        ("host empty port", "host: a:\r\n"),
        ("connection names host", "host: a\r\nconnection: host\r\n"),
    ]
    .into_iter()
    .map(|(name, fields)| case(name, with(fields)))
    .collect()
}

fn smuggling() -> Vec<Case> {
    vec![
        case("CL.TE smuggle", post(&["content-length: 6", "transfer-encoding: chunked"], &format!("0\r\n\r\n{NEXT}"))),
        case(
            "TE.CL smuggle",
            post(&["transfer-encoding: chunked", "content-length: 4"], &format!("5c\r\n{NEXT}\r\n0\r\n\r\n")),
        ),
        case("CL.CL smuggle", post(&["content-length: 0", "content-length: 36"], NEXT)),
        case("chunked then a request", post(&["transfer-encoding: chunked"], &format!("0\r\n\r\n{NEXT}"))),
        case("length then a request", post(&["content-length: 5"], &format!("hello{NEXT}"))),
        case("close then a request", format!("GET /c HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n{NEXT}")),
        case(
            "obfuscated coding smuggle",
            post(&["content-length: 6", "transfer-encoding: chunked, identity"], &format!("0\r\n\r\n{NEXT}")),
        ),
        case(
            "folded coding smuggle",
            post(&["content-length: 6", "transfer-encoding:", " chunked"], &format!("0\r\n\r\n{NEXT}")),
        ),
        case("empty chunk size smuggle", post(&["transfer-encoding: chunked"], &format!("\r\n\r\n{NEXT}"))),
        case("bare LF chunk smuggle", post(&["transfer-encoding: chunked"], &format!("0\n\r\n{NEXT}"))),
    ]
}
