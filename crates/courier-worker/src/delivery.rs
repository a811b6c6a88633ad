//! One delivery task: lease a range, read it from Kafka, deliver it in batches, checkpoint it.
//!
//! The store sees this task only for milliseconds at a time: a lease, a renewal now and then, and one
//! report (checkpoint, fail or release). Kafka reads and HTTP requests happen with no store
//! transaction open.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use courier_core::{CheckpointOutcome, Disposition, Lease, OffsetRange, RangeKind};
use courier_http::{batches, Batch, CircuitState};
use courier_kafka::ReadError;
use courier_store::{FailOutcome, Failure, LeaseRequest};
use tokio::sync::watch;

use crate::{metrics, Context, Route, Throttle, WorkerStats};

/// How a range ended for this task.
enum Outcome {
    /// Every batch was acknowledged; the range still has to be checkpointed.
    Delivered {
        messages: usize,
    },
    Checkpointed {
        messages: usize,
    },
    /// The lease was lost (expired and taken, or replayed): someone else owns the range now.
    Fenced,
    Retrying,
    Failed,
    /// Given back without an attempt counted (drain, destination asked to hold off).
    Released,
    /// The store could not be told; the lease will expire and the range be leased again.
    Abandoned,
}

pub(crate) async fn run(
    ctx: Arc<Context>,
    kind: RangeKind,
    mut stop_leasing: watch::Receiver<bool>,
    hard_stop: watch::Receiver<bool>,
) {
    let throttle = Throttle::new(Duration::from_secs(30));
    let gate = ctx.gate(kind);
    let mut idle_wait = ctx.config.poll_interval;
    loop {
        if *stop_leasing.borrow() {
            return;
        }
        // One statement finds work across every route whose destination is not holding off.
        let leases = match ctx.lease_request(kind, ctx.config.leases_per_task) {
            None => Vec::new(),
            Some(request) => match ctx.store.lease(&request).await {
                Ok(leases) => leases,
                Err(error) => {
                    metrics::store_error("lease");
                    if throttle.ready("lease") {
                        tracing::warn!(%error, "Could not lease ranges; retrying.");
                    }
                    Vec::new()
                }
            },
        };
        if leases.is_empty() {
            if !gate
                .wait_for_work(&ctx, &mut idle_wait, &mut stop_leasing)
                .await
            {
                return;
            }
            continue;
        }
        idle_wait = ctx.config.poll_interval;
        // There may be more: let one more idle task look, rather than all of them at once.
        gate.work.notify_one();
        let mut queue: VecDeque<Lease> = leases.into();
        count_leased(&queue);
        while let Some(lease) = queue.pop_front() {
            let Some(route) = ctx.route(&lease.route) else {
                // Leased by name from this worker's own list: cannot happen; give it back at once.
                release(&ctx, &lease, Duration::ZERO).await;
                continue;
            };
            let outcome = if *stop_leasing.borrow() {
                // Leased together with ranges already delivered, but draining: give it back now.
                release(&ctx, &lease, Duration::ZERO).await
            } else {
                let mut hard_stop = hard_stop.clone();
                tokio::select! {
                    outcome = process(&ctx, route, &lease) => outcome,
                    _ = crate::stopped(&mut hard_stop) => release(&ctx, &lease, Duration::ZERO).await,
                }
            };
            let outcome = match outcome {
                // The last range in hand: checkpoint it and lease the next ones in one transaction.
                Outcome::Delivered { messages } if queue.is_empty() && !*stop_leasing.borrow() => {
                    match ctx.lease_request(kind, ctx.config.leases_per_task) {
                        Some(request) => {
                            let (outcome, next) =
                                checkpoint_and_lease(&ctx, &lease, messages, &request).await;
                            count_leased(&next);
                            queue.extend(next);
                            outcome
                        }
                        None => checkpoint(&ctx, &lease, messages).await,
                    }
                }
                Outcome::Delivered { messages } => checkpoint(&ctx, &lease, messages).await,
                other => other,
            };
            tally(&ctx.stats, &route.config.name, kind, &outcome);
        }
    }
}

fn count_leased<'a>(leases: impl IntoIterator<Item = &'a Lease>) {
    for lease in leases {
        metrics::range_leased(&lease.route, 1);
    }
}

/// Skip leasing for a destination that asked every worker to wait (`Retry-After`) or whose circuit is
/// open: leasing would only burn the range's attempts.
pub(crate) fn destination_is_holding_off(route: &Route) -> bool {
    let now = Instant::now();
    if route
        .deliverer
        .blocked_until()
        .is_some_and(|until| until > now)
    {
        return true;
    }
    matches!(route.deliverer.circuit_state(), CircuitState::Open { until, .. } if until > now)
}

fn tally(stats: &WorkerStats, route: &str, kind: RangeKind, outcome: &Outcome) {
    match outcome {
        Outcome::Checkpointed { messages } => {
            metrics::range_checkpointed(route, *messages);
            if kind == RangeKind::Replay {
                metrics::ranges_replayed(route, 1);
            }
            WorkerStats::add(&stats.ranges_checkpointed, 1);
            WorkerStats::add(&stats.messages_delivered, *messages as u64);
        }
        Outcome::Fenced => {
            metrics::range_fenced(route);
            WorkerStats::add(&stats.ranges_fenced, 1);
        }
        Outcome::Retrying => {
            metrics::range_retried(route);
            WorkerStats::add(&stats.ranges_retried, 1);
        }
        Outcome::Failed => WorkerStats::add(&stats.ranges_failed, 1),
        Outcome::Released => {
            metrics::range_released(route);
            WorkerStats::add(&stats.ranges_released, 1);
        }
        Outcome::Abandoned | Outcome::Delivered { .. } => {}
    }
}

/// Delivers one leased range while renewing its lease; a lost lease stops the delivery.
async fn process(ctx: &Context, route: &Route, lease: &Lease) -> Outcome {
    let renewal = async {
        let mut every = tokio::time::interval_at(
            tokio::time::Instant::now() + ctx.config.renew_every,
            ctx.config.renew_every,
        );
        loop {
            every.tick().await;
            match ctx.store.renew(lease, ctx.config.lease_ttl).await {
                Ok(CheckpointOutcome::Applied) => {}
                Ok(CheckpointOutcome::Fenced) => return,
                Err(error) => {
                    metrics::store_error("renew");
                    tracing::warn!(%lease, %error, "Could not renew the lease; delivery goes on and renewal is retried.");
                }
            }
        }
    };
    tokio::select! {
        outcome = deliver(ctx, route, lease) => outcome,
        () = renewal => {
            tracing::warn!(%lease, "Lease lost during delivery (it expired and another worker took it, or it was replayed); stopping.");
            Outcome::Fenced
        }
    }
}

async fn deliver(ctx: &Context, route: &Route, lease: &Lease) -> Outcome {
    let name = &route.config.name;
    let destination = &route.config.destination;
    let Ok(to_read) = OffsetRange::new(lease.resume_from, lease.range.end()) else {
        // Everything was delivered by an earlier attempt that could not checkpoint.
        return Outcome::Delivered { messages: 0 };
    };
    let messages = match ctx
        .reader
        .read(&route.config.topic, lease.partition, to_read)
        .await
    {
        Ok(messages) => messages,
        Err(error) => return read_failed(ctx, route, lease, &error).await,
    };
    let config = route.deliverer.config();
    let mut delivered_to = None;
    let mut batch_start = to_read.start();
    let chunks: Vec<_> =
        batches(&messages, config.max_batch_messages, config.max_batch_bytes).collect();
    let last = chunks.len().saturating_sub(1);
    for (i, chunk) in chunks.into_iter().enumerate() {
        let batch_end = match chunk.last() {
            Some(message) if i < last => message.offset + 1,
            _ => to_read.end(),
        };
        let batch = Batch {
            route: name,
            topic: &route.config.topic,
            replay_id: lease.replay_id,
            partition: lease.partition,
            first_offset: batch_start,
            end_offset: batch_end,
            messages: chunk,
        };
        let delivery = route.deliverer.deliver(&batch).await;
        match delivery.disposition {
            Disposition::Success => {
                metrics::delivery_attempt(name, destination, "success", delivery.elapsed);
                if let Some(oldest) = chunk.iter().filter_map(|m| m.timestamp_ms).min() {
                    metrics::end_to_end_latency(name, since_unix_millis(oldest));
                }
                delivered_to = Some(batch_end);
                batch_start = batch_end;
            }
            Disposition::Retry {
                reason,
                retry_after,
            } => {
                if !delivery.attempted && delivered_to.is_none() {
                    // Nothing was sent: the destination is paused or asked us to wait. Give the range
                    // back for that long without counting an attempt.
                    metrics::delivery_attempt(name, destination, "refused", delivery.elapsed);
                    let wait = route
                        .deliverer
                        .blocked_until()
                        .map(|until| until.saturating_duration_since(Instant::now()))
                        .unwrap_or(ctx.config.poll_interval);
                    return release(ctx, lease, wait).await;
                }
                metrics::delivery_attempt(name, destination, "retry", delivery.elapsed);
                if let Some(wait) = retry_after {
                    // Every worker delivering to this destination holds off, not only this one.
                    if let Err(error) = ctx
                        .store
                        .defer_destination(destination, wait, &reason)
                        .await
                    {
                        metrics::store_error("defer destination");
                        tracing::warn!(%destination, %error, "Could not share the destination's Retry-After with other workers.");
                    }
                }
                let backoff = ctx.config.backoff().honour_retry_after(
                    u32::try_from(lease.attempts).unwrap_or(0),
                    rand::random::<f64>(),
                    retry_after,
                );
                let reason = format!("destination {destination:?} (route {name:?}): {reason}");
                return fail(ctx, route, lease, reason, false, backoff, delivered_to).await;
            }
            Disposition::Permanent { reason } => {
                metrics::delivery_attempt(name, destination, "permanent", delivery.elapsed);
                let reason = format!(
                    "destination {destination:?} (route {name:?}) refused the batch: {reason}"
                );
                return fail(
                    ctx,
                    route,
                    lease,
                    reason,
                    true,
                    Duration::ZERO,
                    delivered_to,
                )
                .await;
            }
        }
    }
    Outcome::Delivered {
        messages: messages.len(),
    }
}

async fn read_failed(ctx: &Context, route: &Route, lease: &Lease, error: &ReadError) -> Outcome {
    metrics::kafka_error(&route.config.name, error.reason());
    let reason = format!("{}: {error}", error.reason());
    if error.is_retryable() {
        let backoff = ctx.config.backoff().delay(
            u32::try_from(lease.attempts).unwrap_or(0),
            rand::random::<f64>(),
        );
        fail(ctx, route, lease, reason, false, backoff, None).await
    } else {
        // Retention, or a topic or partition that is gone: no retry will bring the messages back.
        tracing::error!(route = %route.config.name, %lease, %error, "Range cannot be read from Kafka; failing it so the partition keeps moving. Runbook: docs/runbooks/failed-ranges.md");
        fail(ctx, route, lease, reason, true, Duration::ZERO, None).await
    }
}

async fn fail(
    ctx: &Context,
    route: &Route,
    lease: &Lease,
    reason: String,
    permanent: bool,
    backoff: Duration,
    delivered_to: Option<i64>,
) -> Outcome {
    let failure = Failure {
        reason,
        permanent,
        backoff,
        max_attempts: route.config.max_attempts,
        delivered_to,
    };
    match with_retries(ctx, "fail", || ctx.store.fail(lease, &failure)).await {
        Some(FailOutcome::Retrying) => {
            tracing::debug!(%lease, reason = %failure.reason, ?backoff, "Range will be retried.");
            Outcome::Retrying
        }
        Some(FailOutcome::Failed) => {
            metrics::range_failed(
                &route.config.name,
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

async fn checkpoint(ctx: &Context, lease: &Lease, messages: usize) -> Outcome {
    match with_retries(ctx, "checkpoint", || ctx.store.checkpoint(lease)).await {
        Some(CheckpointOutcome::Applied) => Outcome::Checkpointed { messages },
        Some(CheckpointOutcome::Fenced) => {
            tracing::info!(%lease, "Checkpoint fenced: the lease was lost before the range was settled; another worker delivers it.");
            Outcome::Fenced
        }
        None => Outcome::Abandoned,
    }
}

async fn checkpoint_and_lease(
    ctx: &Context,
    lease: &Lease,
    messages: usize,
    next: &LeaseRequest,
) -> (Outcome, Vec<Lease>) {
    match with_retries(ctx, "checkpoint", || {
        ctx.store.checkpoint_and_lease(lease, next)
    })
    .await
    {
        Some((CheckpointOutcome::Applied, leases)) => (Outcome::Checkpointed { messages }, leases),
        Some((CheckpointOutcome::Fenced, leases)) => {
            tracing::info!(%lease, "Checkpoint fenced: the lease was lost before the range was settled; another worker delivers it.");
            (Outcome::Fenced, leases)
        }
        None => (Outcome::Abandoned, Vec::new()),
    }
}

async fn release(ctx: &Context, lease: &Lease, delay: Duration) -> Outcome {
    match with_retries(ctx, "release", || ctx.store.release(lease, delay)).await {
        Some(CheckpointOutcome::Applied) => Outcome::Released,
        Some(CheckpointOutcome::Fenced) => Outcome::Fenced,
        None => Outcome::Abandoned,
    }
}

/// Retries a report to the store on transient errors for up to one lease TTL: past that the lease has
/// expired anyway and the range will be delivered again by whoever leases it.
async fn with_retries<T, F, Fut>(ctx: &Context, operation: &'static str, mut call: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = courier_store::Result<T>>,
{
    let give_up = Instant::now() + ctx.config.lease_ttl;
    let mut pause = Duration::from_millis(100);
    loop {
        match call().await {
            Ok(value) => return Some(value),
            Err(error) => {
                metrics::store_error(operation);
                if !error.is_transient() || Instant::now() + pause > give_up {
                    tracing::error!(%error, operation, "Could not report to the store; the lease will expire and the range be delivered again. Runbook: docs/runbooks/store-unavailable.md");
                    return None;
                }
                tracing::warn!(%error, operation, ?pause, "Store report failed; retrying.");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn since_unix_millis(timestamp_ms: i64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    now.saturating_sub(Duration::from_millis(
        u64::try_from(timestamp_ms).unwrap_or(0),
    ))
}
