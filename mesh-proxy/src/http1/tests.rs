//! The upstream client against scripted servers: framing, pooling, idle
//! timeouts, stale connections, streamed bodies.

use super::*;
use crate::wire::Chunk;
use http::HeaderValue;

fn parse(raw: &[u8], method: &Method) -> Result<Option<Parsed>, Http1Error> {
    parse_head(&mut BytesMut::from(raw), method)
}

fn map(parsed: Parsed) -> HeaderMap {
    parsed.fields.into_iter().collect()
}

#[test]
fn framing_follows_rfc_9112() {
    let p = |raw: &str| parse(raw.as_bytes(), &Method::GET).unwrap().unwrap();
    assert_eq!(p("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n").framing, Framing::Length(5));
    assert_eq!(p("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").framing, Framing::Chunked(Chunk::Size));
    // What Envoy refuses as a protocol error is one here too: never a
    // body framed one way while the client is told another.
    for refused in [
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
    ] {
        assert!(matches!(parse(refused.as_bytes(), &Method::GET), Err(Http1Error::Malformed(_))), "{refused:?}");
    }
    assert_eq!(p("HTTP/1.1 200 OK\r\n\r\n").framing, Framing::UntilClose);
    assert!(!p("HTTP/1.1 200 OK\r\n\r\n").keep_alive, "read-until-close cannot be reused");
    assert_eq!(p("HTTP/1.1 204 No Content\r\n\r\n").framing, Framing::Length(0));
    let head = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", &Method::HEAD).unwrap().unwrap();
    assert_eq!(head.framing, Framing::Length(0), "a HEAD response has no body");
    assert!(p("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n").keep_alive);
    assert!(!p("HTTP/1.1 200 OK\r\ncontent-length: 1\r\nconnection: close\r\n\r\n").keep_alive);
    assert!(!p("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n").keep_alive);
    assert!(p("HTTP/1.0 200 OK\r\ncontent-length: 1\r\nconnection: keep-alive\r\n\r\n").keep_alive);
    assert_eq!(p("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n").version, Version::HTTP_10);
    let fields = p("HTTP/1.1 200 OK\r\nx-a: one two\r\nx-empty:\r\nX-A: 2\r\ncontent-length: 0\r\n\r\n").fields;
    let listed: Vec<_> = fields.iter().map(|(n, v)| (n.as_str(), v.to_str().unwrap())).collect();
    assert_eq!(
        listed,
        [("x-a", "one two"), ("x-empty", ""), ("x-a", "2"), ("content-length", "0")],
        "values as sent, fields in the order they came"
    );
}

#[test]
fn bad_heads_are_refused_and_partial_ones_wait() {
    assert!(parse(b"HTTP/1.1 200 OK\r\ncontent-le", &Method::GET).unwrap().is_none());
    for bad in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"NOTHTTP\r\n\r\n",
    ] {
        assert!(parse(bad, &Method::GET).is_err(), "{}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn field_values_keep_their_bytes_ascii_or_not() {
    let raw = b"HTTP/1.1 200 OK\r\nx-ascii: plain\ttext\r\nx-latin: caf\xe9\r\ncontent-length: 0\r\n\r\n";
    let h = map(parse(raw, &Method::GET).unwrap().unwrap());
    assert_eq!(h["x-ascii"], "plain\ttext");
    assert_eq!(h["x-latin"].as_bytes(), b"caf\xe9");
    assert!(h["x-latin"].to_str().is_err(), "obs-text is not taken for UTF-8");
    assert!(parse(b"HTTP/1.1 200 OK\r\nx-del: a\x7fb\r\n\r\n", &Method::GET).is_err());
}

#[test]
fn header_names_seen_before_are_reused_as_they_were() {
    let raw = b"HTTP/1.1 200 OK\r\nX-Upper: 1\r\nx-backend: a\r\ncontent-length: 0\r\nx-backend: b\r\n\r\n";
    for _ in 0..3 {
        let h = map(parse_head(&mut BytesMut::from(&raw[..]), &Method::GET).unwrap().unwrap());
        assert_eq!(h.get("x-upper").unwrap(), "1");
        assert_eq!(h.get_all("x-backend").iter().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(h.len(), 4);
    }
    // Lower-case names are remembered at most once each (their slot
    // may be another's: tests share the table); `X-Upper` never is.
    let known = wire::known_names();
    let times = |name: &str| known.iter().filter(|n| *n == name).count();
    assert!(times("x-backend") <= 1 && times("content-length") <= 1, "{known:?}");
    assert!(!known.iter().any(|n| n == "x-upper"), "{known:?}");
    assert!(wire::header_name(b"bad name").is_err());
}

#[test]
fn request_heads_carry_host_and_framing() {
    let mut headers = HeaderMap::new();
    headers.insert("x-a", HeaderValue::from_static("1"));
    let head = RequestHead { method: &Method::POST, path: "/p?q=1", headers: &headers };
    let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let mut out = BytesMut::new();
    write_head(&mut out, addr, &head, &RequestBody::Full(Bytes::from_static(b"abc")), false);
    assert_eq!(&out[..], b"POST /p?q=1 HTTP/1.1\r\nx-a: 1\r\nhost: 127.0.0.1:8080\r\ncontent-length: 3\r\n\r\n");
    let mut out = BytesMut::new();
    write_head(&mut out, addr, &head, &RequestBody::Stream(crate::body::empty()), true);
    assert!(out.ends_with(b"transfer-encoding: chunked\r\n\r\n"));

    // Given ones are not written twice.
    headers.insert(HOST, HeaderValue::from_static("reviews"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from_static("3"));
    let head = RequestHead { method: &Method::POST, path: "/", headers: &headers };
    let mut out = BytesMut::new();
    write_head(&mut out, addr, &head, &RequestBody::Full(Bytes::from_static(b"abc")), false);
    assert_eq!(&out[..], b"POST / HTTP/1.1\r\nx-a: 1\r\nhost: reviews\r\ncontent-length: 3\r\n\r\n");
}

use tokio::io::AsyncReadExt;

/// A server on 127.0.0.1 that answers each request on a connection with
/// the next of `answers`, written a few bytes at a time, and closes the
/// connection after the last; one connection per list.
async fn server(connections: Vec<Vec<&'static [u8]>>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        for answers in connections {
            let (mut s, _) = listener.accept().await.unwrap();
            for answer in answers {
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut buf = [0u8; 1024];
                    let n = s.read(&mut buf).await.unwrap();
                    assert!(n > 0, "the client closed early");
                    seen.extend_from_slice(&buf[..n]);
                }
                for piece in answer.chunks(7) {
                    s.write_all(piece).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    });
    (addr, task)
}

async fn get(host: &Arc<HostPool>) -> Result<(StatusCode, Bytes), Http1Error> {
    let headers = HeaderMap::new();
    let head = RequestHead { method: &Method::GET, path: "/", headers: &headers };
    let response = host.send(head, RequestBody::Full(Bytes::new()), None).await?;
    let status = response.status();
    Ok((status, response.into_body().collect().await?.to_bytes()))
}

fn pool() -> Http1Pool {
    Http1Pool::new(Duration::from_secs(2), Duration::from_secs(60), None)
}

#[tokio::test]
async fn chunked_and_sized_bodies_are_read_whole_on_one_kept_connection() {
    let (addr, server) = server(vec![vec![
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 3\r\n\r\nabc",
    ]])
    .await;
    let pool = pool();
    let host = pool.host(addr);
    assert_eq!(get(&host).await.unwrap(), (StatusCode::OK, Bytes::from_static(b"hello world")));
    assert_eq!(pool.idle_connections(), 1, "back in the pool once the body ended");
    assert_eq!(get(&host).await.unwrap(), (StatusCode::CREATED, Bytes::from_static(b"abc")));
    server.await.unwrap();
}

#[tokio::test]
async fn a_pooled_connection_the_server_closed_is_replaced() {
    let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let (addr, server) = server(vec![vec![ok], vec![ok]]).await;
    let host = pool().host(addr);
    assert_eq!(get(&host).await.unwrap().1, "ok");
    // The server has closed the first connection; the pool may not
    // have seen it yet.
    assert_eq!(get(&host).await.unwrap().1, "ok");
    server.await.unwrap();
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

#[tokio::test]
async fn idle_connections_close_at_their_timeout_and_the_pool_says_when_to_look_again() {
    let (addr, server) = server(vec![vec![OK, OK]]).await;
    let timeout = Duration::from_millis(300);
    let pool = Http1Pool::new(Duration::from_secs(2), timeout, None);
    let host = pool.host(addr);
    let before = Instant::now();
    get(&host).await.unwrap();
    let next = pool.close_expired().unwrap();
    assert_eq!(pool.idle_connections(), 1, "not expired yet");
    assert!(next > before && next <= Instant::now() + timeout, "due when the connection has idled a timeout");
    tokio::time::sleep_until(next.into()).await;
    let after = Instant::now();
    let again = pool.close_expired().unwrap();
    assert_eq!(pool.idle_connections(), 0, "closed at its timeout");
    assert!(again >= after + timeout, "with nothing idle, no connection can expire within a timeout");
    server.abort();
}

#[tokio::test]
async fn an_endpoint_no_cluster_holds_goes_with_its_connections() {
    let (addr, server) = server(vec![vec![OK, OK]]).await;
    let pool = pool();
    let host = pool.host(addr);
    get(&host).await.unwrap();
    assert!(Arc::ptr_eq(&host, &pool.hosts(&[addr])[0]), "a config naming it again shares its pool");
    server.abort();
    drop(host);
    assert_eq!(pool.lock().len(), 0, "its entry left with it");
    assert_eq!(pool.idle_connections(), 0, "its idle connection closed with it");
    let other = pool.host(SocketAddr::from(([127, 0, 0, 2], addr.port())));
    assert_eq!(pool.lock().len(), 1, "forgotten when its pool went");
    assert!(Arc::strong_count(&other) == 1);
}

#[tokio::test]
async fn a_streamed_request_body_goes_chunked() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        while !seen.ends_with(b"0\r\n\r\n") {
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "the client closed early");
            seen.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.unwrap();
        String::from_utf8(seen).unwrap()
    });
    let pieces = futures_util::stream::iter(
        ["hello", "", " world"].map(|p| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(p)))),
    );
    let body = crate::body::boxed(http_body_util::StreamBody::new(pieces));
    let headers = HeaderMap::new();
    let head = RequestHead { method: &Method::POST, path: "/up", headers: &headers };
    let response = pool().host(addr).send(head, RequestBody::Stream(body), None).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let sent = server.await.unwrap();
    assert!(sent.contains("transfer-encoding: chunked\r\n"), "{sent}");
    assert!(sent.ends_with("\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), "{sent}");
}

#[tokio::test]
async fn a_body_cut_short_is_an_error_and_the_connection_is_not_kept() {
    let (addr, server) = server(vec![vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"]]).await;
    let pool = pool();
    let err = get(&pool.host(addr)).await.unwrap_err();
    assert!(err.to_string().contains("mid-body"), "{err}");
    assert_eq!(pool.idle_connections(), 0);
    server.await.unwrap();
}
