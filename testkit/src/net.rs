//! Ports for test servers.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::{Mutex, PoisonError};

/// Ports are picked below this, out of Linux's ephemeral range (32768 and
/// up by default), and above Istio's 15xxx ports.
const HIGHEST: u16 = 32_767;
const LOWEST: u16 = 20_000;

/// A port on 127.0.0.1 that was free a moment ago (the listener that found
/// it is closed, so a child process can bind it).
///
/// Not one the kernel hands out itself: a port from `bind(0)` lies in the
/// ephemeral range, where any test's outgoing connection may take it as
/// its source port before the server it was meant for binds it. Ports are
/// drawn at random below that range, and never twice in one process.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(PoisonError::into_inner);
    let given = given.get_or_insert_with(HashSet::new);
    let mut state = seed();
    for _ in 0..10_000 {
        // xorshift64: enough spread for picking ports.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let span = u64::from(HIGHEST - LOWEST) + 1;
        let port = LOWEST + u16::try_from(state % span).unwrap_or(0);
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 between {LOWEST} and {HIGHEST}")
}

/// Differs per process and per call.
fn seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    (u64::from(std::process::id()) << 32 | u64::from(nanos)) | 1
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_are_free_outside_the_ephemeral_range_and_never_given_twice() {
        let ports: Vec<u16> = (0..200).map(|_| super::free_port()).collect();
        let distinct: std::collections::HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        assert!(ports.iter().all(|p| (super::LOWEST..=super::HIGHEST).contains(p)));
        for p in ports.iter().take(20) {
            std::net::TcpListener::bind(("127.0.0.1", *p)).expect("still free");
        }
    }
}
