//! The report in words: an [`Attention`] item as one line for a terminal or a log, the report and its
//! items as the JSON of `courier status --json` and `/status.json` (versioned by [`SCHEMA_VERSION`]),
//! and the time and duration formats every view shares.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{json, Value};

use super::{Attention, Report, SCHEMA_VERSION};

impl Attention {
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

impl Report {
    /// The versioned JSON of `courier status --json` and `/status.json`.
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
