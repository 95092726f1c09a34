//! One upstream HTTP/1.1 request and its whole response over a pooled
//! keep-alive connection on 127.0.0.1: mesh-proxy's `http1` client against
//! hyper-util's pooled client, side by side in one run (the ratio is the
//! figure; both pay the same four system calls and loopback TCP).
//!
//! The server is a plain keep-alive loop in the same runtime, answering
//! every request with an 11-byte body.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use http_body_util::{BodyExt, Empty};
use mesh_proxy::http1::{Http1Pool, RequestBody, RequestHead};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 11\r\n\r\nhello world";

/// Answer each request head with [`RESPONSE`], on every connection.
async fn server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let _ = socket.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut filled = 0;
                loop {
                    match socket.read(&mut buf[filled..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => filled += n,
                    }
                    while let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
                        if socket.write_all(RESPONSE).await.is_err() {
                            return;
                        }
                        buf.copy_within(end + 4..filled, 0);
                        filled -= end + 4;
                    }
                }
            });
        }
    });
    addr
}

fn upstream_client(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let addr = rt.block_on(server());
    let mut headers = HeaderMap::new();
    headers.insert(http::header::HOST, HeaderValue::from_static("backend"));
    headers.insert(http::header::USER_AGENT, HeaderValue::from_static("bench"));

    let ours = Http1Pool::new(Duration::from_secs(1), Duration::from_secs(60), None).host(addr);
    c.bench_function("upstream_client/mesh_proxy_http1", |b| {
        b.iter(|| {
            rt.block_on(async {
                let head = RequestHead { method: &Method::GET, path: "/hello", headers: &headers };
                let response = ours.send(head, RequestBody::Full(Bytes::new()), None).await.expect("response");
                response.into_body().collect().await.expect("body").to_bytes()
            })
        })
    });

    let hyper =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: http::Uri = format!("http://{addr}/hello").parse().expect("uri");
    c.bench_function("upstream_client/hyper_util_legacy", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut req = http::Request::new(Empty::new());
                *req.uri_mut() = uri.clone();
                *req.headers_mut() = headers.clone();
                let response = hyper.request(req).await.expect("response");
                response.into_body().collect().await.expect("body").to_bytes()
            })
        })
    });
}

criterion_group!(benches, upstream_client);
criterion_main!(benches);
