//! Targeted tests of protocol behaviour the model test does not drive: racing planners, quiet-topic
//! tails, backoff, window replays, shared `Retry-After`, bad offsets.

use std::time::Duration;

use crate::fixture::lease;
use courier_core::{CheckpointOutcome, OffsetRange, RangeKind, RangeState};
use courier_store::protocol::ReplayAudit;
use courier_store::{
    FailOutcome, Failure, LeaseRequest, PlanRequest, RouteSpec, Store, StoreError,
};
use courier_testkit::TestDb;

async fn route(store: &Store, name: &str, partitions: i32) {
    store
        .ensure_route(
            &RouteSpec {
                name: name.into(),
                topic: format!("{name}-topic"),
                destination: "d".into(),
            },
            &[],
        )
        .await
        .expect("route");
    let initial: Vec<(i32, i64)> = (0..partitions).map(|p| (p, 0)).collect();
    store
        .ensure_partitions(name, &initial)
        .await
        .expect("partitions");
}

fn plan(route: &str, partition: i32, high_watermark: i64, max_tail_age: Duration) -> PlanRequest {
    PlanRequest {
        route: route.into(),
        partition,
        high_watermark,
        range_size: 100,
        max_new_ranges: 1000,
        max_tail_age,
    }
}

fn failure(reason: &str, permanent: bool, backoff: Duration, delivered_to: Option<i64>) -> Failure {
    Failure {
        reason: reason.into(),
        permanent,
        backoff,
        max_attempts: 5,
        delivered_to,
    }
}

fn audit(dry_run: bool) -> ReplayAudit {
    ReplayAudit {
        requested_by: "alice".into(),
        reason: "customer asked".into(),
        dry_run,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_planners_never_overlap() {
    let db = TestDb::migrated().await;
    let store = db.store().await;
    route(&store, "r", 1).await;
    let mut planners = Vec::new();
    for i in 0..10 {
        let store = store.clone();
        // Each planner saw a different high watermark: all of them must agree on one tiling.
        planners.push(tokio::spawn(async move {
            store
                .plan(&plan("r", 0, 1000 + i * 100, Duration::ZERO))
                .await
        }));
    }
    for planner in planners {
        planner.await.expect("task").expect("plan");
    }
    let mut next = 0;
    for range in store.ranges("r").await.expect("ranges") {
        assert_eq!(range.start_offset, next, "gap or overlap");
        next = range.end_offset;
    }
    assert_eq!(next, 1900, "the highest watermark seen wins");
    assert_eq!(store.partitions("r").await.expect("p")[0].frontier, 1900);
}

#[tokio::test]
async fn a_short_tail_goes_at_once_when_nothing_is_in_flight_and_waits_for_its_age_otherwise() {
    let db = TestDb::migrated().await;
    let store = db.store().await;
    route(&store, "r", 1).await;
    let age = Duration::from_secs(3600);
    let outcome = store.plan(&plan("r", 0, 250, age)).await.expect("plan");
    assert_eq!(
        (outcome.carved, outcome.frontier),
        (3, 250),
        "nothing in flight: the tail [200, 250) goes at once"
    );
    let outcome = store.plan(&plan("r", 0, 330, age)).await.expect("plan");
    assert_eq!(
        (outcome.carved, outcome.frontier),
        (0, 250),
        "three ranges in flight: the young tail [250, 330) waits"
    );
    // Let the tail age without sleeping: pretend it was first seen two hours ago.
    db.raw_client()
        .await
        .execute(
            "UPDATE courier_partitions SET tail_seen_at = now() - interval '2 hours'",
            &[],
        )
        .await
        .expect("age");
    let outcome = store.plan(&plan("r", 0, 330, age)).await.expect("plan");
    assert_eq!(
        (outcome.carved, outcome.frontier),
        (1, 330),
        "a tail that waited its age goes"
    );
    // Everything settled: the next tail goes at once again.
    let leases = store
        .lease(&LeaseRequest {
            max_ranges: 10,
            ..lease("r", RangeKind::Live)
        })
        .await
        .expect("lease");
    assert_eq!(leases.len(), 4);
    let (outcomes, _) = store
        .checkpoint_all_and_lease(&leases, None)
        .await
        .expect("checkpoint all");
    assert_eq!(outcomes, vec![CheckpointOutcome::Applied; 4]);
    let outcome = store.plan(&plan("r", 0, 360, age)).await.expect("plan");
    assert_eq!((outcome.carved, outcome.frontier), (1, 360));
}

#[tokio::test]
async fn a_high_watermark_below_the_frontier_never_moves_progress_backwards() {
    let db = TestDb::migrated().await;
    let store = db.store().await;
    route(&store, "r", 1).await;
    store
        .plan(&plan("r", 0, 500, Duration::ZERO))
        .await
        .expect("plan");
    // A racing planner's stale read, or a recreated topic: either way nothing is carved or moved.
    let outcome = store
        .plan(&plan("r", 0, 10, Duration::ZERO))
        .await
        .expect("plan");
    assert_eq!((outcome.carved, outcome.frontier), (0, 500));
    assert_eq!(store.partitions("r").await.expect("p")[0].frontier, 500);
}

#[tokio::test]
async fn a_retryable_failure_backs_off_and_a_permanent_one_is_listed_with_its_reason() {
    let db = TestDb::migrated().await;
    let store = db.store().await;
    route(&store, "r", 1).await;
    store
        .plan(&plan("r", 0, 200, Duration::ZERO))
        .await
        .expect("plan");
    let leases = store
        .lease(&lease("r", RangeKind::Live))
        .await
        .expect("lease");
    assert_eq!(leases.len(), 2);
    let held = store.leases_held_by("w").await.expect("held");
    assert_eq!(
        held.iter().map(|r| (r.id, r.epoch)).collect::<Vec<_>>(),
        leases.iter().map(|l| (l.id, l.epoch.0)).collect::<Vec<_>>()
    );
    assert!(store
        .leases_held_by("other")
        .await
        .expect("held")
        .is_empty());
    let outcome = store
        .fail(
            &leases[0],
            &failure(
                "503 Service Unavailable",
                false,
                Duration::from_secs(3600),
                Some(50),
            ),
        )
        .await
        .expect("fail");
    assert_eq!(outcome, FailOutcome::Retrying);
    let outcome = store
        .fail(
            &leases[1],
            &failure("404 Not Found: no such hook", true, Duration::ZERO, None),
        )
        .await
        .expect("fail");
    assert_eq!(outcome, FailOutcome::Failed);
    assert!(
        store
            .lease(&lease("r", RangeKind::Live))
            .await
            .expect("lease")
            .is_empty(),
        "backoff holds the range"
    );
    // Once the backoff has passed, the retry resumes after the batches the failed attempt delivered.
    let client = db.raw_client().await;
    client
        .execute(
            "UPDATE courier_ranges SET not_before = now() WHERE id = $1",
            &[&leases[0].id],
        )
        .await
        .expect("skip backoff");
    let retry = store
        .lease(&lease("r", RangeKind::Live))
        .await
        .expect("lease");
    assert_eq!(retry.len(), 1);
    assert_eq!(retry[0].resume_from, 50);
    assert_eq!(
        store
            .release(&retry[0], Duration::from_secs(3600))
            .await
            .expect("release"),
        CheckpointOutcome::Applied
    );
    // A stale report after the fact changes nothing.
    assert_eq!(
        store.checkpoint(&leases[0]).await.expect("checkpoint"),
        CheckpointOutcome::Fenced
    );

    let failed = store.failed_ranges(Some("r")).await.expect("failed");
    assert_eq!(
        failed
            .iter()
            .map(|r| (r.id, r.state, r.last_error.as_deref()))
            .collect::<Vec<_>>(),
        [(
            leases[1].id,
            RangeState::Failed,
            Some("404 Not Found: no such hook")
        )]
    );
    assert!(store
        .failed_ranges(Some("other"))
        .await
        .expect("failed")
        .is_empty());
    let ranges = store.ranges("r").await.expect("ranges");
    assert_eq!(
        ranges
            .iter()
            .map(|r| (r.start_offset, r.state, r.resume_offset, r.attempts))
            .collect::<Vec<_>>(),
        [
            (0, RangeState::Pending, Some(50), 1),
            (100, RangeState::Failed, None, 1)
        ]
    );
    assert_eq!(
        store.ranges_by_id(&[leases[1].id]).await.expect("by id"),
        failed
    );
    let counts = store.range_counts(Some("r")).await.expect("counts");
    assert_eq!(
        (counts.pending, counts.failed, counts.not_done()),
        (1, 1, 2)
    );
    // The failed range is settled: the watermark moves past it, the partition keeps moving.
    let progress = store.advance_watermarks("r").await.expect("advance");
    assert_eq!(
        progress[0].watermark, 0,
        "the first range still blocks: it is pending with a backoff"
    );
}

#[tokio::test]
async fn a_window_replay_redelivers_done_offsets_without_moving_the_watermark_back() {
    let db = TestDb::migrated().await;
    let store = db.store().await;
    route(&store, "r", 1).await;
    store
        .plan(&plan("r", 0, 300, Duration::ZERO))
        .await
        .expect("plan");
    for lease in store
        .lease(&lease("r", RangeKind::Live))
        .await
        .expect("lease")
    {
        assert_eq!(lease.replay_id, None, "a first delivery names no replay");
        store.checkpoint(&lease).await.expect("checkpoint");
    }
    store.advance_watermarks("r").await.expect("advance");
    assert_eq!(store.partitions("r").await.expect("p")[0].watermark, 300);

    let window = OffsetRange::new(50, 250).expect("window");
    let dry = store
        .replay_window("r", 0, window, 100, &audit(true))
        .await
        .expect("dry run");
    assert_eq!(dry.replay_id, None);
    assert_eq!(
        dry.ranges
            .iter()
            .map(|(_, r)| (r.start(), r.end()))
            .collect::<Vec<_>>(),
        vec![(50, 150), (150, 250)]
    );
    assert!(
        store
            .lease(&lease("r", RangeKind::Replay))
            .await
            .expect("lease")
            .is_empty(),
        "a dry run changes nothing"
    );

    let done = store
        .replay_window("r", 0, window, 100, &audit(false))
        .await
        .expect("replay");
    assert!(done.replay_id.is_some());
    // Replays are leased on their own budget, never mixed into live leases.
    assert!(store
        .lease(&lease("r", RangeKind::Live))
        .await
        .expect("live")
        .is_empty());
    let replays = store
        .lease(&lease("r", RangeKind::Replay))
        .await
        .expect("replays");
    assert_eq!(replays.len(), 2);
    for lease in &replays {
        // Destinations are told which replay a delivery belongs to (`X-Courier-Replay`).
        assert_eq!(lease.replay_id, done.replay_id);
        store.checkpoint(lease).await.expect("checkpoint");
    }
    assert_eq!(
        store.partitions("r").await.expect("p")[0].watermark,
        300,
        "the live watermark never moves back"
    );
    let client = db.raw_client().await;
    let row = client
        .query_one(
            "SELECT requested_by, reason, ranges FROM courier_replays",
            &[],
        )
        .await
        .expect("audit");
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, i32>(2)
        ),
        ("alice".into(), "customer asked".into(), 2)
    );
    assert_eq!(
        store.compact("r", 1000).await.expect("compact"),
        5,
        "3 live ranges below the watermark and 2 finished replays"
    );
}

#[tokio::test]
async fn a_window_beyond_the_frontier_is_refused_naming_the_valid_window() {
    let db = TestDb::migrated().await;
    let store = db.store().await;
    route(&store, "r", 1).await;
    store
        .plan(&plan("r", 0, 300, Duration::ZERO))
        .await
        .expect("plan");
    let err = store
        .replay_window(
            "r",
            0,
            OffsetRange::new(200, 400).expect("w"),
            100,
            &audit(false),
        )
        .await
        .expect_err("beyond the frontier");
    assert!(err.to_string().contains("[0, 300)"), "{err}");
    let err = store
        .replay_window(
            "r",
            7,
            OffsetRange::new(0, 10).expect("w"),
            100,
            &audit(false),
        )
        .await
        .expect_err("no such partition");
    assert!(
        matches!(err, StoreError::Invalid { .. }) && err.to_string().contains("no partition 7"),
        "{err}"
    );
}

#[tokio::test]
async fn a_route_cannot_silently_change_topic() {
    let db = TestDb::migrated().await;
    let store = db.store().await;
    route(&store, "r", 1).await;
    let err = store
        .ensure_route(
            &RouteSpec {
                name: "r".into(),
                topic: "other".into(),
                destination: "d".into(),
            },
            &[],
        )
        .await
        .expect_err("topic change");
    assert!(err.to_string().contains("new route name"), "{err}");
}

#[tokio::test]
async fn retry_after_is_shared_and_never_shortened() {
    let db = TestDb::migrated().await;
    let store = db.store().await;
    let hooks = ["hooks".to_owned()];
    assert!(store
        .destination_waits(&hooks)
        .await
        .expect("wait")
        .is_empty());
    store
        .defer_destination("hooks", Duration::from_secs(120), "429")
        .await
        .expect("defer");
    store
        .defer_destination("hooks", Duration::from_secs(1), "429 again")
        .await
        .expect("defer");
    let other_worker = db.store().await;
    let waits = other_worker.destination_waits(&hooks).await.expect("wait");
    let [(name, wait)] = waits.as_slice() else {
        panic!("one destination still deferred: {waits:?}");
    };
    assert_eq!(name, "hooks");
    let wait = *wait;
    assert!(
        wait > Duration::from_secs(60),
        "a shorter Retry-After must not cut a longer one: {wait:?}"
    );
}
