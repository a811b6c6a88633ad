//! Consecutive ranges of one partition in hand, delivered as one span.
//!
//! A task often holds neighbouring ranges of a partition (the planner carves a partition's backlog in
//! one go, and leasing takes the oldest ranges first). Delivered one by one, ranges smaller than the
//! destination's batch limit send one short request each: ranges of 100 against batches of 500 send
//! five times the requests the messages need. Delivered as one span, they are read once and cut into
//! full batches whose bounds may cross range bounds (a batch's idempotency key names its own bounds, so
//! it stays well defined, and the per-message id never changes).
//!
//! What the span came to is then told range by range ([`split`]): each range is settled on its own, as
//! if delivered alone, so the store's protocol (one lease, one checkpoint per range) is unchanged.
//! Ranges join a span only when nothing could make them differ: same route, kind and replay, contiguous
//! bounds, and no earlier attempt to resume past (a follower's `resume_from` is its start). Routes with
//! `ordering = "partition"` never hold two ranges of a partition at once, and routes with
//! `on_poison = "fail-range"` are not spanned: there a refused request fails the ranges it holds, and a
//! span would widen that to its neighbours.

use courier_core::{Lease, Offset, OffsetRange};

use super::Verdict;

/// Leases in hand that are delivered together: indices into the task's hand, in offset order, and
/// the one lease that stands for all of them during delivery.
#[derive(Debug)]
pub(super) struct Span {
    pub members: Vec<usize>,
    /// The members' union: the first member's id, epoch and resume point, the last one's end, the
    /// highest attempt count (so backoffs are never shorter than a member's own).
    pub lease: Lease,
}

/// Groups `leases` into spans; a lease `may_join` rejects is a span of its own.
pub(super) fn spans(leases: &[Lease], may_join: impl Fn(&Lease) -> bool) -> Vec<Span> {
    let mut order: Vec<usize> = (0..leases.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&leases[a], &leases[b]);
        (
            &a.route,
            a.kind.as_str(),
            a.replay_id,
            a.partition,
            a.range.start(),
        )
            .cmp(&(
                &b.route,
                b.kind.as_str(),
                b.replay_id,
                b.partition,
                b.range.start(),
            ))
    });
    let mut out: Vec<Span> = Vec::new();
    for i in order {
        let next = &leases[i];
        if let Some(span) = out.last_mut() {
            if continues(&span.lease, next) && may_join(next) {
                span.members.push(i);
                span.lease.range = OffsetRange::new(span.lease.range.start(), next.range.end())
                    .unwrap_or(span.lease.range);
                span.lease.attempts = span.lease.attempts.max(next.attempts);
                continue;
            }
        }
        out.push(Span {
            members: vec![i],
            lease: next.clone(),
        });
    }
    out
}

/// Whether `next` can be delivered right after `span` as part of it.
fn continues(span: &Lease, next: &Lease) -> bool {
    span.route == next.route
        && span.kind == next.kind
        && span.replay_id == next.replay_id
        && span.partition == next.partition
        && span.range.end() == next.range.start()
        && next.resume_from == next.range.start()
}

/// What the span's `verdict` means for each of its `members` (in the span's order). `read`: the offsets
/// of the messages read, ascending, to count each range's own.
///
/// - Delivered, or delivered with messages set aside: each range is, with the set-aside messages and
///   lost offsets that fall inside it.
/// - Retry or Fail resuming at `delivered_to`: ranges wholly below it are delivered; the range holding
///   it resumes there; the ranges after it get the same verdict from their start (their messages were
///   part of the failing request or not yet sent).
/// - Release and Fenced: every range alike (a fenced span is told per range by the task loop).
pub(super) fn split(members: &[&Lease], verdict: Verdict, read: &[Offset]) -> Vec<Verdict> {
    if let [_] = members {
        return vec![verdict];
    }
    let count = |range: &OffsetRange, refused: usize| {
        let (from, to) = (
            read.partition_point(|&o| o < range.start()),
            read.partition_point(|&o| o < range.end()),
        );
        (to - from).saturating_sub(refused)
    };
    let delivered_below = |lease: &Lease, delivered_to: Option<Offset>| {
        delivered_to.is_some_and(|to| lease.range.end() <= to)
    };
    let resume_inside = |lease: &Lease, delivered_to: Option<Offset>| {
        delivered_to.filter(|&to| lease.range.start() < to && to < lease.range.end())
    };
    members
        .iter()
        .map(|lease| match &verdict {
            Verdict::Delivered { .. } => Verdict::Delivered {
                messages: count(&lease.range, 0),
            },
            Verdict::SetAside { refused, lost, .. } => {
                let refused: Vec<_> = refused
                    .iter()
                    .filter(|r| lease.range.contains(r.message.offset))
                    .cloned()
                    .collect();
                let lost: Vec<OffsetRange> = lost
                    .iter()
                    .filter_map(|l| {
                        OffsetRange::new(
                            l.start().max(lease.range.start()),
                            l.end().min(lease.range.end()),
                        )
                        .ok()
                    })
                    .collect();
                // Undecodable offsets set aside were never read: only the refused messages were.
                let refused_read = refused.iter().filter(|r| !r.undecodable).count();
                let messages = count(&lease.range, refused_read);
                if refused.is_empty() && lost.is_empty() {
                    Verdict::Delivered { messages }
                } else {
                    Verdict::SetAside {
                        messages,
                        refused,
                        lost,
                    }
                }
            }
            Verdict::Retry { delivered_to, .. } | Verdict::Fail { delivered_to, .. }
                if delivered_below(lease, *delivered_to) =>
            {
                Verdict::Delivered {
                    messages: count(&lease.range, 0),
                }
            }
            Verdict::Retry {
                reason,
                backoff,
                delivered_to,
            } => Verdict::Retry {
                reason: reason.clone(),
                backoff: *backoff,
                delivered_to: resume_inside(lease, *delivered_to),
            },
            Verdict::Fail {
                reason,
                delivered_to,
            } => Verdict::Fail {
                reason: reason.clone(),
                delivered_to: resume_inside(lease, *delivered_to),
            },
            Verdict::Release { wait } => Verdict::Release { wait: *wait },
            Verdict::Fenced => Verdict::Fenced,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use courier_core::{Epoch, Message, RangeKind};

    use super::*;
    use crate::isolate::Refused;

    fn lease(id: i64, partition: i32, start: Offset, end: Offset) -> Lease {
        Lease {
            id,
            route: "orders".into(),
            partition,
            range: OffsetRange::new(start, end).expect("range"),
            epoch: Epoch(1),
            attempts: 1,
            kind: RangeKind::Live,
            resume_from: start,
            replay_id: None,
        }
    }

    #[test]
    fn contiguous_ranges_of_a_partition_form_one_span_and_nothing_else_does() {
        let mut resumed = lease(6, 0, 400, 500);
        resumed.resume_from = 450;
        let mut replay = lease(7, 0, 500, 600);
        replay.kind = RangeKind::Replay;
        let hand = vec![
            lease(3, 0, 200, 300),
            lease(1, 0, 0, 100),
            lease(4, 1, 300, 400), // another partition
            lease(2, 0, 100, 200),
            lease(5, 0, 300, 400),
            resumed, // would deliver 400..450 again: not joined
            replay,
            lease(8, 0, 700, 800), // a hole before it
        ];
        let found = spans(&hand, |_| true);
        let groups: Vec<Vec<i64>> = found
            .iter()
            .map(|s| s.members.iter().map(|&i| hand[i].id).collect())
            .collect();
        assert_eq!(
            groups,
            vec![vec![1, 2, 3, 5], vec![6], vec![8], vec![4], vec![7]]
        );
        let first = &found[0].lease;
        assert_eq!((first.range.start(), first.range.end()), (0, 400));
        assert_eq!((first.id, first.resume_from), (1, 0));
        // A lease the caller keeps apart stays alone.
        assert_eq!(spans(&hand[..2], |l| l.id != 1).len(), 2);
    }

    fn ranges() -> Vec<Lease> {
        vec![
            lease(1, 0, 0, 100),
            lease(2, 0, 100, 200),
            lease(3, 0, 200, 300),
        ]
    }

    fn read() -> Vec<Offset> {
        // Offsets 0..300 but 150..160 (compacted away).
        (0..300).filter(|o| !(150..160).contains(o)).collect()
    }

    #[test]
    fn a_delivered_span_delivers_each_range_with_its_own_messages() {
        let hand = ranges();
        let members: Vec<&Lease> = hand.iter().collect();
        let verdicts = split(&members, Verdict::Delivered { messages: 290 }, &read());
        let counts: Vec<usize> = verdicts
            .iter()
            .map(|v| match v {
                Verdict::Delivered { messages } => *messages,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(counts, vec![100, 90, 100]);
    }

    #[test]
    fn set_aside_messages_and_lost_offsets_stay_with_the_range_that_holds_them() {
        let hand = ranges();
        let members: Vec<&Lease> = hand.iter().collect();
        let refused = |offset| Refused {
            message: Message {
                partition: 0,
                offset,
                timestamp_ms: None,
                key: None,
                headers: Vec::new(),
                payload: Some(b"{}".to_vec()),
            },
            reason: "HTTP 400".into(),
            status: Some(400),
            undecodable: false,
        };
        let verdict = Verdict::SetAside {
            messages: 288,
            refused: vec![refused(120), refused(130)],
            lost: vec![OffsetRange::new(180, 230).expect("range")],
        };
        let verdicts = split(&members, verdict, &read());
        assert!(matches!(verdicts[0], Verdict::Delivered { messages: 100 }));
        match &verdicts[1] {
            Verdict::SetAside {
                messages,
                refused,
                lost,
            } => {
                assert_eq!(*messages, 88);
                assert_eq!(refused.len(), 2);
                assert_eq!(lost, &vec![OffsetRange::new(180, 200).expect("range")]);
            }
            other => panic!("{other:?}"),
        }
        match &verdicts[2] {
            Verdict::SetAside { lost, refused, .. } => {
                assert!(refused.is_empty());
                assert_eq!(lost, &vec![OffsetRange::new(200, 230).expect("range")]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_retry_delivers_the_ranges_below_its_resume_point_and_retries_the_rest() {
        let hand = ranges();
        let members: Vec<&Lease> = hand.iter().collect();
        let retry = |delivered_to| Verdict::Retry {
            reason: "HTTP 503".into(),
            backoff: Duration::from_secs(1),
            delivered_to,
        };
        let verdicts = split(&members, retry(Some(150)), &read());
        assert!(matches!(verdicts[0], Verdict::Delivered { messages: 100 }));
        assert!(matches!(
            verdicts[1],
            Verdict::Retry {
                delivered_to: Some(150),
                ..
            }
        ));
        assert!(matches!(
            verdicts[2],
            Verdict::Retry {
                delivered_to: None,
                ..
            }
        ));
        // Resuming exactly at a range bound: the range below is delivered, the one above starts over.
        let verdicts = split(&members, retry(Some(200)), &read());
        assert!(matches!(verdicts[1], Verdict::Delivered { messages: 90 }));
        assert!(matches!(
            verdicts[2],
            Verdict::Retry {
                delivered_to: None,
                ..
            }
        ));
        // Nothing delivered: every range retries from its start.
        let verdicts = split(&members, retry(None), &read());
        assert!(verdicts.iter().all(|v| matches!(
            v,
            Verdict::Retry {
                delivered_to: None,
                ..
            }
        )));
    }

    #[test]
    fn a_failure_fails_the_ranges_from_where_delivery_stopped() {
        let hand = ranges();
        let members: Vec<&Lease> = hand.iter().collect();
        let verdict = Verdict::Fail {
            reason: "undecodable at 250".into(),
            delivered_to: Some(250),
        };
        let verdicts = split(&members, verdict, &read());
        assert!(matches!(verdicts[0], Verdict::Delivered { .. }));
        assert!(matches!(verdicts[1], Verdict::Delivered { .. }));
        match &verdicts[2] {
            Verdict::Fail {
                reason,
                delivered_to: Some(250),
            } => assert!(reason.contains("250")),
            other => panic!("{other:?}"),
        }
    }
}
