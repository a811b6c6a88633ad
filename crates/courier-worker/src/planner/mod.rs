//! The planner: Kafka's high watermarks in, ranges carved ahead of delivery, watermarks advanced.
//!
//! Its cost follows the work, not the configuration:
//! - **one planner per route**: every worker claims the planning of its routes every third of the
//!   planner TTL ([`Store::claim_planning`](courier_store::Store::claim_planning)); a route is planned by
//!   one worker at a time, and a dead planner's routes move to another worker within that TTL
//!   ([`planner_ttl`]: the lease TTL, at most [`MAX_PLANNER_TTL`]);
//! - **Kafka once per topic**: the watermarks of every partition of a topic are fetched once per tick,
//!   for every route reading it;
//! - **one store transaction per round**, and only when there is something to do: a partition whose high
//!   watermark moved past its frontier is carved, and the watermarks of every planned route advance, in
//!   one [`Store::plan_round`](courier_store::Store::plan_round), every tick while some partition has
//!   messages not carved yet (its backlog refills as delivery drains it); with nothing new, a round runs
//!   at most every [`ADVANCE_EVERY`] to move watermarks over settled ranges while some are carved and not
//!   passed yet, and a tick whose watermarks did not move costs no store call and no work per route.
//!
//! A partition's short tail is carved at once when nothing of it is in flight (the destination is
//! keeping up: latency matters), and after `max_tail_age` otherwise (full ranges while behind: store
//! cost matters). While messages arrive the planner ticks every `plan_interval`; while nothing moves it
//! slows down to [`QUIET_PLAN_INTERVAL`].
//!
//! When each of those is due is decided by `schedule` (time only, no I/O); this module does the calls.

mod schedule;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use courier_kafka::PartitionWatermarks;
use courier_store::{PartitionProgress, PlanRequest, PlanRound};
use tokio::sync::watch;

use crate::{metrics, Context, Throttle};
use schedule::Schedule;

/// Longest a claim on planning a route lasts without renewal: new messages of a dead planner's routes
/// wait at most about this long to be carved.
const MAX_PLANNER_TTL: Duration = Duration::from_secs(6);

/// How long a claim on planning a route lasts without renewal: no longer than a lease, so a dead
/// worker's planning moves as soon as its ranges do.
fn planner_ttl(config: &crate::WorkerConfig) -> Duration {
    config.lease_ttl.min(MAX_PLANNER_TTL)
}
/// The slowest a planner whose watermarks stay still ticks (unless `plan_interval` is longer): the
/// first message after a quiet spell waits at most about this long to be carved.
const QUIET_PLAN_INTERVAL: Duration = Duration::from_millis(250);
/// Longest time between two rounds of a planner with nothing new to carve.
const ADVANCE_EVERY: Duration = Duration::from_secs(1);
/// How often every destination's shared `Retry-After` is read.
const RETRY_AFTER_EVERY: Duration = Duration::from_secs(1);

/// What the planner remembers between ticks. Only the planner of a route moves its frontier, so the
/// cached frontier is what the store has (a stale one only makes a round carve nothing).
struct State {
    /// When the next tick comes, and what is due at it.
    schedule: Schedule,
    /// Routes this worker plans now.
    owned: Vec<String>,
    /// Where every partition of the owned routes stood after the last round.
    progress: HashMap<(String, i32), PartitionProgress>,
    /// At the last tick some partition had messages not carved yet.
    uncarved: bool,
    /// Kafka's watermarks of every planned topic at the last tick.
    last_marks: HashMap<String, Vec<PartitionWatermarks>>,
    /// Ticks a partition's high watermark stayed below its frontier.
    behind_ticks: BTreeMap<(String, i32), u32>,
}

impl State {
    fn new(config: &crate::WorkerConfig) -> Self {
        Self {
            schedule: Schedule::new(config),
            owned: Vec::new(),
            progress: HashMap::new(),
            uncarved: false,
            last_marks: HashMap::new(),
            behind_ticks: BTreeMap::new(),
        }
    }

    /// Takes `owned` as the routes planned from now on; `true` when that changed anything.
    fn adopt(&mut self, mut owned: Vec<String>) -> bool {
        // The store returns them in no particular order: compared unsorted, every claim looked like a
        // change of ownership and forced a round (and a scan of every route per partition).
        owned.sort_unstable();
        if owned == self.owned {
            return false;
        }
        // Newly owned routes need their progress read before anything is carved for them.
        self.schedule.reread_progress();
        let keep: HashSet<&str> = owned.iter().map(String::as_str).collect();
        self.progress
            .retain(|(route, _), _| keep.contains(route.as_str()));
        self.owned = owned;
        true
    }
}

pub(crate) async fn run(ctx: Arc<Context>, mut stop: watch::Receiver<bool>) {
    let throttle = Throttle::new(Duration::from_secs(30));
    let mut state = State::new(&ctx.config);
    loop {
        tokio::select! {
            () = state.schedule.next_tick(&ctx.settled) => {}
            _ = crate::stopped(&mut stop) => return,
        }
        ctx.liveness.beat(crate::Loop::Planner);
        let moved = tick(&ctx, &mut state, &throttle).await;
        state.schedule.ticked(moved);
    }
}

/// One planner tick; `true` when something moved (new messages, or some not carved yet).
async fn tick(ctx: &Context, state: &mut State, throttle: &Throttle) -> bool {
    if state.schedule.claim_due() {
        claim(ctx, state, throttle).await;
    }
    let moved = if state.owned.is_empty() {
        false
    } else {
        plan_owned(ctx, state, throttle).await
    };
    if state.schedule.due_retry_after() {
        share_retry_after(ctx).await;
    }
    moved
}

async fn claim(ctx: &Context, state: &mut State, throttle: &Throttle) {
    let names: Vec<String> = ctx.routes.iter().map(|r| r.config.name.clone()).collect();
    let ttl = planner_ttl(&ctx.config);
    match ctx.store.claim_planning(&names, &ctx.id, ttl).await {
        Ok(owned) => {
            state.schedule.claimed();
            if state.adopt(owned) {
                tracing::info!(worker = %ctx.id, planning = state.owned.len(), of = names.len(), "Planning routes.");
            }
        }
        Err(error) => {
            metrics::store_error("claim planning");
            if throttle.ready("claim") {
                tracing::warn!(%error, "Could not claim the planning of routes; retrying.");
            }
            // Keep planning what was claimed until its claim would have lapsed.
            if state.schedule.claim_lapsed() {
                state.owned.clear();
            }
        }
    }
}

/// Plans the routes this worker owns; `true` when Kafka's watermarks moved or messages wait to be carved.
async fn plan_owned(ctx: &Context, state: &mut State, throttle: &Throttle) -> bool {
    let owned: Vec<&crate::Route> = state
        .owned
        .iter()
        .filter_map(|name| ctx.route(name))
        .collect();
    let topics: BTreeSet<&str> = owned.iter().map(|r| r.config.topic.as_str()).collect();
    let mut marks: HashMap<&str, Vec<PartitionWatermarks>> = HashMap::new();
    for topic in topics {
        match ctx.reader.high_watermarks(topic).await {
            Ok(found) => {
                marks.insert(topic, found);
            }
            Err(error) => {
                for route in owned.iter().filter(|r| r.config.topic == topic) {
                    metrics::kafka_error(&route.config.name, "high_watermarks");
                }
                if throttle.ready(topic) {
                    tracing::warn!(%topic, %error, "Planner could not read the topic's watermarks; retrying every tick.");
                }
            }
        }
    }

    // Nothing moved in Kafka and no round is due: nothing to do this tick (an idle worker's ticks cost
    // one watermark request per topic, and no CPU per route).
    let unchanged = marks.len() == state.last_marks.len()
        && marks
            .iter()
            .all(|(topic, found)| state.last_marks.get(*topic) == Some(found));
    // Watermarks to move over ranges settled since the last round: only while some partition has
    // ranges carved and not yet passed (a fully settled worker runs no rounds at all), or to read the
    // progress of routes just claimed.
    let settling = state
        .progress
        .values()
        .any(|p| p.watermark < p.frontier || p.expired_leases > 0);
    let round_due = state.schedule.round_due(settling);
    if unchanged && !state.uncarved && !round_due {
        return false;
    }
    state.last_marks = marks
        .iter()
        .map(|(topic, found)| ((*topic).to_owned(), found.clone()))
        .collect();
    let fresh = state.schedule.progress_known();
    let mut requests = Vec::new();
    // Some partition has messages not carved yet (its backlog is full, or its tail waits): rounds go
    // on every tick, so watermarks advance and the backlog refills as fast as delivery drains it.
    let mut uncarved = false;
    for route in &owned {
        let Some(marks) = marks.get(route.config.topic.as_str()) else {
            continue;
        };
        let name = &route.config.name;
        // Partitions the route has not seen were added to the topic after it began: they start at their
        // log start, so nothing written to them is skipped (registration is idempotent).
        let new: Vec<(i32, i64)> = marks
            .iter()
            .filter(|m| fresh && !state.progress.contains_key(&(name.clone(), m.partition)))
            .map(|m| (m.partition, m.low))
            .collect();
        if !new.is_empty() {
            if let Err(error) = ctx.store.ensure_partitions(name, &new).await {
                metrics::store_error("ensure partitions");
                if throttle.ready(&format!("{name}/partitions")) {
                    tracing::warn!(route = %name, %error, "Could not register new partitions; retrying.");
                }
            }
            state.schedule.reread_progress(); // read them back in this tick's round
        }
        for mark in marks {
            let key = (name.clone(), mark.partition);
            let Some(progress) = state.progress.get(&key).copied() else {
                continue;
            };
            let behind = state.behind_ticks.entry(key).or_default();
            uncarved |= mark.high > progress.frontier;
            if let Some(request) = plan_request(ctx, route, mark, &progress, behind, throttle) {
                requests.push(request);
            }
        }
    }

    state.uncarved = uncarved;
    let moved = uncarved || !unchanged;
    if requests.is_empty() && !uncarved && !round_due && state.schedule.progress_known() {
        report_lag(&owned, &marks, state);
        return moved;
    }
    let round = PlanRound {
        routes: state.owned.clone(),
        partitions: requests,
    };
    match ctx.store.plan_round(&round).await {
        Ok(outcome) => {
            state.schedule.round_done();
            state.schedule.tail_held = round
                .partitions
                .iter()
                .zip(&outcome.planned)
                .any(|(request, planned)| holds_tail_back(request, planned.frontier));
            // The new ranges in hands of `leases_per_task` (at most one per task) are announced: one
            // idle task is woken, and each that takes a hand wakes the next while hands remain.
            let hands = outcome.carved().div_ceil(ctx.config.leases_per_task.max(1));
            ctx.live.announce(hands.min(ctx.config.delivery_tasks));
            if outcome.progress.iter().any(|(_, p)| p.expired_leases > 0) {
                // A worker died or stalled: its ranges are up for grabs now, not at the next idle poll.
                ctx.live.work.notify_one();
            }
            state.progress = outcome
                .progress
                .into_iter()
                .map(|(route, p)| ((route, p.partition), p))
                .collect();
            // Against the progress just read (routes just claimed had none before the round): messages
            // still not carved, or partitions not registered yet (added to the topic), keep the ticks
            // coming.
            state.uncarved = owned.iter().any(|route| {
                marks.get(route.config.topic.as_str()).is_some_and(|marks| {
                    marks.iter().any(|mark| {
                        state
                            .progress
                            .get(&(route.config.name.clone(), mark.partition))
                            .is_none_or(|p| mark.high > p.frontier)
                    })
                })
            });
        }
        Err(error) => {
            metrics::store_error("plan");
            if throttle.ready("plan") {
                tracing::warn!(%error, routes = round.routes.len(), "Planning round failed; retrying every tick.");
            }
        }
    }
    report_lag(&owned, &marks, state);
    if state.schedule.due_compaction() {
        if let Err(error) = ctx.store.compact_routes(&state.owned, 10_000).await {
            metrics::store_error("compact");
            tracing::debug!(%error, "Compaction failed; it runs again later.");
        }
    }
    moved
}

/// Whether a round that carved `request` up to `frontier` held the partition's short tail back (the
/// store carves it after `max_tail_age` while ranges of it are in flight): less than a range left, not
/// a backlog capped at `ranges_ahead`.
fn holds_tail_back(request: &PlanRequest, frontier: i64) -> bool {
    let left = request.high_watermark - frontier;
    left > 0 && left < i64::from(request.range_size)
}

/// What to carve of one partition this round, if anything.
fn plan_request(
    ctx: &Context,
    route: &crate::Route,
    mark: &PartitionWatermarks,
    progress: &PartitionProgress,
    behind: &mut u32,
    throttle: &Throttle,
) -> Option<PlanRequest> {
    let name = &route.config.name;
    if mark.high < progress.frontier {
        *behind += 1;
        if *behind >= 3 && throttle.ready(&format!("{name}/{}/behind", mark.partition)) {
            tracing::error!(
                route = %name, partition = mark.partition, high_watermark = mark.high, frontier = progress.frontier,
                "Kafka's high watermark stays below courier's frontier: the topic was deleted and recreated, or this is another cluster. courier never moves progress backwards. Runbook: docs/runbooks/lag.md"
            );
        }
        return None;
    }
    *behind = 0;
    let range_size = i64::from(route.config.range_size);
    let backlog = usize::try_from((progress.frontier - progress.watermark) / range_size)
        .unwrap_or(usize::MAX);
    if mark.high == progress.frontier || backlog >= ctx.config.ranges_ahead {
        return None;
    }
    // The store carves the short tail at once when nothing of the partition is in flight (it knows that
    // in the round's own transaction; the progress cached here is a round old), else after max_tail_age.
    Some(PlanRequest {
        route: name.clone(),
        partition: mark.partition,
        high_watermark: mark.high,
        range_size: route.config.range_size,
        max_new_ranges: ctx.config.ranges_ahead - backlog,
        max_tail_age: ctx.config.max_tail_age,
    })
}

fn report_lag(
    owned: &[&crate::Route],
    marks: &HashMap<&str, Vec<PartitionWatermarks>>,
    state: &State,
) {
    for route in owned {
        let Some(marks) = marks.get(route.config.topic.as_str()) else {
            continue;
        };
        let lag: i64 = marks
            .iter()
            .filter_map(|m| {
                let progress = state
                    .progress
                    .get(&(route.config.name.clone(), m.partition))?;
                // Offsets below the log start no longer exist: they are no lag (they are lost, and
                // recorded as such when their ranges are read).
                Some((m.high - progress.watermark.max(m.low)).max(0))
            })
            .sum();
        metrics::lag(&route.config.name, lag);
    }
}

/// Reads every destination's shared `Retry-After` from the store into its deliverer, in one statement,
/// so a 429 seen by any worker holds off every worker.
async fn share_retry_after(ctx: &Context) {
    let names: Vec<String> = ctx
        .routes
        .iter()
        .map(|r| r.config.destination.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    match ctx.store.destination_waits(&names).await {
        Ok(waits) => {
            for (destination, wait) in waits {
                for route in ctx
                    .routes
                    .iter()
                    .filter(|r| r.config.destination == destination)
                {
                    // The deliverer's gate runs on the standard clock.
                    route
                        .deliverer
                        .block_until(std::time::Instant::now() + wait);
                }
            }
        }
        Err(_) => metrics::store_error("destination wait"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(partition: i32) -> PartitionProgress {
        PartitionProgress {
            partition,
            initial_offset: 0,
            frontier: 100,
            watermark: 100,
            expired_leases: 0,
        }
    }

    #[test]
    fn a_tail_is_held_back_when_less_than_a_range_is_left_uncarved() {
        let request = PlanRequest {
            route: "orders".into(),
            partition: 0,
            high_watermark: 1_050,
            range_size: 100,
            max_new_ranges: 32,
            max_tail_age: Duration::from_millis(200),
        };
        // 50 messages left behind ranges in flight: the planner wakes when they settle.
        assert!(holds_tail_back(&request, 1_000));
        assert!(holds_tail_back(&request, 1_049));
        // Everything carved: nothing to wake for.
        assert!(!holds_tail_back(&request, 1_050));
        // A whole range or more left: the backlog is capped at ranges_ahead, not a tail waiting.
        assert!(!holds_tail_back(&request, 950));
        assert!(!holds_tail_back(&request, 900));
    }

    #[test]
    fn the_same_routes_in_another_order_are_no_change_of_ownership() {
        let mut state = State::new(&crate::WorkerConfig::default());
        assert!(state.adopt(vec!["b".into(), "a".into(), "c".into()]));
        state.schedule.round_done();
        for route in ["a", "b", "c"] {
            state.progress.insert((route.into(), 0), progress(0));
        }
        // The store answers in no particular order: nothing changed, nothing is re-read.
        assert!(!state.adopt(vec!["c".into(), "a".into(), "b".into()]));
        assert!(state.schedule.progress_known());
        assert_eq!(state.progress.len(), 3);
        // A route lost: its progress goes, and the next round reads the rest afresh.
        assert!(state.adopt(vec!["c".into(), "a".into()]));
        assert!(!state.schedule.progress_known());
        assert_eq!(state.owned, vec!["a".to_owned(), "c".to_owned()]);
        let mut left: Vec<&str> = state.progress.keys().map(|(r, _)| r.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["a", "c"]);
    }
}
