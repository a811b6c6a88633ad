//! Judging reports built by hand: each condition needs attention when it should, and only then.

use courier_store::{FailedPartitionRow, FailedRow, PartitionRow, RetryingRow, RouteRow};

use super::judge::judge;
use super::*;

const NOW: i64 = 1_800_000_000;

fn configured(name: &str) -> ConfiguredRoute {
    ConfiguredRoute {
        name: name.into(),
        topic: format!("{name}-topic"),
        destination: "hooks".into(),
    }
}

fn recorded(name: &str, planner: Option<&str>) -> RouteRow {
    RouteRow {
        name: name.into(),
        topic: format!("{name}-topic"),
        destination: "hooks".into(),
        planner: planner.map(str::to_owned),
        unplanned_since_unix: planner.is_none().then_some(NOW - 90),
    }
}

fn partition(route: &str, watermark: i64, high: i64) -> PartitionView {
    PartitionView {
        route: route.into(),
        topic: format!("{route}-topic"),
        destination: "hooks".into(),
        partition: 0,
        watermark,
        frontier: watermark,
        unsettled_ranges: 0,
        settled_ahead: 0,
        kafka: Some((0, high)),
        failed_offsets: 0,
        failed_ranges: 0,
        oldest_age: None,
        deleted_before_delivery: None,
    }
}

fn report(snapshot: Snapshot, partitions: Vec<PartitionView>, routes: &[&str]) -> Report {
    let mut report = Report {
        snapshot: Snapshot {
            now_unix: NOW,
            ..snapshot
        },
        partitions,
        configured: routes.iter().map(|r| configured(r)).collect(),
        kafka_error: None,
        paused: Vec::new(),
        live_within: Duration::from_secs(15),
        attention: Vec::new(),
    };
    report.attention = judge(&report, &StatusConfig::default());
    report
}

fn codes(report: &Report) -> Vec<&'static str> {
    report.attention.iter().map(|a| a.code.as_str()).collect()
}

#[test]
fn configured_routes_no_worker_ever_started_need_attention() {
    let report = report(Snapshot::default(), Vec::new(), &["a", "b"]);
    assert_eq!(codes(&report), ["route-not-started", "route-not-started"]);
    assert!(!report.ok());
    let line = report.attention[0].line(NOW);
    assert!(
        line.contains("route a") && line.contains("docs/runbooks/no-live-worker.md"),
        "{line}"
    );
}

#[test]
fn a_route_nobody_plans_needs_attention_since_its_planner_went() {
    let snapshot = Snapshot {
        routes: vec![recorded("a", Some("w1")), recorded("b", None)],
        ..Snapshot::default()
    };
    let report = report(snapshot, vec![partition("a", 10, 10)], &["a", "b"]);
    assert_eq!(codes(&report), ["no-live-worker"]);
    let item = &report.attention[0];
    assert_eq!(
        (item.route.as_deref(), item.since_unix),
        (Some("b"), Some(NOW - 90))
    );
    assert!(item.line(NOW).contains("1m 30s ago"), "{}", item.line(NOW));
}

#[test]
fn all_well_is_ok() {
    let snapshot = Snapshot {
        routes: vec![recorded("a", Some("w1"))],
        ..Snapshot::default()
    };
    let report = report(snapshot, vec![partition("a", 10, 12)], &["a"]);
    assert!(report.ok(), "{:?}", report.attention);
    assert_eq!(report.route_lag("a"), Some(2));
}

#[test]
fn offsets_deleted_before_delivery_are_not_lag_and_need_attention() {
    let snapshot = Snapshot {
        routes: vec![recorded("a", Some("w1"))],
        ..Snapshot::default()
    };
    let view = PartitionView {
        kafka: Some((371, 500)),
        deleted_before_delivery: Some(271),
        ..partition("a", 100, 500)
    };
    let report = report(snapshot, vec![view], &["a"]);
    assert_eq!(report.partitions[0].lag(), Some(129));
    assert_eq!(codes(&report), ["deleted-before-delivery"]);
    let line = report.attention[0].line(NOW);
    assert!(
        line.contains("271 offset(s) below Kafka's log start 371")
            && line.contains("docs/runbooks/retention.md"),
        "{line}"
    );
}

#[test]
fn a_paused_route_needs_attention_until_resumed_naming_how() {
    let snapshot = Snapshot {
        routes: vec![recorded("a", Some("w1"))],
        ..Snapshot::default()
    };
    let mut paused = report(snapshot, vec![partition("a", 10, 12)], &["a"]);
    paused.paused = vec![courier_store::PausedRoute {
        route: "a".into(),
        since: None,
        paused_secs_ago: Some(30),
        by: Some("oncall".into()),
        reason: Some("destination migrating".into()),
    }];
    paused.attention = judge(&paused, &StatusConfig::default());
    assert_eq!(codes(&paused), ["route-paused"]);
    assert!(!paused.ok());
    let item = &paused.attention[0];
    assert_eq!(item.since_unix, Some(NOW - 30));
    let line = item.line(NOW);
    assert!(
        line.contains("courier resume a")
            && line.contains("oncall")
            && line.contains("docs/runbooks/lag.md"),
        "{line}"
    );
}

#[test]
fn failed_offsets_are_counted_apart_from_lag_and_need_attention() {
    let snapshot = Snapshot {
        routes: vec![recorded("a", Some("w1"))],
        failed: vec![FailedRow {
            route: "a".into(),
            ranges: 3,
            offsets: 1963,
            newest_error: "HTTP 422".into(),
        }],
        failed_partitions: vec![FailedPartitionRow {
            route: "a".into(),
            partition: 0,
            ranges: 3,
            offsets: 1963,
            oldest_unix: NOW - 600,
            newest_error: "HTTP 422".into(),
        }],
        ..Snapshot::default()
    };
    let mut view = partition("a", 5000, 5000);
    view.failed_offsets = 1963;
    let report = report(snapshot, vec![view], &["a"]);
    assert_eq!(report.route_lag("a"), Some(0));
    assert_eq!(codes(&report), ["failed-ranges"]);
    let json = report.to_json();
    assert_eq!(json["schema_version"], SCHEMA_VERSION);
    assert_eq!(json["ok"], false);
    assert_eq!(json["partitions"][0]["failed_offsets"], 1963);
    assert_eq!(json["partitions"][0]["lag"], 0);
    assert_eq!(json["attention"][0]["code"], "failed-ranges");
    assert_eq!(json["attention"][0]["route"], "a");
    assert_eq!(json["attention"][0]["since_unix"], NOW - 600);
    assert_eq!(
        json["attention"][0]["runbook"],
        "docs/runbooks/failed-ranges.md"
    );
}

#[test]
fn offsets_settled_above_a_watermark_not_moved_yet_are_not_lag() {
    // No worker moved the watermark past a failed range of 200 and 300 delivered offsets.
    let mut view = partition("a", 0, 600);
    view.settled_ahead = 500;
    view.failed_offsets = 200;
    assert_eq!(view.lag(), Some(100));
}

#[test]
fn a_destination_failing_now_needs_attention_before_anything_fails_for_good() {
    let snapshot = Snapshot {
        routes: vec![recorded("a", Some("w1"))],
        retrying: vec![RetryingRow {
            route: "a".into(),
            destination: "hooks".into(),
            ranges: 2,
            offsets: 400,
            oldest_unix: NOW - 20,
            newest_error: "HTTP 503: down for maintenance".into(),
        }],
        ..Snapshot::default()
    };
    let report = report(snapshot, vec![partition("a", 0, 400)], &["a"]);
    assert_eq!(codes(&report), ["retrying-ranges"]);
    assert_eq!(report.attention[0].destination.as_deref(), Some("hooks"));
    assert!(report.attention[0].message.contains("down for maintenance"));
}

#[test]
fn lag_and_age_over_their_bounds_need_attention_since_the_oldest_message() {
    let snapshot = Snapshot {
        routes: vec![recorded("a", Some("w1"))],
        partitions: vec![PartitionRow {
            route: "a".into(),
            topic: "a-topic".into(),
            destination: "hooks".into(),
            partition: 0,
            frontier: 0,
            watermark: 0,
            unsettled_ranges: 0,
            settled_ahead: 0,
            first_unsettled: 0,
        }],
        ..Snapshot::default()
    };
    let mut view = partition("a", 0, 200_000);
    view.oldest_age = Some(Duration::from_secs(300));
    let report = report(snapshot, vec![view], &["a"]);
    assert_eq!(codes(&report), ["oldest-message-age", "lag"]);
    assert!(report
        .attention
        .iter()
        .all(|a| a.since_unix == Some(NOW - 300)));
}

#[test]
fn an_error_s_own_runbook_is_said_once() {
    let item = Attention::new(
        Code::KafkaUnreachable,
        "Kafka did not answer. Runbook: docs/runbooks/kafka-unavailable.md".into(),
    );
    assert_eq!(
        item.line(NOW),
        "Kafka did not answer. Runbook: docs/runbooks/kafka-unavailable.md"
    );
}

#[test]
fn kafka_not_answering_needs_attention() {
    let snapshot = Snapshot {
        routes: vec![recorded("a", Some("w1"))],
        ..Snapshot::default()
    };
    let mut report = report(snapshot, Vec::new(), &["a"]);
    report.kafka_error = Some("Kafka at x did not answer within 5s".into());
    report.attention = judge(&report, &StatusConfig::default());
    assert_eq!(codes(&report), ["kafka-unreachable"]);
    assert_eq!(
        report.attention[0].runbook(),
        "docs/runbooks/kafka-unavailable.md"
    );
}
