//! Quarantine: messages a destination refused on their own, set aside so their range could settle.
//!
//! Owns `courier_quarantine`, and the checkpoint that sets things aside
//! ([`Store::checkpoint_setting_aside`]): the range settled together with its quarantined messages and its
//! losses (offsets Kafka deleted before delivery, [`crate::losses`]), in one transaction fenced by the
//! lease's epoch like [`Store::checkpoint`]. Also reads the quarantine for `courier status`, and replays
//! quarantined messages as replay ranges of one offset each.

use courier_core::{CheckpointOutcome, Lease, Offset, OffsetRange, Partition};

use crate::error::Result;
use crate::losses::{self, Loss};
use crate::pool::Store;
use crate::protocol::{ReplayAudit, ReplayOutcome};
use crate::query::{invalid, params};
use crate::replay::insert_audit;

/// One message refused by the destination, to record with its range's checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub offset: Offset,
    /// The destination's HTTP status, when it answered one.
    pub status: Option<u16>,
    /// The destination's answer (status and the start of its body).
    pub reason: String,
    /// The dead-letter topic the message was written to, if any.
    pub dead_letter_topic: Option<String>,
}

/// A quarantined message not replayed yet, as `courier status` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineRow {
    pub route: String,
    pub partition: Partition,
    pub offset: Offset,
    pub status: Option<i32>,
    pub reason: String,
    pub dead_letter_topic: Option<String>,
    /// More than 1: a replay of it was refused again.
    pub times: i32,
    pub age_secs: i64,
}

/// Which quarantined messages to replay.
#[derive(Debug, Clone, Default)]
pub struct QuarantineFilter {
    pub partition: Option<Partition>,
    /// Only this offset (with `partition`).
    pub offset: Option<Offset>,
}

impl Store {
    /// Marks a leased range done and records the messages of it that were quarantined, in one
    /// transaction: either both happen or neither. Fenced by the epoch exactly like
    /// [`Store::checkpoint`]: a `Fenced` outcome records nothing. A message quarantined before (a
    /// replay refused again) is counted again and waits for an operator once more.
    pub async fn checkpoint_with_quarantine(
        &self,
        lease: &Lease,
        quarantined: &[Quarantined],
    ) -> Result<CheckpointOutcome> {
        self.checkpoint_setting_aside(lease, quarantined, &[]).await
    }

    /// Marks a leased range done and records, in one transaction, the messages of it that were
    /// quarantined and the offsets of it Kafka had deleted before delivery (`losses`): all or nothing.
    /// Fenced by the epoch exactly like [`Store::checkpoint`]: a `Fenced` outcome records nothing (the
    /// range's new owner finds the same and records it). A loss already recorded (a replay of its range)
    /// is recorded once.
    pub async fn checkpoint_setting_aside(
        &self,
        lease: &Lease,
        quarantined: &[Quarantined],
        losses: &[Loss],
    ) -> Result<CheckpointOutcome> {
        const OP: &str = "checkpoint setting aside";
        if let Some(outside) = quarantined.iter().find(|q| !lease.range.contains(q.offset)) {
            return Err(invalid(
                OP,
                format!(
                    "offset {} quarantined with range {} of route {:?} lies outside it",
                    outside.offset, lease.range, lease.route
                ),
            ));
        }
        if let Some(outside) = losses.iter().find(|l| {
            l.offsets.start() < lease.range.start() || l.offsets.end() > lease.range.end()
        }) {
            return Err(invalid(
                OP,
                format!(
                    "offsets {} lost with range {} of route {:?} lie outside it",
                    outside.offsets, lease.range, lease.route
                ),
            ));
        }
        let losses = losses.to_vec();
        let (id, epoch, route, partition, replay_id) = (
            lease.id,
            lease.epoch.0,
            lease.route.clone(),
            lease.partition,
            lease.replay_id,
        );
        let offsets: Vec<i64> = quarantined.iter().map(|q| q.offset).collect();
        let statuses: Vec<Option<i32>> = quarantined
            .iter()
            .map(|q| q.status.map(i32::from))
            .collect();
        // Bounded like a range's last_error: a destination answering a megabyte of HTML must not bloat it.
        let reasons: Vec<String> = quarantined
            .iter()
            .map(|q| q.reason.chars().take(2000).collect())
            .collect();
        let topics: Vec<Option<String>> = quarantined
            .iter()
            .map(|q| q.dead_letter_topic.clone())
            .collect();
        // "What changed?": one event per range that quarantined something, never one per message, and
        // one per range that lost offsets.
        let lost_change = (!losses.is_empty()).then(|| {
            crate::changes::Change::new(
                crate::changes::Kind::RangeLost,
                format!(
                    "offsets {} of range {} of partition {} were deleted by Kafka before delivery: {}",
                    losses
                        .iter()
                        .map(|l| l.offsets.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    lease.range,
                    lease.partition,
                    losses[0].reason.chars().take(300).collect::<String>()
                ),
            )
            .route(&lease.route)
        });
        let change = (!quarantined.is_empty()).then(|| {
            crate::changes::Change::new(
                crate::changes::Kind::RangeQuarantined,
                format!(
                    "{} message(s) of range {} of partition {} quarantined (offsets {}); first answer: {}",
                    quarantined.len(),
                    lease.range,
                    lease.partition,
                    quarantined
                        .iter()
                        .take(5)
                        .map(|q| q.offset.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                        + if quarantined.len() > 5 { ", ..." } else { "" },
                    quarantined[0].reason.chars().take(300).collect::<String>()
                ),
            )
            .route(&lease.route)
        });
        self.transaction(OP, move |tx| {
            Box::pin(async move {
                let settled = tx
                    .execute(
                        "UPDATE courier_ranges SET state = 'done', lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
                         WHERE id = $1 AND epoch = $2 AND state = 'leased'",
                        &[&id, &epoch],
                    )
                    .await?;
                if settled != 1 {
                    // Fenced: nothing changed, so the commit changes nothing either.
                    return Ok(CheckpointOutcome::Fenced);
                }
                losses::insert(tx, &route, partition, replay_id, &losses).await?;
                if !offsets.is_empty() {
                tx.execute(
                    "INSERT INTO courier_quarantine (route, partition, message_offset, status, reason, dead_letter_topic)
                     SELECT $1, $2, o, s, r, t FROM unnest($3::bigint[], $4::int[], $5::text[], $6::text[]) AS q (o, s, r, t)
                     ON CONFLICT (route, partition, message_offset) DO UPDATE
                     SET status = EXCLUDED.status, reason = EXCLUDED.reason, dead_letter_topic = EXCLUDED.dead_letter_topic,
                         times = courier_quarantine.times + 1, quarantined_at = now(), replay_id = NULL, replayed_at = NULL",
                    &[&route, &partition, &offsets, &statuses, &reasons, &topics],
                )
                .await?;
                }
                for change in change.iter().chain(&lost_change) {
                    crate::changes::insert(tx, change).await?;
                }
                Ok(CheckpointOutcome::Applied)
            })
        })
        .await
    }

    /// Quarantined messages not replayed yet, of one route or all, oldest offsets first, at most `limit`.
    pub async fn quarantined(&self, route: Option<&str>, limit: i64) -> Result<Vec<QuarantineRow>> {
        let rows = self
            .query(
                "read quarantine",
                "SELECT route, partition, message_offset, status, reason, dead_letter_topic, times,
                        EXTRACT(EPOCH FROM (now() - quarantined_at))::bigint
                 FROM courier_quarantine
                 WHERE replayed_at IS NULL AND ($1::text IS NULL OR route = $1)
                 ORDER BY route, partition, message_offset LIMIT $2",
                params![route.map(str::to_owned), limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| QuarantineRow {
                route: r.get(0),
                partition: r.get(1),
                offset: r.get(2),
                status: r.get(3),
                reason: r.get(4),
                dead_letter_topic: r.get(5),
                times: r.get(6),
                age_secs: r.get(7),
            })
            .collect())
    }

    /// Queues quarantined messages of a route for delivery again, each as a replay range
    /// `[offset, offset + 1)`, and marks them replayed; audited in `courier_replays`. A message whose
    /// replay is refused again is quarantined again by the worker.
    pub async fn replay_quarantined(
        &self,
        route: &str,
        filter: &QuarantineFilter,
        audit: &ReplayAudit,
    ) -> Result<ReplayOutcome> {
        const OP: &str = "replay quarantined messages";
        let route = route.to_owned();
        let filter = filter.clone();
        let audit = audit.clone();
        self.transaction(OP, move |tx| {
            Box::pin(async move {
                let rows = tx
                    .query(
                        "SELECT partition, message_offset FROM courier_quarantine
                         WHERE route = $1 AND replayed_at IS NULL
                           AND ($2::int IS NULL OR partition = $2)
                           AND ($3::bigint IS NULL OR message_offset = $3)
                         ORDER BY partition, message_offset
                         FOR UPDATE",
                        &[&route, &filter.partition, &filter.offset],
                    )
                    .await?;
                let mut outcome = ReplayOutcome::default();
                for row in &rows {
                    let offset: i64 = row.get(1);
                    let range = OffsetRange::new(offset, offset + 1).map_err(|e| invalid(OP, e.to_string()))?;
                    outcome.ranges.push((row.get(0), range));
                }
                if audit.dry_run || outcome.ranges.is_empty() {
                    return Ok(outcome);
                }
                // One message named: audited as the window [o, o + 1), like `courier replay --from o --to o+1`.
                let window = match (filter.partition, outcome.ranges.as_slice()) {
                    (Some(_), [(_, only)]) if filter.offset.is_some() => Some(*only),
                    _ => None,
                };
                let replay_id =
                    insert_audit(tx, &route, filter.partition, window, outcome.ranges.len(), &audit).await?;
                let partitions: Vec<i32> = outcome.ranges.iter().map(|(p, _)| *p).collect();
                let offsets: Vec<i64> = outcome.ranges.iter().map(|(_, r)| r.start()).collect();
                tx.execute(
                    "INSERT INTO courier_ranges (route, partition, start_offset, end_offset, kind, replay_id)
                     SELECT $1, p, o, o + 1, 'replay', $4 FROM unnest($2::int[], $3::bigint[]) AS t (p, o)",
                    &[&route, &partitions, &offsets, &replay_id],
                )
                .await?;
                tx.execute(
                    "UPDATE courier_quarantine SET replay_id = $4, replayed_at = now()
                     FROM unnest($2::int[], $3::bigint[]) AS t (p, o)
                     WHERE route = $1 AND partition = t.p AND message_offset = t.o",
                    &[&route, &partitions, &offsets, &replay_id],
                )
                .await?;
                outcome.replay_id = Some(replay_id);
                Ok(outcome)
            })
        })
        .await
    }
}
