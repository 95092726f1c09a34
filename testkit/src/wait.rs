//! Waiting on a condition with a deadline, instead of a fixed sleep.

use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(20);

/// Poll `cond` until it holds or `limit` passes; whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Poll `check` until it returns `Some`, for at most `secs` seconds,
/// without blocking the runtime; panics naming `what` when it never does.
pub async fn eventually<T>(secs: u64, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_reports_both_outcomes() {
        let mut n = 0;
        assert!(wait_until(Duration::from_secs(5), || {
            n += 1;
            n == 3
        }));
        assert_eq!(n, 3);
        let started = Instant::now();
        assert!(!wait_until(Duration::from_millis(60), || false));
        assert!(started.elapsed() >= Duration::from_millis(60));
    }
}
