//! What `courier status` shows, read in one round of queries: progress, leases, failures, workers and
//! destinations holding everyone off. Read-only; safe to run at any time.
//!
//! Times a condition started ("since") are Unix seconds of the store's clock; [`Snapshot::now_unix`] is
//! that clock when the snapshot was read, so ages never mix two machines' clocks. Judging what needs
//! attention is `courier_admin::report`'s.

use courier_core::Partition;

use crate::error::Result;
use crate::losses::{LossRow, LossSummary, LOSSES_LISTED, RECENT_LOSSES_HOURS};
use crate::pool::Store;
use crate::quarantine::QuarantineRow;
use crate::query::{db, params};

/// At most this many quarantined messages are listed one by one; the summary counts them all.
pub const QUARANTINE_LISTED: i64 = 50;

/// Progress of one partition of one route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRow {
    pub route: String,
    pub topic: String,
    pub destination: String,
    pub partition: Partition,
    pub frontier: i64,
    pub watermark: i64,
    /// Ranges planned but not settled.
    pub unsettled_ranges: i64,
    /// Offsets at or above the watermark in ranges already settled (delivered or failed): the planner
    /// moves the watermark past them lazily, and not at all while no worker runs. Not lag.
    pub settled_ahead: i64,
    /// The first offset not settled yet: the start of the lowest pending or leased range, else the
    /// frontier (everything carved is settled).
    pub first_unsettled: i64,
}

/// A range leased right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    pub route: String,
    pub partition: Partition,
    pub start_offset: i64,
    pub end_offset: i64,
    pub owner: String,
    pub epoch: i64,
    /// Negative once expired (the range is up for grabs).
    pub expires_in_ms: i64,
    pub replay: bool,
}

/// Failed ranges of one route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRow {
    pub route: String,
    pub ranges: i64,
    pub offsets: i64,
    pub newest_error: String,
}

/// Quarantined messages of one route not replayed yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineSummary {
    pub route: String,
    pub messages: i64,
    pub newest_reason: String,
    /// When the oldest of them was set aside.
    pub oldest_unix: i64,
}

/// A worker process, as its heartbeats recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRow {
    pub id: String,
    pub host: String,
    pub pid: i32,
    pub version: String,
    pub started_secs_ago: i64,
    pub heartbeat_secs_ago: i64,
    pub stopped: bool,
}

/// A destination every worker is holding off (`Retry-After`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeferredRow {
    pub destination: String,
    pub wait_ms: i64,
    pub reason: String,
    /// When the destination last asked to wait.
    pub since_unix: i64,
}

/// A route the store has recorded, and whether a live worker plans it (every worker serving a route
/// keeps its planning claimed, so a route nobody plans has no live worker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRow {
    pub name: String,
    pub topic: String,
    pub destination: String,
    /// The worker planning it, while its claim is current.
    pub planner: Option<String>,
    /// When no worker planned it any more: the lapsed claim's end, or (released, never planned) the
    /// later of its recording and the last worker stop. `None` while it is planned.
    pub unplanned_since_unix: Option<i64>,
}

/// Failed ranges of one partition of one route: offsets settled without being delivered, which the
/// watermark (and so lag) has moved past.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedPartitionRow {
    pub route: String,
    pub partition: Partition,
    pub ranges: i64,
    pub offsets: i64,
    /// When the earliest of them failed.
    pub oldest_unix: i64,
    pub newest_error: String,
}

/// Ranges of one route waiting to be retried after a failed attempt (the destination or Kafka failing
/// right now), not failed for good yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryingRow {
    pub route: String,
    pub destination: String,
    pub ranges: i64,
    pub offsets: i64,
    /// The oldest failed attempt still waiting for its retry.
    pub oldest_unix: i64,
    pub newest_error: String,
}

/// Everything `courier status` reads from the store.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub partitions: Vec<PartitionRow>,
    pub leases: Vec<LeaseRow>,
    pub failed: Vec<FailedRow>,
    /// Per route, the quarantined messages waiting for an operator.
    pub quarantine: Vec<QuarantineSummary>,
    /// The first [`QUARANTINE_LISTED`] of them, by route, partition and offset.
    pub quarantined: Vec<QuarantineRow>,
    pub workers: Vec<WorkerRow>,
    pub deferred: Vec<DeferredRow>,
    /// Replay ranges not yet settled, per route.
    pub pending_replays: Vec<(String, i64)>,
    /// Every recorded route, by name.
    pub routes: Vec<RouteRow>,
    /// Failed ranges per route and partition.
    pub failed_partitions: Vec<FailedPartitionRow>,
    /// Ranges being retried, per route.
    pub retrying: Vec<RetryingRow>,
    /// The store's clock when this was read, Unix seconds.
    pub now_unix: i64,
    /// Per route, the losses recorded in the last [`RECENT_LOSSES_HOURS`] hours (offsets Kafka deleted
    /// before delivery).
    pub recent_losses: Vec<LossSummary>,
    /// The newest [`LOSSES_LISTED`] losses, recent or not.
    pub losses: Vec<LossRow>,
}

impl Store {
    /// Reads the whole status snapshot.
    pub async fn snapshot(&self) -> Result<Snapshot> {
        let mut snapshot = self.snapshot_without_quarantined().await?;
        if !snapshot.quarantine.is_empty() {
            snapshot.quarantined = self.quarantined(None, QUARANTINE_LISTED).await?;
        }
        snapshot.losses = self.losses(None, LOSSES_LISTED).await?;
        Ok(snapshot)
    }

    async fn snapshot_without_quarantined(&self) -> Result<Snapshot> {
        const OP: &str = "status";
        self.run(OP, |c| {
            Box::pin(async move {
                let partitions = c
                    .query(
                        "SELECT p.route, r.topic, r.destination, p.partition, p.frontier, p.watermark,
                                (SELECT count(*) FROM courier_ranges x WHERE x.route = p.route AND x.partition = p.partition
                                   AND x.kind = 'live' AND x.state IN ('pending', 'leased')),
                                (SELECT COALESCE(sum(x.end_offset - x.start_offset), 0)::bigint FROM courier_ranges x
                                 WHERE x.route = p.route AND x.partition = p.partition AND x.kind = 'live'
                                   AND x.state IN ('done', 'failed') AND x.start_offset >= p.watermark),
                                COALESCE((SELECT min(x.start_offset) FROM courier_ranges x
                                          WHERE x.route = p.route AND x.partition = p.partition AND x.kind = 'live'
                                            AND x.state IN ('pending', 'leased')), p.frontier)
                         FROM courier_partitions p JOIN courier_routes r ON r.name = p.route
                         ORDER BY p.route, p.partition",
                        &[],
                    )
                    .await
                    .map_err(db(OP))?
                    .iter()
                    .map(|r| PartitionRow {
                        route: r.get(0),
                        topic: r.get(1),
                        destination: r.get(2),
                        partition: r.get(3),
                        frontier: r.get(4),
                        watermark: r.get(5),
                        unsettled_ranges: r.get(6),
                        settled_ahead: r.get(7),
                        first_unsettled: r.get(8),
                    })
                    .collect();
                let leases = c
                    .query(
                        "SELECT route, partition, start_offset, end_offset, lease_owner, epoch,
                                (EXTRACT(EPOCH FROM (lease_expires_at - now())) * 1000)::bigint, kind = 'replay'
                         FROM courier_ranges WHERE state = 'leased' ORDER BY route, partition, start_offset LIMIT 200",
                        &[],
                    )
                    .await
                    .map_err(db(OP))?
                    .iter()
                    .map(|r| LeaseRow {
                        route: r.get(0),
                        partition: r.get(1),
                        start_offset: r.get(2),
                        end_offset: r.get(3),
                        owner: r.get(4),
                        epoch: r.get(5),
                        expires_in_ms: r.get(6),
                        replay: r.get(7),
                    })
                    .collect();
                let failed = c
                    .query(
                        "SELECT route, count(*), sum(end_offset - start_offset)::bigint,
                                (array_agg(last_error ORDER BY updated_at DESC))[1]
                         FROM courier_ranges WHERE state = 'failed' GROUP BY route ORDER BY route",
                        &[],
                    )
                    .await
                    .map_err(db(OP))?
                    .iter()
                    .map(|r| FailedRow {
                        route: r.get(0),
                        ranges: r.get(1),
                        offsets: r.get(2),
                        newest_error: r.get::<_, Option<String>>(3).unwrap_or_default(),
                    })
                    .collect();
                let quarantine = c
                    .query(
                        "SELECT route, count(*), (array_agg(reason ORDER BY quarantined_at DESC))[1],
                                EXTRACT(EPOCH FROM min(quarantined_at))::bigint
                         FROM courier_quarantine WHERE replayed_at IS NULL GROUP BY route ORDER BY route",
                        &[],
                    )
                    .await
                    .map_err(db(OP))?
                    .iter()
                    .map(|r| QuarantineSummary { route: r.get(0), messages: r.get(1), newest_reason: r.get(2), oldest_unix: r.get(3) })
                    .collect();
                let workers = c
                    .query(
                        "SELECT id, host, pid, version,
                                EXTRACT(EPOCH FROM (now() - started_at))::bigint,
                                EXTRACT(EPOCH FROM (now() - heartbeat_at))::bigint,
                                stopped_at IS NOT NULL
                         FROM courier_workers
                         WHERE stopped_at IS NULL OR stopped_at > now() - interval '1 day'
                         ORDER BY started_at DESC LIMIT 100",
                        &[],
                    )
                    .await
                    .map_err(db(OP))?
                    .iter()
                    .map(|r| WorkerRow {
                        id: r.get(0),
                        host: r.get(1),
                        pid: r.get(2),
                        version: r.get(3),
                        started_secs_ago: r.get(4),
                        heartbeat_secs_ago: r.get(5),
                        stopped: r.get(6),
                    })
                    .collect();
                let deferred = c
                    .query(
                        "SELECT name, (EXTRACT(EPOCH FROM (not_before - now())) * 1000)::bigint, COALESCE(reason, ''),
                                EXTRACT(EPOCH FROM updated_at)::bigint
                         FROM courier_destinations WHERE not_before > now() ORDER BY name",
                        &[],
                    )
                    .await
                    .map_err(db(OP))?
                    .iter()
                    .map(|r| DeferredRow { destination: r.get(0), wait_ms: r.get(1), reason: r.get(2), since_unix: r.get(3) })
                    .collect();
                let pending_replays = c
                    .query(
                        "SELECT route, count(*) FROM courier_ranges
                         WHERE replay_id IS NOT NULL AND state IN ('pending', 'leased') GROUP BY route ORDER BY route",
                        &[],
                    )
                    .await
                    .map_err(db(OP))?
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect();
                let routes = c
                    .query(
                        "SELECT r.name, r.topic, r.destination,
                                CASE WHEN r.planner_until > now() THEN r.planner END,
                                CASE WHEN r.planner_until > now() THEN NULL
                                     ELSE EXTRACT(EPOCH FROM COALESCE(r.planner_until,
                                         GREATEST(r.created_at, (SELECT max(w.stopped_at) FROM courier_workers w))))::bigint
                                END
                         FROM courier_routes r ORDER BY r.name",
                        &[],
                    )
                    .await
                    .map_err(db(OP))?
                    .iter()
                    .map(|r| RouteRow {
                        name: r.get(0),
                        topic: r.get(1),
                        destination: r.get(2),
                        planner: r.get(3),
                        unplanned_since_unix: r.get(4),
                    })
                    .collect();
                let failed_partitions = c
                    .query(
                        "SELECT route, partition, count(*), sum(end_offset - start_offset)::bigint,
                                EXTRACT(EPOCH FROM min(updated_at))::bigint,
                                (array_agg(last_error ORDER BY updated_at DESC))[1]
                         FROM courier_ranges WHERE state = 'failed' GROUP BY route, partition ORDER BY route, partition",
                        &[],
                    )
                    .await
                    .map_err(db(OP))?
                    .iter()
                    .map(|r| FailedPartitionRow {
                        route: r.get(0),
                        partition: r.get(1),
                        ranges: r.get(2),
                        offsets: r.get(3),
                        oldest_unix: r.get(4),
                        newest_error: r.get::<_, Option<String>>(5).unwrap_or_default(),
                    })
                    .collect();
                // Not failed for good, but an attempt failed: the destination (or Kafka) is failing now.
                let retrying = c
                    .query(
                        "SELECT x.route, r.destination, count(*), sum(x.end_offset - x.start_offset)::bigint,
                                EXTRACT(EPOCH FROM min(x.updated_at))::bigint,
                                (array_agg(x.last_error ORDER BY x.updated_at DESC))[1]
                         FROM courier_ranges x JOIN courier_routes r ON r.name = x.route
                         WHERE x.state IN ('pending', 'leased') AND x.attempts > 0 AND x.last_error IS NOT NULL
                         GROUP BY x.route, r.destination ORDER BY x.route",
                        &[],
                    )
                    .await
                    .map_err(db(OP))?
                    .iter()
                    .map(|r| RetryingRow {
                        route: r.get(0),
                        destination: r.get(1),
                        ranges: r.get(2),
                        offsets: r.get(3),
                        oldest_unix: r.get(4),
                        newest_error: r.get::<_, Option<String>>(5).unwrap_or_default(),
                    })
                    .collect();
                let now_unix: i64 = c
                    .query_one("SELECT EXTRACT(EPOCH FROM now())::bigint", &[])
                    .await
                    .map_err(db(OP))?
                    .get(0);
                let recent_losses = c
                    .query(
                        "SELECT route, count(*), sum(end_offset - start_offset)::bigint FROM courier_losses
                         WHERE recorded_at > now() - $1::bigint * interval '1 hour' GROUP BY route ORDER BY route",
                        &[&RECENT_LOSSES_HOURS],
                    )
                    .await
                    .map_err(db(OP))?
                    .iter()
                    .map(|r| LossSummary { route: r.get(0), losses: r.get(1), offsets: r.get(2) })
                    .collect();
                Ok(Snapshot {
                    partitions,
                    leases,
                    failed,
                    quarantine,
                    quarantined: Vec::new(),
                    workers,
                    deferred,
                    pending_replays,
                    routes,
                    failed_partitions,
                    retrying,
                    now_unix,
                    recent_losses,
                    losses: Vec::new(),
                })
            })
        })
        .await
    }

    /// How many ranges of replay `replay_id` are settled, and how many there are in all (settled replay
    /// ranges may have been compacted away: they count as settled).
    pub async fn replay_progress(&self, replay_id: i64) -> Result<(i64, i64)> {
        let row = self
            .query_one(
                "replay progress",
                "SELECT r.ranges::bigint,
                        (SELECT count(*) FROM courier_ranges x WHERE x.replay_id = r.id AND x.state IN ('pending', 'leased'))
                 FROM courier_replays r WHERE r.id = $1",
                params![replay_id],
            )
            .await?;
        let (total, open): (i64, i64) = (row.get(0), row.get(1));
        Ok((total - open, total))
    }
}
