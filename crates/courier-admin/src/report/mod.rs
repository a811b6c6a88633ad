//! The status report behind `courier status` (text and `--json`) and the status page: one judgement of
//! "does anything need a human?", made in one place.
//!
//! This module owns the report's data ([`Report`], [`PartitionView`], [`StatusConfig`]); the work is
//! split along its seams:
//! - `gather`: [`gather`] reads the store's snapshot, then asks Kafka (watermarks, the age of each
//!   partition's oldest undelivered message), every call bounded by [`StatusConfig::timeout`];
//! - `attention`: what needs a human, as data ([`Code`] with its runbook, [`Attention`]);
//! - `judge`: every condition that needs a human, most fundamental first;
//! - `render`: an item as a line, the report as the JSON of `courier status --json` ([`Report::to_json`],
//!   versioned by [`SCHEMA_VERSION`]), the time formats every view shares.

use std::collections::BTreeSet;
use std::time::Duration;

use courier_store::{Snapshot, WorkerRow};
use serde::Deserialize;

mod attention;
mod gather;
mod judge;
mod render;
#[cfg(test)]
mod tests;

pub use attention::{Attention, Code};
pub use gather::{connect_reader, gather, Inputs};
pub use render::{rfc3339, seconds, since_text};

/// The version of `courier status --json`'s layout. 2: `schema_version`, `ok`, `routes`, `retrying`,
/// per-partition `failed_offsets`, and `attention` as objects (code, route, partition, destination,
/// since, runbook, message) instead of strings.
pub const SCHEMA_VERSION: u32 = 2;

/// The `[status]` section: when lag and message age need attention, and how long `status` waits.
/// `courier status --max-lag/--max-age/--timeout` override it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusConfig {
    /// Undelivered messages of a route (all its partitions) above which it needs attention.
    #[serde(default = "default_max_lag")]
    pub max_lag: i64,
    /// Age of a partition's oldest undelivered message above which it needs attention.
    #[serde(default = "default_max_age", with = "humantime_serde")]
    pub max_age: Duration,
    /// Bound on each Kafka call `status` (and the status page) makes, and on waiting for the store to
    /// answer at all: a service that does not answer costs `status` seconds, not minutes.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_max_lag() -> i64 {
    100_000
}

fn default_max_age() -> Duration {
    Duration::from_secs(60)
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

impl Default for StatusConfig {
    fn default() -> Self {
        Self {
            max_lag: default_max_lag(),
            max_age: default_max_age(),
            timeout: default_timeout(),
        }
    }
}

impl StatusConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_lag < 0 {
            return Err(format!(
                "status.max_lag is {}: write a number of messages, e.g. max_lag = 100000",
                self.max_lag
            ));
        }
        if self.timeout.is_zero() {
            return Err(
                "status.timeout is 0s: write how long status waits for Kafka and the store, e.g. timeout = \"5s\""
                    .into(),
            );
        }
        Ok(())
    }
}

/// A route as configured (what should be running).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfiguredRoute {
    pub name: String,
    pub topic: String,
    pub destination: String,
}

/// One partition of one route: the store's progress, Kafka's watermarks, what failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionView {
    pub route: String,
    pub topic: String,
    pub destination: String,
    pub partition: i32,
    pub watermark: i64,
    pub frontier: i64,
    pub unsettled_ranges: i64,
    /// Settled offsets at or above the watermark (see `PartitionRow::settled_ahead`): not lag.
    pub settled_ahead: i64,
    /// Kafka's low and high watermarks, when Kafka answered.
    pub kafka: Option<(i64, i64)>,
    /// Offsets of failed ranges: settled without being delivered, not part of lag.
    pub failed_offsets: i64,
    pub failed_ranges: i64,
    /// Age of the oldest message not settled yet, when it could be read.
    pub oldest_age: Option<Duration>,
    /// Offsets below Kafka's log start courier has neither delivered nor recorded as lost: deleted
    /// (retention, DeleteRecords) before delivery, whether a worker has reached them yet or not.
    pub deleted_before_delivery: Option<i64>,
}

impl PartitionView {
    /// Messages Kafka holds that are not settled yet (Kafka's high watermark minus courier's watermark or
    /// Kafka's log start, whichever is higher, minus what is settled above the watermark already), when
    /// Kafka answered. Failed offsets and offsets Kafka deleted are never part of it: they are reported
    /// apart.
    pub fn lag(&self) -> Option<i64> {
        self.kafka.map(|(low, high)| {
            // Settled offsets are only known as a count above the watermark: those below the log start
            // are taken to come first, so lag is never under-reported when the log start passed the
            // watermark.
            let deleted_span = (low - self.watermark).max(0);
            let settled_held = (self.settled_ahead - deleted_span).max(0);
            (high - self.watermark.max(low) - settled_held).max(0)
        })
    }
}

/// What `status` and the status page show.
#[derive(Debug, Clone)]
pub struct Report {
    pub snapshot: Snapshot,
    pub partitions: Vec<PartitionView>,
    pub configured: Vec<ConfiguredRoute>,
    /// Why Kafka's side is missing or partial, if it is.
    pub kafka_error: Option<String>,
    /// Routes an operator paused (`courier pause`).
    pub paused: Vec<courier_store::PausedRoute>,
    /// A worker whose heartbeat is older than this is not live.
    pub live_within: Duration,
    pub attention: Vec<Attention>,
}

impl Report {
    /// Nothing needs attention.
    pub fn ok(&self) -> bool {
        self.attention.is_empty()
    }

    pub fn now_unix(&self) -> i64 {
        self.snapshot.now_unix
    }

    pub fn worker_is_live(&self, worker: &WorkerRow) -> bool {
        !worker.stopped
            && worker.heartbeat_secs_ago
                <= i64::try_from(self.live_within.as_secs()).unwrap_or(i64::MAX)
    }

    /// Every route: recorded ones, then configured ones not recorded yet.
    pub fn route_names(&self) -> Vec<String> {
        let mut names: BTreeSet<String> = self
            .snapshot
            .routes
            .iter()
            .map(|r| r.name.clone())
            .collect();
        names.extend(self.configured.iter().map(|r| r.name.clone()));
        names.into_iter().collect()
    }

    /// Lag of `route` over its partitions; `None` when Kafka's side is unknown for any of them.
    pub fn route_lag(&self, route: &str) -> Option<i64> {
        self.partitions
            .iter()
            .filter(|p| p.route == route)
            .map(PartitionView::lag)
            .sum()
    }

    /// When the earliest failed range of `route` failed.
    pub(super) fn failed_since(&self, route: &str) -> Option<i64> {
        self.snapshot
            .failed_partitions
            .iter()
            .filter(|f| f.route == route)
            .map(|f| f.oldest_unix)
            .min()
    }
}
