//! Evidence: the ranges as the store holds them, read for tests, chaos runs and benches ("what did
//! this worker hold when it died?", "which ranges failed, and why?", "is anything left to deliver?").
//!
//! Owns [`RangeRecord`] (one `courier_ranges` row, typed), [`RangeCounts`] and the read-only queries
//! returning them, so nothing outside this crate reads `courier_ranges` with its own SQL. Read-only;
//! what an operator sees is `status`'s, what workers lease is `lease`'s.

use courier_core::{Partition, RangeId, RangeKind, RangeState};
use tokio_postgres::Row;

use crate::error::Result;
use crate::pool::Store;
use crate::query::{invalid, params};

/// One range, as `courier_ranges` holds it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeRecord {
    pub id: RangeId,
    pub route: String,
    pub partition: Partition,
    pub start_offset: i64,
    pub end_offset: i64,
    pub kind: RangeKind,
    pub state: RangeState,
    /// The fencing epoch: how many times the range was leased.
    pub epoch: i64,
    pub attempts: i32,
    /// Where a retry resumes, after an attempt that delivered the offsets below it and then failed.
    pub resume_offset: Option<i64>,
    pub last_error: Option<String>,
    /// Set while leased.
    pub lease_owner: Option<String>,
    /// Set when an operator replayed it (`courier_replays` holds who and why).
    pub replay_id: Option<i64>,
}

impl RangeRecord {
    /// Whether `offset` lies in `[start_offset, end_offset)`.
    pub fn contains(&self, offset: i64) -> bool {
        (self.start_offset..self.end_offset).contains(&offset)
    }
}

/// How many ranges are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RangeCounts {
    pub pending: i64,
    pub leased: i64,
    pub done: i64,
    pub failed: i64,
}

impl RangeCounts {
    /// Ranges not delivered: pending, leased or failed.
    pub fn not_done(&self) -> i64 {
        self.pending + self.leased + self.failed
    }
}

/// The columns of a [`RangeRecord`], then `$where`.
macro_rules! select_ranges {
    ($where:literal) => {
        concat!(
            "SELECT id, route, partition, start_offset, end_offset, kind, state, epoch, attempts,
                    resume_offset, last_error, lease_owner, replay_id
             FROM courier_ranges ",
            $where,
            " ORDER BY route, partition, start_offset, id"
        )
    };
}

impl Store {
    /// Every range of `route`, live and replay, by partition and start offset.
    pub async fn ranges(&self, route: &str) -> Result<Vec<RangeRecord>> {
        const OP: &str = "read ranges";
        let rows = self
            .query(
                OP,
                select_ranges!("WHERE route = $1"),
                params![route.to_owned()],
            )
            .await?;
        records(OP, &rows)
    }

    /// The failed ranges of one route, or of every route.
    pub async fn failed_ranges(&self, route: Option<&str>) -> Result<Vec<RangeRecord>> {
        const OP: &str = "read failed ranges";
        let rows = self
            .query(
                OP,
                select_ranges!("WHERE state = 'failed' AND ($1::text IS NULL OR route = $1)"),
                params![route.map(str::to_owned)],
            )
            .await?;
        records(OP, &rows)
    }

    /// The ranges with these ids still in the store (settled ranges may have been compacted away).
    pub async fn ranges_by_id(&self, ids: &[RangeId]) -> Result<Vec<RangeRecord>> {
        const OP: &str = "read ranges by id";
        let rows = self
            .query(
                OP,
                select_ranges!("WHERE id = ANY($1)"),
                params![ids.to_vec()],
            )
            .await?;
        records(OP, &rows)
    }

    /// The ranges leased now by owners matching the SQL `LIKE` pattern `owner_like` (a worker's id, or
    /// `%-<pid>-%` for a worker process).
    pub async fn leases_held_by(&self, owner_like: &str) -> Result<Vec<RangeRecord>> {
        const OP: &str = "read leases held";
        let rows = self
            .query(
                OP,
                select_ranges!("WHERE state = 'leased' AND lease_owner LIKE $1"),
                params![owner_like.to_owned()],
            )
            .await?;
        records(OP, &rows)
    }

    /// How many ranges of one route, or of every route, are in each state.
    pub async fn range_counts(&self, route: Option<&str>) -> Result<RangeCounts> {
        let rows = self
            .query(
                "count ranges",
                "SELECT state, count(*) FROM courier_ranges
                 WHERE $1::text IS NULL OR route = $1 GROUP BY state",
                params![route.map(str::to_owned)],
            )
            .await?;
        let mut counts = RangeCounts::default();
        for row in &rows {
            let count: i64 = row.get(1);
            match parse_state("count ranges", row.get(0))? {
                RangeState::Pending => counts.pending = count,
                RangeState::Leased => counts.leased = count,
                RangeState::Done => counts.done = count,
                RangeState::Failed => counts.failed = count,
            }
        }
        Ok(counts)
    }
}

fn records(operation: &'static str, rows: &[Row]) -> Result<Vec<RangeRecord>> {
    rows.iter()
        .map(|r| {
            Ok(RangeRecord {
                id: r.get(0),
                route: r.get(1),
                partition: r.get(2),
                start_offset: r.get(3),
                end_offset: r.get(4),
                kind: r
                    .get::<_, &str>(5)
                    .parse()
                    .map_err(|e| invalid(operation, e))?,
                state: parse_state(operation, r.get(6))?,
                epoch: r.get(7),
                attempts: r.get(8),
                resume_offset: r.get(9),
                last_error: r.get(10),
                lease_owner: r.get(11),
                replay_id: r.get(12),
            })
        })
        .collect()
}

fn parse_state(operation: &'static str, text: &str) -> Result<RangeState> {
    text.parse().map_err(|e| invalid(operation, e))
}
