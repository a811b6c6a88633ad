//! The quarantine against a real PostgreSQL: recorded with the range's checkpoint (fenced, settles the
//! range, moves the watermark past the poison), listed, replayed one offset at a time, quarantined again
//! when the replay is refused again.

use crate::fixture::{lease, route_with_ranges};
use courier_core::{CheckpointOutcome, Epoch, RangeKind};
use courier_store::protocol::ReplayAudit;
use courier_store::{QuarantineFilter, Quarantined, StoreError};
use courier_testkit::TestDb;

fn poison(offset: i64) -> Quarantined {
    Quarantined {
        offset,
        status: Some(400),
        reason: format!("HTTP 400 Bad Request: field missing in {offset}"),
        dead_letter_topic: None,
    }
}

fn audit() -> ReplayAudit {
    ReplayAudit {
        requested_by: "alice".into(),
        reason: "schema fixed".into(),
        dry_run: false,
    }
}

#[tokio::test]
async fn a_quarantining_checkpoint_settles_the_range_and_is_fenced_like_a_checkpoint() {
    let db = TestDb::migrated().await;
    let store = db.store().await;
    route_with_ranges(&store, "r", 200).await;
    let leases = store
        .lease(&lease("r", RangeKind::Live))
        .await
        .expect("lease");
    assert_eq!(leases.len(), 2);

    // A stale epoch: nothing is settled, nothing recorded.
    let stale = courier_core::Lease {
        epoch: Epoch(leases[0].epoch.0 - 1),
        ..leases[0].clone()
    };
    assert_eq!(
        store
            .checkpoint_with_quarantine(&stale, &[poison(73)])
            .await
            .expect("fenced"),
        CheckpointOutcome::Fenced
    );
    assert!(store.quarantined(None, 100).await.expect("read").is_empty());

    // An offset outside the range is a bug, refused before anything is written.
    let err = store
        .checkpoint_with_quarantine(&leases[0], &[poison(150)])
        .await
        .expect_err("outside");
    assert!(matches!(err, StoreError::Invalid { .. }), "{err}");

    assert_eq!(
        store
            .checkpoint_with_quarantine(&leases[0], &[poison(73), poison(12)])
            .await
            .expect("checkpoint"),
        CheckpointOutcome::Applied
    );
    store.checkpoint(&leases[1]).await.expect("checkpoint");
    store.advance_watermarks("r").await.expect("advance");
    assert_eq!(
        store.partitions("r").await.expect("p")[0].watermark,
        200,
        "a quarantined message does not hold the watermark"
    );
    let listed = store.quarantined(Some("r"), 100).await.expect("read");
    assert_eq!(
        listed.iter().map(|q| q.offset).collect::<Vec<_>>(),
        [12, 73]
    );
    assert_eq!(listed[1].status, Some(400));
    assert!(listed[1].reason.contains("field missing in 73"));
    // Once settled, the same lease cannot quarantine again.
    assert_eq!(
        store
            .checkpoint_with_quarantine(&leases[0], &[poison(74)])
            .await
            .expect("fenced"),
        CheckpointOutcome::Fenced
    );
    assert_eq!(store.quarantined(None, 100).await.expect("read").len(), 2);
    let snapshot = store.snapshot().await.expect("status");
    assert_eq!(snapshot.quarantine.len(), 1);
    assert_eq!(snapshot.quarantine[0].messages, 2);
    assert_eq!(snapshot.quarantined.len(), 2);
}

#[tokio::test]
async fn a_quarantined_message_is_replayed_alone_and_quarantined_again_if_refused_again() {
    let db = TestDb::migrated().await;
    let store = db.store().await;
    route_with_ranges(&store, "r", 100).await;
    let leases = store
        .lease(&lease("r", RangeKind::Live))
        .await
        .expect("lease");
    store
        .checkpoint_with_quarantine(&leases[0], &[poison(7), poison(42)])
        .await
        .expect("checkpoint");

    let one = store
        .replay_quarantined(
            "r",
            &QuarantineFilter {
                partition: Some(0),
                offset: Some(42),
            },
            &audit(),
        )
        .await
        .expect("replay one");
    assert!(one.replay_id.is_some());
    assert_eq!(
        one.ranges
            .iter()
            .map(|(p, r)| (*p, r.start(), r.end()))
            .collect::<Vec<_>>(),
        [(0, 42, 43)],
        "a replay of one message is the window [o, o + 1)"
    );
    let client = db.raw_client().await;
    let window: (Option<i64>, Option<i64>) = {
        let row = client
            .query_one("SELECT start_offset, end_offset FROM courier_replays", &[])
            .await
            .expect("audit");
        (row.get(0), row.get(1))
    };
    assert_eq!(window, (Some(42), Some(43)));
    assert_eq!(
        store
            .quarantined(None, 100)
            .await
            .expect("read")
            .iter()
            .map(|q| q.offset)
            .collect::<Vec<_>>(),
        [7],
        "the replayed one is marked replayed"
    );

    // The worker leases the replay range; the destination refuses the message again.
    let replays = store
        .lease(&lease("r", RangeKind::Replay))
        .await
        .expect("lease");
    assert_eq!(replays.len(), 1);
    assert_eq!((replays[0].range.start(), replays[0].range.end()), (42, 43));
    store
        .checkpoint_with_quarantine(&replays[0], &[poison(42)])
        .await
        .expect("checkpoint");
    let again = store.quarantined(None, 100).await.expect("read");
    assert_eq!(
        again
            .iter()
            .map(|q| (q.offset, q.times))
            .collect::<Vec<_>>(),
        [(7, 1), (42, 2)]
    );

    // Together: everything still quarantined on the route.
    let all = store
        .replay_quarantined("r", &QuarantineFilter::default(), &audit())
        .await
        .expect("replay all");
    assert_eq!(all.ranges.len(), 2);
    assert!(store.quarantined(None, 100).await.expect("read").is_empty());
    let nothing = store
        .replay_quarantined("r", &QuarantineFilter::default(), &audit())
        .await
        .expect("nothing left");
    assert_eq!((nothing.replay_id, nothing.ranges.len()), (None, 0));
}
