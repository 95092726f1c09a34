//! One downstream HTTP/1.1 request and its answer on a keep-alive
//! connection on 127.0.0.1: mesh-proxy's `downstream` server against
//! hyper's HTTP/1 server, side by side in one run (the ratio is the figure;
//! both pay the same system calls and loopback TCP). The handler answers
//! every request with an 11-byte body; the client is a raw socket.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use mesh_proxy::body::{self, Body};
use mesh_proxy::downstream::{self, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const REQUEST: &[u8] = b"GET /hello HTTP/1.1\r\nhost: gateway\r\nuser-agent: bench\r\naccept: */*\r\n\r\n";

async fn hello_ours(_req: Request<Body>) -> Response<Body> {
    Response::new(body::full(Bytes::from_static(b"hello world")))
}

async fn listen() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    (listener, addr)
}

async fn ours() -> SocketAddr {
    let (listener, addr) = listen().await;
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let _ = io.set_nodelay(true);
            tokio::spawn(async move {
                let (_keep, mut drain) = tokio::sync::watch::channel(false);
                let settings =
                    Settings { header_timeout: Duration::from_secs(10), idle_timeout: Duration::from_secs(60) };
                let _ = downstream::serve(io, settings, &mut drain, hello_ours).await;
            });
        }
    });
    addr
}

async fn hyper() -> SocketAddr {
    let (listener, addr) = listen().await;
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let _ = io.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello world"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(io), service)
                    .await;
            });
        }
    });
    addr
}

/// Send one request and read its whole answer (it ends with the body).
async fn exchange(client: &mut TcpStream, buf: &mut [u8]) {
    client.write_all(REQUEST).await.expect("write");
    let mut filled = 0;
    while !buf[..filled].ends_with(b"hello world") {
        let n = client.read(&mut buf[filled..]).await.expect("read");
        assert!(n > 0, "the server closed the connection");
        filled += n;
    }
}

fn downstream_server(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    for (name, addr) in [("mesh_proxy_downstream", rt.block_on(ours())), ("hyper_http1", rt.block_on(hyper()))] {
        let mut client = rt.block_on(TcpStream::connect(addr)).expect("connect");
        let _ = client.set_nodelay(true);
        let mut buf = vec![0u8; 4096];
        c.bench_function(&format!("downstream_server/{name}"), |b| {
            b.iter(|| rt.block_on(exchange(&mut client, &mut buf)))
        });
    }
}

criterion_group!(benches, downstream_server);
criterion_main!(benches);
