//! Losses against a real PostgreSQL: offsets Kafka deleted before delivery, recorded with their range's
//! checkpoint (fenced like one, settling the range), listed and summed for `courier status`; and the
//! offsets below Kafka's log start that courier has not delivered yet, counted before a worker reaches
//! them.

use std::time::Duration;

use crate::fixture::{lease, route_with_ranges};
use courier_core::{CheckpointOutcome, Epoch, OffsetRange, RangeKind};
use courier_store::{ChangeKind, Failure, Loss, Quarantined, StoreError};
use courier_testkit::TestDb;

fn range(start: i64, end: i64) -> OffsetRange {
    OffsetRange::new(start, end).expect("a valid test range")
}

fn loss(start: i64, end: i64) -> Loss {
    Loss {
        offsets: range(start, end),
        reason: format!("retention: the log starts at {end}"),
    }
}

#[tokio::test]
async fn a_loss_is_recorded_with_its_ranges_checkpoint_and_fenced_like_one() {
    let db = TestDb::migrated().await;
    let store = db.store().await;
    route_with_ranges(&store, "r", 200).await;
    let leases = store
        .lease(&lease("r", RangeKind::Live))
        .await
        .expect("lease");
    assert_eq!(leases.len(), 2);

    // A stale epoch: nothing settled, nothing recorded.
    let stale = courier_core::Lease {
        epoch: Epoch(leases[0].epoch.0 - 1),
        ..leases[0].clone()
    };
    assert_eq!(
        store
            .checkpoint_setting_aside(&stale, &[], &[loss(0, 71)])
            .await
            .expect("fenced"),
        CheckpointOutcome::Fenced
    );
    assert!(store.losses(None, 100).await.expect("read").is_empty());

    // Offsets outside the range are a bug, refused before anything is written.
    let err = store
        .checkpoint_setting_aside(&leases[0], &[], &[loss(50, 150)])
        .await
        .expect_err("outside");
    assert!(matches!(err, StoreError::Invalid { .. }), "{err}");

    // The range partly deleted ([0, 71)) and a message of the rest quarantined: one transaction.
    let refused = Quarantined {
        offset: 80,
        status: Some(400),
        reason: "HTTP 400".into(),
        dead_letter_topic: None,
    };
    assert_eq!(
        store
            .checkpoint_setting_aside(&leases[0], &[refused], &[loss(0, 71)])
            .await
            .expect("checkpoint"),
        CheckpointOutcome::Applied
    );
    // A range wholly deleted settles the same way.
    assert_eq!(
        store
            .checkpoint_setting_aside(&leases[1], &[], &[loss(100, 200)])
            .await
            .expect("checkpoint"),
        CheckpointOutcome::Applied
    );
    store.advance_watermarks("r").await.expect("advance");
    assert_eq!(
        store.partitions("r").await.expect("p")[0].watermark,
        200,
        "a loss settles its range: nothing is left failed for a replay that cannot work"
    );
    let listed = store.losses(Some("r"), 100).await.expect("read");
    let mut offsets: Vec<(i32, OffsetRange)> =
        listed.iter().map(|l| (l.partition, l.offsets)).collect();
    offsets.sort_by_key(|(_, r)| r.start());
    assert_eq!(offsets, [(0, range(0, 71)), (0, range(100, 200))]);
    assert!(listed.iter().all(|l| l.reason.starts_with("retention")));
    assert_eq!(store.quarantined(Some("r"), 100).await.expect("q").len(), 1);

    // Once settled, the same lease records nothing more.
    assert_eq!(
        store
            .checkpoint_setting_aside(&leases[0], &[], &[loss(71, 72)])
            .await
            .expect("fenced"),
        CheckpointOutcome::Fenced
    );
    // "What changed?": one event per range that lost offsets, none for the fenced attempts.
    let lost_events: Vec<String> = store
        .changes(Duration::from_secs(3600), None, 1000)
        .await
        .expect("changes")
        .into_iter()
        .filter(|c| c.kind == ChangeKind::RangeLost.as_str())
        .map(|c| c.summary)
        .collect();
    assert_eq!(lost_events.len(), 2, "{lost_events:?}");
    assert!(
        lost_events.iter().any(|e| e.contains("offsets [0, 71)")),
        "{lost_events:?}"
    );
    let snapshot = store.snapshot().await.expect("status");
    assert_eq!(snapshot.losses.len(), 2);
    assert_eq!(snapshot.recent_losses.len(), 1);
    assert_eq!(
        (
            snapshot.recent_losses[0].losses,
            snapshot.recent_losses[0].offsets
        ),
        (2, 171)
    );
}

#[tokio::test]
async fn offsets_below_the_log_start_not_delivered_are_counted_before_a_worker_reaches_them() {
    let db = TestDb::migrated().await;
    let store = db.store().await;
    route_with_ranges(&store, "r", 300).await;
    let leases = store
        .lease(&lease("r", RangeKind::Live))
        .await
        .expect("lease");
    assert_eq!(leases.len(), 3);
    // [0, 100) delivered; [100, 200) failed for good; [200, 300) delivered up to 220, then retrying.
    store.checkpoint(&leases[0]).await.expect("checkpoint");
    let failure = |permanent: bool, delivered_to: Option<i64>| Failure {
        reason: "HTTP 400".into(),
        permanent,
        backoff: Duration::ZERO,
        max_attempts: 10,
        delivered_to,
    };
    store
        .fail(&leases[1], &failure(true, None))
        .await
        .expect("fail");
    store
        .fail(&leases[2], &failure(false, Some(220)))
        .await
        .expect("fail");

    let count = |low: i64| {
        let store = &store;
        async move {
            let counted = store
                .deleted_before_delivery(&[("r".to_owned(), 0, low), ("r".to_owned(), 9, low)])
                .await
                .expect("count");
            // Partition 9 is not the route's: left out.
            assert_eq!(counted.len(), 1, "{counted:?}");
            counted[0].offsets
        }
    };
    assert_eq!(count(50).await, 0, "below the log start, all delivered");
    assert_eq!(count(150).await, 50, "half the failed range");
    assert_eq!(
        count(250).await,
        100 + 30,
        "the failed range, and the retrying one from where it resumes"
    );
    assert_eq!(
        count(400).await,
        100 + 80 + 100,
        "and the offsets not planned yet"
    );
}
