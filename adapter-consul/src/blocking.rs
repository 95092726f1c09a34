//! Consul's blocking-query rules, as its documentation sets them out
//! ("Blocking Queries"), apart from any I/O so they can be tested alone:
//! which index to send next, how long to back off after a failure, and the
//! floor under the time between two queries that keeps a misbehaving agent
//! from turning a watch into a hot loop.

use std::time::Duration;

/// The index a watch sends with its next query.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueryIndex(u64);

/// What a response's `X-Consul-Index` means for the watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexStep {
    /// The first answer, or a newer one: look at the result.
    Advanced,
    /// The same index: the wait expired with nothing new.
    Unchanged,
    /// The index went backwards (a snapshot restore, a new leader with
    /// older state, another agent): start over from 0 and treat the
    /// result as the whole truth.
    Reset,
}

impl QueryIndex {
    /// The index to send: 0 for the first query (answers at once).
    pub fn get(self) -> u64 {
        self.0
    }

    /// Take a response's index.
    pub fn advance(&mut self, returned: u64) -> IndexStep {
        // An index of 0 would make every later query return at once: use 1.
        let returned = returned.max(1);
        let step = match (self.0, returned) {
            (0, _) => IndexStep::Advanced,
            (old, new) if new < old => IndexStep::Reset,
            (old, new) if new == old => IndexStep::Unchanged,
            _ => IndexStep::Advanced,
        };
        self.0 = if step == IndexStep::Reset { 0 } else { returned };
        step
    }

    /// Forget the index (after an error that may mean another agent).
    pub fn reset(&mut self) {
        self.0 = 0;
    }
}

/// Capped exponential backoff with full jitter, for failed queries.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max, failures: 0 }
    }

    /// The delay before retrying after one more failure: a random point
    /// between `min` and the capped exponential ceiling, so many watches
    /// that failed together do not come back together.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.min.saturating_mul(2u32.saturating_pow(self.failures.min(16))).min(self.max);
        self.failures = self.failures.saturating_add(1);
        let span = ceiling.saturating_sub(self.min);
        self.min + span.mul_f64(fastrand::f64())
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
    }
}

/// How long to wait before sending the next query after one that
/// returned in `took`: at least `floor` between query starts, so an agent
/// that answers blocking queries at once (an index stuck at 0, a proxy
/// that ignores `wait`) costs a bounded request rate, not a busy loop.
pub fn pause_before_next(took: Duration, floor: Duration) -> Duration {
    floor.saturating_sub(took)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_rules() {
        let mut index = QueryIndex::default();
        assert_eq!(index.get(), 0);
        assert_eq!(index.advance(10), IndexStep::Advanced);
        assert_eq!(index.get(), 10);
        assert_eq!(index.advance(10), IndexStep::Unchanged);
        assert_eq!(index.advance(12), IndexStep::Advanced);
        // Backwards: start over; the next query is a fresh read.
        assert_eq!(index.advance(5), IndexStep::Reset);
        assert_eq!(index.get(), 0);
        assert_eq!(index.advance(5), IndexStep::Advanced);
        // Zero is never sent back.
        let mut index = QueryIndex::default();
        assert_eq!(index.advance(0), IndexStep::Advanced);
        assert_eq!(index.get(), 1);
        assert_eq!(index.advance(0), IndexStep::Unchanged);
        assert_eq!(index.get(), 1);
    }

    #[test]
    fn backoff_grows_capped_and_jittered() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d >= Duration::from_millis(100) && *d <= Duration::from_secs(2)));
        // The ceilings double: by the fifth failure it may reach 1.6 s.
        let mut spread = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for _ in 0..5 {
            spread.next_delay();
        }
        let later: Vec<Duration> = (0..50).map(|_| spread.next_delay()).collect();
        assert!(later.iter().any(|d| *d > Duration::from_millis(400)), "{later:?}");
        assert!(later.windows(2).any(|w| w[0] != w[1]), "jittered");
        b.succeeded();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn queries_are_spaced() {
        assert_eq!(pause_before_next(Duration::from_millis(3), Duration::from_millis(100)), Duration::from_millis(97));
        assert_eq!(pause_before_next(Duration::from_secs(300), Duration::from_millis(100)), Duration::ZERO);
    }
}
