//! The lease protocol: how ranges are carved, claimed, kept, settled and replayed.
//!
//! Each function is one short transaction (most are one statement). None waits on Kafka or a
//! destination: a worker leases, lets go of the connection, does its network I/O, and comes back with the
//! lease's epoch. Every report (renew, checkpoint, fail, release) is a compare-and-set on that epoch, so a
//! worker whose lease expired and was taken over changes nothing: it is *fenced*.
//!
//! Carving ranges, advancing watermarks and compaction are the planner's, in [`crate::planning`].

use std::time::Duration;

use courier_core::{
    carve, CheckpointOutcome, Epoch, Lease, Offset, OffsetRange, Ordering, Partition, RangeKind,
};
use tokio_postgres::Row;

use crate::error::{Result, StoreError};
use crate::pool::{millis, Store};

/// A route as configured: its name, source topic and destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub name: String,
    pub topic: String,
    pub destination: String,
}

/// A worker asking for work, across every route it serves, in one statement.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    /// The routes to look in (those whose destination is not holding everyone off).
    pub routes: Vec<String>,
    /// Of `routes`, those with `ordering = "partition"`: only the lowest unsettled live range of each of
    /// their partitions is eligible, so a partition has at most one range in flight.
    pub ordered: Vec<String>,
    /// The worker id recorded as `lease_owner`.
    pub owner: String,
    /// At most this many ranges.
    pub max_ranges: usize,
    pub ttl: Duration,
    /// Live work or replays: replays are leased separately so they run on their own budget.
    pub kind: RangeKind,
}

impl LeaseRequest {
    /// One route with the given ordering.
    pub fn one_route(
        route: &str,
        ordering: Ordering,
        owner: &str,
        max_ranges: usize,
        ttl: Duration,
        kind: RangeKind,
    ) -> Self {
        Self {
            routes: vec![route.to_owned()],
            ordered: match ordering {
                Ordering::Partition => vec![route.to_owned()],
                Ordering::None => Vec::new(),
            },
            owner: owner.to_owned(),
            max_ranges,
            ttl,
            kind,
        }
    }
}

/// A failed delivery attempt, as reported to the store.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Why, for `last_error`: what the destination or Kafka said.
    pub reason: String,
    /// Will never succeed as is: fail the range now instead of retrying.
    pub permanent: bool,
    /// How long before the range may be leased again.
    pub backoff: Duration,
    /// Fail for good once the range has been leased this many times.
    pub max_attempts: i32,
    /// Offsets below this were delivered by this attempt (its first batches went through).
    pub delivered_to: Option<Offset>,
}

/// What became of a failure report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailOutcome {
    /// Back to `pending`, to be leased again after the backoff.
    Retrying,
    /// Failed for good (permanent error, or out of attempts): listed, alerted on, replayable.
    Failed,
    /// The lease was lost; nothing changed.
    Fenced,
}

/// Progress of one partition of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionProgress {
    pub partition: Partition,
    pub initial_offset: Offset,
    /// Next offset not yet carved into a range.
    pub frontier: Offset,
    /// Every live range below it is settled.
    pub watermark: Offset,
    /// Leases of this partition that expired and are up for grabs (a worker died or stalled): idle
    /// delivery tasks are woken for them instead of finding them on their next poll.
    pub expired_leases: i64,
}

/// Which failed ranges to replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayFilter {
    pub partition: Option<Partition>,
    /// Only ranges whose `last_error` contains this text (case-insensitive).
    pub error_contains: Option<String>,
}

/// The ranges a replay (re)queued, or would have with `dry_run`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayOutcome {
    /// The audit row; `None` for a dry run.
    pub replay_id: Option<i64>,
    pub ranges: Vec<(Partition, OffsetRange)>,
}

/// Who asks for a replay and why: both are recorded.
#[derive(Debug, Clone)]
pub struct ReplayAudit {
    pub requested_by: String,
    pub reason: String,
    pub dry_run: bool,
}

pub(crate) fn db(operation: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |e| StoreError::from_db(operation, e)
}

pub(crate) fn invalid(operation: &'static str, message: String) -> StoreError {
    StoreError::Invalid { operation, message }
}

fn epoch_outcome(rows: u64) -> CheckpointOutcome {
    if rows == 1 {
        CheckpointOutcome::Applied
    } else {
        CheckpointOutcome::Fenced
    }
}

impl Store {
    /// Records a route, or checks that the recorded one still reads the same topic. Progress is offsets
    /// of one topic: pointing an existing route at another topic would deliver the wrong messages.
    ///
    /// `first_partitions` are where a **new** route starts (its `start` setting applied to the partitions
    /// the topic has now), registered in the same statement as the route itself, so no other worker can
    /// see the route without them. For a route already recorded they are ignored: `start` decides only
    /// where a route begins, and partitions added to the topic later start at their log start offset
    /// ([`Store::ensure_partitions`]). Returns whether this call created the route.
    ///
    /// No delivery settings are compared: workers call [`Store::register_route`], which does.
    pub async fn ensure_route(
        &self,
        route: &RouteSpec,
        first_partitions: &[(Partition, Offset)],
    ) -> Result<bool> {
        let registration = self
            .register_route(
                route,
                &crate::RouteSettings::default(),
                first_partitions,
                false,
            )
            .await?;
        Ok(registration.created)
    }

    /// Registers partitions of a route with the offset each starts from. Known partitions keep their
    /// progress: the initial offset only matters the first time.
    pub async fn ensure_partitions(
        &self,
        route: &str,
        initial: &[(Partition, Offset)],
    ) -> Result<()> {
        let route = route.to_owned();
        let (partitions, offsets) = partition_offsets("ensure partitions", initial)?;
        self.run("ensure partitions", move |c| {
            Box::pin(async move {
                c.execute(
                    "INSERT INTO courier_partitions (route, partition, initial_offset, frontier, watermark)
                     SELECT $1, p, o, o, o FROM unnest($2::int[], $3::bigint[]) AS t (p, o)
                     ON CONFLICT (route, partition) DO NOTHING",
                    &[&route, &partitions, &offsets],
                )
                .await
                .map_err(db("ensure partitions"))?;
                Ok(())
            })
        })
        .await
    }

    /// Frontier and watermark of every partition of a route.
    pub async fn partitions(&self, route: &str) -> Result<Vec<PartitionProgress>> {
        let route = route.to_owned();
        self.run("read partitions", move |c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT p.partition, p.initial_offset, p.frontier, p.watermark, (SELECT count(*) FROM courier_ranges x WHERE x.route = p.route AND x.partition = p.partition AND x.kind = 'live' AND x.state = 'leased' AND x.lease_expires_at <= now())
                         FROM courier_partitions p WHERE p.route = $1 ORDER BY p.partition",
                        &[&route],
                    )
                    .await
                    .map_err(db("read partitions"))?;
                Ok(rows.iter().map(progress_from_row).collect())
            })
        })
        .await
    }

    /// Claims up to `max_ranges` ranges of any of the requested routes, oldest first: pending ones whose
    /// backoff has passed, and leased ones whose lease expired. Each claim bumps the epoch. Rows another
    /// worker is claiming right now are skipped, not waited on. For ordered routes only the lowest
    /// unsettled live range of each partition is eligible, so a partition is delivered in offset order.
    pub async fn lease(&self, request: &LeaseRequest) -> Result<Vec<Lease>> {
        const OP: &str = "lease";
        let request = request.clone();
        let sql = format!("WITH {} UPDATE {LEASE_UPDATE}", lease_candidates(""));
        self.run(OP, move |c| {
            Box::pin(async move {
                let statement = c.prepare_cached(&sql).await.map_err(db(OP))?;
                let (limit, ttl, kind) = lease_params(&request);
                let rows = c
                    .query(
                        &statement,
                        &[
                            &request.routes,
                            &limit,
                            &request.owner,
                            &ttl,
                            &kind,
                            &request.ordered,
                        ],
                    )
                    .await
                    .map_err(db(OP))?;
                rows.iter().map(|row| lease_from_row(row, 0)).collect()
            })
        })
        .await
    }

    /// Checkpoints `done` and leases the next ranges of `next` in one statement: a busy delivery task
    /// pays one store transaction per range instead of two. [`Store::checkpoint_all_and_lease`] with one
    /// range.
    pub async fn checkpoint_and_lease(
        &self,
        done: &Lease,
        next: &LeaseRequest,
    ) -> Result<(CheckpointOutcome, Vec<Lease>)> {
        let (outcomes, leases) = self
            .checkpoint_all_and_lease(std::slice::from_ref(done), Some(next))
            .await?;
        let outcome = outcomes
            .first()
            .copied()
            .unwrap_or(CheckpointOutcome::Fenced);
        Ok((outcome, leases))
    }

    /// Checkpoints every range of `done` and, with `next`, leases the next ranges in one statement: a
    /// delivery task that delivered several ranges at once settles them all in one transaction. Each
    /// checkpoint is fenced on its own, exactly as [`Store::checkpoint`] (the outcomes come in `done`'s
    /// order); the lease makes the same choice as [`Store::lease`], never picking a range of `done` (one
    /// statement must not modify a row twice) and, with an ordered route, not yet seeing the successor of
    /// a range checkpointed by the same statement (it comes with the next call).
    pub async fn checkpoint_all_and_lease(
        &self,
        done: &[Lease],
        next: Option<&LeaseRequest>,
    ) -> Result<(Vec<CheckpointOutcome>, Vec<Lease>)> {
        const OP: &str = "checkpoint and lease";
        let request = next.cloned();
        let ids: Vec<i64> = done.iter().map(|lease| lease.id).collect();
        let epochs: Vec<i64> = done.iter().map(|lease| lease.epoch.0).collect();
        let sql = format!(
            "WITH done AS (
                 UPDATE courier_ranges r SET state = 'done', lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
                 FROM unnest($7::bigint[], $8::bigint[]) AS d (id, epoch)
                 WHERE r.id = d.id AND r.epoch = d.epoch AND r.state = 'leased'
                 RETURNING r.id, r.epoch),
             {},
             leased AS (UPDATE {LEASE_UPDATE})
             SELECT (SELECT COALESCE(array_agg(id), '{{}}') FROM done),
                    (SELECT COALESCE(array_agg(epoch), '{{}}') FROM done), leased.*
             FROM (SELECT 1) AS one LEFT JOIN leased ON true",
            lease_candidates("AND r.id <> ALL($7::bigint[])")
        );
        self.run(OP, move |c| {
            Box::pin(async move {
                let statement = c.prepare_cached(&sql).await.map_err(db(OP))?;
                let (routes, ordered, owner, (limit, ttl, kind)) = match &request {
                    Some(request) => (
                        request.routes.clone(),
                        request.ordered.clone(),
                        request.owner.clone(),
                        lease_params(request),
                    ),
                    // Nothing to lease: no route to look in.
                    None => (Vec::new(), Vec::new(), String::new(), (0, 0, "live")),
                };
                let rows = c
                    .query(
                        &statement,
                        &[
                            &routes, &limit, &owner, &ttl, &kind, &ordered, &ids, &epochs,
                        ],
                    )
                    .await
                    .map_err(db(OP))?;
                // By (id, epoch): the same range can be in `done` twice, under an expired lease and the
                // one that replaced it, and only the current one is applied.
                let checkpointed: Vec<(i64, i64)> = rows
                    .first()
                    .map(|row| {
                        let ids: Vec<i64> = row.get(0);
                        let epochs: Vec<i64> = row.get(1);
                        ids.into_iter().zip(epochs).collect()
                    })
                    .unwrap_or_default();
                let outcomes = ids
                    .iter()
                    .zip(&epochs)
                    .map(|(id, epoch)| {
                        epoch_outcome(u64::from(checkpointed.contains(&(*id, *epoch))))
                    })
                    .collect();
                let leases = rows
                    .iter()
                    .filter(|row| row.get::<_, Option<i64>>(2).is_some())
                    .map(|row| lease_from_row(row, 2))
                    .collect::<Result<Vec<_>>>()?;
                Ok((outcomes, leases))
            })
        })
        .await
    }

    /// Extends a lease still held under `lease.epoch`.
    pub async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<CheckpointOutcome> {
        let (id, epoch) = (lease.id, lease.epoch.0);
        self.execute_fenced(
            "renew",
            "UPDATE courier_ranges SET lease_expires_at = now() + $3::bigint * interval '1 millisecond', updated_at = now()
             WHERE id = $1 AND epoch = $2 AND state = 'leased'",
            id,
            epoch,
            Some(millis(ttl)),
        )
        .await
    }

    /// Marks a leased range done: a compare-and-set on the epoch. `Fenced` means the lease was lost and
    /// another worker has (or will have) delivered the range: count it, never retry it.
    pub async fn checkpoint(&self, lease: &Lease) -> Result<CheckpointOutcome> {
        self.execute_fenced(
            "checkpoint",
            "UPDATE courier_ranges SET state = 'done', lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
             WHERE id = $1 AND epoch = $2 AND state = 'leased'",
            lease.id,
            lease.epoch.0,
            None,
        )
        .await
    }

    /// Gives a lease back without an attempt counted: at once for a graceful shutdown, or after `delay`
    /// when the destination asked every worker to hold off (a `Retry-After`, an open circuit).
    pub async fn release(&self, lease: &Lease, delay: Duration) -> Result<CheckpointOutcome> {
        self.execute_fenced(
            "release",
            "UPDATE courier_ranges SET state = 'pending', lease_owner = NULL, lease_expires_at = NULL,
                    attempts = GREATEST(attempts - 1, 0),
                    not_before = now() + $3::bigint * interval '1 millisecond', updated_at = now()
             WHERE id = $1 AND epoch = $2 AND state = 'leased'",
            lease.id,
            lease.epoch.0,
            Some(millis(delay)),
        )
        .await
    }

    async fn execute_fenced(
        &self,
        operation: &'static str,
        sql: &'static str,
        id: i64,
        epoch: i64,
        ttl_millis: Option<i64>,
    ) -> Result<CheckpointOutcome> {
        self.run(operation, move |c| {
            Box::pin(async move {
                let statement = c.prepare_cached(sql).await.map_err(db(operation))?;
                let rows = match ttl_millis {
                    Some(ttl) => c.execute(&statement, &[&id, &epoch, &ttl]).await,
                    None => c.execute(&statement, &[&id, &epoch]).await,
                }
                .map_err(db(operation))?;
                Ok(epoch_outcome(rows))
            })
        })
        .await
    }

    /// Reports a failed delivery. A retryable failure puts the range back with `not_before = now() +
    /// backoff`, unless it has been leased `max_attempts` times; a permanent one fails it at once. The
    /// reason is kept in `last_error` either way. `delivered_to` is the offset up to which this attempt
    /// delivered before failing: the next attempt resumes there.
    pub async fn fail(&self, lease: &Lease, failure: &Failure) -> Result<FailOutcome> {
        const OP: &str = "fail";
        let (id, epoch) = (lease.id, lease.epoch.0);
        // Bounded: a destination answering a megabyte of HTML must not bloat the hot table.
        let reason: String = failure.reason.chars().take(2000).collect();
        let backoff = millis(failure.backoff);
        let (permanent, max_attempts) = (failure.permanent, failure.max_attempts);
        let delivered_to = failure
            .delivered_to
            .filter(|offset| lease.range.contains(*offset));
        self.run(OP, move |c| {
            Box::pin(async move {
                let statement = c
                    .prepare_cached(
                        "WITH failed AS (UPDATE courier_ranges
                         SET state = CASE WHEN $3 OR attempts >= $4 THEN 'failed' ELSE 'pending' END,
                             not_before = now() + $5::bigint * interval '1 millisecond',
                             last_error = $6, lease_owner = NULL, lease_expires_at = NULL, updated_at = now(),
                             resume_offset = COALESCE($7, resume_offset)
                         WHERE id = $1 AND epoch = $2 AND state = 'leased'
                         RETURNING state, route, partition, start_offset, end_offset, attempts, last_error),
                         -- \"What changed?\": a range failing for good is an event; a retry is not.
                         changed AS (
                         INSERT INTO courier_changes (kind, route, summary)
                         SELECT 'range.failed', route,
                                format('range [%s, %s) of partition %s failed after %s attempt(s): %s',
                                       start_offset, end_offset, partition, attempts, left(last_error, 300))
                         FROM failed WHERE state = 'failed')
                         SELECT state FROM failed",
                    )
                    .await
                    .map_err(db(OP))?;
                let row = c
                    .query_opt(&statement, &[&id, &epoch, &permanent, &max_attempts, &backoff, &reason, &delivered_to])
                    .await
                    .map_err(db(OP))?;
                Ok(match row.map(|r| r.get::<_, String>(0)) {
                    None => FailOutcome::Fenced,
                    Some(state) if state == "failed" => FailOutcome::Failed,
                    Some(_) => FailOutcome::Retrying,
                })
            })
        })
        .await
    }

    /// Puts failed ranges of a route back to `pending` (attempts reset), audited in `courier_replays`.
    /// The watermark does not move: the ranges are redelivered below it.
    pub async fn replay_failed(
        &self,
        route: &str,
        filter: &ReplayFilter,
        audit: &ReplayAudit,
    ) -> Result<ReplayOutcome> {
        const OP: &str = "replay failed ranges";
        let route = route.to_owned();
        let filter = filter.clone();
        let audit = audit.clone();
        self.run(OP, move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(db(OP))?;
                let rows = tx
                    .query(
                        "SELECT id, partition, start_offset, end_offset FROM courier_ranges
                         WHERE route = $1 AND state = 'failed'
                           AND ($2::int IS NULL OR partition = $2)
                           AND ($3::text IS NULL OR last_error ILIKE '%' || $3 || '%')
                         ORDER BY partition, start_offset
                         FOR UPDATE",
                        &[&route, &filter.partition, &filter.error_contains],
                    )
                    .await
                    .map_err(db(OP))?;
                let mut outcome = ReplayOutcome::default();
                let mut ids = Vec::with_capacity(rows.len());
                for row in &rows {
                    ids.push(row.get::<_, i64>(0));
                    let range = OffsetRange::new(row.get(2), row.get(3)).map_err(|e| invalid(OP, e.to_string()))?;
                    outcome.ranges.push((row.get(1), range));
                }
                if audit.dry_run || ids.is_empty() {
                    return Ok(outcome);
                }
                let replay_id = insert_audit(&tx, &route, filter.partition, None, ids.len(), &audit).await?;
                tx.execute(
                    "UPDATE courier_ranges SET state = 'pending', attempts = 0, not_before = now(), replay_id = $2,
                            updated_at = now()
                     WHERE id = ANY($1)",
                    &[&ids, &replay_id],
                )
                .await
                .map_err(db(OP))?;
                tx.commit().await.map_err(db(OP))?;
                outcome.replay_id = Some(replay_id);
                Ok(outcome)
            })
        })
        .await
    }

    /// Queues any already-planned window `[start, end)` of a partition for delivery again, even if it was
    /// delivered, as replay ranges of `range_size` offsets. Refuses a window beyond the frontier (not
    /// planned yet: it will be delivered anyway), naming the valid window.
    pub async fn replay_window(
        &self,
        route: &str,
        partition: Partition,
        window: OffsetRange,
        range_size: u32,
        audit: &ReplayAudit,
    ) -> Result<ReplayOutcome> {
        const OP: &str = "replay window";
        let route = route.to_owned();
        let audit = audit.clone();
        self.run(OP, move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(db(OP))?;
                let row = tx
                    .query_opt(
                        "SELECT frontier FROM courier_partitions WHERE route = $1 AND partition = $2",
                        &[&route, &partition],
                    )
                    .await
                    .map_err(db(OP))?
                    .ok_or_else(|| {
                        invalid(OP, format!("route {route:?} has no partition {partition}; `courier status` lists them"))
                    })?;
                let frontier: i64 = row.get(0);
                if window.end() > frontier {
                    return Err(invalid(
                        OP,
                        format!(
                            "window {window} of route {route:?} partition {partition} reaches past what has been planned \
                             (offsets below {frontier}); replay a window inside [0, {frontier}), or wait: newer offsets \
                             are delivered anyway"
                        ),
                    ));
                }
                let ranges = carve(window.start(), window.end(), range_size, usize::MAX, true);
                let outcome_ranges: Vec<(Partition, OffsetRange)> = ranges.iter().map(|r| (partition, *r)).collect();
                if audit.dry_run {
                    return Ok(ReplayOutcome { replay_id: None, ranges: outcome_ranges });
                }
                let replay_id = insert_audit(&tx, &route, Some(partition), Some(window), ranges.len(), &audit).await?;
                let starts: Vec<i64> = ranges.iter().map(OffsetRange::start).collect();
                let ends: Vec<i64> = ranges.iter().map(OffsetRange::end).collect();
                tx.execute(
                    "INSERT INTO courier_ranges (route, partition, start_offset, end_offset, kind, replay_id)
                     SELECT $1, $2, s, e, 'replay', $5 FROM unnest($3::bigint[], $4::bigint[]) AS t (s, e)",
                    &[&route, &partition, &starts, &ends, &replay_id],
                )
                .await
                .map_err(db(OP))?;
                tx.commit().await.map_err(db(OP))?;
                Ok(ReplayOutcome { replay_id: Some(replay_id), ranges: outcome_ranges })
            })
        })
        .await
    }

    /// Records a worker process (who runs what version since when) or refreshes its heartbeat.
    pub async fn heartbeat(
        &self,
        worker_id: &str,
        host: &str,
        pid: u32,
        version: &str,
    ) -> Result<()> {
        const OP: &str = "worker heartbeat";
        let (id, host, version) = (worker_id.to_owned(), host.to_owned(), version.to_owned());
        let pid = i32::try_from(pid).unwrap_or(i32::MAX);
        self.run(OP, move |c| {
            Box::pin(async move {
                c.execute(
                    "INSERT INTO courier_workers (id, host, pid, version) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), stopped_at = NULL",
                    &[&id, &host, &pid, &version],
                )
                .await
                .map_err(db(OP))?;
                Ok(())
            })
        })
        .await
    }

    /// Marks a worker as stopped after a graceful drain.
    pub async fn worker_stopped(&self, worker_id: &str) -> Result<()> {
        const OP: &str = "worker stopped";
        let id = worker_id.to_owned();
        self.run(OP, move |c| {
            Box::pin(async move {
                c.execute(
                    "UPDATE courier_workers SET stopped_at = now() WHERE id = $1",
                    &[&id],
                )
                .await
                .map_err(db(OP))?;
                Ok(())
            })
        })
        .await
    }

    /// Asks every worker to hold off `destination` for `wait` (a `Retry-After`). Never shortens a wait
    /// already recorded.
    pub async fn defer_destination(
        &self,
        destination: &str,
        wait: Duration,
        reason: &str,
    ) -> Result<()> {
        const OP: &str = "defer destination";
        let (name, reason, wait) = (destination.to_owned(), reason.to_owned(), millis(wait));
        self.run(OP, move |c| {
            Box::pin(async move {
                // The `changed` row only when the destination was not holding anyone off already: a
                // transition, not every 429 of every worker. (`held` reads the snapshot before the upsert.)
                c.execute(
                    "WITH held AS (
                         SELECT 1 FROM courier_destinations WHERE name = $1 AND not_before > now()),
                     deferred AS (
                         INSERT INTO courier_destinations (name, not_before, reason)
                         VALUES ($1, now() + $2::bigint * interval '1 millisecond', $3)
                         ON CONFLICT (name) DO UPDATE
                         SET not_before = GREATEST(courier_destinations.not_before, EXCLUDED.not_before),
                             reason = EXCLUDED.reason, updated_at = now()),
                     changed AS (
                         INSERT INTO courier_changes (kind, destination, summary)
                         SELECT 'destination.retry_after', $1::text,
                                format('destination %s asked every worker to wait %s: %s', $1::text,
                                       ($2::bigint * interval '1 millisecond')::text, $3::text)
                         WHERE NOT EXISTS (SELECT 1 FROM held))
                     SELECT 1",
                    &[&name, &wait, &reason],
                )
                .await
                .map_err(db(OP))?;
                Ok(())
            })
        })
        .await
    }
}

pub(crate) async fn insert_audit(
    tx: &deadpool_postgres::Transaction<'_>,
    route: &str,
    partition: Option<Partition>,
    window: Option<OffsetRange>,
    ranges: usize,
    audit: &ReplayAudit,
) -> Result<i64> {
    let ranges = i32::try_from(ranges).unwrap_or(i32::MAX);
    let row = tx
        .query_one(
            "INSERT INTO courier_replays (route, partition, start_offset, end_offset, ranges, requested_by, reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            &[
                &route,
                &partition,
                &window.map(|w| w.start()),
                &window.map(|w| w.end()),
                &ranges,
                &audit.requested_by,
                &audit.reason,
            ],
        )
        .await
        .map_err(db("record replay"))?;
    let id: i64 = row.get(0);
    let scope = match (partition, window) {
        (Some(p), Some(w)) => format!("partition {p} offsets {w}"),
        (Some(p), None) => format!("partition {p}"),
        _ => "every partition".to_owned(),
    };
    let change = crate::changes::Change::new(
        crate::changes::Kind::Replay,
        format!(
            "replay {id} of route {route} ({scope}): {ranges} range(s) queued; reason: {}",
            audit.reason
        ),
    )
    .route(route)
    .actor(&audit.requested_by);
    crate::changes::insert(tx, &change).await?;
    Ok(id)
}

/// `(partition, offset)` pairs as the two arrays an `unnest` takes; a negative offset is refused.
pub(crate) fn partition_offsets(
    operation: &'static str,
    pairs: &[(Partition, Offset)],
) -> Result<(Vec<i32>, Vec<i64>)> {
    if let Some((partition, offset)) = pairs.iter().find(|(_, o)| *o < 0) {
        return Err(invalid(
            operation,
            format!("partition {partition}: initial offset {offset} is negative"),
        ));
    }
    Ok(pairs.iter().copied().unzip())
}

/// A `(partition, initial_offset, frontier, watermark, expired_leases)` row.
/// The `picked AS (...)` part of a lease statement: the ranges a worker may claim, oldest first across
/// every requested route, locked, skipping rows another worker is claiming right now. Parameters: $1
/// routes, $2 limit, $5 kind, $6 ordered routes.
///
/// The statement walks `courier_ranges_workable` (kind, id) in id order and stops after `limit` eligible
/// rows; after locking a row PostgreSQL re-checks these conditions against its latest version, so a
/// range claimed or settled meanwhile is skipped. For an ordered route a range is eligible only when no
/// lower live range of its partition is unsettled in this statement's snapshot: a range settled after the
/// snapshot only delays its successor to the next call, never lets two run at once.
///
/// A paused route's ranges are never picked (`courier pause`): the paused routes are read once per
/// statement (an index holds only them), so every worker honours a pause at its next lease call.
fn lease_candidates(also: &str) -> String {
    format!(
        "picked AS (
             SELECT r.id FROM courier_ranges r
             WHERE r.kind = $5 AND r.state IN ('pending', 'leased') AND r.route = ANY($1::text[])
               AND r.route <> ALL(ARRAY(SELECT name FROM courier_routes WHERE paused))
               AND ((r.state = 'pending' AND r.not_before <= now())
                    OR (r.state = 'leased' AND r.lease_expires_at <= now()))
               AND (r.kind = 'replay' OR r.route <> ALL($6::text[]) OR NOT EXISTS (
                        SELECT 1 FROM courier_ranges h
                        WHERE h.route = r.route AND h.partition = r.partition AND h.kind = 'live'
                          AND h.state IN ('pending', 'leased') AND h.start_offset < r.start_offset))
               {also}
             ORDER BY r.id LIMIT $2
             FOR UPDATE OF r SKIP LOCKED)"
    )
}

/// Claims the picked ranges: epoch + 1, owner $3, expiry in $4 milliseconds.
const LEASE_UPDATE: &str = "courier_ranges r
     SET state = 'leased', epoch = r.epoch + 1, lease_owner = $3,
         lease_expires_at = now() + $4::bigint * interval '1 millisecond',
         attempts = r.attempts + 1, updated_at = now()
     FROM picked WHERE r.id = picked.id
     RETURNING r.id, r.partition, r.start_offset, r.end_offset, r.epoch, r.attempts, r.kind,
               COALESCE(r.resume_offset, r.start_offset), r.route, r.replay_id";

fn lease_params(request: &LeaseRequest) -> (i64, i64, &'static str) {
    (
        i64::try_from(request.max_ranges).unwrap_or(i64::MAX),
        millis(request.ttl),
        request.kind.as_str(),
    )
}

pub(crate) fn progress_from_row(row: &Row) -> PartitionProgress {
    PartitionProgress {
        partition: row.get(0),
        initial_offset: row.get(1),
        frontier: row.get(2),
        watermark: row.get(3),
        expired_leases: row.get(4),
    }
}

/// A lease from the columns of [`LEASE_UPDATE`]'s `RETURNING`, starting at column `first`.
fn lease_from_row(row: &Row, first: usize) -> Result<Lease> {
    let range = OffsetRange::new(row.get(first + 2), row.get(first + 3))
        .map_err(|e| invalid("lease", e.to_string()))?;
    let kind: String = row.get(first + 6);
    Ok(Lease {
        id: row.get(first),
        route: row.get(first + 8),
        partition: row.get(first + 1),
        range,
        epoch: Epoch(row.get(first + 4)),
        attempts: row.get(first + 5),
        kind: kind.parse().map_err(|e: String| invalid("lease", e))?,
        resume_from: row.get(first + 7),
        replay_id: row.get(first + 9),
    })
}
