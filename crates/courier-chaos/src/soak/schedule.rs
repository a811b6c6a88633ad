//! The soak's fault schedule: which fault, when, for how long, drawn from a seeded RNG.
//!
//! Owns [`FaultKind`], [`Fault`] and [`schedule`], a pure function of [`ScheduleSpec`] (same seed, same
//! schedule, so a failing run can be replayed). The rules it keeps, on the planned windows:
//! - at most [`ScheduleSpec::max_overlap`] faults at once;
//! - two faults that [`conflict`](FaultKind::conflicts_with) never overlap: a kind never overlaps itself
//!   (a restart of a service never overlaps another restart of it), the destination has one behaviour
//!   at a time (5xx, 429 or hang), PostgreSQL is either restarting or having its connections ended, and
//!   a DNS failure (a rollout of every worker) never meets a SIGSTOPped worker (which cannot drain);
//! - two worker faults at once hit different workers;
//! - every kind comes once, in a random order and at short gaps, before any comes twice, so a run of a
//!   few minutes sees them all;
//! - nothing starts before the warm-up or ends after the cool-down before the end of the run.
//!
//! The run ([`super::run`]) keeps the same rules on the actual windows, which restarts can stretch.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// One kind of fault the soak injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL a worker; it is restarted after the fault's duration.
    WorkerKill,
    /// SIGSTOP a worker for longer than the lease TTL, then SIGCONT: its leases are stolen meanwhile and
    /// its late checkpoints must be fenced.
    WorkerStop,
    /// `pg_terminate_backend` of every courier connection, once a second for the duration.
    PgTerminate,
    /// PostgreSQL stopped for the duration, then started.
    PgRestart,
    /// The Kafka broker stopped for the duration, then started.
    KafkaRestart,
    /// The destination answers 503.
    Http5xx,
    /// The destination answers 429 with `Retry-After: 1`.
    Http429,
    /// The destination accepts requests and never answers.
    Hang,
    /// The destination's name does not resolve: every worker is redeployed with a `.invalid` host, then
    /// with the right one.
    Dns,
}

impl FaultKind {
    pub const ALL: [FaultKind; 9] = [
        Self::WorkerKill,
        Self::WorkerStop,
        Self::PgTerminate,
        Self::PgRestart,
        Self::KafkaRestart,
        Self::Http5xx,
        Self::Http429,
        Self::Hang,
        Self::Dns,
    ];

    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::WorkerKill => "worker-kill",
            Self::WorkerStop => "worker-stop",
            Self::PgTerminate => "pg-terminate",
            Self::PgRestart => "pg-restart",
            Self::KafkaRestart => "kafka-restart",
            Self::Http5xx => "5xx-storm",
            Self::Http429 => "429-storm",
            Self::Hang => "hang",
            Self::Dns => "dns-failure",
        }
    }

    /// Hits one worker (the fault names which).
    pub fn targets_a_worker(self) -> bool {
        matches!(self, Self::WorkerKill | Self::WorkerStop)
    }

    /// What it holds exclusively besides itself.
    fn resource(self) -> Option<&'static str> {
        match self {
            Self::PgTerminate | Self::PgRestart => Some("postgres"),
            Self::Http5xx | Self::Http429 | Self::Hang => Some("destination"),
            Self::Dns | Self::WorkerStop => Some("rollout"),
            Self::WorkerKill | Self::KafkaRestart => None,
        }
    }

    /// Whether `self` and `other` may never be active at the same time.
    pub fn conflicts_with(self, other: Self) -> bool {
        self == other || (self.resource().is_some() && self.resource() == other.resource())
    }

    /// The range its duration is drawn from. A SIGSTOP lasts at least the lease TTL and 2 s more, so
    /// the stopped worker's leases really expire and are taken.
    fn durations(self, lease_ttl: Duration) -> (Duration, Duration) {
        let s = Duration::from_secs;
        match self {
            Self::WorkerKill => (s(0), s(8)),
            Self::WorkerStop => (lease_ttl + s(2), lease_ttl + s(12)),
            Self::PgTerminate => (s(1), s(10)),
            Self::PgRestart | Self::KafkaRestart => (s(1), s(15)),
            Self::Http5xx | Self::Http429 | Self::Hang | Self::Dns => (s(5), s(30)),
        }
    }
}

/// One planned fault. Times are offsets from the start of the soak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Fault {
    pub kind: FaultKind,
    #[serde(with = "crate::report::secs")]
    pub start: Duration,
    #[serde(with = "crate::report::secs")]
    pub duration: Duration,
    /// The worker slot a worker fault hits.
    pub worker: Option<usize>,
}

impl Fault {
    pub fn end(&self) -> Duration {
        self.start + self.duration
    }

    /// Active at `at` (windows are half-open: a fault ending at `at` is over).
    pub fn active_at(&self, at: Duration) -> bool {
        self.start <= at && at < self.end()
    }
}

/// What a schedule is drawn for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleSpec {
    pub seed: u64,
    /// The whole run.
    pub length: Duration,
    /// Worker slots (at least 2: two worker faults at once hit different ones).
    pub workers: usize,
    pub lease_ttl: Duration,
    pub max_overlap: usize,
    /// No fault before this.
    pub warm_up: Duration,
    /// Every fault has ended this long before the end of the run.
    pub cool_down: Duration,
}

impl ScheduleSpec {
    /// The soak's defaults for a run of `length`.
    pub fn new(seed: u64, length: Duration, workers: usize, lease_ttl: Duration) -> Self {
        Self {
            seed,
            length,
            workers,
            lease_ttl,
            max_overlap: 2,
            warm_up: Duration::from_secs(15),
            cool_down: Duration::from_secs(30),
        }
    }
}

/// The gap between two fault starts: short while every kind is shown once, longer afterwards.
const FIRST_ROUND_GAP: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(10));
const GAP: (Duration, Duration) = (Duration::from_secs(3), Duration::from_secs(30));

fn draw(rng: &mut StdRng, (low, high): (Duration, Duration)) -> Duration {
    // Milliseconds: durations print short and compare exactly.
    let low = u64::try_from(low.as_millis()).unwrap_or(u64::MAX);
    let high = u64::try_from(high.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rng.random_range(low..=high.max(low)))
}

/// The faults of a run, in order of start. Pure: the same spec gives the same schedule.
pub fn schedule(spec: &ScheduleSpec) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut first_round = FaultKind::ALL.to_vec();
    first_round.shuffle(&mut rng);
    let last_end = spec.length.saturating_sub(spec.cool_down);
    let workers = spec.workers.max(1);
    let mut faults: Vec<Fault> = Vec::new();
    let mut at = spec.warm_up;
    loop {
        let (kind, gap) = match first_round.pop() {
            Some(kind) => (kind, draw(&mut rng, FIRST_ROUND_GAP)),
            None => {
                let kind = FaultKind::ALL[rng.random_range(0..FaultKind::ALL.len())];
                (kind, draw(&mut rng, GAP))
            }
        };
        let duration = draw(&mut rng, kind.durations(spec.lease_ttl));
        let drawn_worker = rng.random_range(0..workers);
        // Starts never decrease, so every fault already placed starts at or before `start`: the set
        // active during [start, start + duration) only shrinks, and checking the instant `start` is
        // enough. The earliest instant that works is `at` or the end of a fault active then.
        let mut start = at + gap;
        while let Some(blocker) = blocking(&faults, kind, start, spec.max_overlap) {
            start = blocker;
        }
        if start + duration > last_end {
            break;
        }
        let worker = kind.targets_a_worker().then(|| {
            let busy: Vec<usize> = faults
                .iter()
                .filter(|f| f.active_at(start))
                .filter_map(|f| f.worker)
                .collect();
            (0..workers)
                .map(|i| (drawn_worker + i) % workers)
                .find(|w| !busy.contains(w))
                .unwrap_or(drawn_worker)
        });
        faults.push(Fault {
            kind,
            start,
            duration,
            worker,
        });
        at = start;
    }
    faults
}

/// When a fault of `kind` may not start at `start`, the earliest end among the faults in its way.
fn blocking(
    faults: &[Fault],
    kind: FaultKind,
    start: Duration,
    max_overlap: usize,
) -> Option<Duration> {
    let active: Vec<&Fault> = faults.iter().filter(|f| f.active_at(start)).collect();
    let in_the_way: Vec<&&Fault> = if active.len() >= max_overlap {
        active.iter().collect()
    } else {
        active
            .iter()
            .filter(|f| f.kind.conflicts_with(kind))
            .collect()
    };
    in_the_way.iter().map(|f| f.end()).min()
}

/// Why `faults` breaks the rules of `spec`, if it does (the run checks the actual windows with it too).
#[cfg(test)]
pub fn rule_broken(spec: &ScheduleSpec, faults: &[Fault]) -> Option<String> {
    for (i, a) in faults.iter().enumerate() {
        if a.start < spec.warm_up || a.end() > spec.length.saturating_sub(spec.cool_down) {
            return Some(format!("{a:?} is outside the warm-up / cool-down bounds"));
        }
        let overlapping: Vec<&Fault> = faults
            .iter()
            .enumerate()
            .filter(|(j, b)| *j != i && b.active_at(a.start))
            .map(|(_, b)| b)
            .collect();
        if overlapping.len() + 1 > spec.max_overlap {
            return Some(format!(
                "{} faults at once at {:?}: {a:?} and {overlapping:?}",
                overlapping.len() + 1,
                a.start
            ));
        }
        if let Some(b) = overlapping.iter().find(|b| b.kind.conflicts_with(a.kind)) {
            return Some(format!("{a:?} overlaps the conflicting {b:?}"));
        }
        if let Some(b) = overlapping
            .iter()
            .find(|b| a.worker.is_some() && b.worker == a.worker)
        {
            return Some(format!("{a:?} and {b:?} hit the same worker at once"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(seed: u64, minutes: u64) -> ScheduleSpec {
        ScheduleSpec::new(
            seed,
            Duration::from_secs(minutes * 60),
            3,
            Duration::from_secs(4),
        )
    }

    #[test]
    fn a_five_minute_run_has_every_kind_and_overlaps() {
        let faults = schedule(&spec(7, 5));
        for kind in FaultKind::ALL {
            assert!(
                faults.iter().any(|f| f.kind == kind),
                "{kind:?} missing from {faults:#?}"
            );
        }
        let overlaps = faults
            .iter()
            .enumerate()
            .any(|(i, a)| faults[..i].iter().any(|b| b.active_at(a.start)));
        assert!(overlaps, "no two faults overlap in {faults:#?}");
        assert_eq!(rule_broken(&spec(7, 5), &faults), None);
    }

    #[test]
    fn the_rules_catch_a_broken_schedule() {
        let s = spec(1, 5);
        let at = |kind, start: u64, worker| Fault {
            kind,
            start: Duration::from_secs(start),
            duration: Duration::from_secs(10),
            worker,
        };
        let bad = [
            vec![
                at(FaultKind::PgRestart, 20, None),
                at(FaultKind::PgRestart, 25, None),
            ],
            vec![
                at(FaultKind::Hang, 20, None),
                at(FaultKind::Http429, 25, None),
            ],
            vec![
                at(FaultKind::KafkaRestart, 20, None),
                at(FaultKind::Http5xx, 21, None),
                at(FaultKind::WorkerKill, 22, Some(0)),
            ],
            vec![
                at(FaultKind::WorkerKill, 20, Some(1)),
                at(FaultKind::WorkerStop, 25, Some(1)),
            ],
            vec![
                at(FaultKind::Dns, 20, None),
                at(FaultKind::WorkerStop, 25, Some(0)),
            ],
            vec![at(FaultKind::Hang, 5, None)],
            vec![at(FaultKind::Hang, 280, None)],
        ];
        for faults in bad {
            assert!(rule_broken(&s, &faults).is_some(), "{faults:?} passed");
        }
        let good = vec![
            at(FaultKind::WorkerKill, 20, Some(0)),
            at(FaultKind::WorkerStop, 25, Some(1)),
        ];
        assert_eq!(rule_broken(&s, &good), None);
    }

    proptest! {
        #[test]
        fn the_schedule_is_a_pure_function_of_the_seed_and_keeps_the_rules(
            seed in any::<u64>(),
            minutes in 1u64..=60,
        ) {
            let s = spec(seed, minutes);
            let faults = schedule(&s);
            prop_assert_eq!(&faults, &schedule(&s));
            prop_assert_eq!(rule_broken(&s, &faults), None);
            prop_assert!(faults.windows(2).all(|w| w[0].start <= w[1].start));
            for fault in &faults {
                prop_assert_eq!(fault.worker.is_some(), fault.kind.targets_a_worker());
                if fault.kind == FaultKind::WorkerStop {
                    prop_assert!(fault.duration > s.lease_ttl);
                }
            }
            if minutes >= 5 {
                for kind in FaultKind::ALL {
                    prop_assert!(faults.iter().any(|f| f.kind == kind), "{:?} missing", kind);
                }
            }
        }

        #[test]
        fn different_seeds_give_different_schedules(seed in any::<u64>()) {
            prop_assert_ne!(schedule(&spec(seed, 10)), schedule(&spec(seed.wrapping_add(1), 10)));
        }
    }
}
