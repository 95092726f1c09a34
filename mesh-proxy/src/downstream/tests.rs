//! The server side as a client meets it: pipelining, bodies, `100
//! Continue`, refusals, timeouts, draining, HTTP/2 and upgrades.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, EXPECT, UPGRADE};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::conn::H2_PREFACE;
use super::*;
use crate::body::{self, Body};
use crate::wire::{MAX_HEAD, MAX_HEADERS};

/// Envoy's limits, with a header timeout short enough for tests.
fn settings() -> DownstreamLimits {
    DownstreamLimits { header_timeout: Duration::from_millis(300), accept_http_10: true, ..DownstreamLimits::default() }
}

/// What the test handler answers: method, path, the body it read (unless
/// the path says not to read it), and how some headers arrived.
async fn echo(req: Request<Body>) -> Response<Body> {
    let (head, body) = req.into_parts();
    let text = if head.uri.path() == "/unread" {
        String::new()
    } else {
        match body.collect().await {
            Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
            Err(e) => format!("body error: {e}"),
        }
    };
    let seen = format!(
        "{} {} {} expect={:?} cl={:?}",
        head.method,
        head.uri,
        text,
        head.headers.get(EXPECT),
        head.headers.get(CONTENT_LENGTH)
    );
    match head.uri.path() {
        "/stream" => {
            let pieces = futures_util::stream::iter(
                ["a", "bc"].map(|p| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(p)))),
            );
            Response::new(body::boxed(http_body_util::StreamBody::new(pieces)))
        }
        "/empty" => {
            let mut r = Response::new(body::empty());
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
        _ => Response::new(body::full(seen)),
    }
}

/// One connection served with `echo`: the client's socket, the drain
/// switch, and how serving it ended.
async fn connect() -> (TcpStream, watch::Sender<bool>, tokio::task::JoinHandle<Result<Served<TcpStream>, ServeError>>) {
    connect_with(settings()).await
}

/// [`connect`], with these limits.
async fn connect_with(
    limits: DownstreamLimits,
) -> (TcpStream, watch::Sender<bool>, tokio::task::JoinHandle<Result<Served<TcpStream>, ServeError>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (drain, mut draining) = watch::channel(false);
    let served = tokio::spawn(async move {
        let (io, _) = listener.accept().await.unwrap();
        serve(io, limits, &mut draining, echo).await
    });
    (TcpStream::connect(addr).await.unwrap(), drain, served)
}

/// Everything the server sends until it closes (bounded by a timeout).
async fn read_all(client: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut seen)).await;
    String::from_utf8_lossy(&seen).into_owned()
}

/// Read until `needle` has been seen `times` times.
async fn read_until(client: &mut TcpStream, needle: &str, times: usize) -> String {
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.matches(needle).count() < times && Instant::now() < deadline {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            _ => break,
        }
    }
    seen
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_with_their_bodies() {
    let (mut client, _drain, served) = connect().await;
    client
        .write_all(
            b"GET /one HTTP/1.1\r\nhost: x\r\n\r\n\
              POST /two HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello\
              POST /three HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
              GET /four HTTP/1.0\r\n\r\n",
        )
        .await
        .unwrap();
    let text = read_all(&mut client).await;
    let answers: Vec<&str> = text.split("HTTP/1.").skip(1).collect();
    assert_eq!(answers.len(), 4, "{text}");
    assert!(answers[0].starts_with("1 200 OK\r\n") && answers[0].ends_with("\r\n\r\nGET /one  expect=None cl=None"));
    let two = "POST /two hello expect=None cl=Some(\"5\")";
    assert!(
        answers[1].contains(&format!("content-length: {}\r\n", two.len())) && answers[1].ends_with(two),
        "{}",
        answers[1]
    );
    assert!(
        answers[2].ends_with("POST /three abc expect=None cl=None"),
        "a chunked body, handed on without its framing field: {}",
        answers[2]
    );
    assert!(answers[3].starts_with("0 200 OK\r\n") && answers[3].contains("connection: close\r\n"), "{}", answers[3]);
    assert!(answers.iter().all(|a| a.contains("\r\ndate: ")), "{text}");
    assert!(matches!(served.await.unwrap(), Ok(Served::Closed)));
}

#[tokio::test]
async fn bodies_of_unknown_length_go_chunked_or_until_close() {
    let (mut client, _drain, _served) = connect().await;
    client
        .write_all(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\nHEAD /x HTTP/1.1\r\nhost: x\r\n\r\nGET /empty HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // The last answer is a head alone: it ends the text.
    let text = read_until(&mut client, "\r\n\r\n", 4).await;
    let answers: Vec<&str> = text.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(answers.len(), 3, "{text}");
    assert!(
        answers[0].contains("transfer-encoding: chunked\r\n")
            && answers[0].ends_with("\r\n\r\n1\r\na\r\n2\r\nbc\r\n0\r\n\r\n"),
        "{}",
        answers[0]
    );
    assert!(
        answers[1].ends_with("\r\n\r\n") && !answers[1].contains("content-length"),
        "a HEAD answer has no body: {}",
        answers[1]
    );
    assert!(answers[2].starts_with("204") && !answers[2].contains("content-length"), "{}", answers[2]);

    let (mut client, _drain, _served) = connect().await;
    client.write_all(b"GET /stream HTTP/1.0\r\nconnection: keep-alive\r\n\r\n").await.unwrap();
    let text = read_all(&mut client).await;
    assert!(text.contains("connection: close\r\n") && text.ends_with("\r\n\r\nabc"), "HTTP/1.0 has no chunks: {text}");
}

#[tokio::test]
async fn expect_100_continue_is_answered_when_the_body_is_first_read() {
    let (mut client, _drain, _served) = connect().await;
    client
        .write_all(b"POST /up HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_until(&mut client, "\r\n\r\n", 1).await, "HTTP/1.1 100 Continue\r\n\r\n");
    client.write_all(b"data").await.unwrap();
    let text = read_until(&mut client, "expect", 1).await;
    assert!(text.ends_with("POST /up data expect=None cl=Some(\"4\")"), "{text}");

    // A handler that answers without reading: no 100, and the body
    // the client may still send is not taken for the next request.
    let (mut client, _drain, served) = connect().await;
    client
        .write_all(b"POST /unread HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n")
        .await
        .unwrap();
    let text = read_all(&mut client).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n") && text.contains("connection: close\r\n"), "{text}");
    assert!(matches!(served.await.unwrap(), Ok(Served::Closed)));
}

#[tokio::test]
async fn an_answer_before_the_body_is_read_ends_the_connection() {
    let (mut client, _drain, _served) = connect().await;
    let body = vec![b'x'; 256 * 1024];
    client.write_all(b"POST /unread HTTP/1.1\r\nhost: x\r\ncontent-length: 1048576\r\n\r\n").await.unwrap();
    // The answer comes while the client is still sending. (Whether
    // the lingering close saves it from a reset cannot be seen on
    // loopback: Linux hands a reset socket's queued bytes over first.)
    let _ = client.write_all(&body).await;
    let text = read_until(&mut client, "\r\n\r\n", 1).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n") && text.contains("connection: close\r\n"), "{text:.200}");
}

#[tokio::test]
async fn bad_heads_get_400_431_or_501_and_a_close() {
    let huge = format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "a".repeat(2 * MAX_HEAD));
    // Envoy's limit is 60 KiB: 61 KiB is refused, 59 KiB served.
    let over = format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "a".repeat(61 * 1024));
    let under = format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "a".repeat(59 * 1024));
    let many: String = (0..MAX_HEADERS + 1).map(|i| format!("x-{i}: 1\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nhost: x\r\n{many}\r\n");
    for (request, status) in [
        ("NOT HTTP AT ALL\r\n\r\n", "400"),
        ("POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\nabcd", "400"),
        ("POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ncontent-length: 4\r\n\r\nabcd", "400"),
        ("POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4, 4\r\n\r\nabcd", "400"),
        ("POST / HTTP/1.1\r\nhost: x\r\ncontent-length: +4\r\n\r\nabcd", "400"),
        ("POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n", "400"),
        ("POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n", "400"),
        ("POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\n", "501"),
        ("POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n", "501"),
        ("POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked, chunked\r\n\r\n0\r\n\r\n", "501"),
        ("POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", "200"),
        ("GET / HTTP/1.1\r\n\r\n", "400"),
        ("GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n", "400"),
        ("GET / HTTP/1.1\r\nhost: a b\r\n\r\n", "400"),
        ("GET / HTTP/1.1\r\nhost: user@a\r\n\r\n", "400"),
        ("GET / HTTP/1.1\r\nhost: a\r\nconnection: keep-alive, Host\r\n\r\n", "400"),
        (huge.as_str(), "431"),
        (over.as_str(), "431"),
        (many.as_str(), "431"),
    ] {
        let (mut client, _drain, served) = connect().await;
        client.write_all(request.as_bytes()).await.unwrap();
        let text = read_all(&mut client).await;
        assert_eq!(text.split(' ').nth(1), Some(status), "{:.60}: {text}", request);
        assert!(text.contains("connection: close"), "{text}");
        let ended = served.await.unwrap();
        assert_eq!(ended.is_err(), status != "200", "{:.60}", request);
    }
    for request in [under.as_str(), "GET / HTTP/1.0\r\n\r\n", "GET / HTTP/1.1\r\nhost:\r\n\r\n"] {
        let (mut client, _drain, _served) = connect().await;
        client.write_all(request.as_bytes()).await.unwrap();
        let text = read_all(&mut client).await;
        assert_eq!(text.split(' ').nth(1), Some("200"), "{:.60}: {text}", request);
    }
}

#[tokio::test]
async fn slow_heads_time_out_and_draining_closes_idle_connections() {
    let (mut client, _drain, served) = connect().await;
    client.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let text = read_all(&mut client).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(matches!(served.await.unwrap(), Err(ServeError::HeaderTimeout(_))));

    // Kept alive past the header timeout: idle is not slow. (Idle that
    // long, the connection gave its buffers back; the next request,
    // longer than the first read after that, takes them again.)
    let (mut client, drain, served) = connect().await;
    client.write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    read_until(&mut client, "expect", 1).await;
    tokio::time::sleep(settings().header_timeout * 3).await;
    let long = format!("GET /b HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\n\r\n", "p".repeat(600));
    client.write_all(long.as_bytes()).await.unwrap();
    assert!(read_until(&mut client, "expect", 1).await.contains("GET /b"));
    drain.send(true).unwrap();
    assert!(matches!(served.await.unwrap(), Ok(Served::Closed)), "an idle connection closes on drain");
    assert_eq!(read_all(&mut client).await, "");
}

#[tokio::test]
async fn the_h2_preface_hands_the_connection_over_untouched() {
    let (mut client, _drain, served) = connect().await;
    client.write_all(&H2_PREFACE[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    client.write_all(&H2_PREFACE[10..]).await.unwrap();
    client.write_all(b"frames").await.unwrap();
    let Ok(Served::Http2(mut io)) = served.await.unwrap() else { panic!("not handed over") };
    let mut seen = vec![0u8; H2_PREFACE.len() + 6];
    io.read_exact(&mut seen).await.unwrap();
    assert_eq!(&seen[..H2_PREFACE.len()], H2_PREFACE);
    assert_eq!(&seen[H2_PREFACE.len()..], b"frames");
}

#[tokio::test]
async fn an_upgrade_hands_the_connection_to_the_handler_after_the_101() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (io, _) = listener.accept().await.unwrap();
        let (_drain, mut draining) = watch::channel(false);
        serve(io, settings(), &mut draining, |mut req: Request<Body>| async move {
            let upgrade = req.extensions_mut().remove::<OnUpgrade>().expect("an upgrade was asked for");
            tokio::spawn(async move {
                let mut io = upgrade.connection().await.expect("switched");
                let mut hello = [0u8; 5];
                io.read_exact(&mut hello).await.unwrap();
                io.write_all(&hello.to_ascii_uppercase()).await.unwrap();
            });
            let mut r = Response::new(body::empty());
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("upgrade"));
            r.headers_mut().insert(UPGRADE, http::HeaderValue::from_static("echo"));
            r
        })
        .await
    });
    let mut client = TcpStream::connect(addr).await.unwrap();
    // The first bytes of the new protocol ride with the request.
    client.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\nhel").await.unwrap();
    let head = read_until(&mut client, "\r\n\r\n", 1).await;
    assert!(head.starts_with("HTTP/1.1 101 Switching Protocols\r\n") && !head.contains("connection: close"), "{head}");
    assert!(!head.contains("content-length"), "a 1xx answer has no framing: {head}");
    client.write_all(b"lo").await.unwrap();
    assert_eq!(read_until(&mut client, "HELLO", 1).await, "HELLO");
    assert!(matches!(server.await.unwrap(), Ok(Served::Closed)));
}

#[tokio::test]
async fn http_1_0_is_426_unless_accepted() {
    let refused = DownstreamLimits { accept_http_10: false, ..settings() };
    let (mut client, _drain, served) = connect_with(refused).await;
    client.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    assert!(read_all(&mut client).await.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
    assert!(matches!(served.await.unwrap(), Err(ServeError::Http10)));
}

#[tokio::test]
async fn a_new_connection_that_sends_nothing_is_closed_without_an_answer() {
    let (mut client, _drain, served) = connect().await;
    assert_eq!(read_all(&mut client).await, "", "it asked nothing: no 408");
    assert!(matches!(served.await.unwrap(), Err(ServeError::NothingSent(_))));
}

#[tokio::test]
async fn head_size_and_field_count_are_the_operators_to_set() {
    let fields = |n: usize| (0..n).map(|i| format!("x-{i}: 1\r\n")).collect::<String>();
    let small = DownstreamLimits { max_request_headers_bytes: 2048, max_headers: 5, ..settings() };
    let large = DownstreamLimits { max_headers: 300, ..settings() };
    for (limits, request, status) in [
        (small, format!("GET / HTTP/1.1\r\nhost: x\r\n{}\r\n", fields(4)), "200"),
        (small, format!("GET / HTTP/1.1\r\nhost: x\r\n{}\r\n", fields(5)), "431"),
        (small, format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "a".repeat(3000)), "431"),
        (large, format!("GET / HTTP/1.1\r\nhost: x\r\n{}connection: close\r\n\r\n", fields(250)), "200"),
        (settings(), format!("GET / HTTP/1.1\r\nhost: x\r\n{}\r\n", fields(100)), "431"),
    ] {
        let (mut client, _drain, _served) = connect_with(limits).await;
        client.write_all(request.as_bytes()).await.unwrap();
        let text = read_until(&mut client, "HTTP/1.1 ", 1).await;
        assert!(text.starts_with(&format!("HTTP/1.1 {status}")), "{} fields: {text}", request.lines().count());
    }
}

/// A body that stalls past the stream idle timeout, or trickles past the
/// request timeout, fails the handler's read (the proxy answers 408).
#[tokio::test]
async fn slow_bodies_time_out_between_bytes_and_as_a_whole() {
    let idle = DownstreamLimits { stream_idle_timeout: Some(Duration::from_millis(200)), ..settings() };
    let (mut client, _drain, _served) = connect_with(idle).await;
    client.write_all(b"POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc").await.unwrap();
    let text = read_until(&mut client, "body error", 1).await;
    assert!(text.contains("body error: request body timed out"), "{text}");

    let whole = DownstreamLimits { request_timeout: Some(Duration::from_millis(300)), ..settings() };
    let (mut client, _drain, _served) = connect_with(whole).await;
    client.write_all(b"POST /up HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n").await.unwrap();
    let started = Instant::now();
    let mut answer = String::new();
    for _ in 0..20 {
        if client.write_all(b"1\r\na\r\n").await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut buf = [0u8; 512];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), client.read(&mut buf)).await {
            answer.push_str(&String::from_utf8_lossy(&buf[..n]));
            break;
        }
    }
    answer.push_str(&read_until(&mut client, "body error", 1).await);
    assert!(answer.contains("body error: request body timed out"), "{answer}");
    assert!(started.elapsed() < Duration::from_millis(900), "{:?}", started.elapsed());
}
