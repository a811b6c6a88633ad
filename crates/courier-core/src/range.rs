//! Offsets, partitions and the half-open offset range: the unit of leasing, delivery, checkpointing,
//! failure and replay.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A Kafka offset. Kafka offsets are non-negative `i64`s; PostgreSQL stores them as `bigint`.
pub type Offset = i64;

/// A Kafka partition number (`int` in PostgreSQL, `i32` in librdkafka).
pub type Partition = i32;

/// The store's identifier of one range row.
pub type RangeId = i64;

/// Why a range could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("offset range [{start}, {end}) is empty or reversed: the end must be greater than the start")]
    EmptyOrReversed { start: Offset, end: Offset },
    #[error("offset {0} is negative: Kafka offsets start at 0")]
    Negative(Offset),
}

/// A half-open interval `[start, end)` of offsets of one partition.
///
/// Invariant: `0 <= start < end`. The range is the same whatever the log holds inside it: compaction and
/// transaction markers leave gaps, but a range is still delivered and settled as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OffsetRange {
    start: Offset,
    end: Offset,
}

impl OffsetRange {
    /// Builds `[start, end)`, refusing empty, reversed or negative ranges.
    pub fn new(start: Offset, end: Offset) -> Result<Self, RangeError> {
        if start < 0 {
            return Err(RangeError::Negative(start));
        }
        if end <= start {
            return Err(RangeError::EmptyOrReversed { start, end });
        }
        Ok(Self { start, end })
    }

    /// The first offset in the range.
    pub fn start(&self) -> Offset {
        self.start
    }

    /// The first offset after the range.
    pub fn end(&self) -> Offset {
        self.end
    }

    /// How many offsets the range spans (not how many messages the log still holds in it).
    pub fn len(&self) -> u64 {
        // `end > start >= 0`, so the difference is positive and fits.
        (self.end - self.start) as u64
    }

    /// Always false: an `OffsetRange` is never empty. Present for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, offset: Offset) -> bool {
        self.start <= offset && offset < self.end
    }

    pub fn overlaps(&self, other: &OffsetRange) -> bool {
        self.start < other.end && other.start < self.end
    }
}

impl fmt::Display for OffsetRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", self.start, self.end)
    }
}

/// Where a range is in its life.
///
/// ```text
///            lease                 checkpoint (epoch matches)
/// pending ---------> leased ---------------------------------> done
///    ^                 |  \  fail: permanent, or attempts >= max
///    |  fail: retry    |   `-----------------------------------> failed
///    `-----------------'                                           |
///    ^      lease expired: leased again by anyone, epoch + 1       |
///    `--------------------------- replay --------------------------'
/// ```
/// `done` and `failed` are *settled*: the watermark moves past them. A failed range is never dropped
/// silently: it stays listed, alerted on and replayable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RangeState {
    Pending,
    Leased,
    Done,
    Failed,
}

impl RangeState {
    pub const ALL: [RangeState; 4] = [Self::Pending, Self::Leased, Self::Done, Self::Failed];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Leased => "leased",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }

    /// Settled ranges no longer hold the watermark back.
    pub fn is_settled(&self) -> bool {
        matches!(self, Self::Done | Self::Failed)
    }
}

impl fmt::Display for RangeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RangeState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown range state {s:?}"))
    }
}

/// Live ranges tile a partition from its initial offset to its frontier and drive the watermark.
/// Replay ranges are extra deliveries of a window an operator asked for; they never move the watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RangeKind {
    Live,
    Replay,
}

impl RangeKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Replay => "replay",
        }
    }
}

impl FromStr for RangeKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "live" => Ok(Self::Live),
            "replay" => Ok(Self::Replay),
            other => Err(format!("unknown range kind {other:?}")),
        }
    }
}

/// How strictly a route keeps Kafka's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// Any number of ranges of a partition in flight at once: fastest, order across ranges not kept.
    #[default]
    None,
    /// At most one range per partition in flight, leased in offset order: a destination sees each
    /// partition's messages in offset order (a retried range still repeats, never reorders).
    Partition,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_empty_reversed_and_negative_ranges() {
        assert_eq!(
            OffsetRange::new(5, 5),
            Err(RangeError::EmptyOrReversed { start: 5, end: 5 })
        );
        assert_eq!(
            OffsetRange::new(6, 5),
            Err(RangeError::EmptyOrReversed { start: 6, end: 5 })
        );
        assert_eq!(OffsetRange::new(-1, 5), Err(RangeError::Negative(-1)));
    }

    #[test]
    fn half_open_membership_and_overlap() {
        let a = OffsetRange::new(0, 10).expect("valid");
        let b = OffsetRange::new(10, 20).expect("valid");
        assert!(a.contains(9) && !a.contains(10));
        assert!(!a.overlaps(&b));
        assert!(a.overlaps(&OffsetRange::new(9, 11).expect("valid")));
        assert_eq!(a.len(), 10);
        assert_eq!(a.to_string(), "[0, 10)");
    }

    #[test]
    fn state_names_round_trip() {
        for state in RangeState::ALL {
            assert_eq!(state.as_str().parse::<RangeState>(), Ok(state));
        }
        assert!("gone".parse::<RangeState>().is_err());
    }
}
