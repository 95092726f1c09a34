//! In-process trace collectors for tests, on the published protocols:
//! Zipkin's v2 JSON API and OTLP over HTTP (one small HTTP/1.1 server
//! that keeps what is POSTed), and OTLP over gRPC (tonic with
//! opentelemetry-proto's service). Each serves until the test process
//! ends; what arrives comes out of a channel.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use prost::Message;

/// What one POST carried: its path and body.
pub type Posted = (String, Vec<u8>);

/// An HTTP server on 127.0.0.1 that answers every POST with 202 and sends
/// it down the channel; its port.
pub fn http_collector() -> (u16, mpsc::Receiver<Posted>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut reader = BufReader::new(stream);
                while let Some(posted) = read_post(&mut reader) {
                    let answer = b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n";
                    if reader.get_mut().write_all(answer).is_err() || tx.send(posted).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, rx)
}

/// One request, its body by `content-length` or chunked (as Envoy sends
/// spans); `None` at the end.
fn read_post(reader: &mut BufReader<std::net::TcpStream>) -> Option<Posted> {
    let mut line = String::new();
    reader.read_line(&mut line).ok().filter(|n| *n > 0)?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let (mut length, mut chunked) = (0usize, false);
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok().filter(|n| *n > 0)?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.trim().eq_ignore_ascii_case("chunked");
            }
        }
    }
    if !chunked {
        let mut body = vec![0; length];
        reader.read_exact(&mut body).ok()?;
        return Some((path, body));
    }
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).ok().filter(|n| *n > 0)?;
        let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk).ok()?;
        if size == 0 {
            return Some((path, body));
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

struct Receiver(tokio::sync::mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC collector on 127.0.0.1; its port, and the requests.
pub fn otlp_grpc_collector() -> (u16, mpsc::Receiver<ExportTraceServiceRequest>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(async move {
            let (requests, mut received) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move {
                while let Some(r) = received.recv().await {
                    if tx.send(r).is_err() {
                        return;
                    }
                }
            });
            listener.set_nonblocking(true).expect("nonblocking");
            let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Receiver(requests)))
                .serve_with_incoming(incoming)
                .await;
        });
    });
    (port, rx)
}

/// An OTLP/HTTP body as its request.
pub fn otlp_request(body: &[u8]) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest::decode(body).expect("an OTLP export request")
}
