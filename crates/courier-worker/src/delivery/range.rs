//! Delivering one leased range: read it (from where an earlier attempt stopped), split it into requests
//! within the destination's limits, send them (concurrently for unordered routes), and judge the answers
//! into one [`Verdict`]. A batch refused for good is handed to `isolate` to find the messages refused on
//! their own. What the read could not hand over (offsets Kafka deleted, batches it cannot decode) shapes
//! the verdict through `unreadable`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use courier_core::{Disposition, Lease, Message, Offset, OffsetRange, Ordering};
use courier_http::{batches, Batch, Delivery};
use courier_kafka::ReadError;
use futures::stream::{self, StreamExt};

use super::unreadable::{stopped_at_undecodable, with_losses, with_undecodable};
use super::Verdict;
use crate::config::OnPoison;
use crate::isolate::{self, Isolation, Refused};
use crate::{metrics, Context, Route};

/// Reads the range (from where an earlier attempt stopped) and delivers it in batches. Also returns the
/// offsets of the messages read, ascending (a span's verdict is told range by range from them).
pub(super) async fn deliver(ctx: &Context, route: &Route, lease: &Lease) -> (Verdict, Vec<Offset>) {
    let Ok(to_read) = OffsetRange::new(lease.resume_from, lease.range.end()) else {
        // Everything was delivered by an earlier attempt that could not checkpoint.
        return (Verdict::Delivered { messages: 0 }, Vec::new());
    };
    let contents = match ctx
        .reader
        .read_surviving(&route.config.topic, lease.partition, to_read)
        .await
    {
        Ok(contents) => contents,
        Err(error) => return (read_verdict(ctx, route, lease, &error), Vec::new()),
    };
    let verdict = match contents.undecodable.first() {
        // Order matters more than progress: deliver what lies before the undecodable batch, then fail
        // the range there.
        Some(first) if route.config.on_poison == OnPoison::FailRange => {
            let before = contents
                .messages
                .partition_point(|m| m.offset < first.offsets.start());
            let verdict = match OffsetRange::new(to_read.start(), first.offsets.start()) {
                Ok(sent) => send(ctx, route, lease, sent, &contents.messages[..before]).await,
                Err(_) => Verdict::Delivered { messages: 0 },
            };
            match contents.undecodable_error(&route.config.topic, lease.partition, to_read) {
                Some(error) => match read_verdict(ctx, route, lease, &error) {
                    Verdict::Fail { reason, .. } => {
                        stopped_at_undecodable(verdict, reason, Some(first.offsets.start()))
                    }
                    // Not permanent after all: as any read error.
                    other => other,
                },
                None => verdict,
            }
        }
        _ => {
            let verdict = send(ctx, route, lease, to_read, &contents.messages).await;
            with_undecodable(lease, &contents, verdict)
        }
    };
    let read = contents.messages.iter().map(|m| m.offset).collect();
    (with_losses(route, lease, &contents, verdict), read)
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

pub(super) fn attempt(lease: &Lease) -> u32 {
    u32::try_from(lease.attempts).unwrap_or(0)
}

fn since_unix_millis(timestamp_ms: i64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    now.saturating_sub(Duration::from_millis(
        u64::try_from(timestamp_ms).unwrap_or(0),
    ))
}
