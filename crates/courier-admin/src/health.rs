//! `/healthz` and `/readyz`: is the process working, and can it do its job.
//!
//! Owns:
//! - liveness ([`liveness`]): every loop of the worker (planner, delivery tasks, heartbeat) came round
//!   within the stall bound. A store or Kafka that is away does not fail it (every call the loops make
//!   is bounded, so they keep coming round): restarting would not fix them.
//! - readiness ([`Readiness`]): checked in the background every [`CHECK_EVERY`], so a probe is answered
//!   at once: the store answers and its schema is the one this binary needs, Kafka answers. Not ready
//!   while booting or draining.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use courier_kafka::{KafkaConfig, RangeReader};
use courier_store::Migrator;
use courier_worker::{Liveness, Loop, WorkerView};
use tokio::time::Instant;

/// How often readiness is checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Bound on each readiness check's call to the store or Kafka.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// An answer to a probe: healthy or not, and a line saying why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    pub text: String,
}

/// Liveness of a worker from its loops' beats: `None` while it boots (boot has its own deadline,
/// `worker.boot_timeout`).
pub fn liveness(beats: Option<&Liveness>, stall_bound: Duration) -> Verdict {
    let Some(live) = beats else {
        return Verdict {
            ok: true,
            text: "starting: connecting to the store and Kafka (bounded by worker.boot_timeout)"
                .into(),
        };
    };
    if live.draining() {
        return Verdict {
            ok: true,
            text: "draining: finishing in-flight ranges before exiting".into(),
        };
    }
    let mut stalled = Vec::new();
    let mut beats = Vec::new();
    for which in Loop::ALL {
        let since = live.since_last(which);
        beats.push(format!("{} {:.1}s ago", which.name(), since.as_secs_f64()));
        if since > stall_bound {
            stalled.push(format!(
                "the {} loop has not come round for {} (bound {})",
                which.name(),
                crate::report::seconds(since),
                crate::report::seconds(stall_bound)
            ));
        }
    }
    if stalled.is_empty() {
        Verdict {
            ok: true,
            text: format!("ok: {}", beats.join(", ")),
        }
    } else {
        Verdict {
            ok: false,
            text: format!(
                "stuck: {}. The process is alive but not working: restart it, and keep its log (and a stack dump if you can) for the bug report. Runbook: docs/runbooks/no-live-worker.md",
                stalled.join("; ")
            ),
        }
    }
}

/// The last readiness check's outcome.
#[derive(Debug)]
pub struct Readiness {
    last: Mutex<Option<(Instant, Verdict)>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            last: Mutex::new(None),
        }
    }
}

impl Readiness {
    /// The verdict for a probe now.
    pub fn verdict(&self, worker: Option<&WorkerView>) -> Verdict {
        let Some(worker) = worker else {
            return Verdict {
                ok: false,
                text: "not ready: starting (connecting to the store and Kafka, bounded by worker.boot_timeout)"
                    .into(),
            };
        };
        if worker.liveness().draining() {
            return Verdict {
                ok: false,
                text: "not ready: draining (stopping; finishing in-flight ranges)".into(),
            };
        }
        let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        match &*last {
            None => Verdict {
                ok: false,
                text: "not ready: the first check of the store and Kafka has not finished yet"
                    .into(),
            },
            Some((at, _)) if at.elapsed() > CHECK_EVERY * 3 + CHECK_TIMEOUT * 2 => Verdict {
                ok: false,
                text: format!(
                    "not ready: the background check last finished {} ago",
                    crate::report::seconds(at.elapsed())
                ),
            },
            Some((_, verdict)) => verdict.clone(),
        }
    }

    fn record(&self, verdict: Verdict) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), verdict));
    }

    /// Checks the store and Kafka every [`CHECK_EVERY`], forever (the task is dropped with the server).
    pub async fn check_forever(&self, worker: WorkerView, kafka: KafkaConfig) {
        let topic = worker.routes().next().map(|route| route.topic.clone());
        let brokers = kafka.brokers.clone();
        let mut reader: Option<RangeReader> = None;
        let migrator = Migrator::embedded();
        let mut every = tokio::time::interval(CHECK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let mut problems = Vec::new();
            let store = worker.store();
            match tokio::time::timeout(CHECK_TIMEOUT, migrator.check_store(store)).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => problems.push(format!(
                    "the store at {} fails: {error}. Runbook: docs/runbooks/store-unavailable.md",
                    store.target()
                )),
                Err(_) => problems.push(format!(
                    "the store at {} did not answer within {}. Runbook: docs/runbooks/store-unavailable.md",
                    store.target(),
                    crate::report::seconds(CHECK_TIMEOUT)
                )),
            }
            if reader.is_none() {
                match crate::report::connect_reader(&kafka, CHECK_TIMEOUT).await {
                    Ok(made) => reader = Some(made),
                    Err(error) => problems.push(format!(
                        "{error}. Runbook: docs/runbooks/kafka-unavailable.md"
                    )),
                }
            }
            if let (Some(reader), Some(topic)) = (&reader, &topic) {
                match tokio::time::timeout(CHECK_TIMEOUT, reader.high_watermarks(topic)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => problems.push(format!(
                        "Kafka at {brokers} fails: {error}. Runbook: docs/runbooks/kafka-unavailable.md"
                    )),
                    Err(_) => problems.push(format!(
                        "Kafka at {brokers} did not answer within {}. Runbook: docs/runbooks/kafka-unavailable.md",
                        crate::report::seconds(CHECK_TIMEOUT)
                    )),
                }
            }
            self.record(if problems.is_empty() {
                Verdict {
                    ok: true,
                    text: "ready: the store answers with the current schema, Kafka answers".into(),
                }
            } else {
                Verdict {
                    ok: false,
                    text: format!("not ready: {}", problems.join("; ")),
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_that_stops_coming_round_fails_liveness_by_name() {
        let beats = Liveness::default();
        for which in Loop::ALL {
            beats.beat(which);
        }
        let verdict = liveness(Some(&beats), Duration::from_secs(3600));
        assert!(
            verdict.ok && verdict.text.contains("planner"),
            "{verdict:?}"
        );

        std::thread::sleep(Duration::from_millis(30));
        beats.beat(Loop::Delivery);
        beats.beat(Loop::Heartbeat);
        let verdict = liveness(Some(&beats), Duration::from_millis(20));
        assert!(!verdict.ok, "{verdict:?}");
        assert!(
            verdict.text.contains("the planner loop has not come round")
                && !verdict.text.contains("the delivery loop")
                && verdict.text.contains("docs/runbooks/no-live-worker.md"),
            "{verdict:?}"
        );
    }

    #[test]
    fn booting_is_alive_but_not_ready() {
        assert!(liveness(None, Duration::from_secs(1)).ok);
        let ready = Readiness::default().verdict(None);
        assert!(!ready.ok && ready.text.contains("starting"), "{ready:?}");
    }
}
