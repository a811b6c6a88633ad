//! The markdown report: tables whose every figure row says its target and whether it was met.
//!
//! Owns: [`Report`] (the text being written), [`Goal`] and [`Check`] (a target and its verdict), and
//! [`percentile`].

use std::fmt::{Display, Write as _};

#[derive(Default)]
pub struct Report {
    text: String,
}

impl Report {
    pub fn line(&mut self, text: impl Display) {
        // Writing into a String cannot fail.
        let _ = writeln!(self.text, "{text}");
    }

    /// A table header: the first column left-aligned (names), the others right-aligned (figures).
    pub fn header(&mut self, columns: &[&str]) {
        self.line(format_args!("| {} |", columns.join(" | ")));
        let rule: Vec<&str> = (0..columns.len())
            .map(|i| if i == 0 { "---" } else { "---:" })
            .collect();
        self.line(format_args!("|{}|", rule.join("|")));
    }

    pub fn row(&mut self, cells: &[String]) {
        self.line(format_args!("| {} |", cells.join(" | ")));
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

/// A target for one figure.
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    AtMost(f64),
    AtLeast(f64),
}

impl Goal {
    /// Judges `value`, naming the target with `unit` (e.g. "txns/s", "x pipe").
    pub fn check(self, value: f64, unit: &str) -> Check {
        let (sign, bound, met) = match self {
            Self::AtMost(bound) => ("<=", bound, value <= bound),
            Self::AtLeast(bound) => (">=", bound, value >= bound),
        };
        Check {
            target: format!("{sign} {bound}{unit}"),
            met,
        }
    }
}

/// A target and whether a figure met it.
#[derive(Debug, Clone)]
pub struct Check {
    pub target: String,
    pub met: bool,
}

impl Check {
    /// No target for this row (a baseline).
    pub fn none() -> Vec<Self> {
        Vec::new()
    }
}

/// The two report cells for a row's checks: the targets, and "yes" / "**no**" in the same order.
pub fn cells(checks: &[Check]) -> [String; 2] {
    if checks.is_empty() {
        return ["-".into(), "-".into()];
    }
    let targets: Vec<&str> = checks.iter().map(|c| c.target.as_str()).collect();
    let verdicts: Vec<&str> = checks
        .iter()
        .map(|c| if c.met { "yes" } else { "**no**" })
        .collect();
    [targets.join("; "), verdicts.join("; ")]
}

/// The `q` quantile (0..=1) of sorted figures, nearest rank; the default for no figures.
pub fn percentile<T: Copy + Default>(sorted: &[T], q: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    sorted[(((sorted.len() - 1) as f64) * q).round() as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_and_formats_targets() {
        let checks = [
            Goal::AtMost(20.0).check(25.0, " txns/s"),
            Goal::AtLeast(0.8).check(0.9, "x pipe"),
        ];
        assert_eq!(
            cells(&checks),
            [
                "<= 20 txns/s; >= 0.8x pipe".to_owned(),
                "**no**; yes".to_owned()
            ]
        );
        assert_eq!(cells(&Check::none()), ["-".to_owned(), "-".to_owned()]);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let sorted = [1u64, 2, 3, 4, 5];
        assert_eq!(percentile(&sorted, 0.5), 3);
        assert_eq!(percentile(&sorted, 1.0), 5);
        assert_eq!(percentile::<u64>(&[], 0.99), 0);
    }
}
