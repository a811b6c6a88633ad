//! The planner's side of the store: who plans a route, carving ranges from Kafka's high watermarks,
//! advancing watermarks, reading where each partition stands, and compacting settled ranges.
//!
//! Everything here is paid per planning round, not per route: one worker at a time plans a route
//! ([`Store::claim_planning`]), and one [`Store::plan_round`] transaction carves every partition that has
//! new messages and advances the watermarks of every route the worker plans. An idle worker with a
//! thousand routes costs the store a few statements a second, whatever the route count.
//!
//! Watermarks move lazily, in planning rounds, never inside a checkpoint: the per-partition row would
//! otherwise be a lock every checkpoint of the partition queues on.

use std::time::Duration;

use courier_core::{carve, Offset, OffsetRange, Partition};
use tokio_postgres::Row;

use crate::error::Result;
use crate::pool::{millis, Store};
use crate::protocol::PartitionProgress;
use crate::query::{invalid, params};

/// One partition to carve in a planning round.
#[derive(Debug, Clone)]
pub struct PlanRequest {
    pub route: String,
    pub partition: Partition,
    /// Kafka's high watermark: the offset of the next message to be written.
    pub high_watermark: Offset,
    pub range_size: u32,
    /// Cap on ranges carved in this step, so a partition far behind is planned over several short
    /// transactions and the un-leased backlog stays bounded.
    pub max_new_ranges: usize,
    /// A tail shorter than `range_size` is carved once it has waited this long (0: at once), or at once
    /// when nothing of the partition is in flight (no live range pending or leased): the destination
    /// keeps up, so latency matters more than range size.
    pub max_tail_age: Duration,
}

/// What planning one partition did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanOutcome {
    pub carved: usize,
    pub frontier: Offset,
}

/// One planning round of one worker: carve `partitions`, then advance the watermarks of `routes` and
/// read where each of their partitions stands.
#[derive(Debug, Clone, Default)]
pub struct PlanRound {
    pub routes: Vec<String>,
    pub partitions: Vec<PlanRequest>,
}

/// What a planning round did.
#[derive(Debug, Clone, Default)]
pub struct RoundOutcome {
    /// Per requested partition, in request order.
    pub planned: Vec<PlanOutcome>,
    /// Every partition of the round's routes after it, by route then partition.
    pub progress: Vec<(String, PartitionProgress)>,
}

impl RoundOutcome {
    /// Ranges carved in all.
    pub fn carved(&self) -> usize {
        self.planned.iter().map(|p| p.carved).sum()
    }
}

impl Store {
    /// Takes or keeps the planning of `routes` for `owner` until `ttl` from now, and returns the routes it
    /// plans: those nobody plans, those it already planned, and those whose planner stopped renewing.
    /// A worker calls it every `ttl / 3`, so a route has one planner at a time and a dead planner's routes
    /// move to another worker within `ttl`.
    pub async fn claim_planning(
        &self,
        routes: &[String],
        owner: &str,
        ttl: Duration,
    ) -> Result<Vec<String>> {
        let rows = self
            .query(
                "claim planning",
                "UPDATE courier_routes
                 SET planner = $2, planner_until = now() + $3::bigint * interval '1 millisecond'
                 WHERE name = ANY($1::text[])
                   AND (planner IS NULL OR planner = $2 OR planner_until < now())
                 RETURNING name",
                params![routes.to_vec(), owner.to_owned(), millis(ttl)],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Gives up planning every route `owner` plans (a graceful stop), so another worker takes them over at
    /// its next claim instead of after the planner TTL.
    pub async fn release_planning(&self, owner: &str) -> Result<()> {
        self.query(
            "release planning",
            "UPDATE courier_routes SET planner = NULL, planner_until = NULL WHERE planner = $1 RETURNING name",
            params![owner.to_owned()],
        )
        .await
        .map(drop)
    }

    /// One planning round in one short transaction: carve each requested partition from its frontier
    /// towards Kafka's high watermark (partition rows locked in a fixed order, so racing planners never
    /// overlap and never deadlock each other), then advance the watermarks of `round.routes` and read
    /// where every one of their partitions stands.
    pub async fn plan_round(&self, round: &PlanRound) -> Result<RoundOutcome> {
        const OP: &str = "plan";
        let round = round.clone();
        self.transaction(OP, move |tx| {
            Box::pin(async move {
                let mut planned = Vec::with_capacity(round.partitions.len());
                if !round.partitions.is_empty() {
                    let routes: Vec<&str> = round.partitions.iter().map(|r| r.route.as_str()).collect();
                    let partitions: Vec<i32> = round.partitions.iter().map(|r| r.partition).collect();
                    let ages: Vec<i64> = round.partitions.iter().map(|r| millis(r.max_tail_age)).collect();
                    let rows = tx
                        .query(
                            "SELECT p.route, p.partition, p.frontier,
                                    (p.tail_seen_at IS NOT NULL
                                       AND now() - p.tail_seen_at >= t.age * interval '1 millisecond')
                                    OR NOT EXISTS (
                                       SELECT 1 FROM courier_ranges r
                                       WHERE r.route = p.route AND r.partition = p.partition AND r.kind = 'live'
                                         AND r.state IN ('pending', 'leased') AND r.start_offset >= p.watermark),
                                    p.tail_seen_at IS NOT NULL
                             FROM courier_partitions p
                             JOIN unnest($1::text[], $2::int[], $3::bigint[]) AS t (route, partition, age)
                               ON p.route = t.route AND p.partition = t.partition
                             ORDER BY p.route, p.partition
                             FOR UPDATE OF p",
                            &[&routes, &partitions, &ages],
                        )
                        .await?;
                    let mut inserts = RangeRows::default();
                    let mut updates = PartitionRows::default();
                    for request in &round.partitions {
                        let row = rows
                            .iter()
                            .find(|row| row.get::<_, &str>(0) == request.route && row.get::<_, i32>(1) == request.partition)
                            .ok_or_else(|| {
                                invalid(
                                    OP,
                                    format!(
                                        "partition {} of route {:?} is not registered; the planner registers partitions before planning them",
                                        request.partition, request.route
                                    ),
                                )
                            })?;
                        let locked = Locked {
                            frontier: row.get(2),
                            tail_due: request.max_tail_age.is_zero() || row.get::<_, bool>(3),
                            tail_seen: row.get(4),
                        };
                        let step = plan_partition(request, locked);
                        planned.push(PlanOutcome { carved: step.ranges.len(), frontier: step.frontier });
                        inserts.push(request, &step.ranges);
                        if let Some(tail) = step.tail {
                            updates.push(request, step.frontier, tail);
                        }
                    }
                    if !inserts.starts.is_empty() {
                        tx.execute(
                            "INSERT INTO courier_ranges (route, partition, start_offset, end_offset)
                             SELECT r, p, s, e FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bigint[]) AS t (r, p, s, e)
                             ON CONFLICT (route, partition, start_offset) WHERE kind = 'live' DO NOTHING",
                            &[&inserts.routes, &inserts.partitions, &inserts.starts, &inserts.ends],
                        )
                        .await?;
                    }
                    if !updates.routes.is_empty() {
                        // tail_seen_at: set when a short tail is first seen waiting, kept while it waits,
                        // cleared once nothing short is waiting.
                        tx.execute(
                            "UPDATE courier_partitions p
                             SET frontier = u.frontier,
                                 tail_seen_at = CASE WHEN u.seen_now THEN now() WHEN u.keep THEN p.tail_seen_at ELSE NULL END,
                                 updated_at = now()
                             FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bool[], $5::bool[])
                                  AS u (route, partition, frontier, seen_now, keep)
                             WHERE p.route = u.route AND p.partition = u.partition",
                            &[&updates.routes, &updates.partitions, &updates.frontiers, &updates.seen_now, &updates.keep],
                        )
                        .await?;
                    }
                }
                let progress = if round.routes.is_empty() {
                    Vec::new()
                } else {
                    let statement = tx.prepare_cached(ADVANCE_WATERMARKS).await?;
                    let rows = tx.query(&statement, &[&round.routes]).await?;
                    rows.iter().map(|row| (row.get(5), progress_from_row(row))).collect()
                };
                Ok(RoundOutcome { planned, progress })
            })
        })
        .await
    }

    /// Plans one partition: [`Store::plan_round`] with that partition alone.
    pub async fn plan(&self, request: &PlanRequest) -> Result<PlanOutcome> {
        let round = PlanRound {
            routes: Vec::new(),
            partitions: vec![request.clone()],
        };
        let outcome = self.plan_round(&round).await?;
        outcome
            .planned
            .first()
            .copied()
            .ok_or_else(|| invalid("plan", "a round of one partition planned none".into()))
    }

    /// Moves each partition's watermark over its contiguous prefix of settled live ranges, and returns
    /// every partition of the route as it stands afterwards. Never backwards: a replayed range below the
    /// watermark does not pull it back.
    pub async fn advance_watermarks(&self, route: &str) -> Result<Vec<PartitionProgress>> {
        let round = PlanRound {
            routes: vec![route.to_owned()],
            partitions: Vec::new(),
        };
        Ok(self
            .plan_round(&round)
            .await?
            .progress
            .into_iter()
            .map(|(_, p)| p)
            .collect())
    }

    /// Frontier and watermark of every partition of a route.
    pub async fn partitions(&self, route: &str) -> Result<Vec<PartitionProgress>> {
        let rows = self
            .query(
                "read partitions",
                "SELECT p.partition, p.initial_offset, p.frontier, p.watermark, (SELECT count(*) FROM courier_ranges x WHERE x.route = p.route AND x.partition = p.partition AND x.kind = 'live' AND x.state = 'leased' AND x.lease_expires_at <= now())
                 FROM courier_partitions p WHERE p.route = $1 ORDER BY p.partition",
                params![route.to_owned()],
            )
            .await?;
        Ok(rows.iter().map(progress_from_row).collect())
    }

    /// Deletes up to `limit` done ranges of `routes` that no longer matter: live ones wholly below the
    /// watermark, and finished replays. Failed ranges stay until replayed. Returns how many rows went.
    pub async fn compact_routes(&self, routes: &[String], limit: i64) -> Result<u64> {
        let rows = self
            .query(
                "compact",
                "DELETE FROM courier_ranges WHERE id IN (
                     SELECT r.id FROM courier_ranges r
                     JOIN courier_partitions p ON p.route = r.route AND p.partition = r.partition
                     WHERE r.route = ANY($1::text[]) AND r.state = 'done'
                       AND (r.kind = 'replay' OR r.end_offset <= p.watermark)
                     LIMIT $2)
                 RETURNING id",
                params![routes.to_vec(), limit],
            )
            .await?;
        Ok(rows.len() as u64)
    }

    /// [`Store::compact_routes`] for one route.
    pub async fn compact(&self, route: &str, limit: i64) -> Result<u64> {
        self.compact_routes(&[route.to_owned()], limit).await
    }
}

/// Advance the watermarks of routes `$1` and return every partition of them as it stands afterwards:
/// `(partition, initial_offset, frontier, watermark, expired_leases, route)`.
const ADVANCE_WATERMARKS: &str = "
    WITH next AS (
        SELECT p.route, p.partition,
               COALESCE((SELECT min(r.start_offset) FROM courier_ranges r
                         WHERE r.route = p.route AND r.partition = p.partition
                           AND r.kind = 'live' AND r.state IN ('pending', 'leased')
                           AND r.start_offset >= p.watermark),
                        p.frontier) AS watermark
        FROM courier_partitions p WHERE p.route = ANY($1::text[])),
    advanced AS (
        UPDATE courier_partitions p SET watermark = next.watermark, updated_at = now()
        FROM next
        WHERE p.route = next.route AND p.partition = next.partition AND next.watermark > p.watermark
        RETURNING p.route, p.partition, p.initial_offset, p.frontier, p.watermark),
    progress AS (
        SELECT route, partition, initial_offset, frontier, watermark FROM advanced
        UNION ALL
        SELECT p.route, p.partition, p.initial_offset, p.frontier, p.watermark FROM courier_partitions p
        WHERE p.route = ANY($1::text[])
          AND NOT EXISTS (SELECT 1 FROM advanced a WHERE a.route = p.route AND a.partition = p.partition))
    SELECT g.partition, g.initial_offset, g.frontier, g.watermark,
           (SELECT count(*) FROM courier_ranges x
            WHERE x.route = g.route AND x.partition = g.partition AND x.kind = 'live'
              AND x.state = 'leased' AND x.lease_expires_at <= now()),
           g.route
    FROM progress g ORDER BY g.route, g.partition";

/// A `(partition, initial_offset, frontier, watermark, expired_leases)` row.
fn progress_from_row(row: &Row) -> PartitionProgress {
    PartitionProgress {
        partition: row.get(0),
        initial_offset: row.get(1),
        frontier: row.get(2),
        watermark: row.get(3),
        expired_leases: row.get(4),
    }
}

/// A partition row as locked by a planning round.
#[derive(Debug, Clone, Copy)]
struct Locked {
    frontier: Offset,
    /// The short tail has waited `max_tail_age`, nothing of the partition is in flight, or the request
    /// wants tails at once.
    tail_due: bool,
    /// A short tail was already seen waiting.
    tail_seen: bool,
}

/// What a round does to one partition row: `None` leaves it untouched.
#[derive(Debug, Clone, Copy)]
struct TailMark {
    /// Mark the tail as first seen now.
    seen_now: bool,
    /// Keep the earlier mark (the tail still waits).
    keep: bool,
}

struct PartitionStep {
    ranges: Vec<OffsetRange>,
    frontier: Offset,
    tail: Option<TailMark>,
}

/// Carves one partition: full ranges up to the high watermark (at most `max_new_ranges`), and the
/// short tail once it has waited long enough. A high watermark at or below the frontier carves nothing
/// (nothing new, or a planner with a staler watermark than another had): progress never moves back.
fn plan_partition(request: &PlanRequest, locked: Locked) -> PartitionStep {
    let frontier = locked.frontier;
    if request.high_watermark <= frontier {
        return PartitionStep {
            ranges: Vec::new(),
            frontier,
            tail: None,
        };
    }
    let mut ranges = carve(
        frontier,
        request.high_watermark,
        request.range_size,
        request.max_new_ranges,
        false,
    );
    let carved_to = ranges.last().map_or(frontier, OffsetRange::end);
    let tail_waiting = carved_to < request.high_watermark && ranges.len() < request.max_new_ranges;
    let mut seen_now = false;
    if tail_waiting {
        if locked.tail_due {
            ranges.extend(carve(
                carved_to,
                request.high_watermark,
                request.range_size,
                1,
                true,
            ));
        } else {
            seen_now = !locked.tail_seen || !ranges.is_empty();
        }
    }
    let new_frontier = ranges.last().map_or(frontier, OffsetRange::end);
    PartitionStep {
        ranges,
        frontier: new_frontier,
        tail: Some(TailMark {
            seen_now,
            keep: tail_waiting && !locked.tail_due,
        }),
    }
}

/// The `unnest` columns of the ranges a round inserts.
#[derive(Default)]
struct RangeRows<'a> {
    routes: Vec<&'a str>,
    partitions: Vec<i32>,
    starts: Vec<i64>,
    ends: Vec<i64>,
}

impl<'a> RangeRows<'a> {
    fn push(&mut self, request: &'a PlanRequest, ranges: &[OffsetRange]) {
        for range in ranges {
            self.routes.push(&request.route);
            self.partitions.push(request.partition);
            self.starts.push(range.start());
            self.ends.push(range.end());
        }
    }
}

/// The `unnest` columns of the partition rows a round updates.
#[derive(Default)]
struct PartitionRows<'a> {
    routes: Vec<&'a str>,
    partitions: Vec<i32>,
    frontiers: Vec<i64>,
    seen_now: Vec<bool>,
    keep: Vec<bool>,
}

impl<'a> PartitionRows<'a> {
    fn push(&mut self, request: &'a PlanRequest, frontier: Offset, tail: TailMark) {
        self.routes.push(&request.route);
        self.partitions.push(request.partition);
        self.frontiers.push(frontier);
        self.seen_now.push(tail.seen_now);
        self.keep.push(tail.keep);
    }
}
