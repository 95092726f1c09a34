//! Local rate limiting with Envoy's token bucket: up to `max_tokens`, refilled
//! by `tokens_per_fill` every `fill_interval`, in whole fills. Lock-free: the
//! token count and the fill epoch share one atomic word.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug)]
pub struct TokenBucket {
    max_tokens: u32,
    tokens_per_fill: u32,
    fill_interval_nanos: u64,
    /// High 32 bits: tokens; low 32 bits: fill epoch (wrapping).
    state: AtomicU64,
}

fn pack(tokens: u32, epoch: u32) -> u64 {
    (u64::from(tokens) << 32) | u64::from(epoch)
}

fn unpack(state: u64) -> (u32, u32) {
    ((state >> 32) as u32, state as u32)
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(max_tokens: u32, tokens_per_fill: u32, fill_interval: Duration) -> TokenBucket {
        TokenBucket {
            max_tokens,
            tokens_per_fill,
            fill_interval_nanos: (fill_interval.as_nanos().min(u128::from(u64::MAX)) as u64).max(1),
            state: AtomicU64::new(pack(max_tokens, 0)),
        }
    }

    /// Take a token at `now` (time since the bucket was made); `false` means
    /// rate limited (Envoy answers 429).
    pub fn try_acquire(&self, now: Duration) -> bool {
        // u64 nanoseconds cover 584 years; u64 division is much cheaper
        // than u128.
        let epoch_now = (now.as_nanos() as u64 / self.fill_interval_nanos) as u32;
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            let (tokens, epoch) = unpack(current);
            let fills = epoch_now.wrapping_sub(epoch);
            let refilled = if fills == 0 || fills > u32::MAX / 2 {
                tokens
            } else {
                (u64::from(tokens) + u64::from(fills) * u64::from(self.tokens_per_fill)).min(u64::from(self.max_tokens))
                    as u32
            };
            if refilled == 0 {
                return false;
            }
            let epoch = if fills > u32::MAX / 2 { epoch } else { epoch_now };
            match self.state.compare_exchange_weak(
                current,
                pack(refilled - 1, epoch),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// Tokens left, for stats.
    pub fn available(&self) -> u32 {
        unpack(self.state.load(Ordering::Relaxed)).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill_in_whole_fills() {
        let b = TokenBucket::new(3, 2, Duration::from_secs(1));
        let t = Duration::from_millis;
        assert!(b.try_acquire(t(0)) && b.try_acquire(t(1)) && b.try_acquire(t(2)));
        assert!(!b.try_acquire(t(999)), "bucket empty until the next fill");
        assert!(b.try_acquire(t(1000)) && b.try_acquire(t(1500)));
        assert!(!b.try_acquire(t(1999)));
        // A long pause refills only to the maximum.
        for _ in 0..3 {
            assert!(b.try_acquire(t(10_000)));
        }
        assert!(!b.try_acquire(t(10_000)));
    }

    #[test]
    fn concurrent_takers_never_exceed_the_budget() {
        let b = TokenBucket::new(1000, 1, Duration::from_secs(3600));
        let taken = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        if b.try_acquire(Duration::from_secs(1)) {
                            taken.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(taken.load(Ordering::Relaxed), 1000);
    }
}
