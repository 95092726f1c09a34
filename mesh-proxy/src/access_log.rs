//! The access log in Istio's default format (text or JSON), written to
//! stdout through a buffer, as Envoy's
//! file access log is: lines gather in memory and go out in one `write`
//! when the buffer is full or once a second, not one system call per
//! request. The writes happen on a thread of their own, so a slow reader
//! of stdout never blocks the request path.

use std::borrow::Cow;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use crate::ascii::{push_int, push_json_str, push_socket_addr};

/// Lines are handed to the writer once this much is buffered.
const FLUSH_AT: usize = 64 * 1024;
/// ... and at least this often (Envoy's `file_flush_interval` default).
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Room past `FLUSH_AT` for the line that crosses it.
const LINE_ROOM: usize = 4 * 1024;
/// How long draining waits for the log to be written.
const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// How lines are written: Istio's `accessLogEncoding`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Encoding {
    /// Istio's default text format (Envoy's format string of Istio 1.9 on).
    #[default]
    Text,
    /// The same fields as one JSON object a line.
    Json,
}

/// One exchange's line: the fields of Istio's default access log format.
/// Strings borrow from the exchange; [`Entry::into_owned`] keeps a line
/// whose end (a streamed response's) comes later.
#[derive(Clone, Debug)]
pub struct Entry<'a> {
    pub start_time: SystemTime,
    pub method: Cow<'a, str>,
    /// The path as the client sent it, query included.
    pub path: Cow<'a, str>,
    /// `HTTP/1.1`, `HTTP/2`, or for a TCP connection none.
    pub protocol: Option<&'static str>,
    pub response_code: u16,
    pub response_flags: &'static str,
    pub response_code_details: &'static str,
    /// Body bytes, as Envoy's `%BYTES_RECEIVED%` and `%BYTES_SENT%` count.
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration: Duration,
    /// Milliseconds the upstream took to its response head.
    pub upstream_service_time: Option<u64>,
    pub x_forwarded_for: Option<Cow<'a, str>>,
    pub user_agent: Option<Cow<'a, str>>,
    pub request_id: Cow<'a, str>,
    pub authority: Cow<'a, str>,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_cluster: Cow<'a, str>,
    pub downstream_local_address: Option<SocketAddr>,
    pub downstream_remote_address: Option<SocketAddr>,
    /// The SNI of a TLS connection.
    pub requested_server_name: Option<Cow<'a, str>>,
    pub route_name: Cow<'a, str>,
}

impl Entry<'_> {
    /// A TCP connection's line, its bytes and duration to be filled as it
    /// closes: no method, path, protocol or response code, as Envoy's TCP
    /// proxy logs.
    pub fn tcp(
        cluster: String,
        response_flags: &'static str,
        upstream_host: Option<SocketAddr>,
        (remote, local): (SocketAddr, Option<SocketAddr>),
    ) -> Entry<'static> {
        Entry {
            start_time: SystemTime::now(),
            method: Cow::Borrowed(""),
            path: Cow::Borrowed(""),
            protocol: None,
            response_code: 0,
            response_flags,
            response_code_details: "",
            bytes_received: 0,
            bytes_sent: 0,
            duration: Duration::ZERO,
            upstream_service_time: None,
            x_forwarded_for: None,
            user_agent: None,
            request_id: Cow::Borrowed(""),
            authority: Cow::Borrowed(""),
            upstream_host,
            upstream_cluster: Cow::Owned(cluster),
            downstream_local_address: local,
            downstream_remote_address: Some(remote),
            requested_server_name: None,
            route_name: Cow::Borrowed(""),
        }
    }

    /// The same line, owning its strings.
    pub fn into_owned(self) -> Entry<'static> {
        let own = |c: Cow<'_, str>| Cow::Owned(c.into_owned());
        Entry {
            method: own(self.method),
            path: own(self.path),
            x_forwarded_for: self.x_forwarded_for.map(own),
            user_agent: self.user_agent.map(own),
            request_id: own(self.request_id),
            authority: own(self.authority),
            upstream_cluster: own(self.upstream_cluster),
            requested_server_name: self.requested_server_name.map(own),
            route_name: own(self.route_name),
            ..self
        }
    }

    fn write(&self, encoding: Encoding, out: &mut Vec<u8>, times: &mut StartTimes) {
        match encoding {
            Encoding::Text => self.write_text(out, times),
            Encoding::Json => self.write_json(out, times),
        }
    }

    /// Istio's default text format:
    /// `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE%
    /// %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS%
    /// "%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION%
    /// %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%"
    /// "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW%
    /// %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS%
    /// %REQUESTED_SERVER_NAME% %ROUTE_NAME%`, `-` for what is not there.
    fn write_text(&self, out: &mut Vec<u8>, times: &mut StartTimes) {
        out.push(b'[');
        times.push(out, self.start_time);
        out.extend_from_slice(b"] \"");
        push_text(out, Some(&self.method));
        out.push(b' ');
        push_text(out, Some(&self.path));
        out.push(b' ');
        push_text(out, self.protocol);
        out.extend_from_slice(b"\" ");
        push_int(out, self.response_code);
        for value in [self.response_flags, self.response_code_details, "-"] {
            out.push(b' ');
            push_text(out, Some(value));
        }
        out.extend_from_slice(b" \"-\" ");
        push_int(out, self.bytes_received);
        out.push(b' ');
        push_int(out, self.bytes_sent);
        out.push(b' ');
        push_int(out, duration_ms(self.duration));
        out.push(b' ');
        match self.upstream_service_time {
            Some(ms) => push_int(out, ms),
            None => out.push(b'-'),
        }
        for value in
            [self.x_forwarded_for.as_deref(), self.user_agent.as_deref(), Some(&self.request_id), Some(&self.authority)]
        {
            out.extend_from_slice(b" \"");
            push_text(out, value);
            out.push(b'"');
        }
        out.extend_from_slice(b" \"");
        push_addr(out, self.upstream_host);
        out.extend_from_slice(b"\" ");
        push_text(out, Some(&self.upstream_cluster));
        out.extend_from_slice(b" - ");
        push_addr(out, self.downstream_local_address);
        out.push(b' ');
        push_addr(out, self.downstream_remote_address);
        out.push(b' ');
        push_text(out, self.requested_server_name.as_deref());
        out.push(b' ');
        push_text(out, Some(&self.route_name));
        out.push(b'\n');
    }

    /// Istio's JSON format: the text format's fields by name, numbers as
    /// numbers, `null` for what is not there.
    fn write_json(&self, out: &mut Vec<u8>, times: &mut StartTimes) {
        out.extend_from_slice(b"{\"start_time\":\"");
        times.push(out, self.start_time);
        out.push(b'"');
        let strings: [(&[u8], Option<&str>); 5] = [
            (b",\"method\":", Some(&self.method)),
            (b",\"path\":", Some(&self.path)),
            (b",\"protocol\":", self.protocol),
            (b",\"response_flags\":", Some(self.response_flags)),
            (b",\"response_code_details\":", Some(self.response_code_details)),
        ];
        push_json_fields(out, strings);
        let numbers: [(&[u8], Option<u64>); 5] = [
            (b",\"response_code\":", Some(u64::from(self.response_code))),
            (b",\"bytes_received\":", Some(self.bytes_received)),
            (b",\"bytes_sent\":", Some(self.bytes_sent)),
            (b",\"duration\":", Some(duration_ms(self.duration))),
            (b",\"upstream_service_time\":", self.upstream_service_time),
        ];
        for (key, value) in numbers {
            out.extend_from_slice(key);
            match value {
                Some(n) => push_int(out, n),
                None => out.extend_from_slice(b"null"),
            }
        }
        let strings: [(&[u8], Option<&str>); 9] = [
            (b",\"connection_termination_details\":", None),
            (b",\"upstream_transport_failure_reason\":", None),
            (b",\"x_forwarded_for\":", self.x_forwarded_for.as_deref()),
            (b",\"user_agent\":", self.user_agent.as_deref()),
            (b",\"request_id\":", Some(&self.request_id)),
            (b",\"authority\":", Some(&self.authority)),
            (b",\"upstream_cluster\":", Some(&self.upstream_cluster)),
            (b",\"upstream_local_address\":", None),
            (b",\"requested_server_name\":", self.requested_server_name.as_deref()),
        ];
        push_json_fields(out, strings);
        push_json_fields(out, [(b",\"route_name\":", Some(&*self.route_name))]);
        let addresses: [(&[u8], Option<SocketAddr>); 3] = [
            (b",\"upstream_host\":", self.upstream_host),
            (b",\"downstream_local_address\":", self.downstream_local_address),
            (b",\"downstream_remote_address\":", self.downstream_remote_address),
        ];
        for (key, value) in addresses {
            out.extend_from_slice(key);
            match value {
                Some(addr) => {
                    out.push(b'"');
                    push_socket_addr(out, addr);
                    out.push(b'"');
                }
                None => out.extend_from_slice(b"null"),
            }
        }
        out.extend_from_slice(b"}\n");
    }
}

/// Whole milliseconds, as Envoy's `%DURATION%`.
fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `%START_TIME%`'s default, `2026-12-06T19:57:03.123Z` (UTC), with the
/// date and time to the second kept while the second lasts: most lines of
/// a busy proxy share it.
#[derive(Default)]
pub struct StartTimes {
    second: Option<u64>,
    text: Vec<u8>,
}

impl StartTimes {
    fn push(&mut self, out: &mut Vec<u8>, at: SystemTime) {
        let since = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        if self.second != Some(since.as_secs()) {
            self.second = Some(since.as_secs());
            self.text.clear();
            let t = time::OffsetDateTime::from(at);
            let two = |out: &mut Vec<u8>, n: u8| out.extend_from_slice(&[b'0' + n / 10, b'0' + n % 10]);
            push_int(&mut self.text, t.year());
            self.text.push(b'-');
            two(&mut self.text, u8::from(t.month()));
            self.text.push(b'-');
            two(&mut self.text, t.day());
            self.text.push(b'T');
            two(&mut self.text, t.hour());
            self.text.push(b':');
            two(&mut self.text, t.minute());
            self.text.push(b':');
            two(&mut self.text, t.second());
        }
        out.extend_from_slice(&self.text);
        let ms = since.subsec_millis();
        out.extend_from_slice(&[
            b'.',
            b'0' + (ms / 100) as u8,
            b'0' + (ms / 10 % 10) as u8,
            b'0' + (ms % 10) as u8,
            b'Z',
        ]);
    }
}

/// A text field: `-` when empty or absent; bytes a terminal or a log
/// parser would take as structure (controls, quotes) escaped.
fn push_text(out: &mut Vec<u8>, value: Option<&str>) {
    match value.filter(|v| !v.is_empty()) {
        None => out.push(b'-'),
        // Almost every value: nothing to escape.
        Some(v) if !crate::ascii::needs_json_escape(v.as_bytes()) => out.extend_from_slice(v.as_bytes()),
        Some(v) => {
            for b in v.bytes() {
                match b {
                    b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
                    0..=0x1f | 0x7f => {
                        out.extend_from_slice(b"\\x");
                        out.extend_from_slice(&crate::ascii::HEX_PAIRS[usize::from(b)]);
                    }
                    _ => out.push(b),
                }
            }
        }
    }
}

fn push_addr(out: &mut Vec<u8>, addr: Option<SocketAddr>) {
    match addr {
        Some(addr) => push_socket_addr(out, addr),
        None => out.push(b'-'),
    }
}

/// String fields, each key given with its comma, colon and quotes; `null`
/// for an absent one.
fn push_json_fields<const N: usize>(out: &mut Vec<u8>, fields: [(&[u8], Option<&str>); N]) {
    for (key, value) in fields {
        out.extend_from_slice(key);
        // Empty is absent, as in the text format's `-`.
        match value.filter(|v| !v.is_empty()) {
            Some(v) => push_json_str(out, v),
            None => out.extend_from_slice(b"null"),
        }
    }
}

enum Job {
    Write(Vec<u8>),
    /// Answer once everything before has been written.
    Sync(mpsc::Sender<()>),
}

pub struct AccessLog {
    encoding: Encoding,
    buffer: Mutex<(Vec<u8>, StartTimes)>,
    /// `None` if the writer thread could not be started: lines are then
    /// written where they are flushed.
    writer: Option<mpsc::Sender<Job>>,
}

impl AccessLog {
    pub fn new(encoding: Encoding) -> AccessLog {
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
        AccessLog { encoding, buffer: Mutex::default(), writer: started.ok().map(|_| jobs) }
    }

    pub fn write(&self, entry: &Entry<'_>) {
        let mut locked = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        let (buffer, times) = &mut *locked;
        if buffer.capacity() == 0 {
            // Sized once, so lines are not copied as it grows.
            buffer.reserve(FLUSH_AT + LINE_ROOM);
        }
        entry.write(self.encoding, buffer, times);
        if buffer.len() >= FLUSH_AT {
            let lines = std::mem::take(buffer);
            drop(locked);
            self.hand_over(lines);
        }
    }

    /// Hand what is buffered to the writer (the flush timer).
    pub fn flush(&self) {
        let lines = std::mem::take(&mut self.buffer.lock().unwrap_or_else(PoisonError::into_inner).0);
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

    fn entry() -> Entry<'static> {
        Entry {
            start_time: UNIX_EPOCH + Duration::from_millis(1_796_587_023_123),
            method: "GET".into(),
            path: "/a \"quoted\"\\path?q=\u{1}&n=ü".into(),
            protocol: Some("HTTP/1.1"),
            response_code: 503,
            response_flags: "UF",
            response_code_details: "upstream_reset_before_response_started{connection_failure}",
            bytes_received: 12,
            bytes_sent: 91,
            duration: Duration::from_micros(12_734),
            upstream_service_time: None,
            x_forwarded_for: None,
            user_agent: Some("curl/8.5.0".into()),
            request_id: "4a0e5b2c-0000-4000-8000-000000000001".into(),
            authority: "web:8080".into(),
            upstream_host: Some("10.1.2.3:9080".parse().unwrap()),
            upstream_cluster: "outbound|9080||web.default.svc.cluster.local".into(),
            downstream_local_address: Some("10.1.2.9:8080".parse().unwrap()),
            downstream_remote_address: Some("10.1.2.7:40312".parse().unwrap()),
            requested_server_name: None,
            route_name: "to-web".into(),
        }
    }

    use std::time::UNIX_EPOCH;

    #[test]
    fn a_text_line_is_istios_default_format() {
        let mut out = Vec::new();
        entry().write(Encoding::Text, &mut out, &mut StartTimes::default());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "[2026-12-06T19:57:03.123Z] \"GET /a \\\"quoted\\\"\\\\path?q=\\x01&n=ü HTTP/1.1\" 503 UF \
             upstream_reset_before_response_started{connection_failure} - \"-\" 12 91 12 - \"-\" \"curl/8.5.0\" \
             \"4a0e5b2c-0000-4000-8000-000000000001\" \"web:8080\" \"10.1.2.3:9080\" \
             outbound|9080||web.default.svc.cluster.local - 10.1.2.9:8080 10.1.2.7:40312 - to-web\n"
        );
    }

    #[test]
    fn a_json_line_has_the_same_fields() {
        let mut out = Vec::new();
        entry().into_owned().write(Encoding::Json, &mut out, &mut StartTimes::default());
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["start_time"], "2026-12-06T19:57:03.123Z");
        assert_eq!(v["path"], entry().path.as_ref());
        assert_eq!(
            (v["response_code"].as_u64(), v["duration"].as_u64(), v["bytes_sent"].as_u64()),
            (Some(503), Some(12), Some(91))
        );
        assert_eq!(v["upstream_host"], "10.1.2.3:9080");
        assert_eq!(v["downstream_remote_address"], "10.1.2.7:40312");
        assert_eq!(v["x_forwarded_for"], serde_json::Value::Null);
        assert_eq!(v["upstream_cluster"], "outbound|9080||web.default.svc.cluster.local");
        let keys: std::collections::BTreeSet<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let istio = [
            "authority",
            "bytes_received",
            "bytes_sent",
            "connection_termination_details",
            "downstream_local_address",
            "downstream_remote_address",
            "duration",
            "method",
            "path",
            "protocol",
            "request_id",
            "requested_server_name",
            "response_code",
            "response_code_details",
            "response_flags",
            "route_name",
            "start_time",
            "upstream_cluster",
            "upstream_host",
            "upstream_local_address",
            "upstream_service_time",
            "upstream_transport_failure_reason",
            "user_agent",
            "x_forwarded_for",
        ];
        assert_eq!(keys, istio.into_iter().collect(), "Istio's JSON access log fields");
    }
}
