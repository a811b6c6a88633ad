//! The soak run: steady production through several `courier run` workers while the schedule's faults
//! hit the pipeline, then the judge.
//!
//! Owns [`SoakOptions`] and [`run`]: start the soak's own services, a pipeline, the generator and the
//! fleet; start each planned fault when it is due and the faults actually running allow it (the
//! schedule's rules, on the actual windows); supervise the workers; watch delivery throughout (a
//! progress line every 30 s, and the run stops injecting when nothing was delivered for
//! [`GIVE_UP_AFTER`] while messages waited); at the end stop producing, wait for everything, judge
//! every message and measure each fault's recovery on the judge's timeline.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Mutex;
use tokio::task::JoinSet;

use super::fleet::Fleet;
use super::inject::{inject, Injected, Target};
use super::report::SoakReport;
use super::schedule::{schedule, Fault, FaultKind, ScheduleSpec};
use super::services::SoakServices;
use crate::judge::first_progress_after;
use crate::pipeline::{fast_worker_config, Pipeline, PipelineSpec};
use crate::report::{fmt_duration, ScenarioReport};
use crate::workers::Launcher;
use crate::{ChaosError, Length};

/// No delivery for this long while messages wait: a stall that does not recover. The run stops
/// injecting and goes to the judge.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(300);
/// After production stops, everything must be delivered within this.
const DRAIN_BOUND: Duration = Duration::from_secs(300);
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// How a soak runs.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    pub seed: u64,
    pub length: Duration,
    /// Messages per second.
    pub rate: usize,
    pub workers: usize,
    /// The courier executable whose `courier run` the workers are.
    pub exe: PathBuf,
}

/// Runs a soak. `say` receives progress lines. An `Err` means the soak could not be set up; a broken
/// invariant is a report that did not pass.
pub async fn run(
    options: &SoakOptions,
    say: &(dyn Fn(&str) + Sync),
) -> Result<SoakReport, ChaosError> {
    if options.workers < 2 {
        return Err(ChaosError::Setup(
            "a soak needs at least 2 workers (two worker faults at once hit different ones)".into(),
        ));
    }
    let services = SoakServices::locate()?;
    say(&format!(
        "starting the soak's own PostgreSQL (cluster {}, 127.0.0.1:{}) and Kafka (127.0.0.1:{}) with scripts/; stop them with: {}",
        super::services::PG_CLUSTER,
        services.pg_port,
        services.kafka_port,
        services.stop_commands()
    ));
    services.start().await?;

    let spec = PipelineSpec {
        partitions: 4,
        worker: courier_worker::WorkerConfig {
            // Compaction would delete the ranges that explain duplicates: never during a soak.
            compact_every: Duration::from_secs(7 * 24 * 3600),
            ..fast_worker_config()
        },
        ..PipelineSpec::fast("soak")
    };
    let schedule_spec = ScheduleSpec::new(
        options.seed,
        options.length,
        options.workers,
        spec.worker.lease_ttl,
    );
    let plan = schedule(&schedule_spec);
    say(&format!(
        "{} faults planned over {} (warm-up {}, cool-down {})",
        plan.len(),
        humantime::format_duration(options.length),
        fmt_duration(schedule_spec.warm_up),
        fmt_duration(schedule_spec.cool_down)
    ));

    let started = Instant::now();
    let mut p = Pipeline::start(
        &services.services(),
        spec,
        Launcher::Process {
            exe: options.exe.clone(),
        },
    )
    .await?;
    let harness = p.harness().await?;
    p.start_trickle(
        options.rate,
        options
            .rate
            .saturating_mul(usize::try_from(options.length.as_secs()).unwrap_or(usize::MAX)),
    );
    let fleet = match Fleet::start(&p, options.workers, &p.good_url()).await {
        Ok(fleet) => fleet,
        Err(error) => {
            let _finished = p.finish(Vec::new()).await;
            return Err(error);
        }
    };
    let target = Arc::new(Target {
        pipeline: Arc::new(p),
        fleet: Arc::new(Mutex::new(fleet)),
        services,
        harness,
    });
    let mut report = ScenarioReport::new("soak", None, Length::Full);
    let driven = drive(&target, &plan, &schedule_spec, options, say).await;

    // Every fault task has ended: the pipeline and the fleet are ours again.
    let Ok(target) = Arc::try_unwrap(target) else {
        return Err(ChaosError::Setup(
            "a fault task still holds the pipeline".into(),
        ));
    };
    let fleet = Arc::try_unwrap(target.fleet)
        .map_err(|_| ChaosError::Setup("a fault task still holds the workers".into()))?
        .into_inner();
    let exits = fleet.unplanned_exits.clone();
    let mut p = Arc::try_unwrap(target.pipeline)
        .map_err(|_| ChaosError::Setup("a fault task still holds the pipeline".into()))?;
    let judged = judge(&mut p, &mut report, driven, say).await;
    let finished = p.finish(fleet.into_workers().await).await;
    let (mut faults, not_injected) = judged?;
    finished?;
    for exit in exits {
        report.note(format!(
            "a worker exited on its own and was started again: {exit}"
        ));
    }
    faults.sort_by_key(|f| f.started_after);
    report.elapsed = started.elapsed();
    Ok(SoakReport {
        seed: options.seed,
        length: options.length,
        rate: options.rate,
        workers: options.workers,
        scenario: report,
        faults,
        not_injected,
    })
}

/// What the fault loop leaves for the judge.
struct Driven {
    faults: Vec<Injected>,
    not_injected: usize,
    /// Delivery stalled for good: why.
    stuck: Option<String>,
    /// The harness failed (a fault task panicked, a worker could not be started).
    harness_errors: Vec<String>,
}

/// Whether `fault` may start now, next to the faults running.
fn may_start(running: &[Fault], fault: &Fault, max_overlap: usize) -> bool {
    running.len() < max_overlap
        && running.iter().all(|r| {
            !r.kind.conflicts_with(fault.kind)
                && (fault.worker.is_none() || r.worker != fault.worker)
        })
}

async fn drive(
    target: &Arc<Target>,
    plan: &[Fault],
    spec: &ScheduleSpec,
    options: &SoakOptions,
    say: &(dyn Fn(&str) + Sync),
) -> Driven {
    let p = &target.pipeline;
    let mut out = Driven {
        faults: Vec::new(),
        not_injected: 0,
        stuck: None,
        harness_errors: Vec::new(),
    };
    let last_end = options.length.saturating_sub(spec.cool_down);
    let soak_started = Instant::now();
    let mut tasks: JoinSet<Injected> = JoinSet::new();
    let mut running: Vec<Fault> = Vec::new();
    let mut next = 0;
    let mut next_progress = PROGRESS_EVERY;
    let (mut last_delivered, mut last_change) = (p.sink.stats().delivered_elements, Instant::now());
    let mut delivered_at_progress = last_delivered;
    loop {
        while let Some(done) = tasks.try_join_next() {
            match done {
                Ok(injected) => {
                    running.retain(|f| *f != injected.fault);
                    say(&format!(
                        "+{} {} over after {}{}",
                        fmt_duration(soak_started.elapsed()),
                        injected.fault.kind.name(),
                        fmt_duration(injected.lasted()),
                        injected
                            .error
                            .as_ref()
                            .map(|e| format!(": FAILED {e}"))
                            .unwrap_or_default()
                    ));
                    out.faults.push(injected);
                }
                Err(join) => out
                    .harness_errors
                    .push(format!("a fault task failed: {join}")),
            }
        }
        let now = soak_started.elapsed();
        // Due faults start in order, each when the faults running allow it.
        while out.stuck.is_none() && next < plan.len() && plan[next].start <= now {
            let fault = plan[next];
            if now + fault.duration > last_end {
                out.not_injected = plan.len() - next;
                next = plan.len();
                break;
            }
            if !may_start(&running, &fault, spec.max_overlap) {
                break;
            }
            say(&format!(
                "+{} {}{} for {}",
                fmt_duration(now),
                fault.kind.name(),
                fault
                    .worker
                    .map(|w| format!(" (worker slot {w})"))
                    .unwrap_or_default(),
                fmt_duration(fault.duration)
            ));
            running.push(fault);
            tasks.spawn(inject(Arc::clone(target), fault, now));
            next += 1;
        }
        if let Ok(mut fleet) = target.fleet.try_lock() {
            if let Err(e) = fleet.supervise(p).await {
                out.harness_errors
                    .push(format!("restarting an exited worker: {e}"));
            }
        }
        // Watching delivery: the judge measures stalls exactly at the end; this only notices one that
        // does not end.
        let delivered = p.sink.stats().delivered_elements;
        if delivered != last_delivered {
            (last_delivered, last_change) = (delivered, Instant::now());
        } else if out.stuck.is_none()
            && last_change.elapsed() >= GIVE_UP_AFTER
            && (p.produced_count() as u64) > delivered
        {
            let why = format!(
                "nothing delivered for {} at +{} with messages waiting (running: {:?}); no more faults injected",
                fmt_duration(GIVE_UP_AFTER),
                fmt_duration(now),
                running.iter().map(|f| f.kind.name()).collect::<Vec<_>>()
            );
            say(&why);
            out.stuck = Some(why);
            out.not_injected += plan.len() - next;
            next = plan.len();
        }
        if now >= next_progress {
            next_progress += PROGRESS_EVERY;
            say(&format!(
                "+{} produced {}, delivered elements {} (+{} in {}), faults started {}, running {:?}",
                fmt_duration(now),
                p.produced_count(),
                delivered,
                delivered - delivered_at_progress,
                fmt_duration(PROGRESS_EVERY),
                next,
                running.iter().map(|f| f.kind.name()).collect::<Vec<_>>()
            ));
            delivered_at_progress = delivered;
        }
        if (now >= options.length || out.stuck.is_some()) && next >= plan.len() && tasks.is_empty()
        {
            break;
        }
        // The loop's tick: faults start within a quarter second of their time.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    out
}

/// Stops production, waits for everything, judges, and measures each fault's recovery.
async fn judge(
    p: &mut Pipeline,
    report: &mut ScenarioReport,
    driven: Driven,
    say: &(dyn Fn(&str) + Sync),
) -> Result<(Vec<Injected>, usize), ChaosError> {
    let Driven {
        mut faults,
        not_injected,
        stuck,
        harness_errors,
    } = driven;
    p.stop_trickle().await?;
    say(&format!(
        "production stopped at {} messages; waiting up to {} for every one to be delivered",
        p.produced_count(),
        fmt_duration(DRAIN_BOUND)
    ));
    let complete = p.wait_all_delivered(DRAIN_BOUND).await;
    let (judgement, timeline) = p.judge_with_timeline(None).await?;
    for fault in &mut faults {
        fault.recovery = first_progress_after(&timeline, fault.ended);
    }
    let windows: Vec<(FaultKind, SystemTime, SystemTime)> = faults
        .iter()
        .map(|f| (f.fault.kind, f.started, f.ended))
        .collect();
    for fault in &mut faults {
        let recovered = fault.ended + fault.recovery.unwrap_or(DRAIN_BOUND);
        fault.masked_by = windows
            .iter()
            .find(|(_, started, ended)| {
                (*started, *ended) != (fault.started, fault.ended)
                    && *started < recovered
                    && *ended > fault.ended
            })
            .map(|(kind, _, _)| *kind);
    }
    report.check(
        "every message delivered",
        complete,
        format!(
            "{} of {} within {} of the end of production",
            judgement.delivered,
            judgement.messages_in,
            fmt_duration(DRAIN_BOUND)
        ),
    );
    report.check(
        "delivery never stalled for good",
        stuck.is_none(),
        stuck.unwrap_or_else(|| {
            format!(
                "never {} without a delivery while messages waited",
                fmt_duration(GIVE_UP_AFTER)
            )
        }),
    );
    let failed: Vec<String> = faults
        .iter()
        .filter_map(|f| {
            f.error.as_ref().map(|e| {
                format!(
                    "{} at +{}: {e}",
                    f.fault.kind.name(),
                    fmt_duration(f.started_after)
                )
            })
        })
        .chain(harness_errors)
        .collect();
    report.check(
        "every fault injected and undone",
        failed.is_empty(),
        if failed.is_empty() {
            format!("{} fault(s)", faults.len())
        } else {
            failed.join("; ")
        },
    );
    let missing: Vec<&str> = FaultKind::ALL
        .into_iter()
        .filter(|k| faults.iter().all(|f| f.fault.kind != *k))
        .map(FaultKind::name)
        .collect();
    if !missing.is_empty() {
        report.note(format!(
            "fault kinds never injected (run too short): {}",
            missing.join(", ")
        ));
    }
    report.judgement = Some(judgement);
    Ok((faults, not_injected))
}
