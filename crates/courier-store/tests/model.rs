//! Model-based property test of the lease protocol against a real PostgreSQL.
//!
//! Random interleavings of produce / plan / lease / renew / checkpoint (some quarantining a message, some
//! recording offsets Kafka deleted before delivery as a loss) / checkpoint-and-lease / fail /
//! expire / release / replay / advance / compact by several workers, over two routes (each ordered or not)
//! that every lease call looks across at once, run against the store and, side by side, against an
//! in-memory oracle. After every step the store must agree with the oracle, and every invariant of
//! DESIGN.md must hold:
//! 1. no loss: live ranges (plus compacted ones) tile `[initial, frontier)` with no gap or overlap, and
//!    at the end every offset is done or failed-and-listed;
//! 2. fencing: a report with a stale epoch changes nothing;
//! 3. bounded duplicates: a range is delivered twice only if its lease was interrupted or it was replayed;
//! 4. monotonic: frontier and watermark never move backwards;
//! 5. the watermark never passes an unsettled range;
//! 6. fair leasing across routes, with partition affinity: a lease call returns exactly the oldest
//!    eligible range of all routes (carving order), then the oldest eligible ranges of its partition,
//!    then the oldest eligible of the rest, so no range waits behind ranges carved after it for
//!    longer than one call, and a task reads a partition forwards rather than a slice of every one;
//! 7. a paused route's ranges are never leased (`courier pause`), and are again once it is resumed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::time::Duration;

use courier_core::{carve, CheckpointOutcome, Lease, Ordering, RangeKind, RangeState};
use courier_store::protocol::ReplayAudit;
use courier_store::{
    FailOutcome, Failure, LeaseRequest, Loss, PlanRequest, Quarantined, ReplayFilter, RouteSpec,
    Store, StoreError,
};
use courier_testkit::TestDb;
use proptest::prelude::*;

const ROUTES: usize = 2;
const PARTITIONS: i32 = 2;
const WORKERS: usize = 3;
const RANGE_SIZE: u32 = 50;
const MAX_NEW_RANGES: usize = 4;
const MAX_ATTEMPTS: i32 = 3;

/// What a checkpoint records besides settling its range.
#[derive(Debug, Clone, Copy)]
enum SetAside {
    Nothing,
    /// The range's last offset, a message the destination refused.
    Quarantine,
    /// The range's first offset, deleted by Kafka before delivery.
    Loss,
}

#[derive(Debug, Clone)]
enum Op {
    Produce {
        route: usize,
        partition: i32,
        count: i64,
    },
    Plan {
        route: usize,
        partition: i32,
    },
    Lease {
        worker: usize,
        max: usize,
    },
    Renew {
        worker: usize,
        slot: usize,
    },
    /// Checkpoint up to `count` of the worker's leases and lease up to `max` more, in one statement.
    CheckpointAndLease {
        worker: usize,
        slot: usize,
        count: usize,
        max: usize,
    },
    /// The checkpoint may also set something aside, in the same fenced transaction.
    Checkpoint {
        worker: usize,
        slot: usize,
        set_aside: SetAside,
    },
    Fail {
        worker: usize,
        slot: usize,
        permanent: bool,
    },
    Expire {
        worker: usize,
        slot: usize,
    },
    Release {
        worker: usize,
        slot: usize,
    },
    ReplayFailed {
        route: usize,
    },
    Advance {
        route: usize,
    },
    Compact {
        route: usize,
    },
    /// `courier pause` (`paused`) or `courier resume`.
    Pause {
        route: usize,
        paused: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let partition = 0..PARTITIONS;
    let route = 0..ROUTES;
    let worker = 0..WORKERS;
    let slot = 0usize..4;
    prop_oneof![
        2 => (route.clone(), partition.clone(), 1i64..180).prop_map(|(route, partition, count)| Op::Produce { route, partition, count }),
        3 => (route.clone(), partition).prop_map(|(route, partition)| Op::Plan { route, partition }),
        4 => (worker.clone(), 1usize..4).prop_map(|(worker, max)| Op::Lease { worker, max }),
        1 => (worker.clone(), slot.clone()).prop_map(|(worker, slot)| Op::Renew { worker, slot }),
        3 => (worker.clone(), slot.clone(), prop_oneof![Just(SetAside::Nothing), Just(SetAside::Quarantine), Just(SetAside::Loss)]).prop_map(|(worker, slot, set_aside)| Op::Checkpoint { worker, slot, set_aside }),
        3 => (worker.clone(), slot.clone(), 1usize..4, 1usize..3).prop_map(|(worker, slot, count, max)| Op::CheckpointAndLease { worker, slot, count, max }),
        2 => (worker.clone(), slot.clone(), any::<bool>()).prop_map(|(worker, slot, permanent)| Op::Fail { worker, slot, permanent }),
        2 => (worker.clone(), slot.clone()).prop_map(|(worker, slot)| Op::Expire { worker, slot }),
        1 => (worker, slot).prop_map(|(worker, slot)| Op::Release { worker, slot }),
        1 => route.clone().prop_map(|route| Op::ReplayFailed { route }),
        2 => route.clone().prop_map(|route| Op::Advance { route }),
        1 => route.clone().prop_map(|route| Op::Compact { route }),
        1 => (route, any::<bool>()).prop_map(|(route, paused)| Op::Pause { route, paused }),
    ]
}

/// The oracle's view of one live range.
#[derive(Debug, Clone)]
struct ModelRange {
    end: i64,
    /// Carving order across every route: the store's ids grow the same way.
    seq: u64,
    state: RangeState,
    epoch: i64,
    attempts: i32,
    /// The current lease's expiry has passed (time moved on for it).
    expired: bool,
    /// A lease on it was lost, expired or abandoned at some point: duplicates are allowed.
    interrupted: bool,
    replayed: bool,
    deliveries: u32,
}

#[derive(Debug, Default)]
struct ModelPartition {
    high_watermark: i64,
    frontier: i64,
    watermark: i64,
    ranges: BTreeMap<i64, ModelRange>,
    /// Ranges compaction deleted: (start, end), all done below the watermark.
    compacted: BTreeMap<i64, i64>,
}

struct RouteModel {
    name: String,
    ordering: Ordering,
    paused: bool,
    partitions: Vec<ModelPartition>,
}

/// A range across routes: (route index, partition, start).
type RangeKey = (usize, i32, i64);

struct Model {
    routes: Vec<RouteModel>,
    /// (route, partition, offset) quarantined by an applied checkpoint.
    quarantined: BTreeSet<(String, i32, i64)>,
    /// (route, partition, start, end) recorded lost by an applied checkpoint.
    lost: BTreeSet<(String, i32, i64, i64)>,
    held: Vec<Vec<Lease>>,
    carved: u64,
}

impl Model {
    fn route_of(&self, lease: &Lease) -> usize {
        self.routes
            .iter()
            .position(|r| r.name == lease.route)
            .expect("a lease names a modelled route")
    }

    fn key(&self, lease: &Lease) -> RangeKey {
        (self.route_of(lease), lease.partition, lease.range.start())
    }

    fn range(&mut self, lease: &Lease) -> &mut ModelRange {
        let route = self.route_of(lease);
        self.routes[route].partitions[lease.partition as usize]
            .ranges
            .get_mut(&lease.range.start())
            .expect("a leased range exists in the model")
    }

    fn is_current(&mut self, lease: &Lease) -> bool {
        let range = self.range(lease);
        range.state == RangeState::Leased && range.epoch == lease.epoch.0
    }

    fn eligible(range: &ModelRange) -> bool {
        range.state == RangeState::Pending || (range.state == RangeState::Leased && range.expired)
    }

    /// Ranges a lease call may return, in the order it must prefer them (oldest carved first).
    fn leasable(&self) -> Vec<RangeKey> {
        let mut out: Vec<(u64, RangeKey)> = Vec::new();
        for (r, route) in self
            .routes
            .iter()
            .enumerate()
            .filter(|(_, route)| !route.paused)
        {
            for (p, part) in route.partitions.iter().enumerate() {
                let mut unsettled = part.ranges.iter().filter(|(_, r)| !r.state.is_settled());
                let candidates: Vec<(&i64, &ModelRange)> = match route.ordering {
                    Ordering::Partition => unsettled.next().into_iter().collect(),
                    Ordering::None => unsettled.collect(),
                };
                out.extend(
                    candidates
                        .into_iter()
                        .filter(|(_, range)| Self::eligible(range))
                        .map(|(start, range)| (range.seq, (r, p as i32, *start))),
                );
            }
        }
        out.sort();
        out.into_iter().map(|(_, key)| key).collect()
    }

    fn expected_watermark(part: &ModelPartition) -> i64 {
        part.ranges
            .iter()
            .filter(|(start, r)| **start >= part.watermark && !r.state.is_settled())
            .map(|(start, _)| *start)
            .next()
            .unwrap_or(part.frontier)
    }

    fn take_slot(&mut self, worker: usize, slot: usize) -> Option<Lease> {
        let held = &mut self.held[worker];
        if held.is_empty() {
            return None;
        }
        let index = slot % held.len();
        Some(held.remove(index))
    }

    fn peek_slot(&self, worker: usize, slot: usize) -> Option<Lease> {
        let held = &self.held[worker];
        (!held.is_empty()).then(|| held[slot % held.len()].clone())
    }
}

fn failure(permanent: bool) -> Failure {
    Failure {
        reason: "boom".into(),
        permanent,
        backoff: Duration::ZERO,
        max_attempts: MAX_ATTEMPTS,
        delivered_to: None,
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fn store() -> &'static Store {
    static STORE: OnceLock<Store> = OnceLock::new();
    STORE.get_or_init(|| runtime().block_on(async { TestDb::migrated().await.store().await }))
}

/// Every call looks across both routes at once, as a worker serving both does.
fn lease_request(model: &Model, worker: usize, max: usize) -> LeaseRequest {
    LeaseRequest {
        routes: model.routes.iter().map(|r| r.name.clone()).collect(),
        ordered: model
            .routes
            .iter()
            .filter(|r| r.ordering == Ordering::Partition)
            .map(|r| r.name.clone())
            .collect(),
        owner: format!("worker-{worker}"),
        max_ranges: max,
        ttl: Duration::from_secs(300),
        kind: RangeKind::Live,
    }
}

async fn expire_in_store(store: &Store, lease: &Lease) {
    let (id, epoch) = (lease.id, lease.epoch.0);
    store
        .run("expire", move |c| {
            Box::pin(async move {
                c.execute(
                    "UPDATE courier_ranges SET lease_expires_at = now() - interval '1 second'
                     WHERE id = $1 AND epoch = $2 AND state = 'leased'",
                    &[&id, &epoch],
                )
                .await
                .map_err(|e| StoreError::from_db("expire", e))
            })
        })
        .await
        .expect("expire");
}

type Snapshot = Vec<(i32, i64, i64, String, i64, i32)>;

async fn snapshot(store: &Store, route: &str) -> Snapshot {
    let route = route.to_owned();
    store
        .run("snapshot", move |c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT partition, start_offset, end_offset, state, epoch, attempts FROM courier_ranges
                         WHERE route = $1 AND kind = 'live' ORDER BY partition, start_offset",
                        &[&route],
                    )
                    .await
                    .map_err(|e| StoreError::from_db("snapshot", e))?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))).collect())
            })
        })
        .await
        .expect("snapshot")
}

/// The store's rows must be exactly the oracle's, and every invariant must hold.
async fn check_invariants(
    store: &Store,
    model: &Model,
    last_marks: &mut [Vec<(i64, i64)>],
) -> Result<(), TestCaseError> {
    for (route, marks) in model.routes.iter().zip(last_marks.iter_mut()) {
        check_route(store, route, marks).await?;
    }
    Ok(())
}

async fn check_route(
    store: &Store,
    model: &RouteModel,
    last_marks: &mut [(i64, i64)],
) -> Result<(), TestCaseError> {
    let rows = snapshot(store, &model.name).await;
    let progress = store.partitions(&model.name).await.expect("partitions");
    for (p, part) in model.partitions.iter().enumerate() {
        let db: Vec<_> = rows.iter().filter(|r| r.0 == p as i32).collect();
        prop_assert_eq!(db.len(), part.ranges.len(), "partition {} row count", p);
        for (row, (start, range)) in db.iter().zip(&part.ranges) {
            prop_assert_eq!((row.1, row.2), (*start, range.end), "range bounds");
            prop_assert_eq!(
                &row.3,
                range.state.as_str(),
                "state of [{}, {})",
                start,
                range.end
            );
            prop_assert_eq!(row.4, range.epoch, "epoch of [{}, {})", start, range.end);
            prop_assert_eq!(
                row.5,
                range.attempts,
                "attempts of [{}, {})",
                start,
                range.end
            );
        }
        // 1. Tiling of [0, frontier) by live and compacted ranges.
        let mut tiles: Vec<(i64, i64)> = part.ranges.iter().map(|(s, r)| (*s, r.end)).collect();
        tiles.extend(part.compacted.iter().map(|(s, e)| (*s, *e)));
        tiles.sort();
        let mut next = 0;
        for (start, end) in tiles {
            prop_assert_eq!(
                start,
                next,
                "gap or overlap at {} in partition {}",
                start,
                p
            );
            next = end;
        }
        let stored = progress
            .iter()
            .find(|pp| pp.partition == p as i32)
            .expect("partition row");
        prop_assert_eq!(next, stored.frontier, "ranges must tile up to the frontier");
        prop_assert_eq!(stored.frontier, part.frontier);
        prop_assert_eq!(stored.watermark, part.watermark);
        let expired = part
            .ranges
            .values()
            .filter(|r| r.state == RangeState::Leased && r.expired)
            .count();
        prop_assert_eq!(
            stored.expired_leases,
            expired as i64,
            "expired leases of partition {}",
            p
        );
        // 4. Monotonic.
        prop_assert!(
            stored.frontier >= last_marks[p].0 && stored.watermark >= last_marks[p].1,
            "moved backwards"
        );
        last_marks[p] = (stored.frontier, stored.watermark);
        // 5. Nothing unsettled below the watermark, except replays of failed ranges.
        for (start, range) in &part.ranges {
            if range.end <= stored.watermark && !range.state.is_settled() {
                prop_assert!(
                    range.replayed,
                    "unsettled range [{}, {}) below watermark {}",
                    start,
                    range.end,
                    stored.watermark
                );
            }
        }
        // 3. Bounded duplicates.
        for (start, range) in &part.ranges {
            if range.deliveries > 1 {
                prop_assert!(
                    range.interrupted || range.replayed,
                    "range [{}, {}) delivered {} times without an interruption",
                    start,
                    range.end,
                    range.deliveries
                );
            }
        }
    }
    Ok(())
}

/// What a lease call of up to `max` ranges must return, of `leasable` (oldest first): the oldest, then
/// the others of its partition oldest first, then the oldest of the rest (invariant 6).
fn expected_pick(leasable: &[RangeKey], max: usize) -> BTreeSet<RangeKey> {
    let Some(&(route, partition, _)) = leasable.first() else {
        return BTreeSet::new();
    };
    let mut near: Vec<RangeKey> = leasable
        .iter()
        .filter(|key| key.0 == route && key.1 == partition)
        .copied()
        .collect();
    near.truncate(max);
    let rest: Vec<RangeKey> = leasable
        .iter()
        .filter(|key| !near.contains(key))
        .take(max - near.len())
        .copied()
        .collect();
    near.into_iter().chain(rest).collect()
}

/// Checks leases a call returned against what the model says was leasable, then records them: exactly
/// the ranges [`expected_pick`] names (fairness and partition affinity), at most one per partition of an
/// ordered route, each epoch one up.
fn absorb_leases(
    model: &mut Model,
    worker: usize,
    max: usize,
    leasable: &[RangeKey],
    leases: Vec<Lease>,
) -> Result<(), TestCaseError> {
    let expected = expected_pick(leasable, max);
    let got: BTreeSet<RangeKey> = leases.iter().map(|l| model.key(l)).collect();
    prop_assert_eq!(
        &got,
        &expected,
        "the oldest eligible range, then its partition's, then the oldest of the rest"
    );
    prop_assert_eq!(got.len(), leases.len(), "a range leased twice in one call");
    let mut partitions_seen = BTreeSet::new();
    for lease in leases {
        let route = model.route_of(&lease);
        if model.routes[route].ordering == Ordering::Partition {
            prop_assert!(
                partitions_seen.insert((route, lease.partition)),
                "two ranges of one partition of an ordered route in flight"
            );
        }
        let range = model.range(&lease);
        prop_assert_eq!(lease.epoch.0, range.epoch + 1, "epoch must grow by one");
        if range.state == RangeState::Leased {
            range.interrupted = true; // its previous holder may still deliver it
        }
        range.state = RangeState::Leased;
        range.epoch += 1;
        range.attempts += 1;
        range.expired = false;
        model.held[worker].push(lease);
    }
    Ok(())
}

async fn apply(store: &Store, model: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    match *op {
        Op::Produce {
            route,
            partition,
            count,
        } => model.routes[route].partitions[partition as usize].high_watermark += count,
        Op::Plan { route, partition } => {
            let name = model.routes[route].name.clone();
            let carved_before = model.carved;
            let part = &mut model.routes[route].partitions[partition as usize];
            let outcome = store
                .plan(&PlanRequest {
                    route: name,
                    partition,
                    high_watermark: part.high_watermark,
                    range_size: RANGE_SIZE,
                    max_new_ranges: MAX_NEW_RANGES,
                    max_tail_age: Duration::ZERO,
                })
                .await
                .expect("plan");
            let carved = carve(
                part.frontier,
                part.high_watermark,
                RANGE_SIZE,
                MAX_NEW_RANGES,
                true,
            );
            prop_assert_eq!(outcome.carved, carved.len());
            for (seq, range) in (carved_before..).zip(&carved) {
                part.ranges.insert(
                    range.start(),
                    ModelRange {
                        end: range.end(),
                        seq,
                        state: RangeState::Pending,
                        epoch: 0,
                        attempts: 0,
                        expired: false,
                        interrupted: false,
                        replayed: false,
                        deliveries: 0,
                    },
                );
            }
            part.frontier = carved.last().map_or(part.frontier, |r| r.end());
            prop_assert_eq!(outcome.frontier, part.frontier);
            model.carved += carved.len() as u64;
        }
        Op::Lease { worker, max } => {
            let leasable = model.leasable();
            let leases = store
                .lease(&lease_request(model, worker, max))
                .await
                .expect("lease");
            absorb_leases(model, worker, max, &leasable, leases)?;
        }
        Op::CheckpointAndLease {
            worker,
            slot,
            count,
            max,
        } => {
            let mut done = Vec::new();
            while done.len() < count {
                match model.take_slot(worker, slot) {
                    Some(lease) => done.push(lease),
                    None => break,
                }
            }
            if !done.is_empty() {
                let mut expected = Vec::new();
                for lease in &done {
                    model.range(lease).deliveries += 1;
                    expected.push(if model.is_current(lease) {
                        CheckpointOutcome::Applied
                    } else {
                        CheckpointOutcome::Fenced
                    });
                }
                // The lease half sees the state before the checkpoints, minus the ranges checkpointed.
                let keys: Vec<_> = done.iter().map(|lease| model.key(lease)).collect();
                let mut leasable = model.leasable();
                leasable.retain(|key| !keys.contains(key));
                let (outcomes, leases) = store
                    .checkpoint_all_and_lease(&done, Some(&lease_request(model, worker, max)))
                    .await
                    .expect("checkpoint and lease");
                prop_assert_eq!(&outcomes, &expected, "checkpoints of {:?}", done);
                for (lease, outcome) in done.iter().zip(outcomes) {
                    if outcome == CheckpointOutcome::Applied {
                        let range = model.range(lease);
                        range.state = RangeState::Done;
                        range.expired = false;
                    }
                }
                absorb_leases(model, worker, max, &leasable, leases)?;
            }
        }
        Op::Renew { worker, slot } => {
            if let Some(lease) = model.peek_slot(worker, slot) {
                let expected = if model.is_current(&lease) {
                    CheckpointOutcome::Applied
                } else {
                    CheckpointOutcome::Fenced
                };
                let outcome = store
                    .renew(&lease, Duration::from_secs(300))
                    .await
                    .expect("renew");
                prop_assert_eq!(outcome, expected);
                if outcome == CheckpointOutcome::Applied {
                    model.range(&lease).expired = false;
                }
            }
        }
        Op::Checkpoint {
            worker,
            slot,
            set_aside,
        } => {
            if let Some(lease) = model.take_slot(worker, slot) {
                model.range(&lease).deliveries += 1; // the worker delivered before reporting
                let expected = if model.is_current(&lease) {
                    CheckpointOutcome::Applied
                } else {
                    CheckpointOutcome::Fenced
                };
                let outcome = if let SetAside::Loss = set_aside {
                    let loss = Loss {
                        offsets: courier_core::OffsetRange::new(
                            lease.range.start(),
                            lease.range.start() + 1,
                        )
                        .expect("a one-offset range"),
                        reason: "retention".into(),
                    };
                    let outcome = store
                        .checkpoint_setting_aside(&lease, &[], &[loss])
                        .await
                        .expect("checkpoint recording a loss");
                    if outcome == CheckpointOutcome::Applied {
                        model.lost.insert((
                            lease.route.clone(),
                            lease.partition,
                            lease.range.start(),
                            lease.range.start() + 1,
                        ));
                    }
                    // Fenced: nothing recorded. Applied: recorded with the range settled (below).
                    let recorded: BTreeSet<(String, i32, i64, i64)> = store
                        .losses(Some(&lease.route), 10_000)
                        .await
                        .expect("read losses")
                        .into_iter()
                        .map(|l| (l.route, l.partition, l.offsets.start(), l.offsets.end()))
                        .collect();
                    let expected_recorded: BTreeSet<(String, i32, i64, i64)> = model
                        .lost
                        .iter()
                        .filter(|(route, ..)| *route == lease.route)
                        .cloned()
                        .collect();
                    prop_assert_eq!(recorded, expected_recorded, "losses after {}", lease);
                    outcome
                } else if let SetAside::Quarantine = set_aside {
                    let refused = Quarantined {
                        offset: lease.range.end() - 1,
                        status: Some(400),
                        reason: "refused".into(),
                        dead_letter_topic: None,
                    };
                    let outcome = store
                        .checkpoint_with_quarantine(&lease, &[refused])
                        .await
                        .expect("checkpoint with quarantine");
                    if outcome == CheckpointOutcome::Applied {
                        model.quarantined.insert((
                            lease.route.clone(),
                            lease.partition,
                            lease.range.end() - 1,
                        ));
                    }
                    // Fenced: nothing recorded. Applied: recorded with the range settled (below).
                    let recorded: BTreeSet<(String, i32, i64)> = store
                        .quarantined(Some(&lease.route), 10_000)
                        .await
                        .expect("read quarantine")
                        .into_iter()
                        .map(|q| (q.route, q.partition, q.offset))
                        .collect();
                    let expected_recorded: BTreeSet<(String, i32, i64)> = model
                        .quarantined
                        .iter()
                        .filter(|(route, _, _)| *route == lease.route)
                        .cloned()
                        .collect();
                    prop_assert_eq!(recorded, expected_recorded, "quarantine after {}", lease);
                    outcome
                } else {
                    store.checkpoint(&lease).await.expect("checkpoint")
                };
                prop_assert_eq!(outcome, expected, "checkpoint of {}", lease);
                if outcome == CheckpointOutcome::Applied {
                    let range = model.range(&lease);
                    range.state = RangeState::Done;
                    range.expired = false;
                }
            }
        }
        Op::Fail {
            worker,
            slot,
            permanent,
        } => {
            if let Some(lease) = model.take_slot(worker, slot) {
                let current = model.is_current(&lease);
                let range = model.range(&lease);
                let expected = if !current {
                    FailOutcome::Fenced
                } else if permanent || range.attempts >= MAX_ATTEMPTS {
                    FailOutcome::Failed
                } else {
                    FailOutcome::Retrying
                };
                let outcome = store.fail(&lease, &failure(permanent)).await.expect("fail");
                prop_assert_eq!(&outcome, &expected);
                let range = model.range(&lease);
                match outcome {
                    FailOutcome::Failed => range.state = RangeState::Failed,
                    FailOutcome::Retrying => range.state = RangeState::Pending,
                    FailOutcome::Fenced => {}
                }
                range.expired = false;
            }
        }
        Op::Expire { worker, slot } => {
            if let Some(lease) = model.peek_slot(worker, slot) {
                if model.is_current(&lease) {
                    expire_in_store(store, &lease).await;
                    model.range(&lease).expired = true;
                }
            }
        }
        Op::Release { worker, slot } => {
            if let Some(lease) = model.take_slot(worker, slot) {
                let expected = if model.is_current(&lease) {
                    CheckpointOutcome::Applied
                } else {
                    CheckpointOutcome::Fenced
                };
                let outcome = store
                    .release(&lease, Duration::ZERO)
                    .await
                    .expect("release");
                prop_assert_eq!(outcome, expected);
                if outcome == CheckpointOutcome::Applied {
                    let range = model.range(&lease);
                    range.state = RangeState::Pending;
                    range.attempts = (range.attempts - 1).max(0);
                    range.expired = false;
                }
            }
        }
        Op::Pause { route, paused } => {
            let changed = store
                .set_route_paused(&model.routes[route].name, paused, "model", "model")
                .await
                .expect("pause");
            prop_assert_eq!(changed, model.routes[route].paused != paused);
            model.routes[route].paused = paused;
        }
        Op::ReplayFailed { route } => {
            let audit = ReplayAudit {
                requested_by: "model".into(),
                reason: "property test".into(),
                dry_run: false,
            };
            let outcome = store
                .replay_failed(&model.routes[route].name, &ReplayFilter::default(), &audit)
                .await
                .expect("replay");
            let mut expected = 0;
            for part in &mut model.routes[route].partitions {
                for range in part
                    .ranges
                    .values_mut()
                    .filter(|r| r.state == RangeState::Failed)
                {
                    range.state = RangeState::Pending;
                    range.attempts = 0;
                    range.replayed = true;
                    expected += 1;
                }
            }
            prop_assert_eq!(outcome.ranges.len(), expected);
            prop_assert_eq!(outcome.replay_id.is_some(), expected > 0);
        }
        Op::Advance { route } => {
            store
                .advance_watermarks(&model.routes[route].name)
                .await
                .expect("advance");
            for part in &mut model.routes[route].partitions {
                part.watermark = Model::expected_watermark(part);
            }
        }
        Op::Compact { route } => {
            let deleted = store
                .compact(&model.routes[route].name, 1000)
                .await
                .expect("compact");
            let mut expected = 0;
            for part in &mut model.routes[route].partitions {
                let gone: Vec<i64> = part
                    .ranges
                    .iter()
                    .filter(|(_, r)| r.state == RangeState::Done && r.end <= part.watermark)
                    .map(|(s, _)| *s)
                    .collect();
                for start in gone {
                    if let Some(range) = part.ranges.remove(&start) {
                        part.compacted.insert(start, range.end);
                        expected += 1;
                    }
                }
            }
            prop_assert_eq!(deleted, expected);
        }
    }
    Ok(())
}

/// Every worker dies, a finisher resumes every route, plans and drains everything: at the end no offset
/// is lost.
async fn drain_and_check_no_loss(store: &Store, model: &mut Model) -> Result<(), TestCaseError> {
    for route in 0..ROUTES {
        apply(
            store,
            model,
            &Op::Pause {
                route,
                paused: false,
            },
        )
        .await?;
    }
    for worker in 0..WORKERS {
        for lease in std::mem::take(&mut model.held[worker]) {
            if model.is_current(&lease) {
                expire_in_store(store, &lease).await;
                model.range(&lease).expired = true;
            }
        }
    }
    for _ in 0..10_000 {
        for route in 0..ROUTES {
            for partition in 0..PARTITIONS {
                apply(store, model, &Op::Plan { route, partition }).await?;
            }
        }
        apply(store, model, &Op::Lease { worker: 0, max: 3 }).await?;
        if model.held[0].is_empty() {
            break;
        }
        while !model.held[0].is_empty() {
            apply(
                store,
                model,
                &Op::Checkpoint {
                    worker: 0,
                    slot: 0,
                    set_aside: SetAside::Nothing,
                },
            )
            .await?;
        }
    }
    for route in 0..ROUTES {
        apply(store, model, &Op::Advance { route }).await?;
    }
    for part in model.routes.iter().flat_map(|r| &r.partitions) {
        prop_assert_eq!(
            part.frontier,
            part.high_watermark,
            "everything produced is planned"
        );
        prop_assert_eq!(
            part.watermark,
            part.high_watermark,
            "everything planned is settled"
        );
        for (start, range) in &part.ranges {
            prop_assert!(
                range.state.is_settled(),
                "[{}, {}) left unsettled",
                start,
                range.end
            );
            prop_assert!(
                range.state == RangeState::Failed || range.deliveries >= 1,
                "[{}, {}) done but never delivered",
                start,
                range.end
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_store_agrees_with_the_model_under_random_interleavings(
        ordered in proptest::array::uniform2(any::<bool>()),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let store = store();
        runtime().block_on(async {
            let mut routes = Vec::new();
            for ordered in ordered {
                let name = courier_testkit::unique_name("model");
                store.ensure_route(&RouteSpec { name: name.clone(), topic: "t".into(), destination: "d".into() }, &[]).await.expect("route");
                let initial: Vec<(i32, i64)> = (0..PARTITIONS).map(|p| (p, 0)).collect();
                store.ensure_partitions(&name, &initial).await.expect("partitions");
                routes.push(RouteModel {
                    name,
                    ordering: if ordered { Ordering::Partition } else { Ordering::None },
                    paused: false,
                    partitions: (0..PARTITIONS).map(|_| ModelPartition::default()).collect(),
                });
            }
            let mut model = Model { routes, quarantined: BTreeSet::new(), lost: BTreeSet::new(), held: vec![Vec::new(); WORKERS], carved: 0 };
            let mut marks = vec![vec![(0, 0); PARTITIONS as usize]; ROUTES];
            for op in &ops {
                apply(store, &mut model, op).await?;
                check_invariants(store, &model, &mut marks).await?;
            }
            drain_and_check_no_loss(store, &mut model).await?;
            check_invariants(store, &model, &mut marks).await
        })?;
    }
}
