//! What idle delivery tasks do: one polls the store for the whole worker, the others wait to be woken.
//!
//! Owns [`Gate`] (one for live tasks, one for replay tasks). An idle worker used to cost one lease
//! statement per task per poll; now it costs one per poll whatever the number of tasks (and, with
//! leasing across routes, whatever the number of routes). The task holding the turn waits
//! `poll_interval`, doubling to `max_idle_poll`, then looks again; the others wait for
//! [`Gate::work`]: the planner wakes one task per range it carves, and a task that finds work wakes one
//! more, so a burst of work fans out without every idle task querying the store at once.

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
}

impl Gate {
    /// Waits until there may be work: woken by [`Gate::work`], or after this task's turn at polling.
    /// Returns `false` when the worker is stopping.
    pub async fn wait_for_work(
        &self,
        config: &WorkerConfig,
        idle_wait: &mut Duration,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let woken = self.work.notified();
        tokio::pin!(woken);
        tokio::select! {
            () = &mut woken => true,
            turn = self.turn.lock() => {
                let waited = tokio::select! {
                    () = tokio::time::sleep(*idle_wait) => true,
                    () = &mut woken => true,
                    () = crate::stopped(stop) => false,
                };
                drop(turn);
                *idle_wait = (*idle_wait * 2).min(config.max_idle_poll.max(config.poll_interval));
                waited
            }
            () = crate::stopped(stop) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::{sleep, Instant};

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn config() -> WorkerConfig {
        WorkerConfig {
            poll_interval: 100 * MS,
            max_idle_poll: 1_000 * MS,
            ..WorkerConfig::default()
        }
    }

    /// Waits for work as an idle task does; whether to go on, and how long that took.
    async fn wait(
        gate: &Gate,
        idle_wait: &mut Duration,
        stop: &watch::Receiver<bool>,
    ) -> (bool, Duration) {
        let from = Instant::now();
        let go_on = gate
            .wait_for_work(&config(), idle_wait, &mut stop.clone())
            .await;
        (go_on, from.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn the_polling_task_looks_again_after_its_wait_which_doubles_up_to_max_idle_poll() {
        let gate = Gate::default();
        let (_stop, stopping) = watch::channel(false);
        let mut idle_wait = config().poll_interval;
        let mut waits = Vec::new();
        for _ in 0..6 {
            let (go_on, waited) = wait(&gate, &mut idle_wait, &stopping).await;
            assert!(go_on);
            waits.push(waited);
        }
        assert_eq!(waits, [100, 200, 400, 800, 1_000, 1_000].map(|ms| ms * MS));
    }

    #[tokio::test(start_paused = true)]
    async fn one_idle_task_polls_at_a_time() {
        let gate = Gate::default();
        let (_stop, stopping) = watch::channel(false);
        let (mut first, mut second) = (100 * MS, 100 * MS);
        let ((_, first_waited), (_, second_waited)) = tokio::join!(
            wait(&gate, &mut first, &stopping),
            wait(&gate, &mut second, &stopping)
        );
        // The second task takes its turn only once the first has looked: two lease statements in
        // 200 ms, not two every 100 ms.
        assert_eq!(first_waited, 100 * MS);
        assert_eq!(second_waited, 200 * MS);
        assert_eq!((first, second), (200 * MS, 200 * MS));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_tasks_wake_at_once_when_work_is_notified() {
        let gate = Gate::default();
        let (_stop, stopping) = watch::channel(false);
        let (mut polling, mut waiting) = (1_000 * MS, 1_000 * MS);
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
            wait(&gate, &mut polling, &stopping),
            wait(&gate, &mut waiting, &stopping),
            notify_twice_after(10 * MS)
        );
        assert!(polled && woken);
        assert_eq!((polling_waited, waiting_waited), (10 * MS, 10 * MS));
        // Work notified while no task waited is kept: the next task to wait goes at once.
        gate.work.notify_one();
        assert_eq!(
            wait(&gate, &mut polling, &stopping).await,
            (true, Duration::ZERO)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_tasks_stop_at_once_when_the_worker_stops() {
        let gate = Gate::default();
        let (stop, stopping) = watch::channel(false);
        let (mut polling, mut waiting) = (1_000 * MS, 1_000 * MS);
        let stop_after = |after: Duration| {
            let stop = &stop;
            async move {
                sleep(after).await;
                stop.send_replace(true);
            }
        };
        let (polled, waited, ()) = tokio::join!(
            wait(&gate, &mut polling, &stopping),
            wait(&gate, &mut waiting, &stopping),
            stop_after(10 * MS)
        );
        assert_eq!(polled, (false, 10 * MS));
        assert_eq!(waited, (false, 10 * MS));
    }
}
