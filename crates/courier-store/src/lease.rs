//! Claiming and keeping ranges: the lease statement (which ranges a worker may claim, and the claim that
//! bumps their epoch), alone or settling the ranges just delivered in the same statement, and renewing a
//! lease held.
//!
//! The lease statement lives only here ([`lease_candidates`] and [`LEASE_UPDATE`]), so a change to what a
//! worker may claim is made in one place for every statement that claims.

use std::time::Duration;

use courier_core::{CheckpointOutcome, Epoch, Lease, OffsetRange};
use tokio_postgres::Row;

use crate::error::Result;
use crate::pool::{millis, Store};
use crate::protocol::LeaseRequest;
use crate::query::{invalid, params};
use crate::settle::epoch_outcome;

impl Store {
    /// Claims up to `max_ranges` ranges of any of the requested routes, the oldest first, then more of
    /// its partition, then the oldest of the rest ([`lease_candidates`]): pending ones whose backoff has
    /// passed, and leased ones whose lease expired. Each claim bumps the epoch. Rows another
    /// worker is claiming right now are skipped, not waited on. For ordered routes only the lowest
    /// unsettled live range of each partition is eligible, so a partition is delivered in offset order.
    pub async fn lease(&self, request: &LeaseRequest) -> Result<Vec<Lease>> {
        let (limit, ttl, kind) = lease_params(request);
        let rows = self
            .query(
                "lease",
                format!("WITH {} UPDATE {LEASE_UPDATE}", lease_candidates("")),
                params![
                    request.routes.clone(),
                    limit,
                    request.owner.clone(),
                    ttl,
                    kind,
                    request.ordered.clone(),
                ],
            )
            .await?;
        rows.iter().map(|row| lease_from_row(row, 0)).collect()
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
        let ids: Vec<i64> = done.iter().map(|lease| lease.id).collect();
        let epochs: Vec<i64> = done.iter().map(|lease| lease.epoch.0).collect();
        let (routes, ordered, owner, (limit, ttl, kind)) = match next {
            Some(request) => (
                request.routes.clone(),
                request.ordered.clone(),
                request.owner.clone(),
                lease_params(request),
            ),
            // Nothing to lease: no route to look in.
            None => (Vec::new(), Vec::new(), String::new(), (0, 0, "live")),
        };
        let rows = self
            .query(
                "checkpoint and lease",
                format!(
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
                ),
                params![routes, limit, owner, ttl, kind, ordered, ids.clone(), epochs.clone()],
            )
            .await?;
        // By (id, epoch): the same range can be in `done` twice, under an expired lease and the one that
        // replaced it, and only the current one is applied.
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
            .map(|(id, epoch)| epoch_outcome(u64::from(checkpointed.contains(&(*id, *epoch)))))
            .collect();
        let leases = rows
            .iter()
            .filter(|row| row.get::<_, Option<i64>>(2).is_some())
            .map(|row| lease_from_row(row, 2))
            .collect::<Result<Vec<_>>>()?;
        Ok((outcomes, leases))
    }

    /// Extends a lease still held under `lease.epoch`.
    pub async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<CheckpointOutcome> {
        self.execute(
            "renew",
            "UPDATE courier_ranges SET lease_expires_at = now() + $3::bigint * interval '1 millisecond', updated_at = now()
             WHERE id = $1 AND epoch = $2 AND state = 'leased'",
            params![lease.id, lease.epoch.0, millis(ttl)],
        )
        .await
        .map(epoch_outcome)
    }
}

/// The `picked AS (...)` part of a lease statement (with the `anchor`, `near` and `rest` it is made of):
/// the ranges a worker may claim, locked, skipping rows another worker is claiming right now.
/// Parameters: $1 routes, $2 limit, $5 kind, $6 ordered routes.
///
/// Which ranges: the oldest eligible range across every requested route (the *anchor*: fairness, no
/// range waits behind ranges carved after it for longer than one call), then the oldest eligible ranges
/// of the anchor's partition, then the oldest eligible of the rest, up to the limit. Why the
/// anchor's partition first (partition affinity): taken in plain id order, a hand of many small ranges
/// was a slice of every partition (the planner carves a few ranges per partition per round), so the
/// tasks of a worker read every partition at once at different places, out of order; a read that starts
/// inside a record batch the broker sends whole from its start, and a consumer re-assigned behind
/// another throws away what it prefetched. Measured from the broker's side (`make bench`, kafka-bytes,
/// 8 tasks): 1.10-1.40x the bytes of one reader at ranges of 100 and 0.99-1.40x at 1,000 in plain id
/// order; 1.02-1.15x and 0.99-1.15x with the anchor's partition first and the worker's tasks leasing one
/// after the other (`courier-worker`'s idle gate).
///
/// How: `anchor`, `near` and `rest` each walk `courier_ranges_workable` (kind, id) in id order and stop
/// after the rows they need; `near` and `rest` start at the anchor, since every eligible row below it was
/// locked by another worker when the anchor was found (walking those again doubled the statement's cost
/// under contention). `near` is not ordered by offset: on a table not analyzed yet PostgreSQL planned that
/// as a sort of the whole partition (36-48 ms per lease at 5,000 ranges per partition), and within a
/// partition live ranges are carved in offset order anyway. The update finds the picked rows by primary
/// key (`= ANY(ARRAY(..))`; joined to `picked`, it scanned the table). `EXPLAIN ANALYZE`, generic plan, at
/// 60,000 and 80,000 workable ranges, with and without statistics: 1-5 ms per lease.
///
/// After locking a row PostgreSQL re-checks these conditions against its latest version, so a range
/// claimed or settled meanwhile is skipped. For an ordered route a range is eligible only when no lower
/// live range of its partition is unsettled in this statement's snapshot: a range settled after the
/// snapshot only delays its successor to the next call, never lets two run at once.
///
/// A paused route's ranges are never picked (`courier pause`): the paused routes are read once per
/// statement (an index holds only them) and taken out of the requested routes, so every worker honours a
/// pause at its next lease call.
///
/// Written so that PostgreSQL's estimates always choose that walk, whatever its statistics say. Two
/// earlier forms did not: `r.route <> ALL(ARRAY(SELECT .. paused))` was estimated to keep one row, so the
/// planner read every workable row and sorted them (91-148 ms per lease at 60,000 workable ranges,
/// `EXPLAIN ANALYZE`; 1-3 ms now); and `NOT EXISTS (.. h.start_offset < r.start_offset)` ran as a
/// sequential scan per candidate of an ordered route (26 ms each there), where `min()` over
/// `courier_ranges_heads` is one index probe. Same rows either way: a live unsettled range is the lowest
/// of its partition exactly when its start is at most the lowest unsettled start.
fn lease_candidates(also: &str) -> String {
    let eligible = format!(
        "r.kind = $5 AND r.state IN ('pending', 'leased')
               AND r.route = ANY(ARRAY(SELECT requested FROM unnest($1::text[]) AS requested
                                       WHERE requested NOT IN (SELECT name FROM courier_routes WHERE paused)))
               AND ((r.state = 'pending' AND r.not_before <= now())
                    OR (r.state = 'leased' AND r.lease_expires_at <= now()))
               AND (r.kind = 'replay' OR r.route <> ALL($6::text[]) OR r.start_offset <= (
                        SELECT min(h.start_offset) FROM courier_ranges h
                        WHERE h.route = r.route AND h.partition = r.partition AND h.kind = 'live'
                          AND h.state IN ('pending', 'leased')))
               {also}"
    );
    format!(
        "anchor AS (
             SELECT r.id, r.route, r.partition FROM courier_ranges r
             WHERE {eligible}
             ORDER BY r.id LIMIT 1
             FOR UPDATE OF r SKIP LOCKED),
         near AS (
             SELECT r.id FROM courier_ranges r
             WHERE r.id >= (SELECT id FROM anchor)
               AND r.route = (SELECT route FROM anchor) AND r.partition = (SELECT partition FROM anchor)
               AND {eligible}
             ORDER BY r.id LIMIT $2
             FOR UPDATE OF r SKIP LOCKED),
         rest AS (
             SELECT r.id FROM courier_ranges r
             WHERE r.id > (SELECT id FROM anchor) AND {eligible} AND r.id <> ALL(ARRAY(SELECT id FROM near))
             ORDER BY r.id LIMIT greatest($2 - (SELECT count(*) FROM near), 0)
             FOR UPDATE OF r SKIP LOCKED),
         picked AS (SELECT id FROM near UNION ALL SELECT id FROM rest)"
    )
}

/// Claims the picked ranges: epoch + 1, owner $3, expiry in $4 milliseconds.
const LEASE_UPDATE: &str = "courier_ranges r
     SET state = 'leased', epoch = r.epoch + 1, lease_owner = $3,
         lease_expires_at = now() + $4::bigint * interval '1 millisecond',
         attempts = r.attempts + 1, updated_at = now()
     WHERE r.id = ANY(ARRAY(SELECT id FROM picked))
     RETURNING r.id, r.partition, r.start_offset, r.end_offset, r.epoch, r.attempts, r.kind,
               COALESCE(r.resume_offset, r.start_offset), r.route, r.replay_id";

/// `$2` limit, `$4` TTL in milliseconds and `$5` kind of a lease statement.
fn lease_params(request: &LeaseRequest) -> (i64, i64, &'static str) {
    (
        i64::try_from(request.max_ranges).unwrap_or(i64::MAX),
        millis(request.ttl),
        request.kind.as_str(),
    )
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
