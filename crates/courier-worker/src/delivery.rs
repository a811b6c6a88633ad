//! One delivery task: lease ranges, deliver them all at once, settle them with the next lease.
//!
//! A task holds up to `leases_per_task` ranges. They are delivered concurrently (one range's read
//! overlaps another's requests, and ranges of different partitions go out together); within a range of a
//! route with `ordering = "none"` up to the destination's `max_in_flight` batches are in flight, with
//! `ordering = "partition"` one at a time in offset order. What each range came to is decided once, as a
//! [`Verdict`], and reported in one place ([`report`]); the ranges delivered are checkpointed together,
//! with the next lease, in one store transaction. A batch the destination refuses for good is bisected by
//! `isolate`. A range with something set aside is checkpointed on its own, recording it: messages the
//! destination refused on their own (quarantined), and offsets Kafka had deleted (retention,
//! `DeleteRecords`) before they could be delivered (losses: what Kafka still held of the range is
//! delivered, the rest recorded exactly, never failed for a replay that cannot bring it back).
//!
//! The store sees this task only for milliseconds at a time: a lease, a renewal now and then, and the
//! reports. Kafka reads and HTTP requests happen with no store transaction open.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use courier_core::{
    Backoff, CheckpointOutcome, Disposition, Lease, Message, OffsetRange, Ordering, RangeKind,
};
use courier_http::{batches, Batch, CircuitState, Delivery};
use courier_kafka::RangeContents;
use courier_kafka::ReadError;
use courier_store::{FailOutcome, Failure};
use futures::stream::{self, StreamExt};
use tokio::sync::watch;

use crate::isolate::{self, Isolation, Refused};
use crate::{dead_letter, metrics, Context, Route, Throttle, WorkerStats};

/// What delivering one range came to: decided once, by [`deliver`], and reported by [`report`].
#[derive(Debug)]
enum Verdict {
    /// Every batch was acknowledged: checkpoint it.
    Delivered { messages: usize },
    /// Every message Kafka still held was acknowledged except `refused`, which the destination refuses on
    /// their own, and Kafka had deleted the offsets `lost` before they were read: checkpoint the range
    /// recording both (the refused messages quarantined and written to the dead-letter topic, if any;
    /// the lost offsets as losses).
    SetAside {
        messages: usize,
        refused: Vec<Refused>,
        lost: Vec<OffsetRange>,
    },
    /// Try again after `backoff`; an attempt is counted, and the range fails for good after the route's
    /// `max_attempts`. `delivered_to`: everything below was acknowledged (the next attempt resumes there).
    Retry {
        reason: String,
        backoff: Duration,
        delivered_to: Option<i64>,
    },
    /// No retry can help (a refused batch, a topic gone, an undecodable batch): fail the range, listed
    /// by `courier status` for a replay once the cause is fixed.
    Fail {
        reason: String,
        delivered_to: Option<i64>,
    },
    /// Give the range back after `wait`, with no attempt counted (draining; the destination asked every
    /// worker to hold off).
    Release { wait: Duration },
    /// The lease was lost during delivery: someone else owns the range now; nothing to report.
    Fenced,
}

/// How a range ended for this task, once reported.
enum Outcome {
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
    let mut leases: Vec<Lease> = Vec::new();
    loop {
        if leases.is_empty() {
            if *stop_leasing.borrow() {
                return;
            }
            leases = lease(&ctx, kind, &throttle).await;
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
            if leases.len() >= ctx.config.leases_per_task {
                // A full hand: there may be more. Let one more idle task look, rather than all at once.
                gate.work.notify_one();
            }
        }
        let in_hand = std::mem::take(&mut leases);
        // Every range in hand is delivered at once; all their leases are renewed until the last is done
        // (a range delivered early waits for its siblings' checkpoint with its lease kept alive).
        let lost: Vec<watch::Sender<bool>> =
            in_hand.iter().map(|_| watch::channel(false).0).collect();
        let deliveries =
            futures::future::join_all(in_hand.iter().zip(&lost).map(|(lease, lost)| {
                handle(&ctx, lease, lost.subscribe(), &stop_leasing, &hard_stop)
            }));
        let verdicts = tokio::select! {
            verdicts = deliveries => verdicts,
            never = renew_while_held(&ctx, &in_hand, &lost) => match never {},
        };
        let mut delivered = Vec::new();
        for (lease, verdict) in in_hand.into_iter().zip(verdicts) {
            match verdict {
                Verdict::Delivered { messages } => delivered.push((lease, messages)),
                other => {
                    let outcome = report(&ctx, &lease, other).await;
                    tally(&ctx.stats, &lease.route, kind, &outcome);
                }
            }
        }
        if delivered.is_empty() {
            continue;
        }
        // Settle what was delivered and, unless draining, lease the next ranges in the same transaction.
        let next = if *stop_leasing.borrow() {
            None
        } else {
            ctx.lease_request(kind, ctx.config.leases_per_task)
        };
        let done: Vec<Lease> = delivered.iter().map(|(lease, _)| lease.clone()).collect();
        let settled = with_retries(ctx.config.lease_ttl, "checkpoint", || {
            ctx.store.checkpoint_all_and_lease(&done, next.as_ref())
        })
        .await;
        let (outcomes, next) = match settled {
            Some((outcomes, next)) => {
                ctx.settled.notify_one();
                (outcomes, next)
            }
            None => (Vec::new(), Vec::new()),
        };
        for (i, (lease, messages)) in delivered.iter().enumerate() {
            let outcome = match outcomes.get(i) {
                Some(CheckpointOutcome::Applied) => Outcome::Checkpointed {
                    messages: *messages,
                },
                Some(CheckpointOutcome::Fenced) => {
                    tracing::info!(%lease, "Checkpoint fenced: the lease was lost before the range was settled; another worker delivers it.");
                    Outcome::Fenced
                }
                None => Outcome::Abandoned,
            };
            tally(&ctx.stats, &lease.route, kind, &outcome);
        }
        count_leased(&next);
        leases = next;
    }
}

/// One lease statement across every route whose destination is not holding off.
async fn lease(ctx: &Context, kind: RangeKind, throttle: &Throttle) -> Vec<Lease> {
    let Some(request) = ctx.lease_request(kind, ctx.config.leases_per_task) else {
        return Vec::new();
    };
    match ctx.store.lease(&request).await {
        Ok(leases) => {
            count_leased(&leases);
            leases
        }
        Err(error) => {
            metrics::store_error("lease");
            if throttle.ready("lease") {
                tracing::warn!(%error, "Could not lease ranges; retrying.");
            }
            Vec::new()
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
        Outcome::Abandoned => {}
    }
}

/// Delivers one leased range unless the worker is draining or stopping.
async fn handle(
    ctx: &Context,
    lease: &Lease,
    mut lost: watch::Receiver<bool>,
    stop_leasing: &watch::Receiver<bool>,
    hard_stop: &watch::Receiver<bool>,
) -> Verdict {
    let Some(route) = ctx.route(&lease.route) else {
        // Leased by name from this worker's own list: cannot happen; give it back at once.
        return Verdict::Release {
            wait: Duration::ZERO,
        };
    };
    if *stop_leasing.borrow() {
        // Leased together with ranges already delivered, but draining: give it back now.
        return Verdict::Release {
            wait: Duration::ZERO,
        };
    }
    let mut hard_stop = hard_stop.clone();
    tokio::select! {
        verdict = deliver(ctx, route, lease) => verdict,
        _ = crate::stopped(&mut hard_stop) => Verdict::Release { wait: Duration::ZERO },
        _ = crate::stopped(&mut lost) => {
            tracing::warn!(%lease, "Lease lost during delivery (it expired and another worker took it, or it was replayed); stopping.");
            Verdict::Fenced
        }
    }
}

/// Renews every lease of `leases` every `renew_every` until dropped; a lease found lost is flagged in
/// `lost` (its delivery stops) and no longer renewed.
async fn renew_while_held(
    ctx: &Context,
    leases: &[Lease],
    lost: &[watch::Sender<bool>],
) -> std::convert::Infallible {
    let mut every = tokio::time::interval_at(
        tokio::time::Instant::now() + ctx.config.renew_every,
        ctx.config.renew_every,
    );
    loop {
        every.tick().await;
        for (lease, lost) in leases.iter().zip(lost) {
            if *lost.borrow() {
                continue;
            }
            match ctx.store.renew(lease, ctx.config.lease_ttl).await {
                Ok(CheckpointOutcome::Applied) => {}
                Ok(CheckpointOutcome::Fenced) => {
                    lost.send_replace(true);
                }
                Err(error) => {
                    metrics::store_error("renew");
                    tracing::warn!(%lease, %error, "Could not renew the lease; delivery goes on and renewal is retried.");
                }
            }
        }
    }
}

/// Reads the range (from where an earlier attempt stopped) and delivers it in batches.
async fn deliver(ctx: &Context, route: &Route, lease: &Lease) -> Verdict {
    let Ok(to_read) = OffsetRange::new(lease.resume_from, lease.range.end()) else {
        // Everything was delivered by an earlier attempt that could not checkpoint.
        return Verdict::Delivered { messages: 0 };
    };
    let contents = match ctx
        .reader
        .read_surviving(&route.config.topic, lease.partition, to_read)
        .await
    {
        Ok(contents) => contents,
        Err(error) => return read_verdict(ctx, route, lease, &error),
    };
    let verdict = send(ctx, route, lease, to_read, &contents.messages).await;
    let undecodable = contents.undecodable_error(&route.config.topic, lease.partition, to_read);
    let verdict = match (undecodable, &verdict) {
        (Some(error), Verdict::Delivered { .. } | Verdict::SetAside { .. }) => {
            match read_verdict(ctx, route, lease, &error) {
                Verdict::Fail { reason, .. } => {
                    let at = contents.undecodable.as_ref().map(|u| u.offset);
                    stopped_at_undecodable(verdict, reason, at)
                }
                // Not permanent after all: as any read error.
                other => other,
            }
        }
        _ => verdict,
    };
    with_losses(route, lease, &contents, verdict)
}

/// The verdict on a range whose read stopped at an undecodable record `at`, the messages before it sent
/// (`verdict`): once they all went through, the range fails with `reason`, resuming at the record (a
/// replay after the cause is fixed does not deliver them again). Messages set aside before it are not
/// recorded by a failing range: its retry or replay starts over, so none is skipped.
fn stopped_at_undecodable(verdict: Verdict, reason: String, at: Option<i64>) -> Verdict {
    match verdict {
        Verdict::Delivered { .. } => Verdict::Fail {
            reason,
            delivered_to: at,
        },
        Verdict::SetAside { .. } => Verdict::Fail {
            reason,
            delivered_to: None,
        },
        // Not all of them went through: the range's retry reads it again and stops at the record again.
        other => other,
    }
}

/// The verdict on a range whose read found offsets deleted: the loss is recorded with the checkpoint.
/// A retry must read the range from its start again, so that it finds the loss again and records it:
/// no attempt resumes past it.
fn with_losses(
    route: &Route,
    lease: &Lease,
    contents: &RangeContents,
    verdict: Verdict,
) -> Verdict {
    if contents.deleted.is_empty() {
        return verdict;
    }
    let lost = contents.deleted.clone();
    let set_aside = |messages: usize, refused: Vec<Refused>| {
        tracing::error!(
            route = %route.config.name,
            %lease,
            lost = ?lost,
            delivered = messages,
            "Kafka deleted offsets of the range (retention or DeleteRecords) before they were delivered: \
             delivered what Kafka still held, recording the rest as lost. Runbook: docs/runbooks/retention.md"
        );
        Verdict::SetAside {
            messages,
            refused,
            lost: lost.clone(),
        }
    };
    match verdict {
        Verdict::Delivered { messages } => set_aside(messages, Vec::new()),
        Verdict::SetAside {
            messages, refused, ..
        } => set_aside(messages, refused),
        Verdict::Retry {
            reason, backoff, ..
        } => Verdict::Retry {
            reason,
            backoff,
            delivered_to: None,
        },
        Verdict::Fail { reason, .. } => Verdict::Fail {
            reason,
            delivered_to: None,
        },
        other => other,
    }
}

/// Delivers the messages read of `to_read` in batches.
async fn send(
    ctx: &Context,
    route: &Route,
    lease: &Lease,
    to_read: OffsetRange,
    messages: &[Message],
) -> Verdict {
    let config = route.deliverer.config();
    let batches = bounded_batches(
        route,
        lease,
        to_read,
        messages,
        config.max_batch_messages,
        config.max_batch_bytes,
    );
    // Unordered routes keep up to max_in_flight requests going; ordered ones send one at a time, so a
    // destination sees each partition in offset order.
    let in_flight = match route.config.ordering {
        Ordering::None => config.max_in_flight.max(1),
        Ordering::Partition => 1,
    };
    let requests: Vec<_> = batches
        .iter()
        .map(|batch| route.deliverer.deliver(batch))
        .collect();
    let mut answers = stream::iter(requests).buffered(in_flight);
    let mut delivered_to = None;
    let policy = isolate::Policy::of(route);
    // Batches refused for good, to bisect (module `isolate`), and the messages that isolation set aside.
    let mut refused: Vec<(Batch<'_>, Delivery)> = Vec::new();
    let mut quarantined: Vec<Refused> = Vec::new();
    // Answers come in batch order: the first one that is not a success (nor a refusal to isolate)
    // decides, and the requests after it are dropped (their batches go again with the range's next
    // attempt).
    for batch in &batches {
        let Some(delivery) = answers.next().await else {
            break;
        };
        if matches!(delivery.disposition, Disposition::Permanent { .. })
            && isolate::isolates(&delivery, &policy)
        {
            metrics::delivery_attempt(
                &route.config.name,
                &route.config.destination,
                "permanent",
                delivery.elapsed,
            );
            refused.push((*batch, delivery));
            // With one request in flight (ordered routes) isolate now, keeping the partition's order;
            // otherwise once the other requests are answered, as the isolation needs the destination's
            // slots that they may hold.
            if in_flight == 1 {
                if let Some(verdict) = isolate_refused(
                    ctx,
                    route,
                    lease,
                    &mut refused,
                    &mut quarantined,
                    delivered_to,
                )
                .await
                {
                    return verdict;
                }
            }
            continue;
        }
        if let Some(verdict) = judge(ctx, route, lease, batch, &delivery, delivered_to).await {
            return verdict;
        }
        // A retry must not resume past a message refused but not yet quarantined in the store.
        if refused.is_empty() && quarantined.is_empty() {
            delivered_to = Some(batch.end_offset);
        }
    }
    drop(answers);
    if let Some(verdict) = isolate_refused(
        ctx,
        route,
        lease,
        &mut refused,
        &mut quarantined,
        delivered_to,
    )
    .await
    {
        return verdict;
    }
    if !quarantined.is_empty() {
        return Verdict::SetAside {
            messages: messages.len() - quarantined.len(),
            refused: quarantined,
            lost: Vec::new(),
        };
    }
    Verdict::Delivered {
        messages: messages.len(),
    }
}

/// Bisects each refused batch, collecting the messages refused on their own into `quarantined`; a
/// transient answer retries the range and an isolation that cannot finish fails it.
async fn isolate_refused(
    ctx: &Context,
    route: &Route,
    lease: &Lease,
    refused: &mut Vec<(Batch<'_>, Delivery)>,
    quarantined: &mut Vec<Refused>,
    delivered_to: Option<i64>,
) -> Option<Verdict> {
    let (name, destination) = (&route.config.name, &route.config.destination);
    let policy = isolate::Policy::of(route);
    for (batch, refusal) in refused.drain(..) {
        match isolate::isolate(&route.deliverer, &batch, &refusal, &policy).await {
            Isolation::Isolated { quarantined: found } => quarantined.extend(found),
            Isolation::Retry {
                reason,
                retry_after,
            } => {
                if let Some(wait) = retry_after {
                    // As for any batch: every worker delivering to this destination holds off.
                    if let Err(error) = ctx
                        .store
                        .defer_destination(destination, wait, &reason)
                        .await
                    {
                        metrics::store_error("defer destination");
                        tracing::warn!(%destination, %error, "Could not share the destination's Retry-After with other workers.");
                    }
                }
                return Some(Verdict::Retry {
                    reason: format!("destination {destination:?} (route {name:?}): {reason}"),
                    backoff: ctx.config.backoff().honour_retry_after(
                        attempt(lease),
                        rand::random::<f64>(),
                        retry_after,
                    ),
                    delivered_to,
                });
            }
            Isolation::Failed { reason } => {
                return Some(Verdict::Fail {
                    reason: format!(
                        "destination {destination:?} (route {name:?}) refused the batch: {reason}"
                    ),
                    delivered_to,
                })
            }
        }
    }
    None
}

/// The range's messages as requests within the destination's limits, each named by its bounds: the
/// first starts at the range's first offset to read, the last ends at the range's end (gaps included).
fn bounded_batches<'a>(
    route: &'a Route,
    lease: &Lease,
    to_read: OffsetRange,
    messages: &'a [Message],
    max_messages: usize,
    max_bytes: usize,
) -> Vec<Batch<'a>> {
    let chunks: Vec<&[Message]> = batches(messages, max_messages, max_bytes).collect();
    let last = chunks.len().saturating_sub(1);
    let mut first_offset = to_read.start();
    let mut out = Vec::with_capacity(chunks.len());
    for (i, chunk) in chunks.into_iter().enumerate() {
        let end_offset = match chunk.last() {
            Some(message) if i < last => message.offset + 1,
            _ => to_read.end(),
        };
        out.push(Batch {
            route: &route.config.name,
            topic: &route.config.topic,
            replay_id: lease.replay_id,
            partition: lease.partition,
            first_offset,
            end_offset,
            messages: chunk,
        });
        first_offset = end_offset;
    }
    out
}

/// What one batch's answer means for the range: `None` to go on with the next batch.
async fn judge(
    ctx: &Context,
    route: &Route,
    lease: &Lease,
    batch: &Batch<'_>,
    delivery: &Delivery,
    delivered_to: Option<i64>,
) -> Option<Verdict> {
    let name = &route.config.name;
    let destination = &route.config.destination;
    match &delivery.disposition {
        Disposition::Success => {
            metrics::delivery_attempt(name, destination, "success", delivery.elapsed);
            if let Some(oldest) = batch.messages.iter().filter_map(|m| m.timestamp_ms).min() {
                metrics::end_to_end_latency(name, since_unix_millis(oldest));
            }
            None
        }
        Disposition::Retry {
            reason,
            retry_after,
        } => {
            if !delivery.attempted && delivered_to.is_none() {
                // Nothing was sent: the destination is paused or asked us to wait. Give the range back
                // for that long without counting an attempt.
                metrics::delivery_attempt(name, destination, "refused", delivery.elapsed);
                let wait = route
                    .deliverer
                    .blocked_until()
                    .map(|until| until.saturating_duration_since(Instant::now()))
                    .unwrap_or(ctx.config.poll_interval);
                return Some(Verdict::Release { wait });
            }
            metrics::delivery_attempt(name, destination, "retry", delivery.elapsed);
            if let Some(wait) = *retry_after {
                // Every worker delivering to this destination holds off, not only this one.
                if let Err(error) = ctx.store.defer_destination(destination, wait, reason).await {
                    metrics::store_error("defer destination");
                    tracing::warn!(%destination, %error, "Could not share the destination's Retry-After with other workers.");
                }
            }
            Some(Verdict::Retry {
                reason: format!("destination {destination:?} (route {name:?}): {reason}"),
                backoff: ctx.config.backoff().honour_retry_after(
                    attempt(lease),
                    rand::random::<f64>(),
                    *retry_after,
                ),
                delivered_to,
            })
        }
        Disposition::Permanent { reason } => {
            metrics::delivery_attempt(name, destination, "permanent", delivery.elapsed);
            Some(Verdict::Fail {
                reason: format!(
                    "destination {destination:?} (route {name:?}) refused the batch: {reason}"
                ),
                delivered_to,
            })
        }
    }
}

fn read_verdict(ctx: &Context, route: &Route, lease: &Lease, error: &ReadError) -> Verdict {
    metrics::kafka_error(&route.config.name, error.reason());
    let reason = format!("{}: {error}", error.reason());
    if error.is_retryable() {
        Verdict::Retry {
            reason,
            backoff: ctx
                .config
                .backoff()
                .delay(attempt(lease), rand::random::<f64>()),
            delivered_to: None,
        }
    } else {
        // A topic or partition that is gone, an undecodable batch: reading again fails the same way.
        tracing::error!(route = %route.config.name, %lease, %error, "Range cannot be read from Kafka; failing it so the partition keeps moving. Runbook: docs/runbooks/failed-ranges.md");
        Verdict::Fail {
            reason,
            delivered_to: None,
        }
    }
}

fn attempt(lease: &Lease) -> u32 {
    u32::try_from(lease.attempts).unwrap_or(0)
}

/// Reports a verdict other than [`Verdict::Delivered`] (those are checkpointed together by [`run`]).
async fn report(ctx: &Context, lease: &Lease, verdict: Verdict) -> Outcome {
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
    let Some(route) = ctx.route(&lease.route).filter(|_| !refused.is_empty()) else {
        return Ok(None);
    };
    let config = &route.config;
    let (Some(topic), Some(producer)) = (config.dead_letter_topic.as_deref(), &ctx.dead_letters)
    else {
        return Ok(None);
    };
    let records: Vec<_> = refused
        .iter()
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
            dead_letter_topic: topic.map(str::to_owned),
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
async fn with_retries<T, F, Fut>(
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

fn since_unix_millis(timestamp_ms: i64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    now.saturating_sub(Duration::from_millis(
        u64::try_from(timestamp_ms).unwrap_or(0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_stopped_at_an_undecodable_record_fails_there_once_the_messages_before_went_through()
    {
        let reason =
            || "undecodable: orders/2: the records from offset 150 cannot be decoded".to_owned();
        match stopped_at_undecodable(Verdict::Delivered { messages: 50 }, reason(), Some(150)) {
            Verdict::Fail {
                reason,
                delivered_to: Some(150),
            } => assert!(reason.contains("offset 150"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // Something set aside before it is not recorded by a failing range: nothing may be skipped.
        let set_aside = Verdict::SetAside {
            messages: 49,
            refused: Vec::new(),
            lost: vec![OffsetRange::new(100, 110).expect("range")],
        };
        assert!(matches!(
            stopped_at_undecodable(set_aside, reason(), Some(150)),
            Verdict::Fail {
                delivered_to: None,
                ..
            }
        ));
        // The messages before it did not all go through: retried as any delivery.
        let retry = Verdict::Retry {
            reason: "HTTP 503".into(),
            backoff: Duration::from_secs(1),
            delivered_to: Some(120),
        };
        assert!(matches!(
            stopped_at_undecodable(retry, reason(), Some(150)),
            Verdict::Retry {
                delivered_to: Some(120),
                ..
            }
        ));
    }
}
