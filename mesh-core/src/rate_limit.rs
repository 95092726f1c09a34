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

/// Envoy's local rate limit filter as an EnvoyFilter inserts it (Istio's
/// rate limiting task): a token bucket, where it applies, and the headers
/// added to the 429s it answers.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LocalRateLimit {
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    #[serde(with = "crate::config::duration::text")]
    pub fill_interval: Duration,
    /// `SIDECAR_INBOUND`, `SIDECAR_OUTBOUND`, `GATEWAY` or `ANY`.
    pub context: String,
    pub response_headers: Vec<(String, String)>,
}

const LOCAL_RATE_LIMIT: &str = "envoy.filters.http.local_ratelimit";

/// `None` when the patch is not Envoy's local rate limit filter; the
/// filter's settings, or why they cannot be read, when it is.
pub fn local_rate_limit_of(
    patch: &crate::config::networking::EnvoyConfigObjectPatch,
) -> Option<Result<LocalRateLimit, String>> {
    let value = patch.patch.as_ref()?.value.as_ref()?;
    let typed = value.get("typed_config")?;
    let type_name = |v: &serde_json::Value, k: &str| v.get(k).and_then(|t| t.as_str()).unwrap_or_default().to_string();
    let is_ours = value.get("name").and_then(|n| n.as_str()) == Some(LOCAL_RATE_LIMIT)
        || type_name(typed, "@type").contains("local_ratelimit")
        || type_name(typed, "type_url").contains("local_ratelimit");
    if !is_ours {
        return None;
    }
    // Either the filter config itself, or wrapped in a udpa TypedStruct.
    let config = if type_name(typed, "@type").ends_with("TypedStruct") { typed.get("value")? } else { typed };
    Some((|| {
        let bucket = config.get("token_bucket").ok_or("token_bucket is required")?;
        let number = |k: &str| bucket.get(k).and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()));
        let max_tokens = number("max_tokens").ok_or("token_bucket.max_tokens is required")?;
        let tokens_per_fill = number("tokens_per_fill").unwrap_or(1);
        let interval =
            bucket.get("fill_interval").and_then(|v| v.as_str()).ok_or("token_bucket.fill_interval is required")?;
        let fill_interval =
            crate::config::duration::parse(interval).map_err(|e| format!("token_bucket.fill_interval: {e}"))?;
        if fill_interval.is_zero() || max_tokens == 0 {
            return Err("token_bucket needs max_tokens > 0 and a fill_interval > 0".to_string());
        }
        let response_headers = config
            .get("response_headers_to_add")
            .and_then(|h| h.as_array())
            .map(|hs| {
                hs.iter()
                    .filter_map(|h| {
                        let header = h.get("header")?;
                        Some((
                            header.get("key")?.as_str()?.to_ascii_lowercase(),
                            header.get("value")?.as_str()?.to_string(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let context =
            patch.match_.as_ref().and_then(|m| m.get("context")).and_then(|c| c.as_str()).unwrap_or("ANY").to_string();
        Ok(LocalRateLimit {
            max_tokens: u32::try_from(max_tokens).unwrap_or(u32::MAX),
            tokens_per_fill: u32::try_from(tokens_per_fill).unwrap_or(u32::MAX),
            fill_interval,
            context,
            response_headers,
        })
    })())
}

#[cfg(test)]
mod envoy_filter_tests {
    use crate::config::{Resource, Spec};

    #[test]
    fn reads_istios_local_rate_limit_task() {
        let r = Resource::from_yaml(
            "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: filter-local-ratelimit-svc, namespace: istio-system}\nspec:\n  workloadSelector:\n    labels: {app: productpage}\n  configPatches:\n    - applyTo: HTTP_FILTER\n      match:\n        context: SIDECAR_INBOUND\n        listener:\n          filterChain:\n            filter:\n              name: envoy.filters.network.http_connection_manager\n      patch:\n        operation: INSERT_BEFORE\n        value:\n          name: envoy.filters.http.local_ratelimit\n          typed_config:\n            \"@type\": type.googleapis.com/udpa.type.v1.TypedStruct\n            type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit\n            value:\n              stat_prefix: http_local_rate_limiter\n              token_bucket:\n                max_tokens: 4\n                tokens_per_fill: 4\n                fill_interval: 60s\n              response_headers_to_add:\n                - append: false\n                  header:\n                    key: x-local-rate-limit\n                    value: 'true'\n",
        )
        .unwrap();
        let Spec::EnvoyFilter(ef) = r.spec else { panic!() };
        let limit = super::local_rate_limit_of(&ef.config_patches[0]).unwrap().unwrap();
        assert_eq!((limit.max_tokens, limit.tokens_per_fill, limit.fill_interval.as_secs()), (4, 4, 60));
        assert_eq!(limit.context, "SIDECAR_INBOUND");
        assert_eq!(limit.response_headers, [("x-local-rate-limit".to_string(), "true".to_string())]);
    }

    #[test]
    fn a_broken_bucket_is_a_validation_error() {
        let err = Resource::from_yaml(
            "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: rl}\nspec:\n  configPatches:\n  - applyTo: HTTP_FILTER\n    patch:\n      operation: INSERT_BEFORE\n      value:\n        name: envoy.filters.http.local_ratelimit\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit\n          token_bucket: {max_tokens: 10, fill_interval: soon}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("spec.configPatches[0].patch.value: token_bucket.fill_interval: duration `soon`"),
            "{err}"
        );
    }
}
