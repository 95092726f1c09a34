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

use serde::Serialize;

/// Lines are handed to the writer once this much is buffered.
const FLUSH_AT: usize = 64 * 1024;
/// ... and at least this often (Envoy's `file_flush_interval` default).
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How long draining waits for the log to be written.
const DRAIN_WAIT: Duration = Duration::from_secs(5);

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
        // Serializing plain fields into a Vec cannot fail.
        if serde_json::to_writer(&mut *buffer, entry).is_ok() {
            buffer.push(b'\n');
        }
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
