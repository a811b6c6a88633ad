//! Gathering a report: the store's [`Snapshot`](courier_store::Snapshot) and paused routes, then
//! Kafka's watermarks and the age of each partition's oldest undelivered message, then the offsets below
//! Kafka's log start courier never delivered. Every Kafka call is bounded by [`StatusConfig::timeout`]
//! and all of them together by three times that, and the first one that goes unanswered ends the
//! asking: a broker that does not answer costs seconds, not minutes.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use courier_core::OffsetRange;
use courier_kafka::{KafkaConfig, RangeReader};
use courier_store::{PartitionRow, Store, StoreError};
use tokio::time::Instant;

use super::judge::judge;
use super::{ConfiguredRoute, PartitionView, Report, StatusConfig};

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
