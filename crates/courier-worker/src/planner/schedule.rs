//! When the planner does what: how long it waits between ticks, and when a claim, a round, a compaction
//! or a read of the destinations' shared `Retry-After` is due.
//!
//! Only decisions about time live here, on [`tokio::time::Instant`], with no I/O: the planner loop
//! (`super`) asks and does the store and Kafka calls they lead to, so the decisions are tested with
//! paused time against the very code the loop runs, with no store or Kafka to mock.

use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{planner_ttl, ADVANCE_EVERY, QUIET_PLAN_INTERVAL, RETRY_AFTER_EVERY};
use crate::WorkerConfig;

/// The planner's clock: when it last did each thing, and what that makes due.
pub(super) struct Schedule {
    /// The wait while messages arrive (`plan_interval`).
    busy: Duration,
    /// The longest wait, while nothing moves.
    quiet: Duration,
    /// The wait before the next tick.
    wait: Duration,
    /// When the last tick began: ticks keep a fixed rate, so a tick's own duration (Kafka and store
    /// round trips) is not added to the wait of the messages that arrive meanwhile.
    last_tick: Instant,
    /// How long a claim on planning a route lasts without renewal.
    ttl: Duration,
    compact_every: Duration,
    last_claim: Option<Instant>,
    /// `None` until a round reads the progress of the routes owned now.
    last_round: Option<Instant>,
    last_compaction: Instant,
    last_retry_after: Option<Instant>,
    /// The last round held some partition's short tail back because ranges of it were in flight: the
    /// planner ticks again as soon as this worker settles ranges.
    pub tail_held: bool,
}

impl Schedule {
    pub fn new(config: &WorkerConfig) -> Self {
        let now = Instant::now();
        let busy = config.plan_interval;
        Self {
            busy,
            quiet: busy.max(QUIET_PLAN_INTERVAL),
            wait: busy,
            last_tick: now,
            ttl: planner_ttl(config),
            compact_every: config.compact_every,
            last_claim: None,
            last_round: None,
            // Compaction first runs one compact_every after start (chaos runs and tests read settled
            // ranges back, with compaction set far out).
            last_compaction: now,
            last_retry_after: None,
            tail_held: false,
        }
    }

    /// Waits for the next tick: `wait` after the last one began, or as soon as `settled` is notified
    /// while a tail is held back behind ranges in flight (a notification before the wait counts too).
    pub async fn next_tick(&mut self, settled: &Notify) {
        let settled = settled.notified();
        tokio::select! {
            () = tokio::time::sleep_until(self.last_tick + self.wait) => {}
            () = settled, if self.tail_held => {}
        }
        self.last_tick = Instant::now();
    }

    /// After a tick that saw messages arrive (`moved`), the next comes `plan_interval` after it, so they
    /// are carved and delivered within about that long; while nothing moves the wait doubles up to the
    /// quiet interval, so an idle worker's planner costs little.
    pub fn ticked(&mut self, moved: bool) {
        self.wait = if moved {
            self.busy
        } else {
            (self.wait * 2).min(self.quiet)
        };
    }

    /// Claims are renewed every third of their TTL, so one late renewal does not lose them.
    pub fn claim_due(&self) -> bool {
        due(self.last_claim, self.ttl / 3)
    }

    pub fn claimed(&mut self) {
        self.last_claim = Some(Instant::now());
    }

    /// A claim not renewed for its TTL has lapsed: another worker may be planning those routes now.
    pub fn claim_lapsed(&self) -> bool {
        self.last_claim.is_some_and(|at| at.elapsed() >= self.ttl)
    }

    /// Whether a round is due with nothing new to carve: at once when the progress of the routes owned
    /// is not known, else at most every [`ADVANCE_EVERY`] while some partition is `settling` (ranges
    /// carved and not passed by its watermark yet), and never for a fully settled worker.
    pub fn round_due(&self, settling: bool) -> bool {
        self.last_round.is_none() || (settling && due(self.last_round, ADVANCE_EVERY))
    }

    /// A round read the progress of every route owned.
    pub fn round_done(&mut self) {
        self.last_round = Some(Instant::now());
    }

    /// Routes or partitions were added: the next round reads every route's progress afresh.
    pub fn reread_progress(&mut self) {
        self.last_round = None;
    }

    /// Whether a round read the progress of the routes owned now.
    pub fn progress_known(&self) -> bool {
        self.last_round.is_some()
    }

    /// Whether settled ranges are to be compacted now; the next compaction is then `compact_every`
    /// later.
    pub fn due_compaction(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.last_compaction) < self.compact_every {
            return false;
        }
        self.last_compaction = now;
        true
    }

    /// Whether the destinations' shared `Retry-After` is to be read now (at the first tick, then every
    /// [`RETRY_AFTER_EVERY`]).
    pub fn due_retry_after(&mut self) -> bool {
        if !due(self.last_retry_after, RETRY_AFTER_EVERY) {
            return false;
        }
        self.last_retry_after = Some(Instant::now());
        true
    }
}

fn due(last: Option<Instant>, every: Duration) -> bool {
    last.is_none_or(|at| at.elapsed() >= every)
}

#[cfg(test)]
mod tests {
    use tokio::time::advance;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn config(plan_interval: Duration) -> WorkerConfig {
        WorkerConfig {
            plan_interval,
            ..WorkerConfig::default()
        }
    }

    /// Waits for the next tick; how long that took.
    async fn wait_for_tick(schedule: &mut Schedule, settled: &Notify) -> Duration {
        let from = Instant::now();
        schedule.next_tick(settled).await;
        from.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_planner_slows_down_to_the_quiet_interval_and_new_messages_bring_it_back() {
        let settled = Notify::new();
        let mut schedule = Schedule::new(&config(50 * MS));
        assert_eq!(wait_for_tick(&mut schedule, &settled).await, 50 * MS);
        let mut waits = Vec::new();
        for _ in 0..5 {
            schedule.ticked(false);
            waits.push(wait_for_tick(&mut schedule, &settled).await);
        }
        assert_eq!(waits, [100 * MS, 200 * MS, 250 * MS, 250 * MS, 250 * MS]);
        assert_eq!(QUIET_PLAN_INTERVAL, 250 * MS);
        // Messages arrive: straight back to plan_interval, not halving down from the quiet interval.
        schedule.ticked(true);
        assert_eq!(wait_for_tick(&mut schedule, &settled).await, 50 * MS);
        schedule.ticked(true);
        assert_eq!(wait_for_tick(&mut schedule, &settled).await, 50 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn a_plan_interval_longer_than_the_quiet_interval_is_kept_while_quiet() {
        let settled = Notify::new();
        let mut schedule = Schedule::new(&config(Duration::from_secs(1)));
        for _ in 0..3 {
            assert_eq!(
                wait_for_tick(&mut schedule, &settled).await,
                Duration::from_secs(1)
            );
            schedule.ticked(false);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ticks_keep_a_fixed_rate_whatever_a_tick_costs() {
        let settled = Notify::new();
        let mut schedule = Schedule::new(&config(50 * MS));
        schedule.next_tick(&settled).await;
        // A tick that takes 30 ms (Kafka and store round trips): the next one is 50 ms after it began.
        advance(30 * MS).await;
        schedule.ticked(true);
        assert_eq!(wait_for_tick(&mut schedule, &settled).await, 20 * MS);
        // A tick longer than the wait: the next one starts at once.
        advance(80 * MS).await;
        schedule.ticked(true);
        assert_eq!(wait_for_tick(&mut schedule, &settled).await, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tail_held_back_goes_as_soon_as_ranges_settle_and_only_then() {
        let settled = Notify::new();
        let mut schedule = Schedule::new(&config(50 * MS));
        schedule.next_tick(&settled).await;
        schedule.ticked(false); // next tick in 100 ms
        let settle_after = |wait: Duration| {
            let settled = &settled;
            async move {
                tokio::time::sleep(wait).await;
                settled.notify_one();
            }
        };
        // No tail held: ranges settling do not hurry the planner.
        let (waited, ()) = tokio::join!(
            wait_for_tick(&mut schedule, &settled),
            settle_after(10 * MS)
        );
        assert_eq!(waited, 100 * MS);
        // The notification is kept; a tail held now goes at once.
        schedule.tail_held = true;
        assert_eq!(wait_for_tick(&mut schedule, &settled).await, Duration::ZERO);
        // A tail held: the planner ticks when ranges settle, not at its next tick.
        let (waited, ()) = tokio::join!(
            wait_for_tick(&mut schedule, &settled),
            settle_after(10 * MS)
        );
        assert_eq!(waited, 10 * MS);
        // Held, but nothing settles: the tick comes as usual.
        assert_eq!(wait_for_tick(&mut schedule, &settled).await, 100 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn a_round_with_nothing_new_runs_at_most_every_advance_every_and_only_while_settling() {
        let mut schedule = Schedule::new(&WorkerConfig::default());
        // The progress of the routes owned is not known yet: a round at once, settling or not.
        assert!(schedule.round_due(false));
        assert!(!schedule.progress_known());
        schedule.round_done();
        assert!(schedule.progress_known());
        assert!(!schedule.round_due(true));
        advance(ADVANCE_EVERY - MS).await;
        assert!(!schedule.round_due(true));
        advance(MS).await;
        assert!(schedule.round_due(true));
        // A fully settled worker runs no rounds at all, however long it waits.
        advance(Duration::from_secs(3600)).await;
        assert!(!schedule.round_due(false));
        // Routes or partitions added: a round at once.
        schedule.round_done();
        schedule.reread_progress();
        assert!(schedule.round_due(false));
        assert!(!schedule.progress_known());
    }

    #[tokio::test(start_paused = true)]
    async fn claims_are_renewed_every_third_of_their_ttl_and_lapse_after_it() {
        let config = WorkerConfig {
            lease_ttl: Duration::from_secs(3),
            ..WorkerConfig::default()
        };
        let mut schedule = Schedule::new(&config);
        // Nothing claimed yet: a claim at the first tick, and none to lapse.
        assert!(schedule.claim_due());
        assert!(!schedule.claim_lapsed());
        schedule.claimed();
        assert!(!schedule.claim_due());
        advance(Duration::from_secs(1) - MS).await;
        assert!(!schedule.claim_due());
        advance(MS).await;
        assert!(schedule.claim_due());
        // Renewals keep failing: the claim lapses one TTL after the last one that went through.
        advance(Duration::from_secs(2) - MS).await;
        assert!(!schedule.claim_lapsed());
        advance(MS).await;
        assert!(schedule.claim_lapsed());
        schedule.claimed();
        assert!(!schedule.claim_lapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_lasts_a_lease_ttl_but_at_most_max_planner_ttl() {
        let config = WorkerConfig {
            lease_ttl: Duration::from_secs(30),
            ..WorkerConfig::default()
        };
        let mut schedule = Schedule::new(&config);
        schedule.claimed();
        advance(Duration::from_secs(2) - MS).await;
        assert!(!schedule.claim_due());
        advance(MS).await;
        assert!(schedule.claim_due());
        advance(Duration::from_secs(4)).await;
        assert!(schedule.claim_lapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn compaction_first_runs_one_period_after_start_and_retry_after_is_read_at_once() {
        let config = WorkerConfig {
            compact_every: Duration::from_secs(10),
            ..WorkerConfig::default()
        };
        let mut schedule = Schedule::new(&config);
        assert!(!schedule.due_compaction());
        assert!(schedule.due_retry_after());
        assert!(!schedule.due_retry_after());
        advance(RETRY_AFTER_EVERY - MS).await;
        assert!(!schedule.due_retry_after());
        advance(MS).await;
        assert!(schedule.due_retry_after());
        advance(Duration::from_secs(9) - MS).await;
        assert!(!schedule.due_compaction());
        advance(MS).await;
        assert!(schedule.due_compaction());
        // Counted as done: the next one is a full period later.
        assert!(!schedule.due_compaction());
        advance(Duration::from_secs(10) - MS).await;
        assert!(!schedule.due_compaction());
        advance(MS).await;
        assert!(schedule.due_compaction());
    }
}
