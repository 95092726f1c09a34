//! The JSON access log, written to stdout through a buffer, as Envoy's
//! file access log is: lines gather in memory and go out in one `write`
//! when the buffer is full or once a second, not one system call per
//! request. The writes happen on a thread of their own, so a slow reader
//! of stdout never blocks the request path.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::ascii::{push_int, push_json_str, push_socket_addr};

/// Lines are handed to the writer once this much is buffered.
const FLUSH_AT: usize = 64 * 1024;
/// ... and at least this often (Envoy's `file_flush_interval` default).
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Room past `FLUSH_AT` for the line that crosses it.
const LINE_ROOM: usize = 4 * 1024;
/// How long draining waits for the log to be written.
const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// One request's line.
pub struct Entry<'a> {
    /// Since the Unix epoch.
    pub start_time: Duration,
    pub method: &'a str,
    pub path: &'a str,
    pub authority: &'a str,
    pub response_code: u16,
    pub response_flags: &'static str,
    pub duration: Duration,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_cluster: &'a str,
    pub route_name: &'a str,
    pub x_request_id: &'a str,
    /// The mTLS peer's SPIFFE ID (Envoy's `DOWNSTREAM_PEER_URI_SAN`).
    pub downstream_peer_uri_san: Option<&'a str>,
}

impl Entry<'_> {
    /// The line as one JSON object, `duration_ms` to the microsecond.
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"start_time_ms\":");
        // As u64: u128 digits go through a slow 128-bit division.
        push_int(out, u64::try_from(self.start_time.as_millis()).unwrap_or(u64::MAX));
        let strings: [(&[u8], &str); 3] =
            [(b",\"method\":", self.method), (b",\"path\":", self.path), (b",\"authority\":", self.authority)];
        push_json_fields(out, strings);
        out.extend_from_slice(b",\"response_code\":");
        push_int(out, self.response_code);
        out.extend_from_slice(b",\"response_flags\":");
        push_json_str(out, self.response_flags);
        out.extend_from_slice(b",\"duration_ms\":");
        let micros = u64::try_from(self.duration.as_micros()).unwrap_or(u64::MAX);
        push_int(out, micros / 1000);
        let fraction = (micros % 1000) as u16;
        out.extend_from_slice(&[
            b'.',
            b'0' + (fraction / 100) as u8,
            b'0' + (fraction / 10 % 10) as u8,
            b'0' + (fraction % 10) as u8,
        ]);
        out.extend_from_slice(b",\"upstream_host\":");
        match self.upstream_host {
            Some(addr) => {
                out.push(b'"');
                push_socket_addr(out, addr);
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        push_json_fields(
            out,
            [
                (b",\"upstream_cluster\":", self.upstream_cluster),
                (b",\"route_name\":", self.route_name),
                (b",\"x_request_id\":", self.x_request_id),
            ],
        );
        out.extend_from_slice(b",\"downstream_peer_uri_san\":");
        match self.downstream_peer_uri_san {
            Some(uri) => push_json_str(out, uri),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b"}\n");
    }
}

/// String fields, each key given with its comma, colon and quotes.
fn push_json_fields<const N: usize>(out: &mut Vec<u8>, fields: [(&[u8], &str); N]) {
    for (key, value) in fields {
        out.extend_from_slice(key);
        push_json_str(out, value);
    }
}

enum Job {
    Write(Vec<u8>),
    /// Answer once everything before has been written.
    Sync(mpsc::Sender<()>),
}

pub struct AccessLog {
    buffer: Mutex<Vec<u8>>,
    /// `None` if the writer thread could not be started: lines are then
    /// written where they are flushed.
    writer: Option<mpsc::Sender<Job>>,
}

impl Default for AccessLog {
    fn default() -> AccessLog {
        let (jobs, queue) = mpsc::channel::<Job>();
        let started = std::thread::Builder::new().name("access-log".into()).spawn(move || {
            for job in queue {
                match job {
                    Job::Write(lines) => write_out(&lines),
                    Job::Sync(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        if let Err(e) = &started {
            tracing::warn!("access log writer thread: {e}; writing from the request path");
        }
        AccessLog { buffer: Mutex::default(), writer: started.ok().map(|_| jobs) }
    }
}

impl AccessLog {
    pub fn write(&self, entry: &Entry<'_>) {
        let mut buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        if buffer.capacity() == 0 {
            // Sized once, so lines are not copied as it grows.
            buffer.reserve(FLUSH_AT + LINE_ROOM);
        }
        entry.write_json(&mut buffer);
        if buffer.len() >= FLUSH_AT {
            let lines = std::mem::take(&mut *buffer);
            drop(buffer);
            self.hand_over(lines);
        }
    }

    /// Hand what is buffered to the writer (the flush timer).
    pub fn flush(&self) {
        let lines = std::mem::take(&mut *self.buffer.lock().unwrap_or_else(PoisonError::into_inner));
        if !lines.is_empty() {
            self.hand_over(lines);
        }
    }

    /// Flush, and wait (up to 5 s) until all of it is written (draining).
    pub fn flush_and_wait(&self) {
        self.flush();
        if let Some(writer) = &self.writer {
            let (done, written) = mpsc::channel();
            if writer.send(Job::Sync(done)).is_ok() {
                let _ = written.recv_timeout(DRAIN_WAIT);
            }
        }
    }

    fn hand_over(&self, lines: Vec<u8>) {
        match &self.writer {
            Some(writer) => {
                if let Err(mpsc::SendError(Job::Write(lines))) = writer.send(Job::Write(lines)) {
                    write_out(&lines);
                }
            }
            None => write_out(&lines),
        }
    }
}

fn write_out(lines: &[u8]) {
    let mut out = std::io::stdout().lock();
    // Nowhere to report a failed log write; the lines are dropped.
    let _ = out.write_all(lines).and_then(|()| out.flush());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(entry: &Entry<'_>) -> serde_json::Value {
        let mut out = Vec::new();
        entry.write_json(&mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn an_entry_is_one_line_of_json_with_envoys_fields() {
        let entry = Entry {
            start_time: Duration::from_millis(1_764_633_600_123),
            method: "GET",
            path: "/a \"quoted\"\\path?q=\u{1}&n=ü",
            authority: "web:8080",
            response_code: 503,
            response_flags: "UF",
            duration: Duration::from_micros(12_034),
            upstream_host: Some("10.1.2.3:9080".parse().unwrap()),
            upstream_cluster: "outbound|9080||web.default.svc.cluster.local",
            route_name: "to-web",
            x_request_id: "4a0e5b2c-0000-4000-8000-000000000001",
            downstream_peer_uri_san: Some("spiffe://cluster.local/ns/foo/sa/sleep"),
        };
        let v = json(&entry);
        assert_eq!(v["downstream_peer_uri_san"], "spiffe://cluster.local/ns/foo/sa/sleep");
        assert_eq!(v["start_time_ms"], 1_764_633_600_123u64);
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], entry.path);
        assert_eq!(v["authority"], "web:8080");
        assert_eq!(v["response_code"], 503);
        assert_eq!(v["response_flags"], "UF");
        assert_eq!(v["duration_ms"], 12.034);
        assert_eq!(v["upstream_host"], "10.1.2.3:9080");
        assert_eq!(v["upstream_cluster"], entry.upstream_cluster);
        assert_eq!(v["route_name"], "to-web");
        assert_eq!(v["x_request_id"], entry.x_request_id);
        assert_eq!(v.as_object().unwrap().len(), 12);

        let local = json(&Entry { upstream_host: None, duration: Duration::from_micros(7), ..entry });
        assert_eq!(local["upstream_host"], serde_json::Value::Null);
        assert_eq!(local["duration_ms"], 0.007);
    }
}
