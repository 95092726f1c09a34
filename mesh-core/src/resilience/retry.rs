//! Retries as Envoy's router does them: which outcomes are retriable under
//! `retryOn`, how many attempts, and the jittered exponential backoff.

use std::fmt;
use std::ops::BitOr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::proxy_config::RetryPolicy;

/// The set of `retryOn` conditions (Envoy's `x-envoy-retry-on` and
/// `x-envoy-retry-grpc-on`).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RetryOn(u32);

impl RetryOn {
    pub const FIVE_XX: RetryOn = RetryOn(1);
    pub const GATEWAY_ERROR: RetryOn = RetryOn(1 << 1);
    pub const RESET: RetryOn = RetryOn(1 << 2);
    pub const RESET_BEFORE_REQUEST: RetryOn = RetryOn(1 << 3);
    pub const CONNECT_FAILURE: RetryOn = RetryOn(1 << 4);
    pub const RETRIABLE_4XX: RetryOn = RetryOn(1 << 5);
    pub const REFUSED_STREAM: RetryOn = RetryOn(1 << 6);
    pub const RETRIABLE_STATUS_CODES: RetryOn = RetryOn(1 << 7);
    pub const RETRIABLE_HEADERS: RetryOn = RetryOn(1 << 8);
    pub const ENVOY_RATELIMITED: RetryOn = RetryOn(1 << 9);
    pub const HTTP3_POST_CONNECT_FAILURE: RetryOn = RetryOn(1 << 10);
    pub const CANCELLED: RetryOn = RetryOn(1 << 11);
    pub const DEADLINE_EXCEEDED: RetryOn = RetryOn(1 << 12);
    pub const INTERNAL: RetryOn = RetryOn(1 << 13);
    pub const RESOURCE_EXHAUSTED: RetryOn = RetryOn(1 << 14);
    pub const UNAVAILABLE: RetryOn = RetryOn(1 << 15);

    const NAMES: [(&'static str, RetryOn); 16] = [
        ("5xx", RetryOn::FIVE_XX),
        ("gateway-error", RetryOn::GATEWAY_ERROR),
        ("reset", RetryOn::RESET),
        ("reset-before-request", RetryOn::RESET_BEFORE_REQUEST),
        ("connect-failure", RetryOn::CONNECT_FAILURE),
        ("retriable-4xx", RetryOn::RETRIABLE_4XX),
        ("refused-stream", RetryOn::REFUSED_STREAM),
        ("retriable-status-codes", RetryOn::RETRIABLE_STATUS_CODES),
        ("retriable-headers", RetryOn::RETRIABLE_HEADERS),
        ("envoy-ratelimited", RetryOn::ENVOY_RATELIMITED),
        ("http3-post-connect-failure", RetryOn::HTTP3_POST_CONNECT_FAILURE),
        ("cancelled", RetryOn::CANCELLED),
        ("deadline-exceeded", RetryOn::DEADLINE_EXCEEDED),
        ("internal", RetryOn::INTERNAL),
        ("resource-exhausted", RetryOn::RESOURCE_EXHAUSTED),
        ("unavailable", RetryOn::UNAVAILABLE),
    ];

    pub fn contains(self, other: RetryOn) -> bool {
        self.0 & other.0 == other.0
    }

    fn intersects(self, other: RetryOn) -> bool {
        self.0 & other.0 != 0
    }

    /// Parse Istio's `retryOn`: names and HTTP status codes, comma
    /// separated. A status code turns on `retriable-status-codes` for it.
    /// Unknown names are ignored here; validation reports them.
    pub fn parse(text: &str) -> (RetryOn, Vec<u16>) {
        let mut flags = RetryOn::default();
        let mut codes = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if let Ok(code) = part.parse::<u16>() {
                codes.push(code);
                flags = flags | RetryOn::RETRIABLE_STATUS_CODES;
            } else if let Some((_, f)) = RetryOn::NAMES.iter().find(|(n, _)| *n == part) {
                flags = flags | *f;
            }
        }
        (flags, codes)
    }
}

impl BitOr for RetryOn {
    type Output = RetryOn;
    fn bitor(self, rhs: RetryOn) -> RetryOn {
        RetryOn(self.0 | rhs.0)
    }
}

impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = RetryOn::NAMES.iter().filter(|(_, v)| self.contains(*v)).map(|(n, _)| *n).collect();
        f.write_str(&names.join(","))
    }
}

impl fmt::Debug for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RetryOn({self})")
    }
}

impl Serialize for RetryOn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(RetryOn::parse(&String::deserialize(d)?).0)
    }
}

/// What one try ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered. `grpc_status` from headers or trailers.
    Response { status: u16, grpc_status: Option<u32>, rate_limited: bool },
    /// No connection could be made (refused, unreachable, connect timeout).
    ConnectFailure,
    /// The stream was reset; `request_sent` says whether any of the
    /// request reached the upstream.
    Reset { request_sent: bool },
    /// HTTP/2 REFUSED_STREAM: the upstream did not process it.
    RefusedStream,
    /// The per-try timeout fired.
    PerTryTimeout,
}

impl Outcome {
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Response { status, grpc_status, .. } if *status < 500 && grpc_status.is_none_or(|g| g == 0))
    }
}

const GRPC_CANCELLED: u32 = 1;
const GRPC_DEADLINE_EXCEEDED: u32 = 4;
const GRPC_RESOURCE_EXHAUSTED: u32 = 8;
const GRPC_INTERNAL: u32 = 13;
const GRPC_UNAVAILABLE: u32 = 14;

/// Would Envoy retry this outcome under `policy` (attempts aside)?
pub fn is_retriable(policy: &RetryPolicy, outcome: &Outcome) -> bool {
    let on = policy.retry_on;
    match *outcome {
        Outcome::ConnectFailure => {
            on.intersects(RetryOn::CONNECT_FAILURE | RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR | RetryOn::RESET)
        }
        Outcome::PerTryTimeout => on.intersects(RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR | RetryOn::RESET),
        Outcome::RefusedStream => {
            on.intersects(RetryOn::REFUSED_STREAM | RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR | RetryOn::RESET)
        }
        Outcome::Reset { request_sent } => {
            on.intersects(RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR | RetryOn::RESET)
                || (!request_sent && on.contains(RetryOn::RESET_BEFORE_REQUEST))
        }
        Outcome::Response { status, grpc_status, rate_limited } => {
            (rate_limited && on.contains(RetryOn::ENVOY_RATELIMITED))
                || (on.contains(RetryOn::FIVE_XX) && (500..600).contains(&status))
                || (on.contains(RetryOn::GATEWAY_ERROR) && matches!(status, 502..=504))
                || (on.contains(RetryOn::RETRIABLE_4XX) && status == 409)
                || (on.contains(RetryOn::RETRIABLE_STATUS_CODES) && policy.retriable_status_codes.contains(&status))
                || grpc_status.is_some_and(|g| {
                    (on.contains(RetryOn::CANCELLED) && g == GRPC_CANCELLED)
                        || (on.contains(RetryOn::DEADLINE_EXCEEDED) && g == GRPC_DEADLINE_EXCEEDED)
                        || (on.contains(RetryOn::RESOURCE_EXHAUSTED) && g == GRPC_RESOURCE_EXHAUSTED)
                        || (on.contains(RetryOn::INTERNAL) && g == GRPC_INTERNAL)
                        || (on.contains(RetryOn::UNAVAILABLE) && g == GRPC_UNAVAILABLE)
                })
        }
    }
}

/// Envoy's jittered exponential backoff: the n-th retry waits a random time
/// in `[0, (2^n - 1) * base)`, capped at `max`.
#[derive(Clone, Debug)]
pub struct Backoff {
    base_ms: u64,
    max_ms: u64,
    retry: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff { base_ms: (base.as_millis() as u64).max(1), max_ms: max.as_millis() as u64, retry: 1 }
    }

    pub fn next(&mut self, rng: &mut fastrand::Rng) -> Duration {
        let multiplier = (1u64 << self.retry.min(62)) - 1;
        let ceiling = multiplier.saturating_mul(self.base_ms);
        if ceiling <= self.max_ms {
            self.retry += 1;
        }
        Duration::from_millis((rng.u64(..) % ceiling.max(1)).min(self.max_ms))
    }
}

/// The route timeout has passed: answer 504 without another try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteTimedOut;

/// How long the next try may take, as Envoy computes it: the per-try
/// timeout, cut to what is left of the route timeout (`None`: unbounded).
/// `elapsed` (time since the request came in) is asked only when there is
/// a route timeout: it reads the clock, on every request.
pub fn try_timeout(
    route_timeout: Option<Duration>,
    per_try_timeout: Option<Duration>,
    elapsed: impl FnOnce() -> Duration,
) -> Result<Option<Duration>, RouteTimedOut> {
    let remaining = match route_timeout {
        Some(total) => match total.checked_sub(elapsed()) {
            Some(left) if !left.is_zero() => Some(left),
            _ => return Err(RouteTimedOut),
        },
        None => None,
    };
    Ok(match (remaining, per_try_timeout) {
        (Some(r), Some(p)) => Some(r.min(p)),
        (r, p) => r.or(p),
    })
}

/// What to do after a try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again after this pause.
    RetryAfter(Duration),
    /// Stop: the outcome is final (success, not retriable, or out of
    /// attempts).
    Done,
}

/// The retry state of one request.
#[derive(Clone, Debug)]
pub struct RetryState<'a> {
    policy: &'a RetryPolicy,
    retries_done: u32,
    backoff: Backoff,
}

impl<'a> RetryState<'a> {
    pub fn new(policy: &'a RetryPolicy) -> RetryState<'a> {
        RetryState { policy, retries_done: 0, backoff: Backoff::new(policy.backoff_base, policy.backoff_max) }
    }

    pub fn retries_done(&self) -> u32 {
        self.retries_done
    }

    /// Decide after a try. The caller still asks the circuit breaker and
    /// the retry budget before it retries.
    pub fn decide(&mut self, outcome: &Outcome, rng: &mut fastrand::Rng) -> RetryDecision {
        if outcome.is_success() && !matches!(outcome, Outcome::Response { .. } if is_retriable(self.policy, outcome)) {
            return RetryDecision::Done;
        }
        if self.retries_done >= self.policy.attempts || !is_retriable(self.policy, outcome) {
            return RetryDecision::Done;
        }
        self.retries_done += 1;
        RetryDecision::RetryAfter(self.backoff.next(rng))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::default_retry_policy;

    fn response(status: u16) -> Outcome {
        Outcome::Response { status, grpc_status: None, rate_limited: false }
    }

    #[test]
    fn parses_names_and_codes() {
        let (flags, codes) = RetryOn::parse("gateway-error, connect-failure,503,refused-stream");
        assert!(flags.contains(RetryOn::GATEWAY_ERROR | RetryOn::CONNECT_FAILURE | RetryOn::REFUSED_STREAM));
        assert!(flags.contains(RetryOn::RETRIABLE_STATUS_CODES));
        assert!(!flags.contains(RetryOn::FIVE_XX));
        assert_eq!(codes, [503]);
        assert_eq!(RetryOn::parse("5xx").0.to_string(), "5xx");
    }

    #[test]
    fn istio_default_policy_retries_503_and_connect_failures_only() {
        let p = default_retry_policy();
        assert!(is_retriable(&p, &response(503)));
        assert!(!is_retriable(&p, &response(500)));
        assert!(!is_retriable(&p, &response(502)));
        assert!(is_retriable(&p, &Outcome::ConnectFailure));
        assert!(is_retriable(&p, &Outcome::RefusedStream));
        assert!(!is_retriable(&p, &Outcome::PerTryTimeout));
        assert!(is_retriable(&p, &Outcome::Response { status: 200, grpc_status: Some(14), rate_limited: false }));
        assert!(!is_retriable(&p, &Outcome::Response { status: 200, grpc_status: Some(13), rate_limited: false }));
    }

    #[test]
    fn conditions_follow_envoy() {
        let mut p = default_retry_policy();
        p.retry_on = RetryOn::GATEWAY_ERROR;
        p.retriable_status_codes.clear();
        assert!(is_retriable(&p, &response(502)) && is_retriable(&p, &response(504)));
        assert!(!is_retriable(&p, &response(500)));
        assert!(is_retriable(&p, &Outcome::PerTryTimeout));
        assert!(is_retriable(&p, &Outcome::Reset { request_sent: true }));
        p.retry_on = RetryOn::RESET_BEFORE_REQUEST;
        assert!(is_retriable(&p, &Outcome::Reset { request_sent: false }));
        assert!(!is_retriable(&p, &Outcome::Reset { request_sent: true }));
        p.retry_on = RetryOn::RETRIABLE_4XX;
        assert!(is_retriable(&p, &response(409)) && !is_retriable(&p, &response(404)));
        p.retry_on = RetryOn::FIVE_XX;
        assert!(is_retriable(&p, &response(500)) && is_retriable(&p, &Outcome::ConnectFailure));
    }

    #[test]
    fn attempts_bound_retries_and_success_stops() {
        let mut p = default_retry_policy();
        p.attempts = 3;
        let mut rng = fastrand::Rng::with_seed(1);
        let mut state = RetryState::new(&p);
        assert_eq!(state.decide(&response(200), &mut rng), RetryDecision::Done);
        let mut retries = 0;
        while let RetryDecision::RetryAfter(_) = state.decide(&response(503), &mut rng) {
            retries += 1;
        }
        assert_eq!(retries, 3);
        assert_eq!(state.retries_done(), 3);
    }

    #[test]
    fn try_timeout_is_the_per_try_timeout_cut_to_the_route_deadline() {
        let s = Duration::from_secs;
        assert_eq!(try_timeout(None, None, || s(100)), Ok(None));
        assert_eq!(try_timeout(None, Some(s(2)), || s(100)), Ok(Some(s(2))));
        assert_eq!(try_timeout(Some(s(10)), None, || s(3)), Ok(Some(s(7))));
        assert_eq!(try_timeout(Some(s(10)), Some(s(2)), || s(3)), Ok(Some(s(2))));
        assert_eq!(try_timeout(Some(s(10)), Some(s(2)), || s(9)), Ok(Some(s(1))));
        assert_eq!(try_timeout(Some(s(10)), Some(s(2)), || s(10)), Err(RouteTimedOut));
        // Without a route timeout the clock is not read.
        assert_eq!(try_timeout(None, Some(s(2)), || unreachable!("elapsed asked for")), Ok(Some(s(2))));
    }

    #[test]
    fn backoff_grows_with_full_jitter_and_caps() {
        let mut rng = fastrand::Rng::with_seed(7);
        let base = Duration::from_millis(25);
        let max = Duration::from_millis(250);
        // Over many draws, the n-th retry stays under (2^n - 1) * base and
        // reaches near it.
        for (n, ceiling) in [(1u32, 25u64), (2, 75), (3, 175)] {
            let mut seen_max = 0;
            for _ in 0..2000 {
                let mut b = Backoff::new(base, max);
                let mut d = Duration::ZERO;
                for _ in 0..n {
                    d = b.next(&mut rng);
                }
                assert!(d.as_millis() < u128::from(ceiling), "retry {n}: {d:?}");
                seen_max = seen_max.max(d.as_millis() as u64);
            }
            assert!(seen_max >= ceiling * 9 / 10, "retry {n} never got near {ceiling}: {seen_max}");
        }
        let mut b = Backoff::new(base, max);
        for _ in 0..20 {
            assert!(b.next(&mut rng) <= max);
        }
    }
}
