//! Resilience decisions: retries, circuit breaking, outlier detection.
//! Pure state machines over atomics; the proxy supplies time and outcomes.

pub mod circuit_breaker;
pub mod outlier;
pub mod retry;
