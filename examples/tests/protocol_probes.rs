//! The gateway's other paths probed as its HTTP/1.1 path was: WebSocket
//! tunnels, TCP routes, HTTP/2 and TLS, with clients and upstreams that go
//! away, malformed frames, and peers that say nothing.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{free_port, routes, write_mesh, Gateway, Proc, Service};

/// A TCP peer that answers an HTTP upgrade with 101 and then echoes, and
/// writes how many connections it holds open to a file whenever that
/// changes. A line `bye` makes it close the connection itself.
const COUNTING_ECHO: &str = r#"
import socket, sys, threading
path = sys.argv[1]
lock = threading.Lock()
open_now = 0
def note(delta):
    global open_now
    with lock:
        open_now += delta
        with open(path, "w") as f: f.write(str(open_now))
def serve(c):
    note(1)
    try:
        data = c.recv(65536)
        if data.startswith(b"GET ") and b"upgrade" in data.lower():
            c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: probe\r\n\r\n")
            data = b""
        while True:
            if b"bye" in data:
                break
            if data:
                c.sendall(data)
            data = c.recv(65536)
            if not data:
                break
    except OSError:
        pass
    c.close()
    note(-1)
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(64)
print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

struct Echo {
    _proc: Proc,
    port: u16,
    count: PathBuf,
}

impl Echo {
    fn start(dir: &Path) -> Echo {
        let count = dir.join("open.txt");
        let mut command = std::process::Command::new("python3");
        command.args(["-c", COUNTING_ECHO]).arg(&count);
        let (proc, line) = mesh_testkit::process::announced(command, "");
        Echo { _proc: proc, port: line.parse().expect("the echo's port"), count }
    }

    fn open(&self) -> usize {
        std::fs::read_to_string(&self.count).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0)
    }

    fn wait_open(&self, want: usize) {
        let reached = common::wait_until(Duration::from_secs(10), || self.open() == want);
        assert!(reached, "the upstream holds {} connections, not {want}", self.open());
    }
}

/// The gateway with an HTTP route and a TCP server, both to `upstream`.
fn gateway(dir: &Path, upstream: u16, extra: &[&str]) -> (Gateway, u16) {
    let port = free_port();
    let tcp_port = free_port();
    write_mesh(dir, port, &[Service { name: "echo", backends: &[("v1", upstream)] }], "");
    let tcp = format!("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: tcp-gw, namespace: default}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: {tcp_port}, name: tcp, protocol: TCP}}\n    hosts: [\"*\"]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: tcp-routes, namespace: default}}\nspec:\n  hosts: [\"*\"]\n  gateways: [tcp-gw]\n  tcp:\n  - route:\n    - destination: {{host: echo}}\n");
    std::fs::write(dir.join("tcp.yaml"), tcp).unwrap();
    std::fs::write(dir.join("routes.yaml"), routes("echo", "  - route:\n    - destination: {host: echo}\n")).unwrap();
    let g = Gateway::start_with(dir, port, extra, std::process::Stdio::null());
    assert!(common::wait_until(Duration::from_secs(10), || TcpStream::connect(("127.0.0.1", tcp_port)).is_ok()));
    (g, tcp_port)
}

/// Read until the peer closes (true) or `limit` passes (false).
fn closes_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            _ => {}
        }
    }
    false
}

fn upgraded(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: probe\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut head = [0u8; 512];
    let n = s.read(&mut head).unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 101"), "{:?}", String::from_utf8_lossy(&head[..n]));
    s
}

fn echoes(s: &mut TcpStream) {
    s.write_all(b"ping").unwrap();
    let mut back = [0u8; 4];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping");
}

#[test]
fn upgraded_and_tcp_tunnels_close_both_ways_and_a_dead_upstream_closes_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::start(dir.path());
    let (g, tcp_port) = gateway(dir.path(), echo.port, &[]);
    let connect =
        |upgrade: bool| if upgrade { upgraded(g.port) } else { TcpStream::connect(("127.0.0.1", tcp_port)).unwrap() };
    for upgrade in [true, false] {
        // The client leaves: the upstream connection goes with it.
        let mut s = connect(upgrade);
        echoes(&mut s);
        echo.wait_open(1);
        drop(s);
        echo.wait_open(0);
        // The upstream leaves: the client is told.
        let mut s = connect(upgrade);
        echoes(&mut s);
        s.write_all(b"bye").unwrap();
        assert!(closes_within(&mut s, Duration::from_secs(5)), "the client's side closes with the upstream's");
        echo.wait_open(0);
    }
    // No upstream at all: the TCP client is closed, not left hanging.
    drop(echo);
    let mut s = TcpStream::connect(("127.0.0.1", tcp_port)).unwrap();
    let _ = s.write_all(b"hello");
    assert!(closes_within(&mut s, Duration::from_secs(5)), "a TCP client of a dead upstream is closed");
}

/// HTTP/2 frames the proxy must refuse, written raw after the preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The frame types the peer sent until it closed or went quiet.
fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut kinds = Vec::new();
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        kinds.push(bytes[3]);
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    kinds
}

#[test]
fn malformed_http2_gets_goaway_and_the_gateway_keeps_serving() {
    const GOAWAY: u8 = 7;
    let dir = tempfile::tempdir().unwrap();
    let (_b, backend) = common::backend("v1", 0);
    let (g, _) = gateway(dir.path(), backend, &[]);
    for (name, frames) in [
        ("HEADERS with a broken HPACK block", frame(1, 0x5, 1, &[0xff, 0xff, 0xff, 0xff, 0xff])),
        ("DATA on stream 0", frame(0, 0x1, 0, b"x")),
        ("a SETTINGS frame of odd length", frame(4, 0, 0, &[0, 1, 0])),
        ("HEADERS on an even stream", frame(1, 0x5, 2, &[0x82, 0x86, 0x84])),
        ("a frame over the maximum size", frame(0, 0, 1, &vec![0u8; 20_000])),
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", g.port)).unwrap();
        s.write_all(PREFACE).unwrap();
        s.write_all(EMPTY_SETTINGS).unwrap();
        let _ = s.write_all(&frames);
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut seen = Vec::new();
        let _ = s.read_to_end(&mut seen);
        assert!(frame_types(&seen).contains(&GOAWAY), "{name}: no GOAWAY in {:?}", frame_types(&seen));
    }
    let answer = g.get("/", &[]);
    assert_eq!(answer.status, 200, "still serving");
}

#[test]
fn tls_listeners_close_garbage_and_silent_clients_and_count_them() {
    let (_b, backend) = common::backend("v1", 0);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cert = common::write_tls_mesh(dir.path(), port, "probe.example.com", backend);
    let g = Gateway::launch(
        &["--config", &dir.path().to_string_lossy()],
        port,
        &["--header-read-timeout", "1"],
        std::process::Stdio::null(),
    );
    // Plain HTTP on the TLS port, then a client that says nothing.
    let mut plain = TcpStream::connect(("127.0.0.1", port)).unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").unwrap();
    assert!(closes_within(&mut plain, Duration::from_secs(5)), "plain text on a TLS port is closed");
    let started = Instant::now();
    let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(closes_within(&mut silent, Duration::from_secs(5)), "a silent TLS client is closed");
    assert!(started.elapsed() >= Duration::from_millis(900), "at the header timeout, not before");
    // A client that leaves mid-handshake.
    let mut half = TcpStream::connect(("127.0.0.1", port)).unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
    drop(half);
    let stats = g.admin_get("/stats").unwrap().body;
    let counted =
        |name: &str| stats.lines().find_map(|l| l.strip_prefix(&format!("{name}: "))?.parse::<u64>().ok()).unwrap_or(0);
    assert!(counted("http.downstream_cx_error") >= 1, "{stats}");
    assert!(counted("http.downstream_header_timeout") >= 1, "{stats}");
    // And a real client still gets served.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let answer = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("probe.example.com").unwrap();
        let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
        tokio::io::AsyncWriteExt::write_all(
            &mut tls,
            b"GET / HTTP/1.1\r\nhost: probe.example.com\r\nconnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut tls, &mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    });
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
