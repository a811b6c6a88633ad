//! Losses: offsets Kafka deleted (retention, `DeleteRecords`) before courier delivered them.
//!
//! Owns `courier_losses`: recording a loss with its range's checkpoint (in the transaction of
//! [`Store::checkpoint_setting_aside`], fenced by the lease's epoch), reading them for `courier status`,
//! and counting the offsets courier has not settled yet that lie below Kafka's log start, so that status
//! flags them before any worker trips over them.

use courier_core::{Offset, OffsetRange, Partition};

use crate::error::Result;
use crate::pool::Store;
use crate::query::{db, invalid, params};

/// At most this many losses are listed one by one by `courier status`; the summary counts them all.
pub const LOSSES_LISTED: i64 = 50;

/// Offsets of a leased range Kafka had deleted before they were delivered, to record with the range's
/// checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    pub offsets: OffsetRange,
    /// Why, in words: who deleted them, where the log starts now.
    pub reason: String,
}

/// A recorded loss, as `courier status` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LossRow {
    pub route: String,
    pub partition: Partition,
    pub offsets: OffsetRange,
    pub reason: String,
    pub replay_id: Option<i64>,
    pub age_secs: i64,
}

/// The losses of one route recorded in the last [`RECENT_LOSSES_HOURS`] hours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LossSummary {
    pub route: String,
    pub losses: i64,
    pub offsets: i64,
}

/// Losses recorded within this many hours are an attention item of `courier status`; older ones are
/// still listed.
pub const RECENT_LOSSES_HOURS: i64 = 24;

/// Where courier stands on a partition against Kafka's log start, for `courier status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedBeforeDelivery {
    pub route: String,
    pub partition: Partition,
    /// Kafka's log start offset, as asked.
    pub log_start: Offset,
    /// Offsets below `log_start` not delivered nor recorded as lost yet: in unsettled live ranges (from
    /// where they resume), in failed ranges, or not planned yet.
    pub offsets: i64,
}

impl Store {
    /// Recorded losses, of one route or all, newest first, at most `limit`.
    pub async fn losses(&self, route: Option<&str>, limit: i64) -> Result<Vec<LossRow>> {
        const OP: &str = "read losses";
        let rows = self
            .query(
                OP,
                "SELECT route, partition, start_offset, end_offset, reason, replay_id,
                        EXTRACT(EPOCH FROM (now() - recorded_at))::bigint
                 FROM courier_losses WHERE ($1::text IS NULL OR route = $1)
                 ORDER BY recorded_at DESC, route, partition, start_offset LIMIT $2",
                params![route.map(str::to_owned), limit],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let offsets =
                    OffsetRange::new(r.get(2), r.get(3)).map_err(|e| invalid(OP, e.to_string()))?;
                Ok(LossRow {
                    route: r.get(0),
                    partition: r.get(1),
                    offsets,
                    reason: r.get(4),
                    replay_id: r.get(5),
                    age_secs: r.get(6),
                })
            })
            .collect()
    }

    /// For each `(route, partition, log start)`, how many offsets below the log start courier has
    /// neither delivered nor recorded as lost: deleted before delivery, whether a worker has come to
    /// them yet or not. Partitions the store does not know are left out.
    pub async fn deleted_before_delivery(
        &self,
        log_starts: &[(String, Partition, Offset)],
    ) -> Result<Vec<DeletedBeforeDelivery>> {
        const OP: &str = "count offsets deleted before delivery";
        let routes: Vec<String> = log_starts.iter().map(|(r, _, _)| r.clone()).collect();
        let partitions: Vec<i32> = log_starts.iter().map(|(_, p, _)| *p).collect();
        let lows: Vec<i64> = log_starts.iter().map(|(_, _, low)| *low).collect();
        // Not planned yet: [frontier, low). Planned: the unsettled or failed live ranges' offsets below
        // low, from where a range resumes (an earlier attempt delivered the part before).
        let rows = self
            .query(
                OP,
                "SELECT t.route, t.partition, t.low,
                        GREATEST(0, t.low - p.frontier)
                        + COALESCE((SELECT sum(LEAST(r.end_offset, t.low) - COALESCE(r.resume_offset, r.start_offset))
                                    FROM courier_ranges r
                                    WHERE r.route = t.route AND r.partition = t.partition AND r.kind = 'live'
                                      AND r.state IN ('pending', 'leased', 'failed')
                                      AND COALESCE(r.resume_offset, r.start_offset) < t.low), 0)::bigint
                 FROM unnest($1::text[], $2::int[], $3::bigint[]) AS t (route, partition, low)
                 JOIN courier_partitions p ON p.route = t.route AND p.partition = t.partition
                 ORDER BY t.route, t.partition",
                params![routes, partitions, lows],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| DeletedBeforeDelivery {
                route: r.get(0),
                partition: r.get(1),
                log_start: r.get(2),
                offsets: r.get(3),
            })
            .collect())
    }
}

/// Inserts `losses` of `route`/`partition` within a checkpoint's transaction.
pub(crate) async fn insert(
    tx: &deadpool_postgres::Transaction<'_>,
    route: &str,
    partition: Partition,
    replay_id: Option<i64>,
    losses: &[Loss],
) -> Result<()> {
    const OP: &str = "record losses";
    if losses.is_empty() {
        return Ok(());
    }
    let starts: Vec<i64> = losses.iter().map(|l| l.offsets.start()).collect();
    let ends: Vec<i64> = losses.iter().map(|l| l.offsets.end()).collect();
    let reasons: Vec<String> = losses
        .iter()
        .map(|l| l.reason.chars().take(2000).collect())
        .collect();
    tx.execute(
        "INSERT INTO courier_losses (route, partition, start_offset, end_offset, reason, replay_id)
         SELECT $1, $2, s, e, r, $6 FROM unnest($3::bigint[], $4::bigint[], $5::text[]) AS l (s, e, r)
         ON CONFLICT (route, partition, start_offset, end_offset) DO NOTHING",
        &[&route, &partition, &starts, &ends, &reasons, &replay_id],
    )
    .await
    .map_err(db(OP))?;
    Ok(())
}
