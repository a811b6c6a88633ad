//! What a scenario hands back, and how a gameday prints it.
//!
//! Owns [`ScenarioReport`] (one row: the judge's figures, the scenario's own checks, notes and
//! evidence), the verdict rule, the two tables (every scenario; incident 8 naive vs courier side by
//! side) and the JSON form.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::judge::Judgement;
use crate::Length;

/// Incident 8's two ways of running the same fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Startup DDL in every worker's boot transaction, sessions with the server's defaults.
    Naive,
    /// Advisory-locked once-only migrations, client-aligned server limits on every session.
    Courier,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Naive => "naive",
            Self::Courier => "courier",
        }
    }
}

/// One named check a scenario makes beyond the judge's invariants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// The incident-8 columns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Incident8Figures {
    pub failed_boots: Option<usize>,
    #[serde(with = "opt_secs")]
    pub longest_stall: Option<Duration>,
    pub orphan_backends_max: Option<usize>,
    pub late_claims: Option<usize>,
    pub lost: Option<usize>,
}

/// Everything one scenario run found.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub scenario: String,
    pub mode: Option<Mode>,
    pub length: Length,
    /// Why it did not run, when it did not (e.g. a restart of a service that is not ours).
    pub skipped: Option<String>,
    pub judgement: Option<Judgement>,
    pub incident8: Option<Incident8Figures>,
    pub checks: Vec<Check>,
    /// Measurements worth printing (rates, retries, timings).
    pub notes: Vec<String>,
    /// What the database showed at the worst moment (naive pile-up) and other raw evidence.
    pub evidence: Vec<String>,
    #[serde(with = "secs")]
    pub elapsed: Duration,
}

impl ScenarioReport {
    pub fn new(scenario: &str, mode: Option<Mode>, length: Length) -> Self {
        Self {
            scenario: scenario.to_owned(),
            mode,
            length,
            skipped: None,
            judgement: None,
            incident8: None,
            checks: Vec::new(),
            notes: Vec::new(),
            evidence: Vec::new(),
            elapsed: Duration::ZERO,
        }
    }

    /// A scenario that did not run, and why.
    pub fn skipped(scenario: &str, length: Length, why: impl Into<String>) -> Self {
        Self {
            skipped: Some(why.into()),
            ..Self::new(scenario, None, length)
        }
    }

    /// Records a check.
    pub fn check(&mut self, name: &str, passed: bool, detail: impl Into<String>) {
        self.checks.push(Check {
            name: name.to_owned(),
            passed,
            detail: detail.into(),
        });
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// True when it was skipped, or when the judge's invariants and every check hold. For a naive
    /// incident-8 run the checks are "the incident was reproduced", so true means "reproduced".
    pub fn passed(&self) -> bool {
        self.skipped.is_some()
            || (self
                .judgement
                .as_ref()
                .is_none_or(Judgement::invariants_hold)
                && self.checks.iter().all(|c| c.passed))
    }

    /// The verdict column.
    pub fn verdict(&self) -> &'static str {
        match (self.skipped.is_some(), self.mode, self.passed()) {
            (true, _, _) => "skipped",
            (false, Some(Mode::Naive), true) => "reproduced",
            (false, Some(Mode::Naive), false) => "FAIL",
            (false, _, true) => "pass",
            (false, _, false) => "FAIL",
        }
    }

    fn mode_column(&self) -> &'static str {
        self.mode.map_or("-", Mode::as_str)
    }
}

/// `12.3s`.
pub fn fmt_duration(d: Duration) -> String {
    if d >= Duration::from_secs(100) {
        format!("{:.0}s", d.as_secs_f64())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

fn opt<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn opt_duration(value: Option<Duration>) -> String {
    value.map_or_else(|| "-".to_owned(), fmt_duration)
}

/// A plain-text table with aligned columns.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths[i]))
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(header.iter().map(|h| (*h).to_owned()).collect());
    out.push_str(&line(widths.iter().map(|w| "-".repeat(*w)).collect()));
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

/// The whole gameday report: every scenario, then incident 8 side by side, then notes and failures.
pub fn render(reports: &[ScenarioReport]) -> String {
    let mut out = String::new();
    let rows: Vec<Vec<String>> =
        reports
            .iter()
            .map(|r| {
                let j = r.judgement.as_ref();
                vec![
                    r.scenario.clone(),
                    r.mode_column().to_owned(),
                    opt(j.map(|j| j.messages_in)),
                    opt(j.map(|j| j.delivered)),
                    opt(j.map(|j| {
                        format!("{}/{}", j.duplicates_interrupted, j.duplicates_unexplained)
                    })),
                    opt(j.map(|j| j.lost)),
                    opt_duration(j.map(|j| j.longest_stall)),
                    format!(
                        "{} / {}",
                        opt_duration(j.and_then(|j| j.first_progress_after_fault)),
                        opt_duration(j.and_then(|j| j.recovered_after_fault))
                    ),
                    r.verdict().to_owned(),
                ]
            })
            .collect();
    out.push_str(&table(
        &[
            "scenario",
            "mode",
            "messages in",
            "delivered",
            "dup (interrupted/unexplained)",
            "lost",
            "longest stall",
            "recover (first / all)",
            "verdict",
        ],
        &rows,
    ));

    let incident: Vec<&ScenarioReport> = reports.iter().filter(|r| r.incident8.is_some()).collect();
    if !incident.is_empty() {
        out.push_str("\nIncident 8 in PostgreSQL, naive vs courier\n");
        let rows: Vec<Vec<String>> = incident
            .iter()
            .map(|r| {
                let f = r.incident8.clone().unwrap_or_default();
                vec![
                    r.scenario.clone(),
                    r.mode_column().to_owned(),
                    opt(f.failed_boots),
                    opt_duration(f.longest_stall),
                    opt(f.orphan_backends_max),
                    opt(f.late_claims),
                    opt(f.lost),
                    r.verdict().to_owned(),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "scenario",
                "mode",
                "failed boots",
                "longest stall",
                "orphan backends (max)",
                "late claims",
                "lost",
                "verdict",
            ],
            &rows,
        ));
    }

    out.push('\n');
    for r in reports {
        let _ = writeln!(
            out,
            "{}{}: {} ({} in {})",
            r.scenario,
            r.mode
                .map(|m| format!(" [{}]", m.as_str()))
                .unwrap_or_default(),
            r.verdict(),
            match r.length {
                Length::Short => "short",
                Length::Full => "full",
            },
            fmt_duration(r.elapsed)
        );
        if let Some(why) = &r.skipped {
            let _ = writeln!(out, "    skipped: {why}");
        }
        for note in &r.notes {
            let _ = writeln!(out, "    {note}");
        }
        for check in &r.checks {
            let _ = writeln!(
                out,
                "    [{}] {}: {}",
                if check.passed { "ok" } else { "FAILED" },
                check.name,
                check.detail
            );
        }
        if let Some(j) = &r.judgement {
            if !j.invariants_hold() {
                let _ = writeln!(
                    out,
                    "    [FAILED] invariants: lost {}, unexplained duplicates {}, unknown {}, misplaced {}, tiling problems {}",
                    j.lost,
                    j.duplicates_unexplained,
                    j.unknown,
                    j.misplaced,
                    j.tiling.len()
                );
            }
            for line in j.examples.iter().chain(j.tiling.iter()).take(10) {
                let _ = writeln!(out, "    {line}");
            }
            if j.failed_ranges > 0 {
                let _ = writeln!(
                    out,
                    "    {} range(s) ended failed (listed, replayable)",
                    j.failed_ranges
                );
            }
        }
        for line in &r.evidence {
            let _ = writeln!(out, "    | {line}");
        }
    }
    out
}

/// `Duration` as seconds (a float) in JSON.
pub mod secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// `Option<Duration>` as seconds or `null` in JSON.
pub mod opt_secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}
