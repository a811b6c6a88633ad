//! Replays: failed ranges put back to `pending`, or any planned window of a partition queued again as
//! replay ranges, each audited in `courier_replays` and recorded in the changes timeline.
//!
//! Replay ranges are leased separately from live work ([`crate::LeaseRequest::kind`]) so they run on
//! their own budget; replaying quarantined offsets is [`crate::quarantine`]'s.

use courier_core::{carve, OffsetRange, Partition};

use crate::error::Result;
use crate::pool::Store;
use crate::protocol::{ReplayAudit, ReplayFilter, ReplayOutcome};
use crate::query::{db, invalid};

impl Store {
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
        self.transaction(OP, move |tx| {
            Box::pin(async move {
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
                    .await?;
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
                let replay_id = insert_audit(tx, &route, filter.partition, None, ids.len(), &audit).await?;
                tx.execute(
                    "UPDATE courier_ranges SET state = 'pending', attempts = 0, not_before = now(), replay_id = $2,
                            updated_at = now()
                     WHERE id = ANY($1)",
                    &[&ids, &replay_id],
                )
                .await?;
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
        self.transaction(OP, move |tx| {
            Box::pin(async move {
                let row = tx
                    .query_opt(
                        "SELECT frontier FROM courier_partitions WHERE route = $1 AND partition = $2",
                        &[&route, &partition],
                    )
                    .await?
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
                let replay_id = insert_audit(tx, &route, Some(partition), Some(window), ranges.len(), &audit).await?;
                let starts: Vec<i64> = ranges.iter().map(OffsetRange::start).collect();
                let ends: Vec<i64> = ranges.iter().map(OffsetRange::end).collect();
                tx.execute(
                    "INSERT INTO courier_ranges (route, partition, start_offset, end_offset, kind, replay_id)
                     SELECT $1, $2, s, e, 'replay', $5 FROM unnest($3::bigint[], $4::bigint[]) AS t (s, e)",
                    &[&route, &partition, &starts, &ends, &replay_id],
                )
                .await?;
                Ok(ReplayOutcome { replay_id: Some(replay_id), ranges: outcome_ranges })
            })
        })
        .await
    }
}

/// Records a replay in `courier_replays` and the changes timeline, inside the replay's transaction.
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
