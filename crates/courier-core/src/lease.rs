//! The lease a worker holds on a range, and what the store answers when the worker reports back.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::range::{Offset, OffsetRange, Partition, RangeId, RangeKind};

/// A fencing token. Every lease of a range increments it, so a worker whose lease expired and was taken
/// by another carries a stale epoch: its checkpoint, renewal or failure changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Epoch(pub i64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "epoch {}", self.0)
    }
}

/// A worker's time-limited claim on one range.
///
/// Holding a `Lease` means: deliver `range` of `partition` for `route`, then report back with `id` and
/// `epoch`. The store honours the report only while the epoch is still the range's current one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: RangeId,
    pub route: String,
    pub partition: Partition,
    pub range: OffsetRange,
    pub epoch: Epoch,
    /// How many times this range has been leased, this lease included.
    pub attempts: i32,
    pub kind: RangeKind,
    /// Where delivery resumes: `range.start()`, or past the batches an earlier attempt delivered before
    /// it failed.
    pub resume_from: Offset,
    /// The operator's replay (`courier replay`, a row of `courier_replays`) this range is delivered
    /// again for; `None` for a range's first delivery and its retries. Sent to destinations as
    /// `X-Courier-Replay` so they can tell a deliberate replay from a retry.
    pub replay_id: Option<i64>,
}

impl fmt::Display for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "route {:?} partition {} range {} ({})",
            self.route, self.partition, self.range, self.epoch
        )
    }
}

/// What the store answers to a checkpoint, renewal or failure report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointOutcome {
    /// The report was applied.
    Applied,
    /// The lease was lost (expired and taken by another worker, or the range was replayed): nothing
    /// changed. Count it, log it, never retry it.
    Fenced,
}
