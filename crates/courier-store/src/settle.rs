//! Settling a leased range: done (checkpoint), given back (release) or failed (fail), each a
//! compare-and-set on the lease's epoch, so a worker whose lease was taken over changes nothing.
//!
//! Settling several ranges together with the next lease is one statement of [`crate::lease`]; settling
//! with messages set aside (quarantined, lost) is [`crate::quarantine`]'s.

use std::time::Duration;

use courier_core::{CheckpointOutcome, Lease};

use crate::error::Result;
use crate::pool::{millis, Store};
use crate::protocol::{FailOutcome, Failure};
use crate::query::params;

/// `Applied` when the compare-and-set on the epoch changed the range's row, `Fenced` when it did not.
pub(crate) fn epoch_outcome(rows: u64) -> CheckpointOutcome {
    if rows == 1 {
        CheckpointOutcome::Applied
    } else {
        CheckpointOutcome::Fenced
    }
}

impl Store {
    /// Marks a leased range done: a compare-and-set on the epoch. `Fenced` means the lease was lost and
    /// another worker has (or will have) delivered the range: count it, never retry it.
    pub async fn checkpoint(&self, lease: &Lease) -> Result<CheckpointOutcome> {
        self.execute(
            "checkpoint",
            "UPDATE courier_ranges SET state = 'done', lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
             WHERE id = $1 AND epoch = $2 AND state = 'leased'",
            params![lease.id, lease.epoch.0],
        )
        .await
        .map(epoch_outcome)
    }

    /// Gives a lease back without an attempt counted: at once for a graceful shutdown, or after `delay`
    /// when the destination asked every worker to hold off (a `Retry-After`, an open circuit).
    pub async fn release(&self, lease: &Lease, delay: Duration) -> Result<CheckpointOutcome> {
        self.execute(
            "release",
            "UPDATE courier_ranges SET state = 'pending', lease_owner = NULL, lease_expires_at = NULL,
                    attempts = GREATEST(attempts - 1, 0),
                    not_before = now() + $3::bigint * interval '1 millisecond', updated_at = now()
             WHERE id = $1 AND epoch = $2 AND state = 'leased'",
            params![lease.id, lease.epoch.0, millis(delay)],
        )
        .await
        .map(epoch_outcome)
    }

    /// Reports a failed delivery. A retryable failure puts the range back with `not_before = now() +
    /// backoff`, unless it has been leased `max_attempts` times; a permanent one fails it at once. The
    /// reason is kept in `last_error` either way. `delivered_to` is the offset up to which this attempt
    /// delivered before failing: the next attempt resumes there.
    pub async fn fail(&self, lease: &Lease, failure: &Failure) -> Result<FailOutcome> {
        // Bounded: a destination answering a megabyte of HTML must not bloat the hot table.
        let reason: String = failure.reason.chars().take(2000).collect();
        let delivered_to = failure
            .delivered_to
            .filter(|offset| lease.range.contains(*offset));
        let row = self
            .query_opt(
                "fail",
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
                params![
                    lease.id,
                    lease.epoch.0,
                    failure.permanent,
                    failure.max_attempts,
                    millis(failure.backoff),
                    reason,
                    delivered_to,
                ],
            )
            .await?;
        Ok(match row.map(|r| r.get::<_, String>(0)) {
            None => FailOutcome::Fenced,
            Some(state) if state == "failed" => FailOutcome::Failed,
            Some(_) => FailOutcome::Retrying,
        })
    }
}
