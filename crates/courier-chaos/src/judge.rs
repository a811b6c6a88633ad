//! The judge: what went in, what the destination recorded, what the store says, and the verdict.
//!
//! Owns the invariants every chaos run is checked against (DESIGN.md, "Invariants"):
//! - **no loss**: every produced message id was delivered (answered 2xx) at least once, and the live
//!   ranges of every partition tile `[initial, frontier)` with no gap and no overlap;
//! - **bounded duplicates**: an id delivered more than once lies in a range whose lease was interrupted
//!   (`epoch > 1`) or that was replayed; any other duplicate is *unexplained* and fails the run;
//! - **integrity**: every delivered element is a message that was produced, in a batch whose
//!   `X-Courier-Partition` / `X-Courier-Offsets` contain it.
//!
//! It also measures the **longest stall** (the longest interval with no new message delivered while
//! produced messages were waiting) and the **time to recover** (from the end of the fault to the first
//! new delivery, and to the delivery of everything produced before the fault ended).
//!
//! Stalls are computed from exact timestamps rather than a periodic sample: the generator stamps every
//! produce acknowledgement and the sink stamps every request, so the timeline is exact to the
//! millisecond and needs no sampler task competing for the two cores. Stalls are counted from the
//! first delivery on (a worker's boot is not a stall).
//!
//! The judge is pure: it reads evidence gathered by the scenario. Compaction must be off during a chaos
//! run (`compact_every = 1h`), or the ranges that explain a duplicate may already be deleted.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use courier_sink::Received;
use serde::Serialize;
use serde_json::Value;

/// One message the generator produced and Kafka acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Produced {
    /// The `id` field of the message's JSON payload.
    pub id: String,
    pub partition: i32,
    pub offset: i64,
    /// When Kafka acknowledged it.
    pub at: SystemTime,
}

/// One row of `courier_ranges` for the judged route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeRecord {
    pub partition: i32,
    pub start: i64,
    pub end: i64,
    pub epoch: i64,
    pub state: String,
    /// `kind = 'live'` (tiles the partition) rather than a replay range.
    pub live: bool,
    /// An operator replayed it (`replay_id` set), or it is a replay range.
    pub replayed: bool,
}

/// One row of `courier_partitions`: where the route started and how far it has carved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionBounds {
    pub partition: i32,
    pub initial: i64,
    pub frontier: i64,
}

/// When the fault was injected and when it was removed (by the harness, or by the server itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultWindow {
    pub started: SystemTime,
    pub ended: SystemTime,
}

/// Everything the judge reads.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    pub produced: &'a [Produced],
    /// The destination's record of delivered (2xx) requests: `Sink::received()`.
    pub delivered: &'a [Received],
    pub ranges: &'a [RangeRecord],
    pub partitions: &'a [PartitionBounds],
    pub fault: Option<FaultWindow>,
    /// The end of the observation, for a stall still open when the run ended.
    pub judged_at: SystemTime,
}

/// What the judge found. `invariants_hold` is the verdict on the invariants; scenarios add their
/// own checks on top.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Judgement {
    pub messages_in: usize,
    /// Distinct produced ids delivered at least once.
    pub delivered: usize,
    /// Extra deliveries of ids whose range was interrupted (epoch > 1) or replayed.
    pub duplicates_interrupted: usize,
    /// Extra deliveries of ids whose range was never interrupted: a broken invariant.
    pub duplicates_unexplained: usize,
    /// Produced ids never delivered.
    pub lost: usize,
    /// Delivered elements without an id, or with an id nobody produced.
    pub unknown: usize,
    /// Delivered elements in a batch whose partition or offsets header does not contain them.
    pub misplaced: usize,
    /// Ranges that ended `failed` (listed and replayable, but not delivered).
    pub failed_ranges: usize,
    /// Gaps and overlaps in the live ranges' tiling, described.
    pub tiling: Vec<String>,
    #[serde(with = "crate::report::secs")]
    pub longest_stall: Duration,
    #[serde(with = "crate::report::opt_secs")]
    pub first_progress_after_fault: Option<Duration>,
    #[serde(with = "crate::report::opt_secs")]
    pub recovered_after_fault: Option<Duration>,
    /// A few examples of each problem found, for the report.
    pub examples: Vec<String>,
}

impl Judgement {
    /// No loss, no unexplained duplicate, nothing unknown or misplaced, a clean tiling.
    pub fn invariants_hold(&self) -> bool {
        self.lost == 0
            && self.duplicates_unexplained == 0
            && self.unknown == 0
            && self.misplaced == 0
            && self.tiling.is_empty()
    }

    /// All extra deliveries.
    pub fn duplicates(&self) -> usize {
        self.duplicates_interrupted + self.duplicates_unexplained
    }
}

const EXAMPLES: usize = 5;

/// The `id` of a delivered element, as the generator writes it (a string; numbers are accepted too).
pub fn element_id(element: &Value) -> Option<String> {
    match element.get("id")? {
        Value::String(id) => Some(id.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Judges one run.
pub fn judge(evidence: &Evidence<'_>) -> Judgement {
    judge_with_timeline(evidence).0
}

/// [`judge`], and the timeline it measured on: when each delivered message was first delivered, sorted
/// (a long run measures the recovery of every one of its faults on it, with [`first_progress_after`]).
pub fn judge_with_timeline(evidence: &Evidence<'_>) -> (Judgement, Vec<SystemTime>) {
    let mut out = Judgement {
        messages_in: evidence.produced.len(),
        ..Judgement::default()
    };
    let by_id: HashMap<&str, &Produced> = evidence
        .produced
        .iter()
        .map(|p| (p.id.as_str(), p))
        .collect();

    // Every delivery of every id, with the time of its first delivery.
    let mut deliveries: HashMap<&str, usize> = HashMap::new();
    let mut first_delivery: HashMap<&str, SystemTime> = HashMap::new();
    for request in evidence.delivered.iter().filter(|r| r.answer.is_success()) {
        let bounds = request.offset_bounds();
        for element in &request.elements {
            let Some(produced) = element_id(element).and_then(|id| by_id.get(id.as_str()).copied())
            else {
                out.unknown += 1;
                if out.examples.len() < EXAMPLES * 4 {
                    out.examples
                        .push(format!("unknown element delivered: {element}"));
                }
                continue;
            };
            let inside = request.partition == Some(produced.partition)
                && bounds
                    .is_some_and(|(start, end)| start <= produced.offset && produced.offset < end);
            if !inside {
                out.misplaced += 1;
                out.examples.push(format!(
                    "message {} (partition {} offset {}) arrived in a batch headed partition {:?} offsets {:?}",
                    produced.id, produced.partition, produced.offset, request.partition, request.offsets
                ));
            }
            *deliveries.entry(produced.id.as_str()).or_default() += 1;
            first_delivery
                .entry(produced.id.as_str())
                .and_modify(|at| *at = (*at).min(request.received_at))
                .or_insert(request.received_at);
        }
    }

    // Loss and duplicates, each duplicate explained (or not) by its range.
    let mut ranges_by_partition: BTreeMap<i32, Vec<&RangeRecord>> = BTreeMap::new();
    for range in evidence.ranges {
        ranges_by_partition
            .entry(range.partition)
            .or_default()
            .push(range);
    }
    let mut lost_examples = Vec::new();
    for produced in evidence.produced {
        match deliveries.get(produced.id.as_str()).copied().unwrap_or(0) {
            0 => {
                out.lost += 1;
                if lost_examples.len() < EXAMPLES {
                    lost_examples.push(format!(
                        "lost: message {} (partition {} offset {}) was never delivered",
                        produced.id, produced.partition, produced.offset
                    ));
                }
            }
            1 => out.delivered += 1,
            n => {
                out.delivered += 1;
                let covering: Vec<&&RangeRecord> = ranges_by_partition
                    .get(&produced.partition)
                    .map(|ranges| {
                        ranges
                            .iter()
                            .filter(|r| r.start <= produced.offset && produced.offset < r.end)
                            .collect()
                    })
                    .unwrap_or_default();
                let explained = covering
                    .iter()
                    .any(|r| r.epoch > 1 || r.replayed || !r.live);
                if explained {
                    out.duplicates_interrupted += n - 1;
                } else {
                    out.duplicates_unexplained += n - 1;
                    if out.examples.len() < EXAMPLES * 4 {
                        let why = match covering.first() {
                            Some(r) => format!(
                                "its range [{}, {}) has epoch {} and was never replayed",
                                r.start, r.end, r.epoch
                            ),
                            None => "no range covers it any more (was compaction on?)".to_owned(),
                        };
                        out.examples.push(format!(
                            "unexplained duplicate: message {} (partition {} offset {}) delivered {n} times; {why}",
                            produced.id, produced.partition, produced.offset
                        ));
                    }
                }
            }
        }
    }
    out.examples.extend(lost_examples);

    out.failed_ranges = evidence
        .ranges
        .iter()
        .filter(|r| r.state == "failed")
        .count();
    out.tiling = tiling_problems(evidence.ranges, evidence.partitions);

    // The timeline: produce acknowledgements and first deliveries.
    let mut produced_at: Vec<SystemTime> = evidence.produced.iter().map(|p| p.at).collect();
    produced_at.sort_unstable();
    let mut delivered_at: Vec<SystemTime> = first_delivery.values().copied().collect();
    delivered_at.sort_unstable();
    out.longest_stall = longest_stall(&produced_at, &delivered_at, evidence.judged_at);

    if let Some(fault) = evidence.fault {
        out.first_progress_after_fault = first_progress_after(&delivered_at, fault.ended);
        let mut latest = Some(fault.ended);
        for produced in evidence.produced.iter().filter(|p| p.at <= fault.ended) {
            match (first_delivery.get(produced.id.as_str()), latest) {
                (Some(at), Some(so_far)) => latest = Some(so_far.max(*at)),
                _ => latest = None,
            }
        }
        out.recovered_after_fault = latest.map(|at| since(fault.ended, at));
    }
    (out, delivered_at)
}

/// From `ended` to the first message first delivered at or after it, on a sorted timeline of first
/// deliveries; `None` when nothing was delivered since.
pub fn first_progress_after(delivered_at: &[SystemTime], ended: SystemTime) -> Option<Duration> {
    let first = delivered_at.partition_point(|at| *at < ended);
    delivered_at.get(first).map(|at| since(ended, *at))
}

fn since(from: SystemTime, to: SystemTime) -> Duration {
    to.duration_since(from).unwrap_or_default()
}

/// The longest interval, after the first delivery, during which no new message was delivered while at
/// least one produced message was waiting. A message still undelivered at `end` stalls until `end`.
pub fn longest_stall(
    produced_at: &[SystemTime],
    delivered_at: &[SystemTime],
    end: SystemTime,
) -> Duration {
    let mut longest = Duration::ZERO;
    let mut produced_index = 0; // produced_at[..produced_index] are at or before the current delivery
    for (i, delivery) in delivered_at.iter().enumerate() {
        while produced_index < produced_at.len() && produced_at[produced_index] <= *delivery {
            produced_index += 1;
        }
        let next = delivered_at.get(i + 1).copied().unwrap_or(end);
        // Waiting right after this delivery: produced so far minus delivered so far.
        let waiting = produced_index.saturating_sub(i + 1) > 0;
        let stall_start = if waiting {
            Some(*delivery)
        } else {
            // Idle until the next message is produced (if before the next delivery).
            produced_at
                .get(produced_index)
                .copied()
                .filter(|p| *p < next)
        };
        if let Some(start) = stall_start {
            longest = longest.max(since(start, next));
        }
    }
    longest
}

/// Gaps and overlaps among the live ranges of each partition, and ranges not starting at the initial
/// offset or not ending at the frontier.
pub fn tiling_problems(ranges: &[RangeRecord], partitions: &[PartitionBounds]) -> Vec<String> {
    let mut problems = Vec::new();
    for bounds in partitions {
        let mut live: Vec<&RangeRecord> = ranges
            .iter()
            .filter(|r| r.live && r.partition == bounds.partition)
            .collect();
        live.sort_by_key(|r| r.start);
        let mut expected = bounds.initial;
        for range in live {
            if range.start > expected {
                problems.push(format!(
                    "partition {}: gap [{expected}, {}) belongs to no range",
                    bounds.partition, range.start
                ));
            } else if range.start < expected {
                problems.push(format!(
                    "partition {}: range [{}, {}) overlaps the previous one (ending at {expected})",
                    bounds.partition, range.start, range.end
                ));
            }
            expected = expected.max(range.end);
        }
        if expected != bounds.frontier {
            problems.push(format!(
                "partition {}: ranges end at {expected} but the frontier is {}",
                bounds.partition, bounds.frontier
            ));
        }
    }
    problems
}
