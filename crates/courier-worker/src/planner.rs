//! The planner tick: Kafka's high watermarks in, ranges carved ahead of delivery, watermarks advanced.
//!
//! Every worker runs one. Planning is idempotent (planners serialise on the partition row and carve the
//! same tiling), so several planners only cost a few extra short transactions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_store::PlanRequest;
use tokio::sync::watch;

use crate::{metrics, Context, Route, Throttle};

pub(crate) async fn run(ctx: Arc<Context>, mut stop: watch::Receiver<bool>) {
    let throttle = Throttle::new(Duration::from_secs(30));
    let mut known: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    let mut behind_ticks: BTreeMap<(String, i32), u32> = BTreeMap::new();
    let mut last_compaction = Instant::now();
    let mut last_retry_after_read: Option<Instant> = None;
    let mut every = tokio::time::interval(ctx.config.plan_interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = crate::stopped(&mut stop) => return,
        }
        let compact = last_compaction.elapsed() >= ctx.config.compact_every;
        if compact {
            last_compaction = Instant::now();
        }
        for route in &ctx.routes {
            let known = known.entry(route.config.name.clone()).or_default();
            if let Err(error) =
                plan_route(&ctx, route, known, &mut behind_ticks, compact, &throttle).await
            {
                if throttle.ready(&route.config.name) {
                    tracing::warn!(route = %route.config.name, topic = %route.config.topic, %error, "Planner could not plan this route; retrying every tick.");
                }
            }
        }
        // A second is fine granularity for a Retry-After and keeps idle workers cheap for the store.
        if last_retry_after_read.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            last_retry_after_read = Some(Instant::now());
            share_retry_after(&ctx).await;
        }
    }
}

async fn plan_route(
    ctx: &Context,
    route: &Route,
    known: &mut BTreeSet<i32>,
    behind_ticks: &mut BTreeMap<(String, i32), u32>,
    compact: bool,
    throttle: &Throttle,
) -> Result<(), String> {
    let name = &route.config.name;
    let marks = ctx
        .reader
        .high_watermarks(&route.config.topic)
        .await
        .map_err(|e| {
            metrics::kafka_error(name, "high_watermarks");
            e.to_string()
        })?;
    // A partition the route has not seen was added to the topic after the route began (the route's
    // own first partitions were registered with it, where `start` said): it starts at its log start, so
    // nothing written to it is skipped. Registering is idempotent; known partitions keep their progress.
    let new: Vec<(i32, i64)> = marks
        .iter()
        .filter(|m| !known.contains(&m.partition))
        .map(|m| (m.partition, m.low))
        .collect();
    if !new.is_empty() {
        ctx.store
            .ensure_partitions(name, &new)
            .await
            .map_err(|e| e.to_string())?;
        known.extend(new.iter().map(|(p, _)| *p));
    }
    // One statement: advance the watermarks and read where every partition stands.
    let progress = ctx
        .store
        .advance_watermarks(name)
        .await
        .map_err(|e| e.to_string())?;
    if progress.iter().any(|p| p.expired_leases > 0) {
        // A worker died or stalled: its ranges are up for grabs now, not at the next idle poll.
        ctx.work_available.notify_waiters();
    }
    let range_size = i64::from(route.config.range_size);
    for partition in &progress {
        let Some(mark) = marks.iter().find(|m| m.partition == partition.partition) else {
            continue;
        };
        let behind = behind_ticks
            .entry((name.clone(), partition.partition))
            .or_default();
        if mark.high < partition.frontier {
            *behind += 1;
            if *behind >= 3 && throttle.ready(&format!("{name}/{}/behind", partition.partition)) {
                tracing::error!(
                    route = %name, partition = partition.partition, high_watermark = mark.high, frontier = partition.frontier,
                    "Kafka's high watermark stays below courier's frontier: the topic was deleted and recreated, or this is another cluster. courier never moves progress backwards. Runbook: docs/runbooks/lag.md"
                );
            }
            continue;
        }
        *behind = 0;
        let backlog = usize::try_from((partition.frontier - partition.watermark) / range_size)
            .unwrap_or(usize::MAX);
        if mark.high == partition.frontier || backlog >= ctx.config.ranges_ahead {
            continue;
        }
        let planned = ctx
            .store
            .plan(&PlanRequest {
                route: name.clone(),
                partition: partition.partition,
                high_watermark: mark.high,
                range_size: route.config.range_size,
                max_new_ranges: ctx.config.ranges_ahead - backlog,
                max_tail_age: ctx.config.max_tail_age,
            })
            .await
            .map_err(|e| e.to_string())?;
        if planned.carved > 0 {
            ctx.work_available.notify_waiters();
        }
    }
    let lag: i64 = progress
        .iter()
        .map(|p| {
            let high = marks
                .iter()
                .find(|m| m.partition == p.partition)
                .map_or(p.watermark, |m| m.high);
            (high - p.watermark).max(0)
        })
        .sum();
    metrics::lag(name, lag);
    if compact {
        ctx.store
            .compact(name, 10_000)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Reads each destination's shared `Retry-After` from the store into its deliverer, so a 429 seen by
/// any worker holds off every worker.
async fn share_retry_after(ctx: &Context) {
    let mut seen = BTreeSet::new();
    for route in &ctx.routes {
        if !seen.insert(route.config.destination.as_str()) {
            continue;
        }
        match ctx.store.destination_wait(&route.config.destination).await {
            Ok(Some(wait)) => route.deliverer.block_until(Instant::now() + wait),
            Ok(None) => {}
            Err(_) => metrics::store_error("destination wait"),
        }
    }
}
