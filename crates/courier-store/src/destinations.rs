//! A destination's shared `Retry-After`: one worker records that a destination asked everyone to hold
//! off, and every worker reads how long it must still wait (planning rounds read it once a second).

use std::time::Duration;

use crate::error::Result;
use crate::pool::{millis, Store};
use crate::query::params;

impl Store {
    /// Asks every worker to hold off `destination` for `wait` (a `Retry-After`). Never shortens a wait
    /// already recorded.
    pub async fn defer_destination(
        &self,
        destination: &str,
        wait: Duration,
        reason: &str,
    ) -> Result<()> {
        // The `changed` row only when the destination was not holding anyone off already: a transition,
        // not every 429 of every worker. (`held` reads the snapshot before the upsert.)
        self.execute(
            "defer destination",
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
            params![destination.to_owned(), millis(wait), reason.to_owned()],
        )
        .await
        .map(drop)
    }

    /// How long every worker must still hold off each of `destinations` that asked for it, in one
    /// statement (a worker reads them every second).
    pub async fn destination_waits(
        &self,
        destinations: &[String],
    ) -> Result<Vec<(String, Duration)>> {
        let rows = self
            .query(
                "read destination waits",
                "SELECT name, (EXTRACT(EPOCH FROM (not_before - now())) * 1000)::bigint
                 FROM courier_destinations WHERE name = ANY($1::text[]) AND not_before > now()",
                params![destinations.to_vec()],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| {
                (
                    row.get(0),
                    Duration::from_millis(u64::try_from(row.get::<_, i64>(1)).unwrap_or(0)),
                )
            })
            .collect())
    }
}
