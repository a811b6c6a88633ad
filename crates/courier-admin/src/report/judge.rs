//! Judging a report: every condition that needs a human, as [`Attention`] items, most fundamental
//! first. The report is OK only when every configured route has a live worker, nothing failed or is
//! quarantined or being retried, Kafka answered, and lag and the oldest message's age are under their
//! bounds. Failed offsets are counted apart from lag (the watermark moves past failed ranges).

use std::collections::BTreeMap;
use std::time::Duration;

use super::render::seconds;
use super::{Attention, Code, Report, StatusConfig};

/// Every condition that needs a human, most fundamental first: paused routes, offsets Kafka deleted
/// before delivery, routes nobody serves, Kafka not answering, failed, quarantined and retrying ranges,
/// destinations holding everyone off, then lag and message age.
pub(super) fn judge(report: &Report, bounds: &StatusConfig) -> Vec<Attention> {
    let mut attention = Vec::new();
    paused(report, &mut attention);
    deleted_before_delivery(report, &mut attention);
    unserved(report, &mut attention);
    if let Some(error) = &report.kafka_error {
        attention.push(Attention::new(Code::KafkaUnreachable, error.clone()));
    }
    not_delivered(report, &mut attention);
    behind(report, bounds, &mut attention);
    attention
}

/// A paused route needs attention for as long as it is paused.
fn paused(report: &Report, attention: &mut Vec<Attention>) {
    let now = report.snapshot.now_unix;
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
}

/// Offsets Kafka deleted before courier delivered them: flagged before any worker reaches them; and
/// losses recorded in the last day.
fn deleted_before_delivery(report: &Report, attention: &mut Vec<Attention>) {
    let s = &report.snapshot;
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
                    courier_store::RECENT_LOSSES_HOURS
                ),
            )
            .route(&recent.route),
        );
    }
}

/// Every configured route has a live worker.
fn unserved(report: &Report, attention: &mut Vec<Attention>) {
    let s = &report.snapshot;
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
}

/// Ranges failed, quarantined or retrying, and destinations asking every worker to wait.
fn not_delivered(report: &Report, attention: &mut Vec<Attention>) {
    let s = &report.snapshot;
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
}

/// Lag and message age, from Kafka's side.
fn behind(report: &Report, bounds: &StatusConfig, attention: &mut Vec<Attention>) {
    let now = report.snapshot.now_unix;
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
}
