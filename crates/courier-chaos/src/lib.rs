//! Chaos gamedays (see `chaos/README.md`): incident 8 reproduced in PostgreSQL, naive vs courier, and
//! the other faults of that day, each judged by counting every message.
//!
//! Every scenario runs against the real services on 127.0.0.1 (PostgreSQL, Kafka, a recording HTTP
//! destination), in a scratch database of its own that it drops at the end, bounded in time at every
//! step, and ends with a [`ScenarioReport`]: messages in, delivered, duplicates (explained by an
//! interrupted range or not), lost, longest stall, time to recover, and a verdict.
//!
//! # Layout
//! - `judge`: the invariants and measurements, pure (unit-tested on planted faults).
//! - `report`: the report rows, the verdict, the printed tables and JSON.
//! - `env`: the services, scratch databases, naive sessions.
//! - `pipeline`: a live pipeline to break (topic, sink, generator, workers, evidence).
//! - `workers`: workers in-process or as `courier run` processes; kill and stop.
//! - `incident8`: deadlock, pile-up stall, orphan amplification; naive vs courier.
//! - one module per other scenario: `dns`, `rate_limit`, `worker_kill`, `pg_faults`,
//!   `kafka_restart`, `hang`, `boot_storm` (behind a `slow_door`).
//! - `soak`: the randomized fault soak, on services of its own that it restarts.

#![forbid(unsafe_code)]

mod boot_storm;
mod dns;
mod env;
mod hang;
mod incident8;
mod judge;
mod kafka_restart;
mod pg_faults;
mod pipeline;
mod rate_limit;
mod report;
mod scenario;
mod slow_door;
mod soak;
mod worker_kill;
mod workers;

use std::time::Instant;

use serde::Serialize;

pub use env::Services;
pub use judge::{
    judge, longest_stall, Evidence, FaultWindow, Judgement, PartitionBounds, Produced, RangeRecord,
};
pub use report::{fmt_duration, render, Mode, ScenarioReport};
pub use soak::{run as run_soak, SoakOptions, SoakReport};
pub use workers::Launcher;

/// Why a scenario could not be carried out (as opposed to an invariant failing, which is a verdict).
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// The harness could not set something up or tear it down; the message says what to fix.
    #[error("{0}")]
    Setup(String),
    /// An observed-state wait passed its bound: the system never reached the state the scenario
    /// needed (this is a finding, reported as a failed check).
    #[error("stuck: {0}")]
    Stuck(String),
    /// A courier worker failed to boot.
    #[error("worker failed to boot: {0}")]
    WorkerBoot(String),
}

impl From<courier_testkit::SetupError> for ChaosError {
    fn from(error: courier_testkit::SetupError) -> Self {
        Self::Setup(error.0)
    }
}

/// Short runs go in `make test`; full runs are `courier gameday --full` (`make chaos`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Length {
    Short,
    Full,
}

impl Length {
    /// `short` in a short run, `full` in a full one.
    pub fn pick<T>(self, short: T, full: T) -> T {
        match self {
            Self::Short => short,
            Self::Full => full,
        }
    }
}

/// How a gameday runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub length: Length,
    pub launcher: Launcher,
    pub services: Services,
    /// May restart PostgreSQL and Kafka (only `courier gameday --full`, and only when they are ours).
    pub allow_restarts: bool,
}

impl Options {
    /// What the tests use: short, in-process workers, no restarts.
    pub fn short_in_process() -> Self {
        Self {
            length: Length::Short,
            launcher: Launcher::InProcess,
            services: Services::from_env(),
            allow_restarts: false,
        }
    }
}

/// Every scenario, in gameday order. On the command line by [`Scenario::name`] (clap's kebab-case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum Scenario {
    Deadlock,
    PileUp,
    Orphans,
    DnsOutage,
    RateLimit,
    WorkerKill,
    PgTerminate,
    PgRestart,
    KafkaRestart,
    Hang,
    BootStorm,
}

impl Scenario {
    pub const ALL: [Scenario; 11] = [
        Self::Deadlock,
        Self::PileUp,
        Self::Orphans,
        Self::DnsOutage,
        Self::RateLimit,
        Self::WorkerKill,
        Self::PgTerminate,
        Self::PgRestart,
        Self::KafkaRestart,
        Self::Hang,
        Self::BootStorm,
    ];

    /// The name used on the command line and in reports (and the folder under `chaos/`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Deadlock => "deadlock",
            Self::PileUp => "pile-up",
            Self::Orphans => "orphans",
            Self::DnsOutage => "dns-outage",
            Self::RateLimit => "rate-limit",
            Self::WorkerKill => "worker-kill",
            Self::PgTerminate => "pg-terminate",
            Self::PgRestart => "pg-restart",
            Self::KafkaRestart => "kafka-restart",
            Self::Hang => "hang",
            Self::BootStorm => "boot-storm",
        }
    }

    /// One line on what it does.
    pub fn about(self) -> &'static str {
        match self {
            Self::Deadlock => "incident 8: N workers boot at once running startup DDL (naive) vs N migration runners (courier)",
            Self::PileUp => "incident 8: a frozen lock holder and a booting worker's ALTER TABLE stall every lease (naive) vs timeouts and a retried migration (courier)",
            Self::Orphans => "incident 8: clients with short deadlines give up and retry behind a lock; orphaned backends commit claims nobody received (naive) vs none (courier)",
            Self::DnsOutage => "the destination's name does not resolve for a while, then the fix is deployed",
            Self::RateLimit => "the destination answers 429 with Retry-After: 1 for a while",
            Self::WorkerKill => "workers are SIGKILLed mid-batch, repeatedly",
            Self::PgTerminate => "every courier connection is ended with pg_terminate_backend, repeatedly",
            Self::PgRestart => "PostgreSQL restarts (full runs only, only a cluster started by scripts/postgres.sh)",
            Self::KafkaRestart => "the Kafka broker restarts (full runs only, only a broker started by scripts/kafka.sh)",
            Self::Hang => "the destination accepts connections and never answers for a while",
            Self::BootStorm => "50 workers boot at once on a fresh database",
        }
    }

    /// Runs the scenario; always returns its report rows (incident-8 scenarios return a naive and a
    /// courier row). A scenario that could not be carried out is a row with a failed `setup` check.
    pub async fn run(self, options: &Options) -> Vec<ScenarioReport> {
        let started = Instant::now();
        let outcome = match self {
            Self::Deadlock => incident8::deadlock::run(options).await,
            Self::PileUp => incident8::pileup::run(options).await,
            Self::Orphans => incident8::orphans::run(options).await,
            Self::DnsOutage => dns::run(options).await.map(|r| vec![r]),
            Self::RateLimit => rate_limit::run(options).await.map(|r| vec![r]),
            Self::WorkerKill => worker_kill::run(options).await.map(|r| vec![r]),
            Self::PgTerminate => pg_faults::terminate(options).await.map(|r| vec![r]),
            Self::PgRestart => pg_faults::restart(options).await.map(|r| vec![r]),
            Self::KafkaRestart => kafka_restart::run(options).await.map(|r| vec![r]),
            Self::Hang => hang::run(options).await.map(|r| vec![r]),
            Self::BootStorm => boot_storm::run(options).await.map(|r| vec![r]),
        };
        match outcome {
            Ok(reports) => reports,
            Err(error) => {
                let mut report = ScenarioReport::new(self.name(), None, options.length);
                report.check("setup", false, error.to_string());
                report.elapsed = started.elapsed();
                vec![report]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::Scenario;

    #[test]
    fn a_scenarios_name_is_what_the_command_line_takes() {
        for scenario in Scenario::ALL {
            let value = scenario
                .to_possible_value()
                .expect("every scenario is selectable");
            assert_eq!(value.get_name(), scenario.name());
        }
        assert_eq!(Scenario::value_variants(), &Scenario::ALL[..]);
    }
}
