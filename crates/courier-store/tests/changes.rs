//! "What changed?" and pausing, against a real PostgreSQL: each change records exactly one event with the
//! change itself (transitions, not repetitions), a paused route is never leased, old events are pruned.

use std::time::Duration;

use crate::fixture::{route_with_ranges, spec};
use courier_core::{Ordering, RangeKind};
use courier_store::protocol::ReplayAudit;
use courier_store::{
    Change, ChangeKind, ChangeRow, Failure, LeaseRequest, ReplayFilter, RouteSettings, Store,
    StoreError,
};
use courier_testkit::TestDb;

fn lease_both(max: usize) -> LeaseRequest {
    LeaseRequest {
        routes: vec!["a".into(), "b".into()],
        ordered: Vec::new(),
        owner: "w".into(),
        max_ranges: max,
        ttl: Duration::from_secs(60),
        kind: RangeKind::Live,
    }
}

async fn recent(store: &Store, kind: ChangeKind) -> Vec<ChangeRow> {
    store
        .changes(Duration::from_secs(3600), None, 1000)
        .await
        .expect("changes")
        .into_iter()
        .filter(|c| c.kind == kind.as_str())
        .collect()
}

#[tokio::test]
async fn a_paused_route_is_never_leased_and_pause_and_resume_are_recorded_once() {
    let db = TestDb::migrated().await;
    let store = db.store().await;
    route_with_ranges(&store, "a", 300).await;
    route_with_ranges(&store, "b", 300).await;

    assert!(store
        .set_route_paused("a", true, "destination returns 500, INC-1", "alice@laptop")
        .await
        .expect("pause"));
    // Pausing again changes and records nothing.
    assert!(!store
        .set_route_paused("a", true, "again", "bob")
        .await
        .expect("pause again"));
    let paused = store.paused_routes().await.expect("paused routes");
    assert_eq!(paused.len(), 1);
    assert_eq!(paused[0].route, "a");
    assert_eq!(paused[0].by.as_deref(), Some("alice@laptop"));
    assert_eq!(
        paused[0].reason.as_deref(),
        Some("destination returns 500, INC-1")
    );

    // Both lease paths skip the paused route, however many ranges are asked for.
    let leases = store.lease(&lease_both(100)).await.expect("lease");
    assert_eq!(leases.len(), 3, "b's three ranges only");
    assert!(leases.iter().all(|l| l.route == "b"), "{leases:?}");
    let (_, more) = store
        .checkpoint_all_and_lease(&leases, Some(&lease_both(100)))
        .await
        .expect("checkpoint and lease");
    assert!(
        more.is_empty(),
        "a paused route's ranges were leased: {more:?}"
    );
    // Replays of a paused route wait too.
    let replay = LeaseRequest::one_route(
        "a",
        Ordering::None,
        "w",
        10,
        Duration::from_secs(60),
        RangeKind::Replay,
    );
    store
        .replay_window(
            "a",
            0,
            courier_core::OffsetRange::new(0, 100).expect("range"),
            100,
            &ReplayAudit {
                requested_by: "alice".into(),
                reason: "check".into(),
                dry_run: false,
            },
        )
        .await
        .expect("replay window");
    assert!(store.lease(&replay).await.expect("lease replay").is_empty());

    assert!(store
        .set_route_paused("a", false, "fixed", "alice")
        .await
        .expect("resume"));
    assert!(store.paused_routes().await.expect("paused").is_empty());
    let leases = store.lease(&lease_both(100)).await.expect("lease");
    assert_eq!(leases.len(), 3, "a's ranges are leased again once resumed");
    assert!(leases.iter().all(|l| l.route == "a"));

    let pauses = recent(&store, ChangeKind::RoutePaused).await;
    assert_eq!(pauses.len(), 1, "{pauses:?}");
    assert_eq!(pauses[0].route.as_deref(), Some("a"));
    assert_eq!(pauses[0].actor.as_deref(), Some("alice@laptop"));
    assert!(pauses[0].summary.contains("INC-1"), "{}", pauses[0].summary);
    assert_eq!(recent(&store, ChangeKind::RouteResumed).await.len(), 1);
    assert_eq!(recent(&store, ChangeKind::Replay).await.len(), 1);

    // An unknown route is refused, naming the routes there are.
    let error = store
        .set_route_paused("nope", true, "x", "alice")
        .await
        .expect_err("unknown route");
    assert!(matches!(error, StoreError::Invalid { .. }));
    let message = error.to_string();
    assert!(
        message.contains("\"nope\"") && message.contains("a, b"),
        "{message}"
    );
}

#[tokio::test]
async fn events_are_recorded_with_their_change_and_only_on_transitions() {
    let db = TestDb::migrated().await;
    let store = db.store().await;

    // The migration that created the timeline recorded itself.
    let migrations = recent(&store, ChangeKind::MigrationApplied).await;
    assert!(
        migrations
            .iter()
            .any(|c| c.summary.contains("0006_changes.sql")),
        "{migrations:?}"
    );

    route_with_ranges(&store, "a", 200).await;
    assert_eq!(recent(&store, ChangeKind::RouteCreated).await.len(), 1);

    // A retry is not an event; failing for good is, once.
    let leases = store
        .lease(&LeaseRequest::one_route(
            "a",
            Ordering::None,
            "w",
            2,
            Duration::from_secs(60),
            RangeKind::Live,
        ))
        .await
        .expect("lease");
    assert_eq!(leases.len(), 2);
    let failure = |permanent| Failure {
        reason: "HTTP 400: bad payload".into(),
        permanent,
        backoff: Duration::ZERO,
        max_attempts: 5,
        delivered_to: None,
    };
    store
        .fail(&leases[0], &failure(false))
        .await
        .expect("retryable");
    assert!(recent(&store, ChangeKind::RangeFailed).await.is_empty());
    store
        .fail(&leases[1], &failure(true))
        .await
        .expect("permanent");
    let failed = recent(&store, ChangeKind::RangeFailed).await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].summary.contains("HTTP 400"),
        "{}",
        failed[0].summary
    );

    // A replay of it is recorded with who asked and why.
    store
        .replay_failed(
            "a",
            &ReplayFilter::default(),
            &ReplayAudit {
                requested_by: "alice".into(),
                reason: "payload fixed".into(),
                dry_run: false,
            },
        )
        .await
        .expect("replay");
    let replays = recent(&store, ChangeKind::Replay).await;
    assert_eq!(replays.len(), 1);
    assert_eq!(replays[0].actor.as_deref(), Some("alice"));
    assert!(replays[0].summary.contains("payload fixed"));

    // Retry-After: the first deferral is a transition; more while it holds are not.
    for _ in 0..3 {
        store
            .defer_destination("d", Duration::from_secs(60), "HTTP 429")
            .await
            .expect("defer");
    }
    let deferred = recent(&store, ChangeKind::DestinationRetryAfter).await;
    assert_eq!(deferred.len(), 1, "{deferred:?}");
    assert_eq!(deferred[0].destination.as_deref(), Some("d"));

    // A settings change on purpose is recorded, naming the key.
    let mut settings = RouteSettings::default();
    settings.set("destination.format", "json");
    store
        .update_route_settings(&spec("a"), &settings)
        .await
        .expect("adopt");
    settings.set("destination.format", "ndjson");
    store
        .update_route_settings(&spec("a"), &settings)
        .await
        .expect("update");
    let changed = recent(&store, ChangeKind::RouteSettingsChanged).await;
    assert_eq!(changed.len(), 2, "{changed:?}");
    assert!(
        changed[1].summary.contains("ndjson")
            && changed[1].summary.contains("courier routes update")
    );

    // Recorded on its own (a worker starting), filtered by route, newest kept under a limit.
    store
        .record_change(&Change::new(ChangeKind::WorkerStarted, "worker w started").actor("w"))
        .await
        .expect("record");
    let of_a = store
        .changes(Duration::from_secs(3600), Some("a"), 1000)
        .await
        .expect("changes");
    assert!(of_a.iter().all(|c| c.route.as_deref() == Some("a")) && !of_a.is_empty());
    let newest = store
        .changes(Duration::from_secs(3600), None, 1)
        .await
        .expect("changes");
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0].kind, "worker.started");
}

#[tokio::test]
async fn events_older_than_the_retention_are_pruned() {
    let db = TestDb::migrated().await;
    let store = db.store().await;
    store
        .record_change(&Change::new(ChangeKind::WorkerStarted, "old"))
        .await
        .expect("record");
    store
        .record_change(&Change::new(ChangeKind::WorkerStarted, "new"))
        .await
        .expect("record");
    let client = db.raw_client().await;
    client
        .execute(
            "UPDATE courier_changes SET at = now() - interval '40 days' WHERE summary = 'old'",
            &[],
        )
        .await
        .expect("age one event");
    let pruned = store
        .prune_changes(Duration::from_secs(30 * 24 * 3600))
        .await
        .expect("prune");
    assert_eq!(pruned, 1);
    let left: Vec<String> = store
        .changes(Duration::from_secs(365 * 24 * 3600), None, 1000)
        .await
        .expect("changes")
        .into_iter()
        .filter(|c| c.kind == "worker.started")
        .map(|c| c.summary)
        .collect();
    assert_eq!(left, vec!["new".to_owned()]);
}

#[tokio::test]
async fn a_range_quarantining_messages_is_one_event_not_one_per_message() {
    let db = TestDb::migrated().await;
    let store = db.store().await;
    route_with_ranges(&store, "a", 100).await;
    let leases = store
        .lease(&LeaseRequest::one_route(
            "a",
            Ordering::None,
            "w",
            1,
            Duration::from_secs(60),
            RangeKind::Live,
        ))
        .await
        .expect("lease");
    let refused: Vec<courier_store::Quarantined> = [7, 42, 99]
        .into_iter()
        .map(|offset| courier_store::Quarantined {
            offset,
            status: Some(422),
            reason: "HTTP 422: schema".into(),
            dead_letter_topic: None,
        })
        .collect();
    store
        .checkpoint_with_quarantine(&leases[0], &refused)
        .await
        .expect("checkpoint with quarantine");
    let events = recent(&store, ChangeKind::RangeQuarantined).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(
        events[0].summary.starts_with("3 message(s)") && events[0].summary.contains("7, 42, 99"),
        "{}",
        events[0].summary
    );
    // A fenced checkpoint quarantines nothing and records nothing.
    store
        .checkpoint_with_quarantine(&leases[0], &refused)
        .await
        .expect("fenced checkpoint");
    assert_eq!(recent(&store, ChangeKind::RangeQuarantined).await.len(), 1);
}
