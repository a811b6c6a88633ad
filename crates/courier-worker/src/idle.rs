//! What idle delivery tasks do: one polls the store for the whole worker, the others wait to be woken.
//!
//! Owns [`Gate`] (one for live tasks, one for replay tasks). An idle worker used to cost one lease
//! statement per task per poll; now it costs one per poll whatever the number of tasks (and, with
//! leasing across routes, whatever the number of routes). The task holding the turn waits the gate's
//! poll wait, then looks again; the wait starts at `poll_interval` and doubles up to `max_idle_poll`
//! each time a poll finds nothing, **for the worker as a whole**: the turn passes from task to task, and
//! a wait kept per task let eight tasks poll eight times at the shortest wait before any of them slowed
//! down (measured: 37 lease statements for 40 ranges in a two-second drain). Any task that finds work
//! brings it back to `poll_interval` ([`Gate::found_work`]), and a wait already begun then ends within
//! `poll_interval`: while the worker is busy, a range no wake-up announced (a retry whose backoff
//! passed, say) waits about `poll_interval` to be found, not a wait grown while the worker was idle. The
//! others wait for [`Gate::work`]: the planner wakes one task for the hands of ranges it carves
//! ([`Gate::announce`]), and a task that finds a full hand nobody announced, or while announced hands
//! remain, wakes one more ([`Gate::took_hand`]), so a burst of work fans out without every idle task
//! querying the store at once, and the one hand a planner tick carves at the tail of the log costs one
//! lease statement, not two (the second task found nothing: a fifth of courier's store transactions at
//! 5,000 msgs/s).

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex as SyncMutex, PoisonError};
use std::time::Duration;

use tokio::sync::{watch, Mutex, Notify};

use crate::WorkerConfig;

/// The idle tasks of one kind (live or replay).
#[derive(Default)]
pub(crate) struct Gate {
    /// Wakes one waiting task per `notify_one` (a permit is kept when none waits).
    pub work: Notify,
    /// Held by the one idle task that polls.
    turn: Mutex<()>,
    /// How long the next poll waits; `None` until the first poll (then `poll_interval`).
    poll_wait: SyncMutex<Option<Duration>>,
    /// Told when a task finds work, so the polling task's wait (begun while idle) ends within
    /// `poll_interval` of it.
    found: Notify,
    /// Hands the planner announced and no task has taken yet (an estimate: another worker may take
    /// them; reset whenever a lease finds nothing).
    announced: AtomicUsize,
}

impl Gate {
    /// Waits until there may be work: woken by [`Gate::work`], or after this task's turn at polling.
    /// Returns `false` when the worker is stopping.
    pub async fn wait_for_work(
        &self,
        config: &WorkerConfig,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let woken = self.work.notified();
        tokio::pin!(woken);
        tokio::select! {
            () = &mut woken => true,
            turn = self.turn.lock() => {
                let mut due = tokio::time::Instant::now() + self.poll_wait(config);
                let waited = loop {
                    let found = self.found.notified();
                    tokio::select! {
                        () = tokio::time::sleep_until(due) => {
                            // The poll comes now; if it finds nothing, the next one waits longer.
                            let longest = config.max_idle_poll.max(config.poll_interval);
                            let wait = self.poll_wait(config);
                            *self.poll_wait_slot() = Some((wait * 2).min(longest));
                            break true;
                        }
                        () = &mut woken => break true,
                        // Work was found meanwhile: the worker is busy, so poll within poll_interval.
                        () = found => {
                            due = due.min(tokio::time::Instant::now() + config.poll_interval);
                        }
                        () = crate::stopped(stop) => break false,
                    }
                };
                drop(turn);
                waited
            }
            () = crate::stopped(stop) => false,
        }
    }

    /// The planner carved `hands` hands of ranges: wakes one task, which wakes the next when it has
    /// taken its hand ([`Gate::took_hand`]). One after the other, not all at once: tasks leasing at the
    /// same moment pick the same oldest range as their anchor (the lease statement's partition
    /// affinity), and the second takes the partition's next ranges, so two tasks read one partition at
    /// different places (bench kafka-bytes, 8 tasks, ranges of 100: up to 1.32x the pipe's bytes with
    /// the whole batch woken at once).
    pub fn announce(&self, hands: usize) {
        if hands > 0 {
            self.announced.fetch_add(hands, SeqCst);
            self.work.notify_one();
        }
    }

    /// A task leased a hand (`full`: as many ranges as it asked for); whether to wake one more task. For
    /// a hand the planner announced, only while more announced hands remain: the planner counted what
    /// it carved. For a hand nobody announced (another worker's planner, retries whose backoff passed,
    /// leases that expired), when it is full: there may be more.
    pub fn took_hand(&self, full: bool) -> bool {
        let announced = self
            .announced
            .fetch_update(SeqCst, SeqCst, |hands| hands.checked_sub(1))
            .is_ok();
        if announced {
            self.announced.load(SeqCst) > 0
        } else {
            full
        }
    }

    /// A lease found nothing: no announced hand is left to take.
    pub fn found_nothing(&self) {
        self.announced.store(0, SeqCst);
    }

    /// A task found work: the next idle poll comes after `poll_interval` again.
    pub fn found_work(&self, config: &WorkerConfig) {
        *self.poll_wait_slot() = Some(config.poll_interval);
        self.found.notify_waiters();
    }

    fn poll_wait(&self, config: &WorkerConfig) -> Duration {
        self.poll_wait_slot().unwrap_or(config.poll_interval)
    }

    fn poll_wait_slot(&self) -> std::sync::MutexGuard<'_, Option<Duration>> {
        // A poisoned lock only means a task panicked while holding it; a duration is always valid.
        self.poll_wait
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::{sleep, Instant};

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_full_hand_wakes_another_task_only_when_more_may_wait() {
        let gate = Gate::default();
        // Unannounced work: a full hand may have more behind it, a partial one has not.
        assert!(gate.took_hand(true));
        assert!(!gate.took_hand(false));
        // The planner announced one hand: whoever takes it, full or not, need not wake anyone.
        gate.announce(1);
        assert!(!gate.took_hand(true));
        // Two hands: the first taker wakes one more, the second does not.
        gate.announce(2);
        assert!(gate.took_hand(true));
        assert!(!gate.took_hand(true));
        // Announced hands wake one task, not one each: it wakes the next once it has leased.
        let gate = Gate::default();
        gate.announce(3);
        assert!(futures::FutureExt::now_or_never(gate.work.notified()).is_some());
        assert!(futures::FutureExt::now_or_never(gate.work.notified()).is_none());
        assert!(gate.took_hand(true), "two announced hands remain");
        // Announced hands another worker took are forgotten once a lease finds nothing.
        gate.announce(3);
        gate.found_nothing();
        assert!(!gate.took_hand(false));
        assert!(gate.took_hand(true));
    }

    fn config() -> WorkerConfig {
        WorkerConfig {
            poll_interval: 100 * MS,
            max_idle_poll: 1_000 * MS,
            ..WorkerConfig::default()
        }
    }

    /// Waits for work as an idle task does; whether to go on, and how long that took.
    async fn wait(gate: &Gate, stop: &watch::Receiver<bool>) -> (bool, Duration) {
        let from = Instant::now();
        let go_on = gate.wait_for_work(&config(), &mut stop.clone()).await;
        (go_on, from.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn the_polling_task_looks_again_after_its_wait_which_doubles_up_to_max_idle_poll() {
        let gate = Gate::default();
        let (_stop, stopping) = watch::channel(false);
        let mut waits = Vec::new();
        for _ in 0..6 {
            let (go_on, waited) = wait(&gate, &stopping).await;
            assert!(go_on);
            waits.push(waited);
        }
        assert_eq!(waits, [100, 200, 400, 800, 1_000, 1_000].map(|ms| ms * MS));
        // Work found: the next poll comes after poll_interval again.
        gate.found_work(&config());
        assert_eq!(wait(&gate, &stopping).await, (true, 100 * MS));
    }

    #[tokio::test(start_paused = true)]
    async fn work_found_by_another_task_brings_a_long_wait_down_to_poll_interval() {
        let gate = Gate::default();
        let (_stop, stopping) = watch::channel(false);
        for _ in 0..4 {
            wait(&gate, &stopping).await;
        }
        // The wait has grown to 1 s; 10 ms into it another task finds work (woken by the planner): the
        // worker is busy, so the poll comes 100 ms later, not 990 ms.
        let found_after = |after: Duration| {
            let gate = &gate;
            async move {
                sleep(after).await;
                gate.found_work(&config());
            }
        };
        let (polled, ()) = tokio::join!(wait(&gate, &stopping), found_after(10 * MS));
        assert_eq!(polled, (true, 110 * MS));
    }

    #[tokio::test(start_paused = true)]
    async fn one_idle_task_polls_at_a_time_and_the_wait_grows_for_the_worker_not_per_task() {
        let gate = Gate::default();
        let (_stop, stopping) = watch::channel(false);
        let (first, second, third) = tokio::join!(
            wait(&gate, &stopping),
            wait(&gate, &stopping),
            wait(&gate, &stopping)
        );
        // Each task takes the turn once the one before has looked, and each poll waits twice as long
        // as the last, whichever task makes it: three lease statements in 700 ms, not three every
        // 100 ms.
        assert_eq!(
            [first.1, second.1, third.1],
            [100, 300, 700].map(|ms| ms * MS)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_tasks_wake_at_once_when_work_is_notified() {
        let gate = Gate::default();
        let (_stop, stopping) = watch::channel(false);
        let notify_twice_after = |after: Duration| {
            let gate = &gate;
            async move {
                sleep(after).await;
                gate.work.notify_one();
                gate.work.notify_one();
            }
        };
        // Two ranges carved 10 ms in: the task holding the turn and the one waiting for it both go,
        // long before the poll.
        let ((polled, polling_waited), (woken, waiting_waited), ()) = tokio::join!(
            wait(&gate, &stopping),
            wait(&gate, &stopping),
            notify_twice_after(10 * MS)
        );
        assert!(polled && woken);
        assert_eq!((polling_waited, waiting_waited), (10 * MS, 10 * MS));
        // Work notified while no task waited is kept: the next task to wait goes at once.
        gate.work.notify_one();
        assert_eq!(wait(&gate, &stopping).await, (true, Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_tasks_stop_at_once_when_the_worker_stops() {
        let gate = Gate::default();
        let (stop, stopping) = watch::channel(false);
        let stop_after = |after: Duration| {
            let stop = &stop;
            async move {
                sleep(after).await;
                stop.send_replace(true);
            }
        };
        let (polled, waited, ()) = tokio::join!(
            wait(&gate, &stopping),
            wait(&gate, &stopping),
            stop_after(10 * MS)
        );
        assert_eq!(polled, (false, 10 * MS));
        assert_eq!(waited, (false, 10 * MS));
    }
}
