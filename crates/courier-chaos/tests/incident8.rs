//! Incident 8, short versions, against the real PostgreSQL and Kafka: naive mode must reproduce each
//! failure, courier mode must not show it, and the side-by-side table must say so.

use std::time::Duration;

use courier_chaos::{render, Mode, ScenarioReport};
use courier_chaos::{Options, Scenario};

async fn run(scenario: Scenario) -> (ScenarioReport, ScenarioReport) {
    let reports = scenario.run(&Options::short_in_process()).await;
    let text = render(&reports);
    eprintln!("{text}");
    assert_eq!(reports.len(), 2, "a naive and a courier row: {text}");
    let (naive, courier) = (reports[0].clone(), reports[1].clone());
    assert_eq!(
        (naive.mode, courier.mode),
        (Some(Mode::Naive), Some(Mode::Courier)),
        "{text}"
    );
    assert!(
        text.contains("Incident 8 in PostgreSQL, naive vs courier"),
        "{text}"
    );
    assert!(
        naive.passed(),
        "naive mode must reproduce the failure:\n{text}"
    );
    assert_eq!(naive.verdict(), "reproduced");
    assert!(
        courier.passed(),
        "courier mode must hold every invariant and check:\n{text}"
    );
    (naive, courier)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_ddl_deadlocks_naive_boots_while_courier_applies_once() {
    let (naive, courier) = run(Scenario::Deadlock).await;
    let failed = |r: &ScenarioReport| r.incident8.as_ref().and_then(|f| f.failed_boots);
    assert!(failed(&naive).is_some_and(|n| n > 0), "{naive:?}");
    assert_eq!(failed(&courier), Some(0));
    assert!(
        naive.notes.iter().any(|n| n.contains("deadlock detected")),
        "{:?}",
        naive.notes
    );
    assert!(courier
        .checks
        .iter()
        .any(|c| c.name == "exactly one apply" && c.passed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_holder_stalls_naive_until_the_harness_steps_in_and_courier_for_seconds() {
    let (naive, courier) = run(Scenario::PileUp).await;
    let stall = |r: &ScenarioReport| {
        r.judgement
            .as_ref()
            .map(|j| j.longest_stall)
            .unwrap_or_default()
    };
    assert!(
        stall(&naive) >= Duration::from_secs(12),
        "naive stall {:?}",
        stall(&naive)
    );
    assert!(
        stall(&courier) <= Duration::from_secs(6),
        "courier stall {:?}",
        stall(&courier)
    );
    // The evidence an operator would read: the queue points at the ALTER, the real cause is idle.
    let evidence = naive.evidence.join("\n");
    assert!(
        evidence.contains("wait_event_type=Lock") && evidence.contains("idle in transaction"),
        "{evidence}"
    );
    assert!(
        evidence.contains("AccessExclusiveLock waiting"),
        "{evidence}"
    );
    assert!(
        courier
            .checks
            .iter()
            .any(|c| c.name == "migration applied once" && c.passed),
        "{courier:?}"
    );
    for report in [&naive, &courier] {
        let j = report.judgement.as_ref().expect("judged");
        assert_eq!((j.lost, j.duplicates_unexplained), (0, 0), "{j:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphaned_backends_commit_claims_nobody_received_unless_the_server_ends_them() {
    let (naive, courier) = run(Scenario::Orphans).await;
    let figures = |r: &ScenarioReport| r.incident8.clone().expect("figures");
    let (n, c) = (figures(&naive), figures(&courier));
    assert!(n.orphan_backends_max.is_some_and(|m| m >= 5), "{n:?}");
    assert!(n.late_claims.is_some_and(|l| l > 0), "{n:?}");
    assert_eq!(c.late_claims, Some(0), "{c:?}");
    assert!(c.orphan_backends_max.is_some_and(|m| m <= 8), "{c:?}");
    assert_eq!((n.lost, c.lost), (Some(0), Some(0)));
    assert!(
        naive
            .checks
            .iter()
            .any(|c| c.name == "every late claim fenced" && c.passed),
        "{naive:?}"
    );
}
