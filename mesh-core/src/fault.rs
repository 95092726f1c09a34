//! Fault injection decisions (Istio `fault`): delay and abort, each applied
//! to a percentage of requests, drawn independently as Envoy does.

use std::time::Duration;

use crate::proxy_config::{AbortStatus, FaultPolicy};

/// What to do to one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultDecision {
    pub delay: Option<Duration>,
    pub abort: Option<AbortStatus>,
}

/// Roll the dice for one request. Envoy draws against a fractional percent
/// with a resolution of one in a million.
pub fn decide(policy: &FaultPolicy, rng: &mut fastrand::Rng) -> FaultDecision {
    let hit = |percent: f64, rng: &mut fastrand::Rng| {
        let per_million = (percent.clamp(0.0, 100.0) * 10_000.0).round() as u32;
        rng.u32(..1_000_000) < per_million
    };
    FaultDecision {
        delay: policy.delay.as_ref().filter(|d| hit(d.percent, rng)).map(|d| d.delay),
        abort: policy.abort.as_ref().filter(|a| hit(a.percent, rng)).map(|a| a.status),
    }
}

/// gRPC status code by its canonical name (`UNAVAILABLE`) or number.
pub fn grpc_status_code(name: &str) -> Option<u32> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    if let Ok(n) = name.parse::<u32>() {
        return (n < 17).then_some(n);
    }
    NAMES.iter().position(|n| n.eq_ignore_ascii_case(name)).map(|p| p as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy_config::{FaultAbort, FaultDelay};

    #[test]
    fn percentages_hold_over_many_requests() {
        let policy = FaultPolicy {
            delay: Some(FaultDelay { delay: Duration::from_secs(7), percent: 10.0 }),
            abort: Some(FaultAbort { status: AbortStatus::Http(500), percent: 0.1 }),
        };
        let mut rng = fastrand::Rng::with_seed(42);
        let n = 200_000;
        let (mut delays, mut aborts) = (0, 0);
        for _ in 0..n {
            let d = decide(&policy, &mut rng);
            delays += usize::from(d.delay.is_some());
            aborts += usize::from(d.abort.is_some());
        }
        assert!((delays as f64 / n as f64 - 0.10).abs() < 0.005);
        assert!((aborts as f64 / n as f64 - 0.001).abs() < 0.0005);
    }

    #[test]
    fn full_and_zero_percent_are_exact() {
        let mut rng = fastrand::Rng::with_seed(1);
        let always =
            FaultPolicy { delay: None, abort: Some(FaultAbort { status: AbortStatus::Grpc(14), percent: 100.0 }) };
        let never =
            FaultPolicy { delay: Some(FaultDelay { delay: Duration::from_secs(1), percent: 0.0 }), abort: None };
        for _ in 0..10_000 {
            assert_eq!(decide(&always, &mut rng).abort, Some(AbortStatus::Grpc(14)));
            assert_eq!(decide(&never, &mut rng), FaultDecision::default());
        }
    }

    #[test]
    fn grpc_names() {
        assert_eq!(grpc_status_code("UNAVAILABLE"), Some(14));
        assert_eq!(grpc_status_code("unavailable"), Some(14));
        assert_eq!(grpc_status_code("4"), Some(4));
        assert_eq!(grpc_status_code("NOPE"), None);
    }
}
