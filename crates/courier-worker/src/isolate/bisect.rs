//! The bisection of a refused batch. It is split in halves and each half sent again, left first,
//! recursively: halves that are accepted are delivered; a single message still refused is the poison and
//! is quarantined. Each refused message costs at most two requests per halving, so about `2 * log2(n)`
//! extra requests for each bad message of `n`; [`MAX_EXTRA_REQUESTS`](super::MAX_EXTRA_REQUESTS) bounds the whole isolation of one
//! batch, past which the range fails with a reason saying so.
//!
//! Sub-batches are named by their offsets like any batch (`route/partition/first-end`): the split points
//! are message offsets, decided by the messages alone, so a retry of the range sends the same
//! sub-batches under the same idempotency keys.

use courier_core::{Disposition, Offset};
use courier_http::{Batch, Delivery};

use super::{isolates, Destination, Isolation, Policy, Refused};
use crate::config::OnPoison;
use crate::metrics;

/// Isolates the messages of `batch` that the destination refuses; `refusal` is its answer to the whole
/// batch, already received.
pub(crate) async fn isolate<D: Destination>(
    destination: &D,
    batch: &Batch<'_>,
    refusal: &Delivery,
    policy: &Policy<'_>,
) -> Isolation {
    if batch.messages.is_empty() || !isolates(refusal, policy) {
        return Isolation::Failed {
            reason: refusal.reason.clone(),
        };
    }
    let mut quarantined = Vec::new();
    let mut extra_requests = 0usize;
    let mut accepted = 0usize;
    // Sub-batches still to send as (first index, end index, first offset, end offset), the leftmost on
    // top. The whole batch was refused already: start from its halves (or its single message).
    let mut todo = Vec::new();
    let mut refused = (
        refusal.clone(),
        0,
        batch.messages.len(),
        batch.first_offset,
        batch.end_offset,
    );
    loop {
        let (answer, first, end, first_offset, end_offset) = refused;
        if end - first == 1 {
            let message = &batch.messages[first];
            if policy.on_poison == OnPoison::FailRange {
                return Isolation::Failed {
                    reason: format!(
                        "the message at offset {} is refused even alone ({}); on_poison = \"fail-range\" fails the range",
                        message.offset, answer.reason
                    ),
                };
            }
            quarantined.push(Refused {
                message: message.clone(),
                reason: answer.reason,
                status: answer.status,
                undecodable: false,
            });
        } else {
            // Split at a message offset, so the halves tile [first_offset, end_offset) exactly.
            let middle = first + (end - first) / 2;
            let split_at: Offset = batch.messages[middle].offset;
            todo.push((middle, end, split_at, end_offset));
            todo.push((first, middle, first_offset, split_at));
        }
        // Send sub-batches until one is refused for good (or all are done).
        refused = loop {
            let Some((first, end, first_offset, end_offset)) = todo.pop() else {
                if accepted == 0 && batch.messages.len() > 1 {
                    return Isolation::Failed {
                        reason: format!(
                            "every message of batch {}-{} was refused on its own ({extra_requests} extra requests): the destination \
                             refuses this route's data as a whole (a schema change, credentials), not a few bad messages, so \
                             nothing was quarantined ({})",
                            batch.first_offset, batch.end_offset, refusal.reason
                        ),
                    };
                }
                log_done(policy, batch, &quarantined, extra_requests);
                return Isolation::Isolated { quarantined };
            };
            if extra_requests >= policy.max_extra_requests {
                return Isolation::Failed {
                    reason: format!(
                        "isolating the refused messages of batch {}-{} took {extra_requests} extra requests, the most allowed, \
                         with {} refused message(s) found so far: most of the batch is refused, which points at the destination \
                         or the data as a whole rather than a few bad messages ({})",
                        batch.first_offset,
                        batch.end_offset,
                        quarantined.len(),
                        refusal.reason
                    ),
                };
            }
            let part = Batch {
                messages: &batch.messages[first..end],
                first_offset,
                end_offset,
                ..*batch
            };
            extra_requests += 1;
            let answer = destination.deliver(&part).await;
            metrics::isolation_request(policy.route, policy.destination);
            match &answer.disposition {
                Disposition::Success => {
                    accepted += end - first;
                    metrics::delivery_attempt(
                        policy.route,
                        policy.destination,
                        "success",
                        answer.elapsed,
                    );
                }
                Disposition::Retry {
                    reason,
                    retry_after,
                } => {
                    let outcome = if answer.attempted { "retry" } else { "refused" };
                    metrics::delivery_attempt(
                        policy.route,
                        policy.destination,
                        outcome,
                        answer.elapsed,
                    );
                    return Isolation::Retry {
                        reason: format!(
                            "{reason} (while isolating the refused messages of batch {}-{}; the range is retried, nothing quarantined)",
                            batch.first_offset, batch.end_offset
                        ),
                        retry_after: *retry_after,
                    };
                }
                Disposition::Permanent { .. } => {
                    metrics::delivery_attempt(
                        policy.route,
                        policy.destination,
                        "permanent",
                        answer.elapsed,
                    );
                    if !isolates(&answer, policy) {
                        return Isolation::Failed {
                            reason: answer.reason,
                        };
                    }
                    break (answer, first, end, first_offset, end_offset);
                }
            }
        };
    }
}

fn log_done(policy: &Policy<'_>, batch: &Batch<'_>, quarantined: &[Refused], extra: usize) {
    for refused in quarantined {
        tracing::warn!(
            route = policy.route,
            destination = policy.destination,
            partition = batch.partition,
            offset = refused.message.offset,
            answer = %refused.reason,
            "The destination refuses this message on its own: quarantined, the rest of its range is delivered. \
             `courier status` lists it; once the cause is fixed replay it with `courier replay --quarantined`. \
             Runbook: docs/runbooks/quarantined-messages.md"
        );
    }
    tracing::info!(
        route = policy.route,
        partition = batch.partition,
        batch = %batch.offsets(),
        messages = batch.messages.len(),
        quarantined = quarantined.len(),
        extra_requests = extra,
        "Refused batch isolated: the accepted messages are delivered."
    );
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeSet;
    use std::time::Duration;

    use courier_core::Message;
    use proptest::prelude::*;

    use super::*;
    use crate::isolate::MAX_EXTRA_REQUESTS;

    /// Refuses (400) any batch holding a bad offset, answers 413 above `max_messages`, and 503 once
    /// `unavailable_after` requests have been made; records every batch it was sent.
    struct Scripted {
        bad: BTreeSet<Offset>,
        max_messages: usize,
        unavailable_after: usize,
        sent: RefCell<Vec<(Offset, Offset, Vec<Offset>)>>,
    }

    impl Scripted {
        fn new(bad: impl IntoIterator<Item = Offset>) -> Self {
            Self {
                bad: bad.into_iter().collect(),
                max_messages: usize::MAX,
                unavailable_after: usize::MAX,
                sent: RefCell::new(Vec::new()),
            }
        }

        fn accepted(&self) -> BTreeSet<Offset> {
            self.sent
                .borrow()
                .iter()
                .filter(|(_, _, offsets)| {
                    offsets.len() <= self.max_messages
                        && !offsets.iter().any(|o| self.bad.contains(o))
                })
                .flat_map(|(_, _, offsets)| offsets.clone())
                .collect()
        }
    }

    fn answer(status: u16) -> Delivery {
        Delivery {
            disposition: Disposition::from_http_status(status, format!("HTTP {status}"), None),
            status: Some(status),
            elapsed: Duration::ZERO,
            reason: format!("HTTP {status}"),
            attempted: true,
        }
    }

    impl Destination for Scripted {
        async fn deliver(&self, batch: &Batch<'_>) -> Delivery {
            let offsets: Vec<Offset> = batch.messages.iter().map(|m| m.offset).collect();
            let n = {
                let mut sent = self.sent.borrow_mut();
                sent.push((batch.first_offset, batch.end_offset, offsets.clone()));
                sent.len()
            };
            if n > self.unavailable_after {
                answer(503)
            } else if offsets.len() > self.max_messages {
                answer(413)
            } else if offsets.iter().any(|o| self.bad.contains(o)) {
                answer(400)
            } else {
                answer(200)
            }
        }
    }

    fn messages(offsets: impl IntoIterator<Item = Offset>) -> Vec<Message> {
        offsets
            .into_iter()
            .map(|offset| Message {
                partition: 0,
                offset,
                timestamp_ms: None,
                key: None,
                headers: Vec::new(),
                payload: Some(format!("{{\"n\":{offset}}}").into_bytes()),
            })
            .collect()
    }

    fn policy(on_poison: OnPoison) -> Policy<'static> {
        Policy {
            route: "r",
            destination: "d",
            on_poison,
            too_large_statuses: &[413],
            max_extra_requests: MAX_EXTRA_REQUESTS,
        }
    }

    fn run(
        destination: &Scripted,
        messages: &[Message],
        first: Offset,
        end: Offset,
        policy: Policy<'_>,
    ) -> Isolation {
        let batch = Batch {
            route: "r",
            topic: "t",
            replay_id: None,
            partition: 0,
            first_offset: first,
            end_offset: end,
            messages,
        };
        let refusal = block_on(destination.deliver(&batch));
        if refusal.disposition.is_success() {
            return Isolation::Isolated {
                quarantined: Vec::new(),
            };
        }
        block_on(isolate(destination, &batch, &refusal, &policy))
    }

    /// The futures here never wait on anything: poll them to completion on this thread.
    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(future)
    }

    fn quarantined_offsets(isolation: &Isolation) -> Vec<Offset> {
        match isolation {
            Isolation::Isolated { quarantined, .. } => {
                quarantined.iter().map(|r| r.message.offset).collect()
            }
            other => panic!("expected an isolation, got {other:?}"),
        }
    }

    #[test]
    fn one_bad_message_is_quarantined_and_the_other_49_delivered() {
        let destination = Scripted::new([73]);
        let batch = messages(50..100);
        let isolation = run(&destination, &batch, 50, 100, policy(OnPoison::Quarantine));
        assert_eq!(quarantined_offsets(&isolation), [73]);
        let expected: BTreeSet<Offset> = (50..100).filter(|o| *o != 73).collect();
        assert_eq!(destination.accepted(), expected);
        let Isolation::Isolated { quarantined } = isolation else {
            unreachable!()
        };
        assert_eq!(quarantined[0].status, Some(400));
        // 2 per halving: 50 messages halve 6 times.
        let extra_requests = destination.sent.borrow().len() - 1;
        assert!(extra_requests <= 12, "{extra_requests} extra requests");
    }

    #[test]
    fn sub_batches_tile_the_batch_bounds_and_are_the_same_on_a_retry() {
        // Gaps (compaction): bounds come from the batch and the message offsets, never from counts.
        let offsets = [3, 4, 9, 10, 11, 20, 21, 30];
        let sent = || {
            let destination = Scripted::new([10, 21]);
            run(
                &destination,
                &messages(offsets),
                0,
                40,
                policy(OnPoison::Quarantine),
            );
            destination.sent.into_inner()
        };
        let first = sent();
        assert_eq!(
            first,
            sent(),
            "a retry must send the same sub-batches (same idempotency keys)"
        );
        assert_eq!(first[0].0, 0);
        assert_eq!(first[0].1, 40);
        assert_eq!(
            (first[1].0, first[1].1),
            (0, 11),
            "left half first, split at a message offset"
        );
        for (start, end, offsets) in &first {
            assert!(
                offsets.iter().all(|o| start <= o && o < end),
                "{start}-{end} {offsets:?}"
            );
        }
    }

    #[test]
    fn too_large_splits_until_the_halves_fit_even_with_fail_range() {
        let mut destination = Scripted::new([]);
        destination.max_messages = 30;
        let isolation = run(
            &destination,
            &messages(0..100),
            0,
            100,
            policy(OnPoison::FailRange),
        );
        assert_eq!(quarantined_offsets(&isolation), Vec::<Offset>::new());
        assert_eq!(destination.accepted(), (0..100).collect());
    }

    #[test]
    fn a_single_message_too_large_is_quarantined_or_fails_the_range() {
        let mut destination = Scripted::new([]);
        destination.max_messages = 0;
        let isolation = run(
            &destination,
            &messages(0..1),
            0,
            1,
            policy(OnPoison::Quarantine),
        );
        assert_eq!(quarantined_offsets(&isolation), [0]);
        let isolation = run(
            &destination,
            &messages(0..4),
            0,
            4,
            policy(OnPoison::FailRange),
        );
        assert!(
            matches!(&isolation, Isolation::Failed { reason, .. } if reason.contains("offset 0 is refused even alone")),
            "{isolation:?}"
        );
    }

    #[test]
    fn fail_range_sends_nothing_more_for_a_poison_message() {
        let destination = Scripted::new([5]);
        let isolation = run(
            &destination,
            &messages(0..10),
            0,
            10,
            policy(OnPoison::FailRange),
        );
        assert!(
            matches!(isolation, Isolation::Failed { .. }),
            "{isolation:?}"
        );
        assert_eq!(destination.sent.borrow().len(), 1);
    }

    #[test]
    fn a_transient_answer_ends_the_isolation_without_quarantining() {
        let mut destination = Scripted::new([1, 7]);
        destination.unavailable_after = 4;
        let isolation = run(
            &destination,
            &messages(0..8),
            0,
            8,
            policy(OnPoison::Quarantine),
        );
        assert!(
            matches!(&isolation, Isolation::Retry { reason, .. } if reason.contains("nothing quarantined")),
            "{isolation:?}"
        );
    }

    #[test]
    fn a_destination_refusing_everything_quarantines_nothing() {
        let destination = Scripted::new(0..8);
        let isolation = run(
            &destination,
            &messages(0..8),
            0,
            8,
            policy(OnPoison::Quarantine),
        );
        assert!(
            matches!(&isolation, Isolation::Failed { reason } if reason.contains("refuses this route's data as a whole")),
            "{isolation:?}"
        );
        // Credentials or URL: not even bisected.
        let refusal = Delivery {
            status: Some(401),
            ..answer(401)
        };
        let batch = messages(0..8);
        let batch = Batch {
            route: "r",
            topic: "t",
            replay_id: None,
            partition: 0,
            first_offset: 0,
            end_offset: 8,
            messages: &batch,
        };
        let unused = Scripted::new([]);
        let isolation = block_on(isolate(
            &unused,
            &Batch {
                messages: &[],
                ..batch
            },
            &answer(400),
            &policy(OnPoison::Quarantine),
        ));
        assert!(
            matches!(isolation, Isolation::Failed { .. }),
            "an empty batch: {isolation:?}"
        );
        let isolation = block_on(isolate(
            &unused,
            &batch,
            &refusal,
            &policy(OnPoison::Quarantine),
        ));
        assert!(
            matches!(isolation, Isolation::Failed { .. }),
            "{isolation:?}"
        );
        assert!(unused.sent.borrow().is_empty());
    }

    #[test]
    fn past_the_cap_the_range_fails_with_the_reason() {
        let destination = Scripted::new(0..100);
        let policy = Policy {
            max_extra_requests: 10,
            ..policy(OnPoison::Quarantine)
        };
        let isolation = run(&destination, &messages(0..100), 0, 100, policy);
        assert!(
            matches!(&isolation, Isolation::Failed { reason } if reason.contains("took 10 extra requests, the most allowed")),
            "{isolation:?}"
        );
        assert_eq!(destination.sent.borrow().len(), 11);
    }

    proptest! {
            #[test]
            fn every_bad_message_and_only_those_are_quarantined_within_the_bound(
                n in 1usize..300,
                bad in proptest::collection::btree_set(0i64..300, 0..6),
            ) {
                let bad: BTreeSet<Offset> = bad.into_iter().filter(|o| (*o as usize) < n).collect();
            // All refused is the "refuses everything" case, tested on its own.
            prop_assume!(n == 1 || bad.len() < n);
                let destination = Scripted::new(bad.iter().copied());
                let policy = Policy { max_extra_requests: usize::MAX, ..policy(OnPoison::Quarantine) };
                let isolation = run(&destination, &messages(0..n as Offset), 0, n as Offset, policy);
                let Isolation::Isolated { quarantined
    } = isolation else {
                    panic!("not isolated");
                };
                let found: BTreeSet<Offset> = quarantined.iter().map(|r| r.message.offset).collect();
                prop_assert_eq!(&found, &bad);
                let good: BTreeSet<Offset> = (0..n as Offset).filter(|o| !bad.contains(o)).collect();
                prop_assert_eq!(destination.accepted(), good);
                let depth = usize::BITS - (n.max(2) - 1).leading_zeros();
                let extra_requests = destination.sent.borrow().len() - 1;
                prop_assert!(extra_requests <= 2 * bad.len().max(1) * depth as usize,
                    "{} requests for {} bad of {}", extra_requests, bad.len(), n);
            }
        }
}
