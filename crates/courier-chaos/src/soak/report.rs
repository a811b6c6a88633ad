//! What a soak hands back, and how it prints.
//!
//! Owns [`SoakReport`]: the seed and run, the judge's figures and checks (a [`ScenarioReport`], printed
//! by the gameday's own table), every fault as it happened with its recovery, and the per-kind figures
//! (count, p50 and max recovery).

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::inject::Injected;
use super::schedule::FaultKind;
use crate::report::{fmt_duration, render, ScenarioReport};

/// One kind's figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KindFigures {
    pub kind: FaultKind,
    pub injected: usize,
    /// Could not be injected or undone as planned.
    pub errors: usize,
    #[serde(with = "crate::report::secs")]
    pub longest: Duration,
    /// Recoveries another fault overlapped, left out of p50 and max.
    pub masked: usize,
    /// Over the recoveries no other fault overlapped.
    #[serde(with = "crate::report::opt_secs")]
    pub recovery_p50: Option<Duration>,
    #[serde(with = "crate::report::opt_secs")]
    pub recovery_max: Option<Duration>,
}

/// Everything one soak found.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub seed: u64,
    #[serde(with = "crate::report::secs")]
    pub length: Duration,
    pub rate: usize,
    pub workers: usize,
    /// The judge's figures, the checks and notes.
    pub scenario: ScenarioReport,
    /// In order of start.
    pub faults: Vec<Injected>,
    /// Planned faults the run did not start (it was ending, or delivery had stalled for good).
    pub not_injected: usize,
}

impl SoakReport {
    pub fn passed(&self) -> bool {
        self.scenario.passed()
    }

    /// Per kind, in `FaultKind::ALL` order; kinds never injected have a row of zeros.
    pub fn by_kind(&self) -> Vec<KindFigures> {
        FaultKind::ALL
            .into_iter()
            .map(|kind| {
                let of_kind: Vec<&Injected> = self
                    .faults
                    .iter()
                    .filter(|f| f.fault.kind == kind)
                    .collect();
                let mut recoveries: Vec<Duration> = of_kind
                    .iter()
                    .filter(|f| f.masked_by.is_none())
                    .filter_map(|f| f.recovery)
                    .collect();
                recoveries.sort_unstable();
                KindFigures {
                    kind,
                    injected: of_kind.len(),
                    errors: of_kind.iter().filter(|f| f.error.is_some()).count(),
                    masked: of_kind.iter().filter(|f| f.masked_by.is_some()).count(),
                    longest: of_kind.iter().map(|f| f.lasted()).max().unwrap_or_default(),
                    recovery_p50: recoveries
                        .get(recoveries.len().saturating_sub(1) / 2)
                        .copied(),
                    recovery_max: recoveries.last().copied(),
                }
            })
            .collect()
    }

    /// The fault log, the per-kind table, then the gameday table with the judge's figures and checks.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "soak: seed {}, {} planned, {} msgs/s, {} workers (replay: courier gameday --soak {} --seed {})\n",
            self.seed,
            humantime::format_duration(self.length),
            self.rate,
            self.workers,
            humantime::format_duration(self.length),
            self.seed
        );
        let _ = writeln!(
            out,
            "faults as injected (start, kind, lasted, recovery: from its end to the next message delivered):"
        );
        let secs = |d: Option<Duration>| d.map_or_else(|| "-".to_owned(), fmt_duration);
        for f in &self.faults {
            let _ = writeln!(
                out,
                "  +{:>6} {:<13} {:>6} recovered {:>6}{}  {}{}",
                fmt_duration(f.started_after),
                f.fault.kind.name(),
                fmt_duration(f.lasted()),
                secs(f.recovery),
                f.masked_by
                    .map(|k| format!(" (with {})", k.name()))
                    .unwrap_or_default(),
                f.detail,
                f.error
                    .as_ref()
                    .map(|e| format!(" [FAILED: {e}]"))
                    .unwrap_or_default()
            );
        }
        if self.not_injected > 0 {
            let _ = writeln!(
                out,
                "  ({} planned fault(s) not started: the run was ending, or had stalled)",
                self.not_injected
            );
        }
        out.push_str(
            "\nRecovery p50 / max over the faults no other fault overlapped while they recovered (\"masked\": the others).\n",
        );
        out.push_str("| fault kind    | injected | failed | masked | longest | recovery p50 | recovery max |\n");
        out.push_str("|---------------|----------|--------|--------|---------|--------------|--------------|\n");
        let mut total = 0;
        for k in self.by_kind() {
            total += k.injected;
            let _ = writeln!(
                out,
                "| {:<13} | {:>8} | {:>6} | {:>6} | {:>7} | {:>12} | {:>12} |",
                k.kind.name(),
                k.injected,
                k.errors,
                k.masked,
                fmt_duration(k.longest),
                secs(k.recovery_p50),
                secs(k.recovery_max),
            );
        }
        let _ = writeln!(out, "| all           | {total:>8} |\n");
        out.push_str(&render(std::slice::from_ref(&self.scenario)));
        out
    }
}
