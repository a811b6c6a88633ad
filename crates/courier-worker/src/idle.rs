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

use crate::Context;

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
        ctx: &Context,
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
                *idle_wait = (*idle_wait * 2).min(ctx.config.max_idle_poll.max(ctx.config.poll_interval));
                waited
            }
            () = crate::stopped(stop) => false,
        }
    }
}
