//! What a range's read could not hand over, and what that does to the range's [`Verdict`]: offsets Kafka
//! had deleted before they were read (recorded as losses with the checkpoint) and record batches it
//! cannot decode (quarantined with the checkpoint, or failing the range there with
//! `on_poison = "fail-range"`). Neither may ever be passed off as delivered, and no retry may resume past
//! either, or the next attempt would not record them.

use courier_core::{Lease, Message};
use courier_kafka::RangeContents;

use super::Verdict;
use crate::isolate::Refused;
use crate::Route;

/// The verdict on a range whose read stopped at an undecodable record `at`, the messages before it sent
/// (`verdict`): once they all went through, the range fails with `reason`, resuming at the record (a
/// replay after the cause is fixed does not deliver them again). Messages set aside before it are not
/// recorded by a failing range: its retry or replay starts over, so none is skipped.
pub(super) fn stopped_at_undecodable(verdict: Verdict, reason: String, at: Option<i64>) -> Verdict {
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
pub(super) fn with_undecodable(
    lease: &Lease,
    contents: &RangeContents,
    verdict: Verdict,
) -> Verdict {
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
pub(super) fn with_losses(
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use courier_core::{Epoch, OffsetRange, RangeKind};
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
