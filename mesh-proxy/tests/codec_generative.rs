//! The HTTP/1.1 codec on generated input: mutations of valid requests and
//! chunked bodies (bytes inserted, dropped, repeated; framing fields added;
//! line ends changed). Each input is refused, or:
//!
//! - read as an independent reader reads it (httparse for the head, a
//!   reference chunked decoder written from RFC 9112 7.1 for the body):
//!   same requests, same methods, targets and bodies, in the same order;
//! - and re-framed, by the upstream client, into requests hyper's server
//!   reads back with the same method, target, fields and body.
//!
//! `MESH_CODEC_CASES` sets how many inputs (3,000 here; the large run is
//! in `benches/README.md`), `MESH_CODEC_SEED` the first seed.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::BodyExt;
use mesh_proxy::body::{self, Body};
use mesh_proxy::downstream;
use mesh_proxy::http1::{Http1Pool, RequestBody, RequestHead};
use mesh_proxy::limits::DownstreamLimits;

/// A request as a reader understood it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Read {
    method: String,
    target: String,
    /// End-to-end fields, lower-cased names, by name (each name's values
    /// in order).
    fields: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

const SEEDS: [&str; 7] = [
    "GET /a?q=1 HTTP/1.1\r\nhost: a\r\nx-one: 1\r\n\r\n",
    "POST /p HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello",
    "POST /c HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    "POST /e HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n5;x=\"y z\"\r\nhello\r\n0\r\nx-sum: 9\r\n\r\n",
    "GET /1 HTTP/1.1\r\nhost: a\r\n\r\nPOST /2 HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\nabc",
    "PUT /u HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\nbody",
    "GET http://b/x HTTP/1.1\r\nhost: a\r\n\r\n",
];

const BYTES: &[u8] = b"\r\n \t:;\",=0aZ\x00\x7f\x80-/%?#";

const FIELDS: [&str; 9] = [
    "transfer-encoding: chunked\r\n",
    "content-length: 0\r\n",
    "content-length: 5\r\n",
    "host: b\r\n",
    "connection: close\r\n",
    " folded\r\n",
    "transfer-encoding: gzip\r\n",
    "x-dup: 1\r\n",
    "expect: 100-continue\r\n",
];

/// One to three mutations of a seed.
fn mutate(rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut input = SEEDS[rng.usize(..SEEDS.len())].as_bytes().to_vec();
    for _ in 0..rng.usize(1..=3) {
        let at = rng.usize(..=input.len());
        match rng.u8(..6) {
            0 => input.insert(at, BYTES[rng.usize(..BYTES.len())]),
            1 if at < input.len() => {
                input.remove(at);
            }
            2 if at < input.len() => {
                let end = (at + rng.usize(1..8)).min(input.len());
                let piece = input[at..end].to_vec();
                input.splice(at..at, piece);
            }
            3 => {
                // A field after a line end.
                let lines: Vec<usize> =
                    input.windows(2).enumerate().filter(|(_, w)| w == b"\r\n").map(|(i, _)| i + 2).collect();
                if let Some(&line) = lines.get(rng.usize(..lines.len().max(1))) {
                    let field = FIELDS[rng.usize(..FIELDS.len())].as_bytes();
                    input.splice(line..line, field.iter().copied());
                }
            }
            4 => {
                if let Some(cr) = input.iter().skip(at).position(|&b| b == b'\r') {
                    input.remove(at + cr);
                }
            }
            _ if at < input.len() => input[at] = BYTES[rng.usize(..BYTES.len())],
            _ => {}
        }
    }
    input
}

/// What the codec read from `input`: each request whose body it read
/// whole, in order (a paused clock: waits for more input end at once).
fn ours(input: &[u8]) -> Vec<Read> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    runtime.block_on(async {
        let (client, server) = tokio::io::duplex(1 << 20);
        let recorded = Arc::clone(&seen);
        let serving = tokio::spawn(async move {
            let (_tx, mut drain) = tokio::sync::watch::channel(false);
            let _ = downstream::serve(server, DownstreamLimits::default(), &mut drain, |req: Request<Body>| {
                let recorded = Arc::clone(&recorded);
                async move {
                    let (head, body) = req.into_parts();
                    if let Ok(body) = body.collect().await {
                        recorded.lock().unwrap().push(read_of(
                            &head.method,
                            &head.uri.to_string(),
                            &head.headers,
                            &body.to_bytes(),
                        ));
                    }
                    Response::new(body::empty())
                }
            })
            .await;
        });
        let (_read, mut write) = tokio::io::split(client);
        let _ = tokio::io::AsyncWriteExt::write_all(&mut write, input).await;
        let _ = tokio::time::timeout(Duration::from_secs(30), serving).await;
    });
    let reads = seen.lock().unwrap().clone();
    reads
}

/// End-to-end fields only: what the proxy forwards as they came (framing
/// and connection fields are each hop's own).
fn read_of(method: &Method, target: &str, headers: &HeaderMap, body: &[u8]) -> Read {
    const HOP: [&str; 8] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "expect",
    ];
    let mut fields: Vec<(String, Vec<u8>)> = headers
        .iter()
        .filter(|(name, _)| !HOP.contains(&name.as_str()))
        .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
        .collect();
    // RFC 9110 5.3: the order of fields with different names means
    // nothing; the order of one name's values does (a stable sort keeps it).
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    Read { method: method.to_string(), target: target.to_string(), fields, body: body.to_vec() }
}

/// The independent reading of `input`: httparse for each head, RFC 9112
/// for its framing, the chunked decoder below for its body; `None` where
/// it finds no whole request.
fn reference(mut input: &[u8]) -> Vec<Read> {
    let mut out = Vec::new();
    while let Some((read, used)) = reference_one(input) {
        out.push(read);
        input = &input[used..];
    }
    out
}

fn reference_one(input: &[u8]) -> Option<(Read, usize)> {
    let mut slots = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut slots);
    let httparse::Status::Complete(head) = req.parse(input).ok()? else { return None };
    let mut map = HeaderMap::new();
    for h in req.headers.iter() {
        map.append(http::HeaderName::from_bytes(h.name.as_bytes()).ok()?, http::HeaderValue::from_bytes(h.value).ok()?);
    }
    let codings: Vec<&[u8]> = map.get_all("transfer-encoding").iter().map(|v| v.as_bytes()).collect();
    let lengths: Vec<&[u8]> = map.get_all("content-length").iter().map(|v| v.as_bytes()).collect();
    let rest = &input[head..];
    let (body, used) = match (codings.as_slice(), lengths.as_slice()) {
        ([], []) => (Vec::new(), 0),
        ([], [length]) => {
            let n: usize = std::str::from_utf8(length).ok()?.trim_matches([' ', '\t']).parse().ok()?;
            (rest.get(..n)?.to_vec(), n)
        }
        ([coding], []) if coding.trim_ascii().eq_ignore_ascii_case(b"chunked") => dechunk(rest)?,
        _ => return None,
    };
    let method = Method::from_bytes(req.method?.as_bytes()).ok()?;
    // RFC 9112 3.2.2: an absolute-form target's authority is the host.
    let target = req.path?;
    if let Some(authority) = target.parse::<http::Uri>().ok().and_then(|u| u.authority().cloned()) {
        map.insert(http::header::HOST, http::HeaderValue::from_str(authority.as_str()).ok()?);
    }
    // Written as `http::Uri` writes it (`http://b` is `http://b/`).
    let target = target.parse::<http::Uri>().map_or_else(|_| target.to_string(), |u| u.to_string());
    Some((read_of(&method, &target, &map, &body), head + used))
}

/// RFC 9112 7.1, strictly: `1*HEXDIG [ chunk-ext ] CRLF data CRLF`, the
/// extensions skipped to the line end (no CR or LF in them), trailer lines
/// `name: value` until an empty line. The body and the bytes used.
fn dechunk(input: &[u8]) -> Option<(Vec<u8>, usize)> {
    let line = |at: usize| -> Option<(&[u8], usize)> {
        let end = input[at..].windows(2).position(|w| w == b"\r\n")? + at;
        let text = &input[at..end];
        (!text.contains(&b'\r') && !text.contains(&b'\n')).then_some((text, end + 2))
    };
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let (size_line, next) = line(at)?;
        let digits = size_line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        let after = &size_line[digits..];
        let ext_ok = after.iter().all(|&b| b == b' ' || b == b'\t') || after.trim_ascii_start().first() == Some(&b';');
        if digits == 0 || digits > 16 || !ext_ok {
            return None;
        }
        let size = usize::from_str_radix(std::str::from_utf8(&size_line[..digits]).ok()?, 16).ok()?;
        at = next;
        if size == 0 {
            loop {
                let (trailer, next) = line(at)?;
                at = next;
                if trailer.is_empty() {
                    return Some((body, at));
                }
                let colon = trailer.iter().position(|&b| b == b':')?;
                if colon == 0 || trailer[..colon].iter().any(|b| !b.is_ascii_graphic()) {
                    return None;
                }
            }
        }
        body.extend_from_slice(input.get(at..at + size)?);
        at += size;
        if input.get(at..at + 2)? != b"\r\n" {
            return None;
        }
        at += 2;
    }
}

/// hyper's server on 127.0.0.1, handing each request it reads to the test.
async fn hyper_server() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Read>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let tx = tx.clone();
                async move {
                    let (head, body) = req.into_parts();
                    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let _ = tx.send(read_of(&head.method, &head.uri.to_string(), &head.headers, &body));
                    Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Empty::<Bytes>::new()))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (addr, rx)
}

#[test]
fn generated_requests_are_refused_or_read_and_reframed_as_independent_readers_read_them() {
    let cases: u64 = std::env::var("MESH_CODEC_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(3_000);
    let first_seed: u64 = std::env::var("MESH_CODEC_SEED").ok().and_then(|n| n.parse().ok()).unwrap_or(1);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (addr, mut reread) = runtime.block_on(hyper_server());
    let pool = runtime.block_on(async { Http1Pool::new(Duration::from_secs(2), Duration::from_secs(60), None) });
    let host = pool.host(addr);
    let (mut accepted, mut refused) = (0u64, 0u64);
    for seed in first_seed..first_seed + cases {
        let input = mutate(&mut fastrand::Rng::with_seed(seed));
        let shown = || format!("seed {seed}: {:?}", String::from_utf8_lossy(&input));
        let read = ours(&input);
        if read.is_empty() {
            refused += 1;
            continue;
        }
        accepted += 1;
        // Ours may stop early (it refused a later request); what it read
        // the reference reads the same.
        let expected = reference(&input);
        assert!(
            expected.len() >= read.len() && expected[..read.len()] == read[..],
            "{}\nours: {read:#?}\nreference: {expected:#?}",
            shown()
        );
        for request in &read {
            let mut headers = HeaderMap::new();
            for (name, value) in &request.fields {
                headers.append(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    http::HeaderValue::from_bytes(value).unwrap(),
                );
            }
            let method = Method::from_bytes(request.method.as_bytes()).unwrap();
            let uri: http::Uri = request.target.parse().unwrap();
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            let head = RequestHead { method: &method, path, headers: &headers };
            let sent = runtime.block_on(async {
                let answer = host.send(head, RequestBody::Full(Bytes::from(request.body.clone())), None).await;
                let _ = answer.map(|a| a.into_body());
                tokio::time::timeout(Duration::from_secs(5), reread.recv()).await.ok().flatten()
            });
            let mut want = request.clone();
            want.target = path.to_string();
            assert_eq!(sent.as_ref(), Some(&want), "re-framed, hyper read otherwise: {}", shown());
        }
    }
    println!("{cases} generated inputs: {accepted} read and re-framed alike, {refused} refused");
    assert!(
        accepted > cases / 10 && refused > cases / 10,
        "mutations too mild or too wild: {accepted} read, {refused} refused"
    );
}
