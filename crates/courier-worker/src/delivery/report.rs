//! Reporting a range's [`Verdict`] to the store: retry later, fail, release, or checkpoint with what was
//! set aside of it (its quarantined messages, after writing their dead letters, and the offsets Kafka
//! deleted before delivery); every report retried on transient store errors for up to one lease TTL.

use std::time::Duration;

use courier_core::{Backoff, CheckpointOutcome, Lease, OffsetRange};
use courier_store::{FailOutcome, Failure};
use tokio::time::Instant;

use super::range::attempt;
use super::{Outcome, Verdict};
use crate::isolate::Refused;
use crate::{dead_letter, metrics, Context};

/// Reports a verdict other than [`Verdict::Delivered`] (those are checkpointed together by [`run`](super::run)).
pub(super) async fn report(ctx: &Context, lease: &Lease, verdict: Verdict) -> Outcome {
    let max_attempts = ctx.route(&lease.route).map_or(1, |r| r.config.max_attempts);
    let ttl = ctx.config.lease_ttl;
    let (failure, permanent) = match verdict {
        Verdict::Fenced => return Outcome::Fenced,
        Verdict::Delivered { messages } => {
            return match with_retries(ttl, "checkpoint", || ctx.store.checkpoint(lease)).await {
                Some(CheckpointOutcome::Applied) => Outcome::Checkpointed { messages },
                Some(CheckpointOutcome::Fenced) => Outcome::Fenced,
                None => Outcome::Abandoned,
            };
        }
        Verdict::SetAside {
            messages,
            refused,
            lost,
        } => match write_dead_letters(ctx, lease, &refused).await {
            Ok(topic) => {
                return checkpoint_set_aside(ctx, lease, messages, &refused, &lost, topic).await
            }
            Err(reason) => (
                Failure {
                    reason,
                    permanent: false,
                    backoff: ctx
                        .config
                        .backoff()
                        .delay(attempt(lease), rand::random::<f64>()),
                    max_attempts,
                    delivered_to: None,
                },
                false,
            ),
        },
        Verdict::Release { wait } => {
            return match with_retries(ttl, "release", || ctx.store.release(lease, wait)).await {
                Some(CheckpointOutcome::Applied) => Outcome::Released,
                Some(CheckpointOutcome::Fenced) => Outcome::Fenced,
                None => Outcome::Abandoned,
            };
        }
        Verdict::Retry {
            reason,
            backoff,
            delivered_to,
        } => (
            Failure {
                reason,
                permanent: false,
                backoff,
                max_attempts,
                delivered_to,
            },
            false,
        ),
        Verdict::Fail {
            reason,
            delivered_to,
        } => (
            Failure {
                reason,
                permanent: true,
                backoff: Duration::ZERO,
                max_attempts,
                delivered_to,
            },
            true,
        ),
    };
    match with_retries(ttl, "fail", || ctx.store.fail(lease, &failure)).await {
        Some(FailOutcome::Retrying) => {
            tracing::debug!(%lease, reason = %failure.reason, backoff = ?failure.backoff, "Range will be retried.");
            Outcome::Retrying
        }
        Some(FailOutcome::Failed) => {
            metrics::range_failed(
                &lease.route,
                if permanent { "permanent" } else { "attempts" },
            );
            tracing::error!(
                %lease,
                reason = %failure.reason,
                "Range failed for good: listed by `courier status`, replay it with `courier replay` once the cause is fixed. Runbook: docs/runbooks/failed-ranges.md"
            );
            Outcome::Failed
        }
        Some(FailOutcome::Fenced) => Outcome::Fenced,
        None => Outcome::Abandoned,
    }
}

/// Writes the quarantined messages to the route's dead-letter topic, if it has one: before the
/// checkpoint, so a failure here retries the range rather than losing them. Returns the topic.
async fn write_dead_letters<'a>(
    ctx: &'a Context,
    lease: &Lease,
    refused: &[Refused],
) -> Result<Option<&'a str>, String> {
    // Undecodable records have no bytes to write: only what the destination refused is dead-lettered.
    let Some(route) = ctx
        .route(&lease.route)
        .filter(|_| refused.iter().any(|r| !r.undecodable))
    else {
        return Ok(None);
    };
    let config = &route.config;
    let (Some(topic), Some(producer)) = (config.dead_letter_topic.as_deref(), &ctx.dead_letters)
    else {
        return Ok(None);
    };
    let records: Vec<_> = refused
        .iter()
        .filter(|r| !r.undecodable)
        .map(|r| {
            dead_letter::record(
                &config.name,
                &config.destination,
                &config.topic,
                lease.partition,
                r,
            )
        })
        .collect();
    if let Err(reason) = dead_letter::write(producer, topic, &records).await {
        metrics::kafka_error(&config.name, "dead letter");
        return Err(reason);
    }
    metrics::dead_letters(&config.name, records.len());
    Ok(Some(topic))
}

/// Settles the range and records what was set aside of it (quarantined messages, lost offsets) in one
/// store transaction.
async fn checkpoint_set_aside(
    ctx: &Context,
    lease: &Lease,
    messages: usize,
    refused: &[Refused],
    lost: &[OffsetRange],
    topic: Option<&str>,
) -> Outcome {
    let ttl = ctx.config.lease_ttl;
    let quarantined: Vec<courier_store::Quarantined> = refused
        .iter()
        .map(|r| courier_store::Quarantined {
            offset: r.message.offset,
            status: r.status,
            reason: r.reason.clone(),
            dead_letter_topic: topic.filter(|_| !r.undecodable).map(str::to_owned),
        })
        .collect();
    let topic_of_route = ctx
        .route(&lease.route)
        .map_or("?", |route| route.config.topic.as_str());
    let losses: Vec<courier_store::Loss> = lost
        .iter()
        .map(|offsets| courier_store::Loss {
            offsets: *offsets,
            reason: format!(
                "retention: Kafka deleted offsets {offsets} of {topic_of_route}/{} (retention or \
                 DeleteRecords) before they were delivered",
                lease.partition
            ),
        })
        .collect();
    match with_retries(ttl, "checkpoint", || {
        ctx.store
            .checkpoint_setting_aside(lease, &quarantined, &losses)
    })
    .await
    {
        Some(CheckpointOutcome::Applied) => {
            if !quarantined.is_empty() {
                metrics::messages_quarantined(&lease.route, quarantined.len());
            }
            if !losses.is_empty() {
                metrics::offsets_lost(&lease.route, lost.iter().map(OffsetRange::len).sum());
            }
            Outcome::Checkpointed { messages }
        }
        Some(CheckpointOutcome::Fenced) => {
            tracing::info!(%lease, "Checkpoint fenced: the lease was lost before the range was settled; another worker delivers it (and sets aside what it must again).");
            Outcome::Fenced
        }
        None => Outcome::Abandoned,
    }
}

/// How a report to the store is retried on transient errors.
const REPORT_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(100),
    cap: Duration::from_secs(5),
};

/// Retries a report to the store on transient errors for up to one lease TTL (`give_up_after`): past
/// that the lease has expired anyway and the range will be delivered again by whoever leases it.
pub(super) async fn with_retries<T, F, Fut>(
    give_up_after: Duration,
    operation: &'static str,
    call: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = courier_store::Result<T>>,
{
    retry_jittered(give_up_after, operation, rand::random::<f64>, call).await
}

/// [`with_retries`], each pause's jitter drawn from `unit` (uniform in `[0, 1)`; fixed in tests). On
/// tokio's clock, so paused time applies.
async fn retry_jittered<T, F, Fut>(
    give_up_after: Duration,
    operation: &'static str,
    mut unit: impl FnMut() -> f64,
    mut call: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = courier_store::Result<T>>,
{
    let give_up = Instant::now() + give_up_after;
    let mut attempt = 0;
    loop {
        match call().await {
            Ok(value) => return Some(value),
            Err(error) => {
                metrics::store_error(operation);
                let pause = REPORT_BACKOFF.delay(attempt, unit());
                if !error.is_transient() || Instant::now() + pause > give_up {
                    tracing::error!(%error, operation, "Could not report to the store; the lease will expire and the range be delivered again. Runbook: docs/runbooks/store-unavailable.md");
                    return None;
                }
                tracing::warn!(%error, operation, ?pause, "Store report failed; retrying.");
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use courier_store::StoreError;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn transient() -> StoreError {
        StoreError::LockTimeout { operation: "test" }
    }

    /// Reports failing with `errors` in turn, then going through: when each call came (from the start),
    /// and what the retries came to.
    async fn report_failing(
        give_up_after: Duration,
        unit: f64,
        errors: Vec<StoreError>,
    ) -> (Vec<Duration>, Option<&'static str>) {
        let start = Instant::now();
        let calls = RefCell::new(Vec::new());
        let errors = RefCell::new(errors.into_iter());
        let outcome = retry_jittered(
            give_up_after,
            "test",
            || unit,
            || {
                calls.borrow_mut().push(start.elapsed());
                let next = errors.borrow_mut().next();
                async move { next.map_or(Ok("reported"), Err) }
            },
        )
        .await;
        (calls.into_inner(), outcome)
    }

    #[tokio::test(start_paused = true)]
    async fn a_report_is_retried_after_the_backoff_and_not_before() {
        let errors = || vec![transient(), transient(), transient()];
        // Full jitter: 100 ms, 200 ms, 400 ms (REPORT_BACKOFF from 100 ms, doubling).
        let (calls, outcome) = report_failing(Duration::from_secs(30), 1.0, errors()).await;
        assert_eq!(calls, [0, 100, 300, 700].map(|ms| ms * MS));
        assert_eq!(outcome, Some("reported"));
        // Each pause is the backoff's for the jitter drawn.
        let (calls, _) = report_failing(Duration::from_secs(30), 0.5, errors()).await;
        assert_eq!(calls, [0, 50, 150, 350].map(|ms| ms * MS));
    }

    #[tokio::test(start_paused = true)]
    async fn pauses_between_reports_stop_growing_at_the_backoff_cap() {
        let (calls, outcome) = report_failing(
            Duration::from_secs(30),
            1.0,
            std::iter::repeat_with(transient).take(8).collect(),
        )
        .await;
        let pauses: Vec<Duration> = calls.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(
            pauses,
            [100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000].map(|ms| ms * MS)
        );
        assert_eq!(REPORT_BACKOFF.cap, 5_000 * MS);
        assert_eq!(outcome, Some("reported"));
    }

    #[tokio::test(start_paused = true)]
    async fn reports_give_up_rather_than_retry_past_the_lease_ttl() {
        let failing = || std::iter::repeat_with(transient).take(10).collect();
        // The pause after the call at 700 ms (800 ms) would end past the TTL: give up there, at once.
        let start = Instant::now();
        let (calls, outcome) = report_failing(700 * MS, 1.0, failing()).await;
        assert_eq!(calls, [0, 100, 300, 700].map(|ms| ms * MS));
        assert_eq!(outcome, None);
        assert_eq!(start.elapsed(), 700 * MS);
        // A pause ending just past the TTL is not taken either.
        let (calls, outcome) = report_failing(699 * MS, 1.0, failing()).await;
        assert_eq!(calls, [0, 100, 300].map(|ms| ms * MS));
        assert_eq!(outcome, None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_that_retrying_cannot_fix_is_not_retried() {
        let start = Instant::now();
        let (calls, outcome) = report_failing(
            Duration::from_secs(30),
            1.0,
            vec![StoreError::Config("no store".into())],
        )
        .await;
        assert_eq!(calls, [Duration::ZERO]);
        assert_eq!(outcome, None);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
