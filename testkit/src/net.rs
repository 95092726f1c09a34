//! Ports for test servers.

use std::net::TcpListener;

/// A port on 127.0.0.1 that was free a moment ago (the listener that found
/// it is closed, so a child process can bind it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port on 127.0.0.1: {e}"))
}
