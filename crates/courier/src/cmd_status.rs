//! `courier status`: where every route stands, who holds what, what failed, who runs which version.
//!
//! Exit status: 0 when all is well, 3 when something needs attention (failed ranges, quarantined
//! messages, offsets Kafka deleted before courier delivered them (found by comparing Kafka's log start
//! with courier's progress, or recorded as losses in the last day), lag or age over the thresholds, a
//! destination holding everyone off, no live worker, a high watermark below the frontier, a paused
//! route: a forgotten pause is lag nobody is alerted to), 1 when the status could not be read. Every
//! warning names its runbook.
//!
//! Lag counts only offsets Kafka still holds: from courier's watermark or Kafka's log start, whichever is
//! higher, to the high watermark. Offsets below the log start that courier never delivered are reported
//! apart, as deleted before delivery.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use courier_core::OffsetRange;
use courier_kafka::RangeReader;
use courier_store::status::Snapshot;
use courier_store::{DeletedBeforeDelivery, LossRow};
use courier_worker::{open_store, BootRetry, Schema};
use serde_json::json;

use crate::config::Config;

/// Exit status meaning "read fine, but something needs attention".
pub const ATTENTION: u8 = 3;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[arg(long, short, env = "COURIER_CONFIG", default_value = "courier.toml")]
    config: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    /// Lag (messages) above which a route needs attention.
    #[arg(long, default_value_t = 100_000)]
    max_lag: i64,
    /// Age of the oldest undelivered message above which a route needs attention.
    #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
    max_age: Duration,
}

struct PartitionView {
    route: String,
    topic: String,
    partition: i32,
    watermark: i64,
    frontier: i64,
    /// Kafka's log start offset: everything below was deleted.
    log_start: Option<i64>,
    high: Option<i64>,
    /// Offsets below the log start courier has neither delivered nor recorded as lost.
    deleted_before_delivery: Option<i64>,
    oldest_age: Option<Duration>,
}

impl PartitionView {
    /// Offsets Kafka holds that courier has not settled: from the watermark or the log start, whichever
    /// is higher (offsets that no longer exist are no lag: they are reported apart).
    fn lag(&self) -> Option<i64> {
        let high = self.high?;
        let from = self.watermark.max(self.log_start.unwrap_or(0));
        Some((high - from).max(0))
    }
}

pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config)?;
    // A database without the schema, or behind it, is a clear message rather than a query error.
    let boot = BootRetry::new(config.worker.boot_timeout);
    let (store, _) = open_store(&config.store, Schema::Check, &boot).await?;
    let snapshot = store.snapshot().await?;
    let reader = RangeReader::connect(config.kafka.clone()).await.ok();

    let mut high: BTreeMap<(String, i32), (i64, i64)> = BTreeMap::new();
    let mut warnings: Vec<String> = Vec::new();
    if let Some(reader) = &reader {
        let topics: std::collections::BTreeSet<&str> = snapshot
            .partitions
            .iter()
            .map(|p| p.topic.as_str())
            .collect();
        for topic in topics {
            match reader.high_watermarks(topic).await {
                Ok(marks) => high.extend(
                    marks
                        .into_iter()
                        .map(|m| ((topic.to_owned(), m.partition), (m.low, m.high))),
                ),
                Err(error) => warnings.push(format!(
                    "cannot read Kafka watermarks of topic {topic:?}: {error}"
                )),
            }
        }
    } else {
        warnings.push(format!(
            "cannot reach Kafka at {}: lag is unknown. Runbook: docs/runbooks/lag.md",
            config.kafka.brokers
        ));
    }

    // Courier's progress against Kafka's log start, in one store query: offsets deleted before delivery
    // are flagged now, not when a worker reaches them.
    let log_starts: Vec<(String, i32, i64)> = snapshot
        .partitions
        .iter()
        .filter_map(|p| {
            let (low, _) = high.get(&(p.topic.clone(), p.partition))?;
            Some((p.route.clone(), p.partition, *low))
        })
        .collect();
    let deleted: BTreeMap<(String, i32), i64> = if log_starts.is_empty() {
        BTreeMap::new()
    } else {
        store
            .deleted_before_delivery(&log_starts)
            .await?
            .into_iter()
            .map(
                |DeletedBeforeDelivery {
                     route,
                     partition,
                     offsets,
                     ..
                 }| ((route, partition), offsets),
            )
            .collect()
    };

    let mut views = Vec::new();
    for p in &snapshot.partitions {
        let marks = high.get(&(p.topic.clone(), p.partition)).copied();
        // The oldest undelivered message Kafka still holds.
        let oldest_age = match (&reader, marks) {
            (Some(reader), Some((low, hw))) if hw > p.watermark.max(low) => {
                oldest_undelivered_age(reader, &p.topic, p.partition, p.watermark.max(low)).await
            }
            _ => None,
        };
        views.push(PartitionView {
            route: p.route.clone(),
            topic: p.topic.clone(),
            partition: p.partition,
            watermark: p.watermark,
            frontier: p.frontier,
            log_start: marks.map(|(low, _)| low),
            high: marks.map(|(_, h)| h),
            deleted_before_delivery: deleted.get(&(p.route.clone(), p.partition)).copied(),
            oldest_age,
        });
    }
    collect_warnings(&args, &snapshot, &views, &config, &mut warnings);
    let paused = store.paused_routes().await?;
    paused_warnings(&paused, &mut warnings);

    if args.json {
        let mut value = as_json(&snapshot, &views, &warnings);
        value["paused"] = paused_json(&paused);
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_paused(&paused);
        print_tables(&snapshot, &views, &warnings);
    }
    Ok(if warnings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(ATTENTION)
    })
}

/// Age of the message at `offset`: the oldest one not yet settled. `None` when it cannot be read.
async fn oldest_undelivered_age(
    reader: &RangeReader,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Option<Duration> {
    let range = OffsetRange::new(offset, offset + 1).ok()?;
    let messages = reader.read(topic, partition, range).await.ok()?;
    let timestamp = messages.first()?.timestamp_ms?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    Some(now.saturating_sub(Duration::from_millis(u64::try_from(timestamp).ok()?)))
}

fn collect_warnings(
    args: &StatusArgs,
    snapshot: &Snapshot,
    views: &[PartitionView],
    config: &Config,
    warnings: &mut Vec<String>,
) {
    let mut lag_by_route: BTreeMap<&str, i64> = BTreeMap::new();
    for view in views {
        if let Some(deleted) = view.deleted_before_delivery.filter(|d| *d > 0) {
            warnings.push(format!(
                "route {} partition {}: {deleted} offset(s) below Kafka's log start {} were deleted (retention or \
                 DeleteRecords) before courier delivered them (courier's watermark: {}). Those messages are lost: \
                 no replay can bring them back from Kafka; workers record them as losses when they reach them and \
                 deliver what Kafka still holds. Likely cause: lag longer than the topic's retention.ms (a \
                 destination down, too few workers). Runbook: docs/runbooks/retention.md",
                view.route,
                view.partition,
                view.log_start.unwrap_or_default(),
                view.watermark
            ));
        }
        if let (Some(high), Some(lag)) = (view.high, view.lag()) {
            *lag_by_route.entry(&view.route).or_default() += lag;
            if high < view.frontier {
                warnings.push(format!(
                    "route {} partition {}: Kafka's high watermark {high} is below courier's frontier {}: topic {:?} was recreated? Runbook: docs/runbooks/lag.md",
                    view.route, view.partition, view.frontier, view.topic
                ));
            }
        }
        if let Some(age) = view.oldest_age.filter(|age| *age > args.max_age) {
            warnings.push(format!(
                "route {} partition {}: the oldest undelivered message is {} old (threshold {}). Runbook: docs/runbooks/lag.md",
                view.route,
                view.partition,
                humantime::format_duration(Duration::from_secs(age.as_secs())),
                humantime::format_duration(args.max_age)
            ));
        }
    }
    for (route, lag) in lag_by_route
        .into_iter()
        .filter(|(_, lag)| *lag > args.max_lag)
    {
        warnings.push(format!(
            "route {route}: lag {lag} messages (threshold {}). Runbook: docs/runbooks/lag.md",
            args.max_lag
        ));
    }
    for failed in &snapshot.failed {
        warnings.push(format!(
            "route {}: {} failed range(s), {} offsets not delivered; newest error: {}. Replay with `courier replay --route {} --failed` once fixed. Runbook: docs/runbooks/failed-ranges.md",
            failed.route, failed.ranges, failed.offsets, failed.newest_error, failed.route
        ));
    }
    for quarantine in &snapshot.quarantine {
        warnings.push(format!(
            "route {}: {} message(s) quarantined (the destination refused them on their own; the rest of their ranges was delivered); newest answer: {}. \
             Fix the cause, then `courier replay --route {} --quarantined`. Runbook: docs/runbooks/quarantined-messages.md",
            quarantine.route, quarantine.messages, quarantine.newest_reason, quarantine.route
        ));
    }
    for recent in &snapshot.recent_losses {
        let newest = snapshot
            .losses
            .iter()
            .find(|l| l.route == recent.route)
            .map_or(String::new(), |l| {
                format!("; newest: partition {} offsets {}", l.partition, l.offsets)
            });
        warnings.push(format!(
            "route {}: {} offset(s) lost in {} loss(es) recorded in the last {} hours: Kafka deleted them (retention \
             or DeleteRecords) before courier delivered them; the rest of their ranges was delivered{newest}. \
             No replay can bring them back from Kafka. Runbook: docs/runbooks/retention.md",
            recent.route,
            recent.offsets,
            recent.losses,
            courier_store::losses::RECENT_LOSSES_HOURS
        ));
    }
    for deferred in &snapshot.deferred {
        warnings.push(format!(
            "destination {} asked every worker to wait {} more ({}). Runbook: docs/runbooks/destination-paused.md",
            deferred.destination,
            humantime::format_duration(Duration::from_millis(u64::try_from(deferred.wait_ms).unwrap_or(0))),
            deferred.reason
        ));
    }
    let stale_after = (config.worker.heartbeat_every * 3).as_secs() as i64;
    let alive = snapshot
        .workers
        .iter()
        .filter(|w| !w.stopped && w.heartbeat_secs_ago <= stale_after.max(1))
        .count();
    if alive == 0 && !snapshot.partitions.is_empty() {
        warnings.push("no live worker: no heartbeat in the last 3 heartbeat intervals. Start `courier run`. Runbook: docs/runbooks/lag.md".into());
    }
}

fn print_tables(snapshot: &Snapshot, views: &[PartitionView], warnings: &[String]) {
    println!("ROUTES");
    println!(
        "  {:<24} {:>4} {:>12} {:>12} {:>12} {:>12} {:>10} {:>10} {:>12}",
        "route",
        "part",
        "watermark",
        "frontier",
        "kafka start",
        "kafka high",
        "lag",
        "deleted",
        "oldest"
    );
    let known = |value: Option<i64>| value.map_or("?".to_owned(), |v| v.to_string());
    for v in views {
        let oldest = v.oldest_age.map_or("-".to_owned(), |a| {
            humantime::format_duration(Duration::from_secs(a.as_secs())).to_string()
        });
        println!(
            "  {:<24} {:>4} {:>12} {:>12} {:>12} {:>12} {:>10} {:>10} {:>12}",
            v.route,
            v.partition,
            v.watermark,
            v.frontier,
            known(v.log_start),
            known(v.high),
            known(v.lag()),
            known(v.deleted_before_delivery),
            oldest
        );
    }
    println!("LEASES ({} shown)", snapshot.leases.len());
    for l in &snapshot.leases {
        let expiry = if l.expires_in_ms >= 0 {
            format!("expires in {:.1}s", l.expires_in_ms as f64 / 1000.0)
        } else {
            "EXPIRED".into()
        };
        println!(
            "  {:<24} {:>4} [{}, {}) {} epoch {} {}{}",
            l.route,
            l.partition,
            l.start_offset,
            l.end_offset,
            l.owner,
            l.epoch,
            expiry,
            if l.replay { " (replay)" } else { "" }
        );
    }
    println!("FAILED");
    for f in &snapshot.failed {
        println!(
            "  {:<24} {} range(s), {} offsets; newest error: {}",
            f.route, f.ranges, f.offsets, f.newest_error
        );
    }
    if !snapshot.quarantine.is_empty() {
        println!("QUARANTINED");
        for q in &snapshot.quarantined {
            println!(
                "  {:<24} {:>4} offset {:<12} {}{}{}",
                q.route,
                q.partition,
                q.offset,
                q.reason,
                if q.times > 1 {
                    format!(" (refused {} times)", q.times)
                } else {
                    String::new()
                },
                q.dead_letter_topic
                    .as_ref()
                    .map_or(String::new(), |t| format!(" (dead letter in {t})"))
            );
        }
        let total: i64 = snapshot.quarantine.iter().map(|q| q.messages).sum();
        if total > snapshot.quarantined.len() as i64 {
            println!(
                "  ... and {} more",
                total - snapshot.quarantined.len() as i64
            );
        }
    }
    if !snapshot.losses.is_empty() {
        println!("LOST (offsets Kafka deleted before delivery; newest first)");
        for loss in &snapshot.losses {
            print_loss(loss);
        }
    }
    for (route, open) in &snapshot.pending_replays {
        println!("  {route:<24} replay in progress: {open} range(s) to go");
    }
    println!("WORKERS");
    for w in &snapshot.workers {
        println!(
            "  {:<32} host {} pid {} version {} started {}s ago, heartbeat {}s ago{}",
            w.id,
            w.host,
            w.pid,
            w.version,
            w.started_secs_ago,
            w.heartbeat_secs_ago,
            if w.stopped { " (stopped)" } else { "" }
        );
    }
    if warnings.is_empty() {
        println!("OK: nothing needs attention.");
    } else {
        println!("ATTENTION");
        for warning in warnings {
            println!("  - {warning}");
        }
    }
}

fn print_loss(loss: &LossRow) {
    println!(
        "  {:<24} {:>4} offsets {} ({} offset(s)) {} ago{}: {}",
        loss.route,
        loss.partition,
        loss.offsets,
        loss.offsets.len(),
        humantime::format_duration(Duration::from_secs(
            u64::try_from(loss.age_secs).unwrap_or(0)
        )),
        loss.replay_id
            .map_or(String::new(), |id| format!(" (found by replay {id})")),
        loss.reason
    );
}

fn as_json(snapshot: &Snapshot, views: &[PartitionView], warnings: &[String]) -> serde_json::Value {
    json!({
        "partitions": views.iter().map(|v| json!({
            "route": v.route, "topic": v.topic, "partition": v.partition, "watermark": v.watermark,
            "frontier": v.frontier, "kafka_log_start": v.log_start, "kafka_high_watermark": v.high,
            "lag": v.lag(), "deleted_before_delivery": v.deleted_before_delivery,
            "oldest_undelivered_age_seconds": v.oldest_age.map(|a| a.as_secs_f64()),
        })).collect::<Vec<_>>(),
        "leases": snapshot.leases.iter().map(|l| json!({
            "route": l.route, "partition": l.partition, "start_offset": l.start_offset, "end_offset": l.end_offset,
            "owner": l.owner, "epoch": l.epoch, "expires_in_ms": l.expires_in_ms, "replay": l.replay,
        })).collect::<Vec<_>>(),
        "failed": snapshot.failed.iter().map(|f| json!({
            "route": f.route, "ranges": f.ranges, "offsets": f.offsets, "newest_error": f.newest_error,
        })).collect::<Vec<_>>(),
        "quarantine": snapshot.quarantine.iter().map(|q| json!({
            "route": q.route, "messages": q.messages, "newest_reason": q.newest_reason,
        })).collect::<Vec<_>>(),
        "quarantined": snapshot.quarantined.iter().map(|q| json!({
            "route": q.route, "partition": q.partition, "offset": q.offset, "status": q.status, "reason": q.reason,
            "times": q.times, "dead_letter_topic": q.dead_letter_topic, "age_secs": q.age_secs,
        })).collect::<Vec<_>>(),
        "workers": snapshot.workers.iter().map(|w| json!({
            "id": w.id, "host": w.host, "pid": w.pid, "version": w.version, "started_secs_ago": w.started_secs_ago,
            "heartbeat_secs_ago": w.heartbeat_secs_ago, "stopped": w.stopped,
        })).collect::<Vec<_>>(),
        "deferred_destinations": snapshot.deferred.iter().map(|d| json!({
            "destination": d.destination, "wait_ms": d.wait_ms, "reason": d.reason,
        })).collect::<Vec<_>>(),
        "losses": snapshot.losses.iter().map(|l| json!({
            "route": l.route, "partition": l.partition, "start_offset": l.offsets.start(),
            "end_offset": l.offsets.end(), "offsets": l.offsets.len(), "reason": l.reason,
            "replay_id": l.replay_id, "age_secs": l.age_secs,
        })).collect::<Vec<_>>(),
        "recent_losses": snapshot.recent_losses.iter().map(|l| json!({
            "route": l.route, "losses": l.losses, "offsets": l.offsets,
        })).collect::<Vec<_>>(),
        "pending_replays": snapshot.pending_replays.iter().map(|(route, open)| json!({"route": route, "open_ranges": open})).collect::<Vec<_>>(),
        "attention": warnings,
    })
}

/// A paused route needs attention for as long as it is paused: its lag grows on purpose, and a pause
/// forgotten after an incident is an outage nobody is paged for.
fn paused_warnings(paused: &[courier_store::PausedRoute], warnings: &mut Vec<String>) {
    for p in paused {
        warnings.push(format!(
            "route {} is paused{}: no worker leases its ranges. Resume with `courier resume {}` once its destination is fixed. Runbook: docs/runbooks/lag.md",
            p.route,
            crate::cmd_changes::describe_pause(p),
            p.route
        ));
    }
}

fn print_paused(paused: &[courier_store::PausedRoute]) {
    if paused.is_empty() {
        return;
    }
    println!("PAUSED");
    for p in paused {
        println!("  {:<24}{}", p.route, crate::cmd_changes::describe_pause(p));
    }
}

fn paused_json(paused: &[courier_store::PausedRoute]) -> serde_json::Value {
    paused
        .iter()
        .map(|p| {
            json!({
                "route": p.route, "since": p.since, "paused_secs_ago": p.paused_secs_ago,
                "by": p.by, "reason": p.reason,
            })
        })
        .collect()
}
