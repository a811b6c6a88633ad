//! The status report behind `courier status` (text and `--json`) and the status page: one judgement of
//! "does anything need a human?", made in one place.
//!
//! Owns:
//! - gathering ([`gather`]): the store's [`Snapshot`], then Kafka's watermarks and the age of each
//!   partition's oldest undelivered message. Every Kafka call is bounded by
//!   [`StatusConfig::timeout`] and all of them together by three times that, and the first one
//!   that goes unanswered ends the asking: a broker that does not answer costs seconds, not minutes.
//! - judging ([`Attention`]): every condition that needs a human, with what, since when and which
//!   runbook. The report is OK only when every configured route has a live worker, nothing failed or is
//!   quarantined or being retried, Kafka answered, and lag and the oldest message's age are under their
//!   bounds. Failed offsets are counted apart from lag (the watermark moves past failed ranges).
//! - the JSON of `courier status --json` ([`Report::to_json`], versioned by [`SCHEMA_VERSION`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use courier_core::OffsetRange;
use courier_kafka::{KafkaConfig, RangeReader};
use courier_store::status::{PartitionRow, Snapshot, WorkerRow};
use courier_store::{Store, StoreError};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;

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

/// What a condition is, as a stable machine-readable code, with its runbook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Code {
    /// A configured route no worker has ever recorded: nothing delivers it.
    RouteNotStarted,
    /// A recorded route no live worker serves.
    NoLiveWorker,
    /// Kafka did not answer: lag and message ages are unknown.
    KafkaUnreachable,
    /// Ranges failed for good: offsets settled without being delivered.
    FailedRanges,
    /// Messages a destination refused on their own, set aside.
    QuarantinedMessages,
    /// Ranges waiting to be retried after a failed attempt: a destination (or Kafka) failing now.
    RetryingRanges,
    /// A destination asked every worker to wait (`Retry-After`).
    DestinationDeferred,
    /// A route's lag is above `status.max_lag`.
    Lag,
    /// A partition's oldest undelivered message is older than `status.max_age`.
    OldestMessageAge,
    /// Kafka's high watermark is below courier's frontier: the topic was recreated?
    WatermarkBelowFrontier,
    /// Offsets below Kafka's log start that courier never delivered: deleted before delivery.
    DeletedBeforeDelivery,
    /// Losses recorded in the last day (offsets Kafka deleted before delivery, found by a worker).
    OffsetsLost,
    /// An operator paused the route (`courier pause`): its lag grows on purpose, and a pause forgotten
    /// after an incident is an outage nobody is paged for.
    RoutePaused,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::RouteNotStarted => "route-not-started",
            Code::NoLiveWorker => "no-live-worker",
            Code::KafkaUnreachable => "kafka-unreachable",
            Code::FailedRanges => "failed-ranges",
            Code::QuarantinedMessages => "quarantined-messages",
            Code::RetryingRanges => "retrying-ranges",
            Code::DestinationDeferred => "destination-deferred",
            Code::Lag => "lag",
            Code::OldestMessageAge => "oldest-message-age",
            Code::WatermarkBelowFrontier => "watermark-below-frontier",
            Code::DeletedBeforeDelivery => "deleted-before-delivery",
            Code::OffsetsLost => "offsets-lost",
            Code::RoutePaused => "route-paused",
        }
    }

    /// The runbook page, relative to the repository root.
    pub fn runbook(self) -> &'static str {
        match self {
            Code::RouteNotStarted | Code::NoLiveWorker => "docs/runbooks/no-live-worker.md",
            Code::KafkaUnreachable => "docs/runbooks/kafka-unavailable.md",
            Code::FailedRanges => "docs/runbooks/failed-ranges.md",
            Code::QuarantinedMessages => "docs/runbooks/quarantined-messages.md",
            Code::RetryingRanges => "docs/runbooks/retrying-ranges.md",
            Code::DestinationDeferred => "docs/runbooks/destination-paused.md",
            Code::DeletedBeforeDelivery | Code::OffsetsLost => "docs/runbooks/retention.md",
            Code::Lag
            | Code::OldestMessageAge
            | Code::WatermarkBelowFrontier
            | Code::RoutePaused => "docs/runbooks/lag.md",
        }
    }
}

/// One condition that needs a human.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attention {
    pub code: Code,
    pub route: Option<String>,
    pub partition: Option<i32>,
    pub destination: Option<String>,
    /// When it started (Unix seconds, the store's clock), when known.
    pub since_unix: Option<i64>,
    /// What is wrong and what to do, without the "since" and the runbook (see [`Attention::line`]).
    pub message: String,
}

impl Attention {
    fn new(code: Code, message: String) -> Self {
        Self {
            code,
            route: None,
            partition: None,
            destination: None,
            since_unix: None,
            message: without_runbook(message),
        }
    }

    fn route(mut self, route: &str) -> Self {
        self.route = Some(route.to_owned());
        self
    }

    fn partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    fn destination(mut self, destination: &str) -> Self {
        self.destination = Some(destination.to_owned());
        self
    }

    fn since(mut self, since_unix: Option<i64>) -> Self {
        self.since_unix = since_unix;
        self
    }

    pub fn runbook(&self) -> &'static str {
        self.code.runbook()
    }

    /// One line for a terminal or a log: what, since when, which runbook.
    pub fn line(&self, now_unix: i64) -> String {
        let since = self.since_unix.map_or(String::new(), |since| {
            format!(" Since {}.", since_text(since, now_unix))
        });
        format!(
            "{}{since} Runbook: {}",
            self.message.trim_end_matches('.').to_owned() + ".",
            self.runbook()
        )
    }

    pub fn to_json(&self) -> Value {
        json!({
            "code": self.code.as_str(),
            "route": self.route,
            "partition": self.partition,
            "destination": self.destination,
            "since": self.since_unix.map(rfc3339),
            "since_unix": self.since_unix,
            "runbook": self.runbook(),
            "message": self.message,
        })
    }
}

/// `message` without a closing "Runbook: docs/runbooks/x.md" (an error's own words often end so): an
/// attention item carries its runbook apart, and says it once.
fn without_runbook(message: String) -> String {
    match message.rfind(" Runbook: ") {
        Some(at) if !message[at + " Runbook: ".len()..].trim().contains(' ') => {
            message[..at].trim_end().to_owned()
        }
        _ => message,
    }
}

/// `2026-11-30T08:41:02Z (3m 12s ago)`.
pub fn since_text(since_unix: i64, now_unix: i64) -> String {
    let ago = u64::try_from(now_unix.saturating_sub(since_unix)).unwrap_or(0);
    format!(
        "{} ({} ago)",
        rfc3339(since_unix),
        humantime::format_duration(Duration::from_secs(ago))
    )
}

/// A Unix time as RFC 3339, UTC, to the second.
pub fn rfc3339(unix: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

/// A duration rounded to the second for people: `3m 12s`.
pub fn seconds(duration: Duration) -> String {
    humantime::format_duration(Duration::from_secs(duration.as_secs())).to_string()
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

/// What [`gather`] needs besides the store and Kafka.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// The routes that should be running (each needs a live worker).
    pub configured: &'a [ConfiguredRoute],
    pub status: &'a StatusConfig,
    /// `worker.heartbeat_every`: a worker missing three heartbeats is not live.
    pub heartbeat_every: Duration,
    /// For messages: where Kafka is.
    pub brokers: &'a str,
}

/// A range reader for status reads: its own consumers (so it never waits behind a worker's reads of a
/// partition), every call bounded by `timeout`. `Err` says why Kafka cannot be asked.
pub async fn connect_reader(
    config: &KafkaConfig,
    timeout: Duration,
) -> Result<RangeReader, String> {
    let config = config.clone().with_read_timeout(timeout);
    match tokio::time::timeout(timeout, RangeReader::connect(config.clone())).await {
        Ok(Ok(reader)) => Ok(reader),
        Ok(Err(error)) => Err(format!(
            "cannot set up a Kafka client for {}: {error}",
            config.brokers
        )),
        Err(_) => Err(format!(
            "Kafka at {} did not answer within {} (setting up a client)",
            config.brokers,
            seconds_or_ms(timeout)
        )),
    }
}

fn seconds_or_ms(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// Reads the snapshot, asks Kafka (`kafka`: a reader from [`connect_reader`], or why there is none) and
/// judges. Fails only when the store cannot be read.
pub async fn gather(
    store: &Store,
    kafka: Result<&RangeReader, String>,
    inputs: &Inputs<'_>,
) -> Result<Report, StoreError> {
    let snapshot = store.snapshot().await?;
    let paused = store.paused_routes().await?;
    let facts = match kafka {
        Ok(reader) => {
            ask_kafka(
                reader,
                &snapshot.partitions,
                inputs.status.timeout,
                inputs.brokers,
            )
            .await
        }
        Err(error) => KafkaFacts {
            error: Some(error),
            ..KafkaFacts::default()
        },
    };
    // Courier's progress against Kafka's log start, in one store query: offsets deleted before delivery
    // are flagged now, not when a worker reaches them.
    let log_starts: Vec<(String, i32, i64)> = snapshot
        .partitions
        .iter()
        .filter_map(|p| {
            let (low, _) = facts.marks.get(&(p.topic.clone(), p.partition))?;
            Some((p.route.clone(), p.partition, *low))
        })
        .collect();
    let deleted: HashMap<(String, i32), i64> = if log_starts.is_empty() {
        HashMap::new()
    } else {
        store
            .deleted_before_delivery(&log_starts)
            .await?
            .into_iter()
            .map(|d| ((d.route, d.partition), d.offsets))
            .collect()
    };
    let mut failed: HashMap<(&str, i32), (i64, i64)> = HashMap::new();
    for f in &snapshot.failed_partitions {
        failed.insert((f.route.as_str(), f.partition), (f.ranges, f.offsets));
    }
    let partitions: Vec<PartitionView> = snapshot
        .partitions
        .iter()
        .map(|p| {
            let (failed_ranges, failed_offsets) = failed
                .get(&(p.route.as_str(), p.partition))
                .copied()
                .unwrap_or_default();
            let key = (p.topic.clone(), p.partition);
            PartitionView {
                route: p.route.clone(),
                topic: p.topic.clone(),
                destination: p.destination.clone(),
                partition: p.partition,
                watermark: p.watermark,
                frontier: p.frontier,
                unsettled_ranges: p.unsettled_ranges,
                settled_ahead: p.settled_ahead,
                kafka: facts.marks.get(&key).copied(),
                failed_offsets,
                failed_ranges,
                oldest_age: facts.ages.get(&(key, p.first_unsettled)).copied(),
                deleted_before_delivery: deleted.get(&(p.route.clone(), p.partition)).copied(),
            }
        })
        .collect();
    let mut report = Report {
        snapshot,
        partitions,
        configured: inputs.configured.to_vec(),
        kafka_error: facts.error,
        paused,
        live_within: (inputs.heartbeat_every * 3).max(Duration::from_secs(1)),
        attention: Vec::new(),
    };
    report.attention = judge(&report, inputs.status);
    Ok(report)
}

/// What Kafka said, within its time budget.
#[derive(Debug, Default)]
struct KafkaFacts {
    /// (low, high) by (topic, partition).
    marks: HashMap<(String, i32), (i64, i64)>,
    /// Age of the first unsettled message, by ((topic, partition), its offset).
    ages: HashMap<((String, i32), i64), Duration>,
    error: Option<String>,
}

async fn ask_kafka(
    reader: &RangeReader,
    partitions: &[PartitionRow],
    timeout: Duration,
    brokers: &str,
) -> KafkaFacts {
    let mut facts = KafkaFacts::default();
    let deadline = Instant::now() + timeout * 3;
    let silent = |what: &str, after: Duration| {
        format!(
            "Kafka at {brokers} did not answer within {} ({what}): lag and message ages are unknown",
            seconds_or_ms(after)
        )
    };
    let topics: BTreeSet<&str> = partitions.iter().map(|p| p.topic.as_str()).collect();
    let mut errors: Vec<String> = Vec::new();
    for topic in topics {
        let bound = deadline
            .saturating_duration_since(Instant::now())
            .min(timeout);
        let what = format!("reading the watermarks of topic {topic:?}");
        match tokio::time::timeout(bound, reader.high_watermarks(topic)).await {
            Ok(Ok(marks)) => facts.marks.extend(
                marks
                    .into_iter()
                    .map(|m| ((topic.to_owned(), m.partition), (m.low, m.high))),
            ),
            Ok(Err(error)) if !error.is_retryable() => {
                // This topic's problem (it does not exist, say): the others may still answer.
                errors.push(format!("topic {topic:?}: {error}"));
            }
            Ok(Err(error)) => {
                errors.push(format!("{what}: {error}"));
                facts.error = Some(errors.join("; "));
                return facts;
            }
            Err(_) => {
                errors.push(silent(&what, bound));
                facts.error = Some(errors.join("; "));
                return facts;
            }
        }
    }
    // The oldest undelivered message of each partition behind: its first unsettled offset.
    for p in partitions {
        let key = (p.topic.clone(), p.partition);
        let Some((_, high)) = facts.marks.get(&key).copied() else {
            continue;
        };
        let first = p.first_unsettled;
        if high <= first {
            continue;
        }
        let Ok(range) = OffsetRange::new(first, first + 1) else {
            continue;
        };
        let bound = deadline
            .saturating_duration_since(Instant::now())
            .min(timeout);
        if bound.is_zero() {
            errors.push(format!(
                "the age of some partitions' oldest message is unknown: Kafka took longer than {} in all",
                seconds_or_ms(timeout * 3)
            ));
            break;
        }
        match tokio::time::timeout(bound, reader.read(&p.topic, p.partition, range)).await {
            Ok(Ok(messages)) => {
                let age = messages
                    .first()
                    .and_then(|m| m.timestamp_ms)
                    .and_then(|ms| u64::try_from(ms).ok())
                    .and_then(|ms| {
                        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
                        Some(now.saturating_sub(Duration::from_millis(ms)))
                    });
                if let Some(age) = age {
                    facts.ages.insert((key, first), age);
                }
            }
            // Deleted by retention, say: the age stays unknown; other partitions may answer.
            Ok(Err(_)) => {}
            Err(_) => {
                errors.push(silent(
                    &format!("reading topic {:?} partition {}", p.topic, p.partition),
                    bound,
                ));
                break;
            }
        }
    }
    if !errors.is_empty() {
        facts.error = Some(errors.join("; "));
    }
    facts
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

    pub fn to_json(&self) -> Value {
        let s = &self.snapshot;
        let routes: Vec<Value> = self
            .route_names()
            .iter()
            .map(|name| {
                let recorded = s.routes.iter().find(|r| &r.name == name);
                let configured = self.configured.iter().find(|r| &r.name == name);
                json!({
                    "name": name,
                    "topic": recorded.map(|r| &r.topic).or(configured.map(|r| &r.topic)),
                    "destination": recorded.map(|r| &r.destination).or(configured.map(|r| &r.destination)),
                    "configured": configured.is_some(),
                    "recorded": recorded.is_some(),
                    "planner": recorded.and_then(|r| r.planner.clone()),
                    "live": recorded.is_some_and(|r| r.planner.is_some()),
                    "unplanned_since": recorded.and_then(|r| r.unplanned_since_unix).map(rfc3339),
                    "lag": self.route_lag(name),
                    "failed_offsets": self.partitions.iter().filter(|p| &p.route == name).map(|p| p.failed_offsets).sum::<i64>(),
                    "quarantined": s.quarantine.iter().find(|q| &q.route == name).map_or(0, |q| q.messages),
                })
            })
            .collect();
        json!({
            "schema_version": SCHEMA_VERSION,
            "ok": self.ok(),
            "now": rfc3339(s.now_unix),
            "kafka": { "reachable": self.kafka_error.is_none(), "error": self.kafka_error },
            "routes": routes,
            "partitions": self.partitions.iter().map(|v| json!({
                "route": v.route, "topic": v.topic, "destination": v.destination, "partition": v.partition,
                "watermark": v.watermark, "frontier": v.frontier,
                "kafka_low_watermark": v.kafka.map(|(low, _)| low),
                "kafka_log_start": v.kafka.map(|(low, _)| low),
                "deleted_before_delivery": v.deleted_before_delivery,
                "kafka_high_watermark": v.kafka.map(|(_, high)| high),
                "lag": v.lag(),
                "failed_offsets": v.failed_offsets, "failed_ranges": v.failed_ranges,
                "unsettled_ranges": v.unsettled_ranges,
                "oldest_undelivered_age_seconds": v.oldest_age.map(|a| a.as_secs_f64()),
            })).collect::<Vec<_>>(),
            "leases": s.leases.iter().map(|l| json!({
                "route": l.route, "partition": l.partition, "start_offset": l.start_offset, "end_offset": l.end_offset,
                "owner": l.owner, "epoch": l.epoch, "expires_in_ms": l.expires_in_ms, "replay": l.replay,
            })).collect::<Vec<_>>(),
            "failed": s.failed.iter().map(|f| json!({
                "route": f.route, "ranges": f.ranges, "offsets": f.offsets, "newest_error": f.newest_error,
                "since": self.failed_since(&f.route).map(rfc3339),
            })).collect::<Vec<_>>(),
            "retrying": s.retrying.iter().map(|r| json!({
                "route": r.route, "destination": r.destination, "ranges": r.ranges, "offsets": r.offsets,
                "newest_error": r.newest_error, "since": rfc3339(r.oldest_unix),
            })).collect::<Vec<_>>(),
            "quarantine": s.quarantine.iter().map(|q| json!({
                "route": q.route, "messages": q.messages, "newest_reason": q.newest_reason,
                "since": rfc3339(q.oldest_unix),
            })).collect::<Vec<_>>(),
            "quarantined": s.quarantined.iter().map(|q| json!({
                "route": q.route, "partition": q.partition, "offset": q.offset, "status": q.status, "reason": q.reason,
                "times": q.times, "dead_letter_topic": q.dead_letter_topic, "age_secs": q.age_secs,
            })).collect::<Vec<_>>(),
            "workers": s.workers.iter().map(|w| json!({
                "id": w.id, "host": w.host, "pid": w.pid, "version": w.version, "started_secs_ago": w.started_secs_ago,
                "heartbeat_secs_ago": w.heartbeat_secs_ago, "stopped": w.stopped, "live": self.worker_is_live(w),
            })).collect::<Vec<_>>(),
            "deferred_destinations": s.deferred.iter().map(|d| json!({
                "destination": d.destination, "wait_ms": d.wait_ms, "reason": d.reason, "since": rfc3339(d.since_unix),
            })).collect::<Vec<_>>(),
            "pending_replays": s.pending_replays.iter().map(|(route, open)| json!({"route": route, "open_ranges": open})).collect::<Vec<_>>(),
            "losses": s.losses.iter().map(|l| json!({
                "route": l.route, "partition": l.partition, "start_offset": l.offsets.start(),
                "end_offset": l.offsets.end(), "offsets": l.offsets.len(), "reason": l.reason,
                "replay_id": l.replay_id, "age_secs": l.age_secs,
            })).collect::<Vec<_>>(),
            "recent_losses": s.recent_losses.iter().map(|l| json!({
                "route": l.route, "losses": l.losses, "offsets": l.offsets,
            })).collect::<Vec<_>>(),
            "paused": self.paused.iter().map(|p| json!({
                "route": p.route, "since": p.since, "paused_secs_ago": p.paused_secs_ago,
                "by": p.by, "reason": p.reason,
            })).collect::<Vec<_>>(),
            "attention": self.attention.iter().map(Attention::to_json).collect::<Vec<_>>(),
        })
    }

    /// When the earliest failed range of `route` failed.
    fn failed_since(&self, route: &str) -> Option<i64> {
        self.snapshot
            .failed_partitions
            .iter()
            .filter(|f| f.route == route)
            .map(|f| f.oldest_unix)
            .min()
    }
}

/// Every condition that needs a human, most fundamental first.
fn judge(report: &Report, bounds: &StatusConfig) -> Vec<Attention> {
    let s = &report.snapshot;
    let now = s.now_unix;
    let mut attention = Vec::new();

    // A paused route needs attention for as long as it is paused.
    for p in &report.paused {
        let by =
            p.by.as_deref()
                .map_or(String::new(), |by| format!(" by {by}"));
        let why = p
            .reason
            .as_deref()
            .map_or(String::new(), |r| format!(" ({r})"));
        attention.push(
            Attention::new(
                Code::RoutePaused,
                format!(
                    "route {} is paused{by}{why}: no worker leases its ranges. Resume with `courier resume {}` once its destination is fixed",
                    p.route, p.route
                ),
            )
            .route(&p.route)
            .since(p.paused_secs_ago.map(|ago| now - ago)),
        );
    }

    // Offsets Kafka deleted before courier delivered them: flagged before any worker reaches them.
    for view in &report.partitions {
        let Some(deleted) = view.deleted_before_delivery.filter(|d| *d > 0) else {
            continue;
        };
        let log_start = view.kafka.map_or(0, |(low, _)| low);
        attention.push(
            Attention::new(
                Code::DeletedBeforeDelivery,
                format!(
                    "route {} partition {}: {deleted} offset(s) below Kafka's log start {log_start} were deleted (retention or \
                     DeleteRecords) before courier delivered them (courier's watermark: {}). Those messages are lost: no \
                     replay can bring them back from Kafka; workers record them as losses when they reach them and \
                     deliver what Kafka still holds. Likely cause: lag longer than the topic's retention.ms (a \
                     destination down, too few workers)",
                    view.route, view.partition, view.watermark
                ),
            )
            .route(&view.route)
            .partition(view.partition),
        );
    }
    for recent in &s.recent_losses {
        let newest = s
            .losses
            .iter()
            .find(|l| l.route == recent.route)
            .map_or(String::new(), |l| {
                format!("; newest: partition {} offsets {}", l.partition, l.offsets)
            });
        attention.push(
            Attention::new(
                Code::OffsetsLost,
                format!(
                    "route {}: {} offset(s) lost in {} loss(es) recorded in the last {} hours: Kafka deleted them \
                     (retention or DeleteRecords) before courier delivered them; the rest of their ranges was \
                     delivered{newest}. No replay can bring them back from Kafka",
                    recent.route,
                    recent.offsets,
                    recent.losses,
                    courier_store::losses::RECENT_LOSSES_HOURS
                ),
            )
            .route(&recent.route),
        );
    }

    // Every configured route has a live worker.
    for route in &report.configured {
        match s.routes.iter().find(|r| r.name == route.name) {
            None => attention.push(
                Attention::new(
                    Code::RouteNotStarted,
                    format!(
                        "route {} (topic {:?} to destination {}) has never been started: no worker has recorded it, so nothing delivers it. Start `courier run` with this configuration",
                        route.name, route.topic, route.destination
                    ),
                )
                .route(&route.name)
                .destination(&route.destination),
            ),
            Some(recorded) if recorded.planner.is_none() => attention.push(
                Attention::new(
                    Code::NoLiveWorker,
                    format!(
                        "route {}: no live worker serves it (none has planned it lately). Start `courier run`, or look at WORKERS for why they stopped",
                        route.name
                    ),
                )
                .route(&route.name)
                .destination(&recorded.destination)
                .since(recorded.unplanned_since_unix),
            ),
            Some(_) => {}
        }
    }
    if report.configured.is_empty()
        && !s.partitions.is_empty()
        && !s.workers.iter().any(|w| report.worker_is_live(w))
    {
        attention.push(Attention::new(
            Code::NoLiveWorker,
            format!(
                "no live worker: none sent a heartbeat in the last {}. Start `courier run`",
                seconds(report.live_within)
            ),
        ));
    }

    if let Some(error) = &report.kafka_error {
        attention.push(Attention::new(Code::KafkaUnreachable, error.clone()));
    }

    for failed in &s.failed {
        attention.push(
            Attention::new(
                Code::FailedRanges,
                format!(
                    "route {}: {} failed range(s), {} offsets not delivered (not counted in lag); newest error: {}. Replay with `courier replay --route {} --failed` once fixed",
                    failed.route, failed.ranges, failed.offsets, failed.newest_error, failed.route
                ),
            )
            .route(&failed.route)
            .since(report.failed_since(&failed.route)),
        );
    }
    for quarantine in &s.quarantine {
        attention.push(
            Attention::new(
                Code::QuarantinedMessages,
                format!(
                    "route {}: {} message(s) quarantined (the destination refused them on their own; the rest of their ranges was delivered); newest answer: {}. Fix the cause, then `courier replay --route {} --quarantined`",
                    quarantine.route, quarantine.messages, quarantine.newest_reason, quarantine.route
                ),
            )
            .route(&quarantine.route)
            .since(Some(quarantine.oldest_unix)),
        );
    }
    for retrying in &s.retrying {
        attention.push(
            Attention::new(
                Code::RetryingRanges,
                format!(
                    "route {}: {} range(s) ({} offsets) failed an attempt and wait for a retry: destination {} (or Kafka) is failing now; newest error: {}",
                    retrying.route, retrying.ranges, retrying.offsets, retrying.destination, retrying.newest_error
                ),
            )
            .route(&retrying.route)
            .destination(&retrying.destination)
            .since(Some(retrying.oldest_unix)),
        );
    }
    for deferred in &s.deferred {
        attention.push(
            Attention::new(
                Code::DestinationDeferred,
                format!(
                    "destination {} asked every worker to wait {} more ({})",
                    deferred.destination,
                    seconds(Duration::from_millis(
                        u64::try_from(deferred.wait_ms).unwrap_or(0)
                    )),
                    deferred.reason
                ),
            )
            .destination(&deferred.destination)
            .since(Some(deferred.since_unix)),
        );
    }

    // Lag and message age, from Kafka's side.
    let oldest_since = |age: Duration| now - i64::try_from(age.as_secs()).unwrap_or(i64::MAX);
    let mut lag_by_route: BTreeMap<&str, (i64, Option<i64>, &str)> = BTreeMap::new();
    for view in &report.partitions {
        if let Some((_, high)) = view.kafka {
            let entry = lag_by_route
                .entry(&view.route)
                .or_insert((0, None, &view.destination));
            entry.0 += view.lag().unwrap_or(0);
            if let Some(age) = view.oldest_age {
                let since = oldest_since(age);
                entry.1 = Some(entry.1.map_or(since, |s: i64| s.min(since)));
            }
            if high < view.frontier {
                attention.push(
                    Attention::new(
                        Code::WatermarkBelowFrontier,
                        format!(
                            "route {} partition {}: Kafka's high watermark {high} is below courier's frontier {}: topic {:?} was recreated? courier never moves progress backwards",
                            view.route, view.partition, view.frontier, view.topic
                        ),
                    )
                    .route(&view.route)
                    .partition(view.partition),
                );
            }
        }
        if let Some(age) = view.oldest_age.filter(|age| *age > bounds.max_age) {
            attention.push(
                Attention::new(
                    Code::OldestMessageAge,
                    format!(
                        "route {} partition {}: the oldest undelivered message is {} old (bound {}, status.max_age)",
                        view.route,
                        view.partition,
                        seconds(age),
                        seconds(bounds.max_age)
                    ),
                )
                .route(&view.route)
                .partition(view.partition)
                .destination(&view.destination)
                .since(Some(oldest_since(age))),
            );
        }
    }
    for (route, (lag, since, destination)) in lag_by_route {
        if lag > bounds.max_lag {
            attention.push(
                Attention::new(
                    Code::Lag,
                    format!(
                        "route {route}: lag {lag} messages (bound {}, status.max_lag)",
                        bounds.max_lag
                    ),
                )
                .route(route)
                .destination(destination)
                .since(since),
            );
        }
    }
    attention
}

#[cfg(test)]
mod tests {
    use courier_store::status::{
        FailedPartitionRow, FailedRow, PartitionRow, RetryingRow, RouteRow,
    };

    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn configured(name: &str) -> ConfiguredRoute {
        ConfiguredRoute {
            name: name.into(),
            topic: format!("{name}-topic"),
            destination: "hooks".into(),
        }
    }

    fn recorded(name: &str, planner: Option<&str>) -> RouteRow {
        RouteRow {
            name: name.into(),
            topic: format!("{name}-topic"),
            destination: "hooks".into(),
            planner: planner.map(str::to_owned),
            unplanned_since_unix: planner.is_none().then_some(NOW - 90),
        }
    }

    fn partition(route: &str, watermark: i64, high: i64) -> PartitionView {
        PartitionView {
            route: route.into(),
            topic: format!("{route}-topic"),
            destination: "hooks".into(),
            partition: 0,
            watermark,
            frontier: watermark,
            unsettled_ranges: 0,
            settled_ahead: 0,
            kafka: Some((0, high)),
            failed_offsets: 0,
            failed_ranges: 0,
            oldest_age: None,
            deleted_before_delivery: None,
        }
    }

    fn report(snapshot: Snapshot, partitions: Vec<PartitionView>, routes: &[&str]) -> Report {
        let mut report = Report {
            snapshot: Snapshot {
                now_unix: NOW,
                ..snapshot
            },
            partitions,
            configured: routes.iter().map(|r| configured(r)).collect(),
            kafka_error: None,
            paused: Vec::new(),
            live_within: Duration::from_secs(15),
            attention: Vec::new(),
        };
        report.attention = judge(&report, &StatusConfig::default());
        report
    }

    fn codes(report: &Report) -> Vec<&'static str> {
        report.attention.iter().map(|a| a.code.as_str()).collect()
    }

    #[test]
    fn configured_routes_no_worker_ever_started_need_attention() {
        let report = report(Snapshot::default(), Vec::new(), &["a", "b"]);
        assert_eq!(codes(&report), ["route-not-started", "route-not-started"]);
        assert!(!report.ok());
        let line = report.attention[0].line(NOW);
        assert!(
            line.contains("route a") && line.contains("docs/runbooks/no-live-worker.md"),
            "{line}"
        );
    }

    #[test]
    fn a_route_nobody_plans_needs_attention_since_its_planner_went() {
        let snapshot = Snapshot {
            routes: vec![recorded("a", Some("w1")), recorded("b", None)],
            ..Snapshot::default()
        };
        let report = report(snapshot, vec![partition("a", 10, 10)], &["a", "b"]);
        assert_eq!(codes(&report), ["no-live-worker"]);
        let item = &report.attention[0];
        assert_eq!(
            (item.route.as_deref(), item.since_unix),
            (Some("b"), Some(NOW - 90))
        );
        assert!(item.line(NOW).contains("1m 30s ago"), "{}", item.line(NOW));
    }

    #[test]
    fn all_well_is_ok() {
        let snapshot = Snapshot {
            routes: vec![recorded("a", Some("w1"))],
            ..Snapshot::default()
        };
        let report = report(snapshot, vec![partition("a", 10, 12)], &["a"]);
        assert!(report.ok(), "{:?}", report.attention);
        assert_eq!(report.route_lag("a"), Some(2));
    }

    #[test]
    fn offsets_deleted_before_delivery_are_not_lag_and_need_attention() {
        let snapshot = Snapshot {
            routes: vec![recorded("a", Some("w1"))],
            ..Snapshot::default()
        };
        let view = PartitionView {
            kafka: Some((371, 500)),
            deleted_before_delivery: Some(271),
            ..partition("a", 100, 500)
        };
        let report = report(snapshot, vec![view], &["a"]);
        assert_eq!(report.partitions[0].lag(), Some(129));
        assert_eq!(codes(&report), ["deleted-before-delivery"]);
        let line = report.attention[0].line(NOW);
        assert!(
            line.contains("271 offset(s) below Kafka's log start 371")
                && line.contains("docs/runbooks/retention.md"),
            "{line}"
        );
    }

    #[test]
    fn a_paused_route_needs_attention_until_resumed_naming_how() {
        let snapshot = Snapshot {
            routes: vec![recorded("a", Some("w1"))],
            ..Snapshot::default()
        };
        let mut paused = report(snapshot, vec![partition("a", 10, 12)], &["a"]);
        paused.paused = vec![courier_store::PausedRoute {
            route: "a".into(),
            since: None,
            paused_secs_ago: Some(30),
            by: Some("oncall".into()),
            reason: Some("destination migrating".into()),
        }];
        paused.attention = judge(&paused, &StatusConfig::default());
        assert_eq!(codes(&paused), ["route-paused"]);
        assert!(!paused.ok());
        let item = &paused.attention[0];
        assert_eq!(item.since_unix, Some(NOW - 30));
        let line = item.line(NOW);
        assert!(
            line.contains("courier resume a")
                && line.contains("oncall")
                && line.contains("docs/runbooks/lag.md"),
            "{line}"
        );
    }

    #[test]
    fn failed_offsets_are_counted_apart_from_lag_and_need_attention() {
        let snapshot = Snapshot {
            routes: vec![recorded("a", Some("w1"))],
            failed: vec![FailedRow {
                route: "a".into(),
                ranges: 3,
                offsets: 1963,
                newest_error: "HTTP 422".into(),
            }],
            failed_partitions: vec![FailedPartitionRow {
                route: "a".into(),
                partition: 0,
                ranges: 3,
                offsets: 1963,
                oldest_unix: NOW - 600,
                newest_error: "HTTP 422".into(),
            }],
            ..Snapshot::default()
        };
        let mut view = partition("a", 5000, 5000);
        view.failed_offsets = 1963;
        let report = report(snapshot, vec![view], &["a"]);
        assert_eq!(report.route_lag("a"), Some(0));
        assert_eq!(codes(&report), ["failed-ranges"]);
        let json = report.to_json();
        assert_eq!(json["schema_version"], SCHEMA_VERSION);
        assert_eq!(json["ok"], false);
        assert_eq!(json["partitions"][0]["failed_offsets"], 1963);
        assert_eq!(json["partitions"][0]["lag"], 0);
        assert_eq!(json["attention"][0]["code"], "failed-ranges");
        assert_eq!(json["attention"][0]["route"], "a");
        assert_eq!(json["attention"][0]["since_unix"], NOW - 600);
        assert_eq!(
            json["attention"][0]["runbook"],
            "docs/runbooks/failed-ranges.md"
        );
    }

    #[test]
    fn offsets_settled_above_a_watermark_not_moved_yet_are_not_lag() {
        // No worker moved the watermark past a failed range of 200 and 300 delivered offsets.
        let mut view = partition("a", 0, 600);
        view.settled_ahead = 500;
        view.failed_offsets = 200;
        assert_eq!(view.lag(), Some(100));
    }

    #[test]
    fn a_destination_failing_now_needs_attention_before_anything_fails_for_good() {
        let snapshot = Snapshot {
            routes: vec![recorded("a", Some("w1"))],
            retrying: vec![RetryingRow {
                route: "a".into(),
                destination: "hooks".into(),
                ranges: 2,
                offsets: 400,
                oldest_unix: NOW - 20,
                newest_error: "HTTP 503: down for maintenance".into(),
            }],
            ..Snapshot::default()
        };
        let report = report(snapshot, vec![partition("a", 0, 400)], &["a"]);
        assert_eq!(codes(&report), ["retrying-ranges"]);
        assert_eq!(report.attention[0].destination.as_deref(), Some("hooks"));
        assert!(report.attention[0].message.contains("down for maintenance"));
    }

    #[test]
    fn lag_and_age_over_their_bounds_need_attention_since_the_oldest_message() {
        let snapshot = Snapshot {
            routes: vec![recorded("a", Some("w1"))],
            partitions: vec![PartitionRow {
                route: "a".into(),
                topic: "a-topic".into(),
                destination: "hooks".into(),
                partition: 0,
                frontier: 0,
                watermark: 0,
                unsettled_ranges: 0,
                settled_ahead: 0,
                first_unsettled: 0,
            }],
            ..Snapshot::default()
        };
        let mut view = partition("a", 0, 200_000);
        view.oldest_age = Some(Duration::from_secs(300));
        let report = report(snapshot, vec![view], &["a"]);
        assert_eq!(codes(&report), ["oldest-message-age", "lag"]);
        assert!(report
            .attention
            .iter()
            .all(|a| a.since_unix == Some(NOW - 300)));
    }

    #[test]
    fn an_error_s_own_runbook_is_said_once() {
        let item = Attention::new(
            Code::KafkaUnreachable,
            "Kafka did not answer. Runbook: docs/runbooks/kafka-unavailable.md".into(),
        );
        assert_eq!(
            item.line(NOW),
            "Kafka did not answer. Runbook: docs/runbooks/kafka-unavailable.md"
        );
    }

    #[test]
    fn kafka_not_answering_needs_attention() {
        let snapshot = Snapshot {
            routes: vec![recorded("a", Some("w1"))],
            ..Snapshot::default()
        };
        let mut report = report(snapshot, Vec::new(), &["a"]);
        report.kafka_error = Some("Kafka at x did not answer within 5s".into());
        report.attention = judge(&report, &StatusConfig::default());
        assert_eq!(codes(&report), ["kafka-unreachable"]);
        assert_eq!(
            report.attention[0].runbook(),
            "docs/runbooks/kafka-unavailable.md"
        );
    }
}
