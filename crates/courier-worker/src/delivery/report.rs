//! Reporting a range's [`Verdict`] to the store: retry later, fail, release, or checkpoint with what was
//! set aside of it (its quarantined messages, after writing their dead letters, and the offsets Kafka
//! deleted before delivery); every report retried on transient store errors for up to one lease TTL.

use std::time::{Duration, Instant};

use courier_core::{Backoff, CheckpointOutcome, Lease, OffsetRange};
use courier_store::{FailOutcome, Failure};

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
                let pause = REPORT_BACKOFF.delay(attempt, rand::random::<f64>());
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
