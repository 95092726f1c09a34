//! Downstream HTTP/1.1 on a keep-alive connection on 127.0.0.1:
//! mesh-proxy's `downstream` server against hyper's HTTP/1 server, side by
//! side in one run (the ratio is the figure). `one` is a request and its
//! answer, a round trip of system calls and loopback TCP that both pay
//! alike; `pipelined_16` writes 16 requests at once and reads the 16
//! answers, so that the codec's own work shows. The handler answers every
//! request with an 11-byte body; the client is a raw socket.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use mesh_proxy::body::{self, Body};
use mesh_proxy::downstream;
use mesh_proxy::limits::DownstreamLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const REQUEST: &[u8] = b"GET /hello HTTP/1.1\r\nhost: gateway\r\nuser-agent: bench\r\naccept: */*\r\n\r\n";

async fn hello_ours(_req: Request<Body>) -> Response<Body> {
    Response::new(body::full(Bytes::from_static(b"hello world")))
}

/// A listener on 127.0.0.1 serving each connection with `serve`.
async fn listen<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let _ = io.set_nodelay(true);
            tokio::spawn(serve(io));
        }
    });
    addr
}

async fn ours(io: TcpStream) {
    let (_keep, mut drain) = tokio::sync::watch::channel(false);
    let settings = DownstreamLimits::default();
    let _ = downstream::serve(io, settings, &mut drain, hello_ours).await;
}

async fn hyper(io: TcpStream) {
    let service = hyper::service::service_fn(|_req| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello world"))))
    });
    let _ =
        hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(io), service).await;
}

/// Send `requests` (each [`REQUEST`]) at once and read all the answers
/// (each ends with its body).
async fn exchange(client: &mut TcpStream, requests: &[u8], answers: usize, buf: &mut [u8]) {
    client.write_all(requests).await.expect("write");
    let (mut filled, mut seen, mut scanned) = (0, 0, 0);
    while seen < answers {
        let n = client.read(&mut buf[filled..]).await.expect("read");
        assert!(n > 0, "the server closed the connection");
        filled += n;
        while let Some(at) = buf[scanned..filled].windows(11).position(|w| w == b"hello world") {
            seen += 1;
            scanned += at + 11;
        }
    }
}

fn downstream_server(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let servers = [("mesh_proxy_downstream", rt.block_on(listen(ours))), ("hyper_http1", rt.block_on(listen(hyper)))];
    for (name, addr) in servers {
        let mut client = rt.block_on(TcpStream::connect(addr)).expect("connect");
        let _ = client.set_nodelay(true);
        let mut buf = vec![0u8; 64 * 1024];
        let pipelined = REQUEST.repeat(16);
        c.bench_function(&format!("downstream_server/one/{name}"), |b| {
            b.iter(|| rt.block_on(exchange(&mut client, REQUEST, 1, &mut buf)))
        });
        c.bench_function(&format!("downstream_server/pipelined_16/{name}"), |b| {
            b.iter(|| rt.block_on(exchange(&mut client, &pipelined, 16, &mut buf)))
        });
    }
}

criterion_group!(benches, downstream_server);
criterion_main!(benches);
