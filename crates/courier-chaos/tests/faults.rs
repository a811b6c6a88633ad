//! The rest of incident 8's day, short versions, against the real PostgreSQL, Kafka and HTTP: every
//! scenario must deliver everything, with duplicates only in interrupted ranges, and measure its
//! recovery. Restarts of the shared services never run here.

use std::time::Duration;

use courier_chaos::{render, ScenarioReport};
use courier_chaos::{Options, Scenario};

async fn run(scenario: Scenario) -> ScenarioReport {
    let reports = scenario.run(&Options::short_in_process()).await;
    let text = render(&reports);
    eprintln!("{text}");
    assert_eq!(reports.len(), 1, "{text}");
    let report = reports[0].clone();
    assert!(report.skipped.is_none(), "{text}");
    assert!(report.passed(), "{text}");
    let judgement = report.judgement.clone().expect("judged");
    assert!(judgement.messages_in > 0, "{text}");
    assert_eq!(judgement.delivered, judgement.messages_in, "{text}");
    assert_eq!(
        (judgement.lost, judgement.duplicates_unexplained),
        (0, 0),
        "{text}"
    );
    report
}

fn check<'a>(report: &'a ScenarioReport, name: &str) -> &'a str {
    let check = report
        .checks
        .iter()
        .find(|c| c.name.starts_with(name))
        .unwrap_or_else(|| panic!("no check {name:?} in {report:?}"));
    assert!(check.passed, "{check:?}");
    &check.detail
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_dns_outage_then_the_fix_delivers_everything() {
    let report = run(Scenario::DnsOutage).await;
    check(&report, "the outage was real");
    let j = report.judgement.expect("judged");
    assert!(
        j.longest_stall >= Duration::from_secs(4),
        "the outage stalled delivery: {j:?}"
    );
    assert!(
        j.recovered_after_fault
            .is_some_and(|r| r < Duration::from_secs(30)),
        "{j:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_slows_requests_to_a_trickle_then_recovers() {
    let report = run(Scenario::RateLimit).await;
    check(&report, "Retry-After honoured");
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("request rate before the storm")),
        "{:?}",
        report.notes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_mid_batch_duplicate_only_inside_their_ranges() {
    let report = run(Scenario::WorkerKill).await;
    check(&report, "a dead worker's ranges are leased again");
    assert!(
        report.notes.iter().any(|n| n.contains("3 kill(s)")),
        "{:?}",
        report.notes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_every_courier_connection_loses_nothing() {
    let report = run(Scenario::PgTerminate).await;
    check(&report, "the fault hit courier's connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_never_answers_for_a_while_loses_nothing() {
    let report = run(Scenario::Hang).await;
    check(&report, "the destination really hung");
    let j = report.judgement.expect("judged");
    assert!(
        j.recovered_after_fault
            .is_some_and(|r| r < Duration::from_secs(30)),
        "{j:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_workers_booting_at_once_apply_migrations_once_and_deliver() {
    let report = run(Scenario::BootStorm).await;
    check(&report, "no boot failed");
    check(&report, "exactly one apply");
}

#[tokio::test]
async fn restarts_of_shared_services_never_run_in_short_mode() {
    for scenario in [Scenario::PgRestart, Scenario::KafkaRestart] {
        let reports = scenario.run(&Options::short_in_process()).await;
        assert_eq!(reports.len(), 1);
        let why = reports[0].skipped.as_deref().unwrap_or_default();
        assert!(
            why.contains("courier gameday --full"),
            "{scenario:?}: {why:?}"
        );
        assert_eq!(reports[0].verdict(), "skipped");
    }
}
