//! The JSON access log, written to stdout through a buffer, as Envoy's
//! file access log is: lines gather in memory and go out in one `write`
//! when the buffer is full or once a second, not one system call per
//! request.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;

/// Lines are written out once this much is buffered.
const FLUSH_AT: usize = 64 * 1024;
/// ... and at least this often (Envoy's `file_flush_interval` default).
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// One request's line.
#[derive(Serialize)]
pub struct Entry<'a> {
    pub start_time_ms: u128,
    pub method: &'a str,
    pub path: &'a str,
    pub authority: &'a str,
    pub response_code: u16,
    pub response_flags: &'static str,
    pub duration_ms: f64,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_cluster: &'a str,
    pub route_name: &'a str,
    pub x_request_id: &'a str,
}

#[derive(Default)]
pub struct AccessLog {
    buffer: Mutex<Vec<u8>>,
}

impl AccessLog {
    pub fn write(&self, entry: &Entry<'_>) {
        let mut buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        // Serializing plain fields into a Vec cannot fail.
        if serde_json::to_writer(&mut *buffer, entry).is_ok() {
            buffer.push(b'\n');
        }
        if buffer.len() >= FLUSH_AT {
            write_out(&mut buffer);
        }
    }

    /// Write out what is buffered (the flush timer, and draining).
    pub fn flush(&self) {
        write_out(&mut self.buffer.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

fn write_out(buffer: &mut Vec<u8>) {
    if buffer.is_empty() {
        return;
    }
    let mut out = std::io::stdout().lock();
    // Nowhere to report a failed log write; the lines are dropped.
    let _ = out.write_all(buffer).and_then(|()| out.flush());
    buffer.clear();
}
