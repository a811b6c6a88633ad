//! The lease protocol's vocabulary: what a worker asks the store for and what it is told (routes,
//! lease requests, failures, replays and their outcomes).
//!
//! Each statement of the protocol is one short transaction (most are one statement). None waits on Kafka
//! or a destination: a worker leases, lets go of the connection, does its network I/O, and comes back with
//! the lease's epoch. Every report (renew, checkpoint, fail, release) is a compare-and-set on that epoch,
//! so a worker whose lease expired and was taken over changes nothing: it is *fenced*.
//!
//! The statements live by concern: claiming and keeping ranges in [`crate::lease`], settling them in
//! [`crate::settle`], replays in [`crate::replay`], workers in [`crate::workers`], destinations' shared
//! `Retry-After` in [`crate::destinations`]. Carving ranges, advancing watermarks and compaction are the
//! planner's, in [`crate::planning`].

use std::time::Duration;

use courier_core::{Offset, OffsetRange, Ordering, Partition, RangeKind};

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
