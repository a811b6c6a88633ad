//! What a delivery outcome means for the range, and how long to wait before trying again.
//!
//! The decision lives next to the type (as in Vector's `RetryLogic`): 2xx succeeds; 408, 429 and 5xx
//! other than 501 are worth retrying; any other 4xx will fail the same way again, so the range fails
//! permanently and is listed for replay once the cause is fixed.

use std::time::Duration;

/// What to do with a range after one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Delivered: checkpoint the range.
    Success,
    /// Not delivered, but could be later: put the range back with a backoff. `retry_after` is the
    /// destination's own `Retry-After`, which wins over the computed backoff (capped).
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Will never succeed as is: fail the range with the reason, keep the partition moving.
    Permanent { reason: String },
}

impl Disposition {
    /// Classifies an HTTP status code. `retry_after` is the parsed `Retry-After` header, if any.
    pub fn from_http_status(status: u16, reason: String, retry_after: Option<Duration>) -> Self {
        match status {
            200..=299 => Self::Success,
            408 | 429 => Self::Retry {
                reason,
                retry_after,
            },
            501 => Self::Permanent { reason },
            500..=599 => Self::Retry {
                reason,
                retry_after,
            },
            _ => Self::Permanent { reason },
        }
    }

    pub fn is_success(&self) -> bool {
        matches!(self, Self::Success)
    }
}

/// Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And Jitter"):
/// the delay is uniform in `[0, min(cap, base * 2^attempt))`, which spreads a crowd of retrying workers
/// instead of having them return in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt + 1`. `unit` is a uniform random number in `[0, 1)` supplied by
    /// the caller, which keeps this function pure and testable.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << attempt.min(30))
            .min(self.cap);
        ceiling.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The delay to use when the destination said when to come back: its word wins, capped so a
    /// misbehaving destination cannot park a range for days.
    pub fn honour_retry_after(
        &self,
        attempt: u32,
        unit: f64,
        retry_after: Option<Duration>,
    ) -> Duration {
        match retry_after {
            Some(wait) => wait.min(self.cap),
            None => self.delay(attempt, unit),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn classifies_statuses_like_the_design_says() {
        let d = |s| Disposition::from_http_status(s, String::new(), None);
        assert!(d(200).is_success() && d(204).is_success());
        for retryable in [408, 429, 500, 502, 503, 504, 599] {
            assert!(
                matches!(d(retryable), Disposition::Retry { .. }),
                "{retryable}"
            );
        }
        for permanent in [400, 401, 403, 404, 409, 413, 422, 501, 302] {
            assert!(
                matches!(d(permanent), Disposition::Permanent { .. }),
                "{permanent}"
            );
        }
    }

    #[test]
    fn retry_after_wins_but_is_capped() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(30),
        };
        assert_eq!(
            b.honour_retry_after(0, 0.5, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            b.honour_retry_after(0, 0.5, Some(Duration::from_secs(3600))),
            Duration::from_secs(30)
        );
    }

    proptest! {
        #[test]
        fn backoff_stays_under_its_ceiling(attempt in 0u32..100, unit in 0.0f64..1.0) {
            let b = Backoff::default();
            let ceiling = b.base.saturating_mul(1u32 << attempt.min(30)).min(b.cap);
            prop_assert!(b.delay(attempt, unit) <= ceiling);
        }
    }
}
