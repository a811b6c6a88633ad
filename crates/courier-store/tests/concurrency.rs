//! Many tasks racing on one store: 32 tasks lease and checkpoint 100,000 offsets in ranges of 100.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_core::{CheckpointOutcome, Ordering, RangeKind, RangeState};
use courier_store::{LeaseRequest, PlanRequest, RouteSpec, StoreError};
use courier_testkit::TestDb;

const OFFSETS: i64 = 100_000;
const RANGE_SIZE: u32 = 100;
const TASKS: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_tasks_settle_every_range_exactly_once() {
    let db = TestDb::migrated().await;
    let mut config = db.config();
    config.pool_size = 8; // fewer connections than tasks, as in a real worker
    let store = courier_store::Store::connect(&config)
        .await
        .expect("connect");
    store
        .ensure_route(
            &RouteSpec {
                name: "r".into(),
                topic: "t".into(),
                destination: "d".into(),
            },
            &[],
        )
        .await
        .expect("route");
    store
        .ensure_partitions("r", &[(0, 0), (1, 0), (2, 0), (3, 0)])
        .await
        .expect("partitions");
    for partition in 0..4 {
        let outcome = store
            .plan(&PlanRequest {
                route: "r".into(),
                partition,
                high_watermark: OFFSETS / 4,
                range_size: RANGE_SIZE,
                max_new_ranges: 10_000,
                max_tail_age: Duration::ZERO,
            })
            .await
            .expect("plan");
        assert_eq!(outcome.frontier, OFFSETS / 4);
    }

    let checkpoints: Arc<Mutex<HashMap<i64, u32>>> = Arc::default();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (store, checkpoints) = (store.clone(), checkpoints.clone());
        tasks.push(tokio::spawn(async move {
            let request = LeaseRequest::one_route(
                "r",
                Ordering::None,
                &format!("task-{task}"),
                4,
                Duration::from_secs(60),
                RangeKind::Live,
            );
            let mut fenced = 0u32;
            loop {
                let leases = match store.lease(&request).await {
                    Ok(leases) => leases,
                    Err(e) if e.is_transient() => continue,
                    Err(e) => return Err(e),
                };
                if leases.is_empty() {
                    return Ok::<u32, StoreError>(fenced);
                }
                for lease in leases {
                    match store.checkpoint(&lease).await? {
                        CheckpointOutcome::Applied => {
                            *checkpoints
                                .lock()
                                .expect("lock")
                                .entry(lease.id)
                                .or_default() += 1;
                        }
                        CheckpointOutcome::Fenced => fenced += 1,
                    }
                }
            }
        }));
    }
    let mut fenced = 0;
    for task in tasks {
        fenced += task.await.expect("task").expect("no store error");
    }

    let progress = store.advance_watermarks("r").await.expect("advance");
    assert_eq!(progress.len(), 4);
    assert!(
        progress.iter().all(|p| p.watermark == OFFSETS / 4),
        "{progress:?}"
    );

    let all = store.ranges("r").await.expect("ranges");
    let ranges = all.len() as i64;
    let max_epoch = all.iter().map(|r| r.epoch).max().unwrap_or_default();
    let offsets: i64 = all.iter().map(|r| r.end_offset - r.start_offset).sum();
    assert_eq!(ranges, OFFSETS / i64::from(RANGE_SIZE));
    assert!(
        all.iter().all(|r| r.state == RangeState::Done),
        "every range done"
    );
    assert_eq!(offsets, OFFSETS, "ranges cover every offset once");
    // No lease expired (60 s TTL), so no range may have been leased, or checkpointed, twice.
    assert_eq!(
        max_epoch, 1,
        "a range was leased twice without its lease expiring"
    );
    assert_eq!(fenced, 0);
    let checkpoints = checkpoints.lock().expect("lock");
    assert_eq!(checkpoints.len() as i64, ranges);
    assert!(
        checkpoints.values().all(|n| *n == 1),
        "a range was checkpointed twice"
    );
}
