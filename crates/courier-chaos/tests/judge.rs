//! The judge on planted faults: it must catch a lost message, an unexplained duplicate, a message in the
//! wrong batch, an unknown element and a gap in the tiling; it must explain a duplicate in an
//! interrupted or replayed range; and it must measure stalls and recovery from the timeline.

use std::time::{Duration, SystemTime};

use courier_chaos::Length;
use courier_chaos::{
    judge, longest_stall, Evidence, FaultWindow, Judgement, PartitionBounds, Produced, RangeRecord,
};
use courier_chaos::{render, ScenarioReport};
use courier_sink::{Answer, Received};
use serde_json::json;

fn t(seconds: f64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000) + Duration::from_secs_f64(seconds)
}

/// Ten messages on partition 0, offsets 0..10, produced one per 0.1 s.
fn produced() -> Vec<Produced> {
    (0..10)
        .map(|i| Produced {
            id: i.to_string(),
            partition: 0,
            offset: i,
            at: t(i as f64 * 0.1),
        })
        .collect()
}

/// One delivered batch of partition 0 covering `[start, end)`, carrying `ids`, arriving at `at`.
fn batch(start: i64, end: i64, ids: &[i64], at: f64) -> Received {
    Received {
        received_at: t(at),
        path: "/".into(),
        idempotency_key: Some(format!("chaos/0/{start}-{end}")),
        route: Some("chaos".into()),
        partition: Some(0),
        offsets: Some(format!("{start}-{end}")),
        replay: None,
        content_type: Some("application/json".into()),
        // The judge reads payloads (the elements) and the courier headers only.
        headers: Default::default(),
        body: Default::default(),
        envelopes: Vec::new(),
        elements: ids
            .iter()
            .map(|id| json!({ "id": id.to_string(), "seq": id }))
            .collect(),
        body_error: None,
        answer: Answer::Status(200),
    }
}

/// Two live ranges [0,5) and [5,10), with the given epochs.
fn ranges(first_epoch: i64, second_epoch: i64) -> Vec<RangeRecord> {
    vec![
        RangeRecord {
            partition: 0,
            start: 0,
            end: 5,
            epoch: first_epoch,
            state: "done".into(),
            live: true,
            replayed: false,
        },
        RangeRecord {
            partition: 0,
            start: 5,
            end: 10,
            epoch: second_epoch,
            state: "done".into(),
            live: true,
            replayed: false,
        },
    ]
}

const BOUNDS: [PartitionBounds; 1] = [PartitionBounds {
    partition: 0,
    initial: 0,
    frontier: 10,
}];

fn run(delivered: &[Received], ranges: &[RangeRecord], fault: Option<FaultWindow>) -> Judgement {
    let produced = produced();
    judge(&Evidence {
        produced: &produced,
        delivered,
        ranges,
        partitions: &BOUNDS,
        fault,
        judged_at: t(20.0),
    })
}

#[test]
fn a_clean_run_passes() {
    let j = run(
        &[
            batch(0, 5, &[0, 1, 2, 3, 4], 0.6),
            batch(5, 10, &[5, 6, 7, 8, 9], 1.1),
        ],
        &ranges(1, 1),
        None,
    );
    assert_eq!(
        (j.messages_in, j.delivered, j.lost, j.duplicates()),
        (10, 10, 0, 0)
    );
    assert!(j.invariants_hold(), "{j:?}");
}

#[test]
fn a_planted_loss_is_caught() {
    // Message 7 never arrives.
    let j = run(
        &[
            batch(0, 5, &[0, 1, 2, 3, 4], 0.6),
            batch(5, 10, &[5, 6, 8, 9], 1.1),
        ],
        &ranges(1, 1),
        None,
    );
    assert_eq!(j.lost, 1, "{j:?}");
    assert_eq!(j.delivered, 9);
    assert!(!j.invariants_hold(), "a lost message must fail the run");
    assert!(
        j.examples.iter().any(|e| e.contains("message 7")),
        "{:?}",
        j.examples
    );
}

#[test]
fn a_planted_duplicate_in_a_never_interrupted_range_is_unexplained() {
    // Message 3 arrives twice, but its range [0, 5) was leased once (epoch 1).
    let j = run(
        &[
            batch(0, 5, &[0, 1, 2, 3, 4], 0.6),
            batch(3, 5, &[3], 0.7),
            batch(5, 10, &[5, 6, 7, 8, 9], 1.1),
        ],
        &ranges(1, 1),
        None,
    );
    assert_eq!(
        (j.duplicates_unexplained, j.duplicates_interrupted, j.lost),
        (1, 0, 0),
        "{j:?}"
    );
    assert!(
        !j.invariants_hold(),
        "an unexplained duplicate must fail the run"
    );
    assert!(
        j.examples
            .iter()
            .any(|e| e.contains("unexplained duplicate: message 3")),
        "{:?}",
        j.examples
    );
}

#[test]
fn a_duplicate_in_an_interrupted_or_replayed_range_is_explained() {
    let delivered = [
        batch(0, 5, &[0, 1, 2, 3, 4], 0.6),
        batch(3, 5, &[3], 0.7),
        batch(5, 10, &[5, 6, 7, 8, 9], 1.1),
    ];
    // Leased twice (a worker died holding it).
    let j = run(&delivered, &ranges(2, 1), None);
    assert_eq!(
        (j.duplicates_interrupted, j.duplicates_unexplained),
        (1, 0),
        "{j:?}"
    );
    assert!(j.invariants_hold());
    // Replayed by an operator.
    let mut replayed = ranges(1, 1);
    replayed[0].replayed = true;
    let j = run(&delivered, &replayed, None);
    assert_eq!(
        (j.duplicates_interrupted, j.duplicates_unexplained),
        (1, 0),
        "{j:?}"
    );
}

#[test]
fn a_duplicate_whose_range_was_compacted_away_cannot_be_explained() {
    let j = run(
        &[
            batch(0, 5, &[0, 1, 2, 3, 4], 0.6),
            batch(0, 5, &[0], 0.7),
            batch(5, 10, &[5, 6, 7, 8, 9], 1.1),
        ],
        &ranges(1, 1)[1..],
        None,
    );
    assert_eq!(j.duplicates_unexplained, 1);
    assert!(
        j.examples.iter().any(|e| e.contains("compaction")),
        "{:?}",
        j.examples
    );
    assert!(
        !j.tiling.is_empty(),
        "the missing range is a gap in the tiling too"
    );
}

#[test]
fn a_message_in_the_wrong_batch_or_an_unknown_element_is_caught() {
    // Message 7 inside a batch headed [0, 5).
    let j = run(
        &[
            batch(0, 5, &[0, 1, 2, 3, 4, 7], 0.6),
            batch(5, 10, &[5, 6, 8, 9], 1.1),
        ],
        &ranges(1, 1),
        None,
    );
    assert_eq!(j.misplaced, 1, "{j:?}");
    assert!(!j.invariants_hold());
    // An element nobody produced.
    let j = run(
        &[
            batch(0, 5, &[0, 1, 2, 3, 4, 42], 0.6),
            batch(5, 10, &[5, 6, 7, 8, 9], 1.1),
        ],
        &ranges(1, 1),
        None,
    );
    assert_eq!(j.unknown, 1, "{j:?}");
    assert!(!j.invariants_hold());
}

#[test]
fn gaps_and_overlaps_in_the_tiling_are_caught() {
    let delivered = [
        batch(0, 5, &[0, 1, 2, 3, 4], 0.6),
        batch(5, 10, &[5, 6, 7, 8, 9], 1.1),
    ];
    let mut gap = ranges(1, 1);
    gap[1].start = 6;
    assert!(run(&delivered, &gap, None)
        .tiling
        .iter()
        .any(|p| p.contains("gap [5, 6)")));
    let mut overlap = ranges(1, 1);
    overlap[1].start = 4;
    assert!(run(&delivered, &overlap, None)
        .tiling
        .iter()
        .any(|p| p.contains("overlaps")));
    let mut short = ranges(1, 1);
    short[1].end = 9;
    assert!(run(&delivered, &short, None)
        .tiling
        .iter()
        .any(|p| p.contains("frontier")));
}

#[test]
fn the_longest_stall_counts_only_time_with_work_waiting() {
    // Deliveries at 1, 2, then nothing until 10 while messages wait: an 8 s stall.
    let produced = [t(0.5), t(1.5), t(1.8), t(3.0)];
    let delivered = [t(1.0), t(2.0), t(10.0), t(10.1)];
    assert_eq!(
        longest_stall(&produced, &delivered, t(11.0)),
        Duration::from_secs(8)
    );
    // Idle (nothing waiting) between 2 and 9, then a message at 9 delivered at 9.2: no long stall.
    let produced = [t(0.5), t(1.5), t(9.0)];
    let delivered = [t(1.0), t(2.0), t(9.2)];
    let stall = longest_stall(&produced, &delivered, t(11.0));
    assert!(stall < Duration::from_millis(1100), "{stall:?}");
    // A message never delivered stalls until the end of the observation.
    let produced = [t(0.5), t(1.5)];
    let delivered = [t(1.0)];
    assert_eq!(
        longest_stall(&produced, &delivered, t(5.0)),
        Duration::from_millis(3500)
    );
}

#[test]
fn recovery_is_measured_from_the_end_of_the_fault() {
    // Fault from 0.2 s to 0.8 s: the first delivery after it at 1.0, everything produced by 0.8 by 1.5.
    let j = run(
        &[
            batch(0, 5, &[0, 1, 2, 3, 4], 1.0),
            batch(5, 10, &[5, 6, 7, 8, 9], 1.5),
        ],
        &ranges(1, 1),
        Some(FaultWindow {
            started: t(0.2),
            ended: t(0.8),
        }),
    );
    let close = |a: Option<Duration>, b: f64| a.is_some_and(|a| (a.as_secs_f64() - b).abs() < 1e-6);
    assert!(close(j.first_progress_after_fault, 0.2), "{j:?}");
    assert!(close(j.recovered_after_fault, 0.7), "{j:?}");
    // A message produced before the end of the fault and never delivered: no recovery.
    let j = run(
        &[batch(0, 5, &[0, 1, 2, 3, 4], 1.0)],
        &ranges(1, 1),
        Some(FaultWindow {
            started: t(0.2),
            ended: t(0.8),
        }),
    );
    assert_eq!(j.recovered_after_fault, None);
}

#[test]
fn the_report_fails_on_a_broken_invariant_and_prints_why() {
    let mut report = ScenarioReport::new("planted", None, Length::Short);
    report.judgement = Some(run(
        &[batch(0, 5, &[0, 1, 2, 3, 4], 0.6)],
        &ranges(1, 1),
        None,
    ));
    assert!(!report.passed());
    assert_eq!(report.verdict(), "FAIL");
    let text = render(&[report]);
    assert!(
        text.contains("planted") && text.contains("FAIL") && text.contains("lost 5"),
        "{text}"
    );
    let json =
        serde_json::to_value(ScenarioReport::skipped("x", Length::Full, "why")).expect("json");
    assert_eq!(json["skipped"], "why");
}
