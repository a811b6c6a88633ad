//! Delivering one leased range: read it (from where an earlier attempt stopped), split it into requests
//! within the destination's limits, send them (concurrently for unordered routes), and judge the answers
//! into one [`Verdict`]. A batch refused for good is handed to `isolate` to find the messages refused on
//! their own. Offsets the read stepped over because Kafka's record batch there cannot be decoded are
//! quarantined with the checkpoint, or fail the range there with `on_poison = "fail-range"`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use courier_core::{Disposition, Lease, Message, Offset, OffsetRange, Ordering};
use courier_http::{batches, Batch, Delivery};
use courier_kafka::{RangeContents, ReadError};
use futures::stream::{self, StreamExt};

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

/// The verdict on a range whose read stepped over record batches it cannot decode, the messages on both
/// sides sent (`verdict`): once they all went through, the batches' offsets are quarantined with the
/// checkpoint, one record per offset, with librdkafka's words as the reason.
///
/// Quarantined rather than recorded as lost (`courier_losses`, retention's record): the records are still
/// in Kafka and only this build cannot read them (a codec it lacks, or a batch corrupt on this broker),
/// so they must stay replayable (`courier replay --quarantined`, after an upgrade or a repair of the
/// log), be listed and alerted on like any message set aside, and a replay that still cannot decode
/// them quarantines them again. One record per offset, as the quarantine is kept, listed and replayed
/// by offset. A retry or failure must not resume past the first undecodable offset, or the next attempt
/// would never record them.
fn with_undecodable(lease: &Lease, contents: &RangeContents, verdict: Verdict) -> Verdict {
    let Some(first) = contents.undecodable.first() else {
        return verdict;
    };
    let first = first.offsets.start();
    let undecodable = || {
        contents.undecodable.iter().flat_map(|span| {
            tracing::error!(
                %lease,
                offsets = %span.offsets,
                cause = %span.cause,
                "Kafka holds a record batch this build cannot decode: delivered the rest of the range, \
                 quarantining its offsets. Runbook: docs/runbooks/quarantined-messages.md"
            );
            (span.offsets.start()..span.offsets.end()).map(|offset| Refused {
                message: Message {
                    partition: lease.partition,
                    offset,
                    timestamp_ms: None,
                    key: None,
                    headers: Vec::new(),
                    payload: None,
                },
                reason: format!("undecodable: {}", span.cause),
                status: None,
                undecodable: true,
            })
        })
    };
    let resume_before = |delivered_to: Option<i64>| delivered_to.map(|to| to.min(first));
    match verdict {
        Verdict::Delivered { messages } => Verdict::SetAside {
            messages,
            refused: undecodable().collect(),
            lost: Vec::new(),
        },
        Verdict::SetAside {
            messages,
            mut refused,
            lost,
        } => {
            refused.extend(undecodable());
            refused.sort_by_key(|r| r.message.offset);
            Verdict::SetAside {
                messages,
                refused,
                lost,
            }
        }
        Verdict::Retry {
            reason,
            backoff,
            delivered_to,
        } => Verdict::Retry {
            reason,
            backoff,
            delivered_to: resume_before(delivered_to),
        },
        Verdict::Fail {
            reason,
            delivered_to,
        } => Verdict::Fail {
            reason,
            delivered_to: resume_before(delivered_to),
        },
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

#[cfg(test)]
mod tests {
    use courier_core::{Epoch, RangeKind};
    use courier_kafka::Undecodable;

    use super::*;

    fn range(start: i64, end: i64) -> OffsetRange {
        OffsetRange::new(start, end).expect("range")
    }

    #[test]
    fn undecodable_offsets_are_quarantined_with_the_checkpoint_and_never_resumed_past() {
        let lease = Lease {
            id: 1,
            route: "orders".into(),
            partition: 2,
            range: range(100, 200),
            epoch: Epoch(1),
            attempts: 1,
            kind: RangeKind::Live,
            resume_from: 100,
            replay_id: None,
        };
        let contents = RangeContents {
            messages: Vec::new(),
            deleted: Vec::new(),
            undecodable: vec![
                Undecodable {
                    offsets: range(150, 153),
                    cause: "Decompression (codec 0x1) of message at 150 of 96 bytes failed".into(),
                    probes: 4,
                },
                Undecodable {
                    offsets: range(190, 191),
                    cause: "Decompression (codec 0x3) of message at 190 of 40 bytes failed".into(),
                    probes: 2,
                },
            ],
        };
        let offsets_of = |refused: &[Refused]| -> Vec<i64> {
            refused.iter().map(|r| r.message.offset).collect()
        };
        match with_undecodable(&lease, &contents, Verdict::Delivered { messages: 96 }) {
            Verdict::SetAside {
                messages: 96,
                refused,
                lost,
            } => {
                assert_eq!(offsets_of(&refused), [150, 151, 152, 190]);
                assert!(refused.iter().all(|r| r.undecodable && r.status.is_none()));
                assert!(refused[0]
                    .reason
                    .starts_with("undecodable: Decompression (codec 0x1)"));
                assert!(refused[3].reason.contains("codec 0x3"));
                assert!(lost.is_empty());
            }
            other => panic!("{other:?}"),
        }
        // Messages the destination refused are quarantined beside them, in offset order.
        let refused_by_destination = Refused {
            message: Message {
                partition: 2,
                offset: 170,
                timestamp_ms: None,
                key: None,
                headers: Vec::new(),
                payload: Some(b"{}".to_vec()),
            },
            reason: "HTTP 400".into(),
            status: Some(400),
            undecodable: false,
        };
        let set_aside = Verdict::SetAside {
            messages: 95,
            refused: vec![refused_by_destination],
            lost: Vec::new(),
        };
        match with_undecodable(&lease, &contents, set_aside) {
            Verdict::SetAside { refused, .. } => {
                assert_eq!(offsets_of(&refused), [150, 151, 152, 170, 190]);
                assert!(!refused[3].undecodable);
            }
            other => panic!("{other:?}"),
        }
        // Not everything went through: the next attempt must read the batch again, not resume past it.
        let retry = Verdict::Retry {
            reason: "HTTP 503".into(),
            backoff: Duration::from_secs(1),
            delivered_to: Some(180),
        };
        assert!(matches!(
            with_undecodable(&lease, &contents, retry),
            Verdict::Retry {
                delivered_to: Some(150),
                ..
            }
        ));
        let fail = Verdict::Fail {
            reason: "HTTP 401".into(),
            delivered_to: Some(120),
        };
        assert!(matches!(
            with_undecodable(&lease, &contents, fail),
            Verdict::Fail {
                delivered_to: Some(120),
                ..
            }
        ));
    }

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
