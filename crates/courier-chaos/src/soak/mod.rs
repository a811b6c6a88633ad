//! The randomized fault soak (`courier gameday --soak DURATION [--seed N]`, `make soak`): steady
//! production through several `courier run` workers while faults drawn from a seeded RNG, with random
//! durations and overlaps, hit the pipeline; then every message is judged.
//!
//! The soak runs on its own PostgreSQL cluster and Kafka broker (other ports, started by the project's
//! scripts with overrides), because it restarts them; the shared services are never touched.
//!
//! # Layout
//! - [`schedule`]: the fault kinds and the schedule, a pure function of the seed, with its rules.
//! - [`services`]: the soak's own PostgreSQL and Kafka, started and restarted through `scripts/`.
//! - [`fleet`]: the workers: kill, restart, SIGSTOP / SIGCONT, rollout to a new URL, supervision.
//! - [`inject`]: one fault injected, held and undone.
//! - [`run`](mod@run): the run, the watch on delivery, the judge.
//! - [`report`]: the soak's report.

mod fleet;
mod inject;
mod report;
mod run;
mod schedule;
mod services;

pub use report::SoakReport;
pub use run::{run, SoakOptions};
