//! Incident 8, failure 3: orphan amplification.
//!
//! While a lock blocks `courier_ranges` (the harness holds `LOCK TABLE ... ACCESS EXCLUSIVE` for a
//! window), clients with short deadlines repeatedly try a lease-like claim, give up, close their socket
//! and retry on a new connection; one attempt in three is cancelled sooner still (a caller shutting
//! down). Each claim also records itself in a side table, `chaos_claims`, in the same statement, so a
//! claim committed by a backend nobody waits for any more is visible afterwards.
//!
//! Naive: server defaults. A backend queued on a lock does not notice its client left: orphans pile up
//! (counted every 100 ms in `pg_stat_activity`), and when the lock is freed they commit claims no client
//! ever received. Courier: sessions with the limits courier derives from a 500 ms deadline
//! (`lock_timeout` 300 ms, so the server answers first) and `client_connection_check_interval`
//! 250 ms (so a backend whose client was cancelled is ended within it). Either way a courier worker then
//! delivers the backlog: a late claim only delays its range (its lease expires), its epoch is stale once
//! the worker re-leases it (its checkpoint is fenced), and the judge counts 0 lost.
//!
//! This module holds the scenario (set-up, the lock window, delivery and fencing afterwards, the
//! judgement); `clients` holds the impatient clients and the orphan count.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use courier_core::{CheckpointOutcome, Epoch, Lease, OffsetRange, RangeKind};
use courier_store::{PlanRequest, RouteSpec, Store, StoreConfig};
use courier_testkit::db::db_error;
use tokio::sync::watch;

mod clients;

use crate::env::{raw_session, RawSession, HARNESS_APP};
use crate::judge::FaultWindow;
use crate::pipeline::{poll, Pipeline, PipelineSpec, DESTINATION, ROUTE};
use crate::report::{Incident8Figures, Mode, ScenarioReport};
use crate::{ChaosError, Options};
use clients::{
    client_loop, client_timeouts, sample, Clients, CANCELLED, CLIENTS, CLIENT_APP, DEADLINE,
};

/// Naive orphans stop being added past this many, to keep the shared server below `max_connections`.
const ORPHAN_CAP: usize = 150;

pub async fn run(options: &Options) -> Result<Vec<ScenarioReport>, ChaosError> {
    let naive = one(options, Mode::Naive).await?;
    let courier = one(options, Mode::Courier).await?;
    Ok(vec![naive, courier])
}

fn sql_error(what: &str) -> impl Fn(tokio_postgres::Error) -> ChaosError + '_ {
    move |e| ChaosError::Setup(format!("{what}: {}", db_error(&e)))
}

async fn one(options: &Options, mode: Mode) -> Result<ScenarioReport, ChaosError> {
    let started = Instant::now();
    let mut report = ScenarioReport::new("orphans", Some(mode), options.length);
    let spec = PipelineSpec {
        range_size: 10,
        ..PipelineSpec::fast(&format!("orphans_{}", mode.as_str()))
    };
    let mut p = Pipeline::start(&options.services, spec, options.launcher.clone()).await?;
    let mut workers = Vec::new();
    let outcome = drive(options, mode, &mut p, &mut workers, &mut report).await;
    let finished = p.finish(workers).await;
    outcome?;
    finished?;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Set-up, fault, measurement, judgement.
async fn drive(
    options: &Options,
    mode: Mode,
    p: &mut Pipeline,
    workers: &mut Vec<crate::workers::WorkerHandle>,
    report: &mut ScenarioReport,
) -> Result<(), ChaosError> {
    let (harness, monitor) = set_up(options, p).await?;
    let fault = lock_out_the_clients(options, mode, p, &monitor).await?;
    let after = deliver_and_fence(options, p, workers, &harness, &monitor, &fault).await?;
    let judgement = p
        .judge(Some(FaultWindow {
            started: fault.started,
            ended: fault.ended,
        }))
        .await?;
    judge(report, mode, &fault, &after, judgement);
    Ok(())
}

/// A backlog carved into ranges, nothing leased yet, and the side table claims record themselves in.
async fn set_up(options: &Options, p: &mut Pipeline) -> Result<(Store, RawSession), ChaosError> {
    p.produce(options.length.pick(2000, 4000)).await?;
    let harness = p.harness().await?;
    plan_everything(p, &harness).await?;
    let monitor = raw_session(&p.db, HARNESS_APP).await?;
    monitor
        .batch_execute(
            "CREATE TABLE chaos_claims (owner text NOT NULL, range_id bigint NOT NULL, epoch bigint NOT NULL,
                                        claimed_at timestamptz NOT NULL DEFAULT clock_timestamp())",
        )
        .await
        .map_err(sql_error("creating chaos_claims"))?;
    Ok((harness, monitor))
}

/// What happened while the lock was held.
struct Fault {
    started: SystemTime,
    ended: SystemTime,
    window: Duration,
    clients: Arc<Clients>,
    /// Orphans sampled every 100 ms: (since the lock was taken, count).
    series: Vec<(Duration, usize)>,
    orphan_max: usize,
    orphans_at_release: usize,
    /// When each abandoned backend was first seen gone, by pid.
    gone_at: HashMap<i32, Instant>,
    /// `(max_connections, connections in use)` at the end of the window.
    connections: Result<(i32, i32), tokio_postgres::Error>,
}

/// The fault: the harness locks `courier_ranges` for a window while clients with short deadlines keep
/// claiming, giving up and retrying; orphans are sampled; then the lock goes and every client backend
/// must end.
async fn lock_out_the_clients(
    options: &Options,
    mode: Mode,
    p: &Pipeline,
    monitor: &RawSession,
) -> Result<Fault, ChaosError> {
    let window = options
        .length
        .pick(Duration::from_secs(6), Duration::from_secs(20));
    let blocker = raw_session(&p.db, "chaos-blocker").await?;
    blocker
        .batch_execute("BEGIN; LOCK TABLE courier_ranges IN ACCESS EXCLUSIVE MODE")
        .await
        .map_err(sql_error("blocker takes the table lock"))?;
    let started = SystemTime::now();
    let window_start = Instant::now();

    let client_store = match mode {
        Mode::Naive => None,
        Mode::Courier => Some(
            Store::connect(&StoreConfig {
                application_name: CLIENT_APP.to_owned(),
                pool_size: 1,
                ..p.db.config_with(client_timeouts())
            })
            .await
            .map_err(|e| ChaosError::Setup(format!("client store: {e}")))?,
        ),
    };
    let clients = Arc::new(Clients::default());
    let (stop, stopped) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..CLIENTS {
        tasks.spawn(client_loop(
            k,
            p.db.url.clone(),
            client_store.clone(),
            Arc::clone(&clients),
            stopped.clone(),
        ));
    }

    // The sampler: orphans (backends waiting on the lock whose client already gave up), every 100 ms.
    let mut orphan_max = 0;
    let mut series: Vec<(Duration, usize)> = Vec::new();
    let mut gone_at: HashMap<i32, Instant> = HashMap::new();
    while window_start.elapsed() < window {
        let orphans = sample(monitor, &clients, &mut gone_at).await?;
        orphan_max = orphan_max.max(orphans);
        series.push((window_start.elapsed(), orphans));
        if mode == Mode::Naive && orphans >= ORPHAN_CAP {
            clients.capped.store(true, AtomicOrdering::Relaxed);
        }
        // Pacing the sampler (not synchronisation).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(true);
    let bound = DEADLINE + Duration::from_secs(5);
    let joined =
        tokio::time::timeout(bound, async { while tasks.join_next().await.is_some() {} }).await;
    if joined.is_err() {
        tasks.abort_all();
    }
    // Its pooled connection carries the clients' application_name too.
    drop(client_store);
    // Before the lock goes: wait (bounded) until no abandoned backend is still queued. Courier's end
    // within client_connection_check_interval; naive ones never do, and the wait just ends.
    let _settled = poll(Duration::from_secs(2), || async {
        let orphans = sample(monitor, &clients, &mut HashMap::new()).await.ok()?;
        (orphans == 0).then_some(())
    })
    .await;
    let orphans_at_release = sample(monitor, &clients, &mut gone_at).await?;
    orphan_max = orphan_max.max(orphans_at_release);
    let connections = monitor
        .query_one(
            "SELECT current_setting('max_connections')::int, (SELECT count(*) FROM pg_stat_activity)::int",
            &[],
        )
        .await
        .map(|row| (row.get::<_, i32>(0), row.get::<_, i32>(1)));

    // The lock goes; naive orphans now run their claims.
    blocker
        .batch_execute("ROLLBACK")
        .await
        .map_err(sql_error("blocker releases the lock"))?;
    drop(blocker);
    let ended = SystemTime::now();
    wait_for_client_backends_to_end(monitor).await?;
    Ok(Fault {
        started,
        ended,
        window,
        clients,
        series,
        orphan_max,
        orphans_at_release,
        gone_at,
        connections,
    })
}

/// Every client backend must end once the lock is gone (naive orphans run their claims first).
async fn wait_for_client_backends_to_end(monitor: &RawSession) -> Result<(), ChaosError> {
    let drained = poll(Duration::from_secs(20), || async {
        let left: i64 = monitor
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1",
                &[&CLIENT_APP],
            )
            .await
            .ok()?
            .get(0);
        (left == 0).then_some(())
    })
    .await;
    if drained.is_some() {
        return Ok(());
    }
    let left: Vec<String> = crate::incident8::activity(monitor)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a.application == CLIENT_APP)
        .take(5)
        .map(|a| {
            format!(
                "pid {} {} {}/{} `{}`",
                a.pid, a.state, a.wait_event_type, a.wait_event, a.query
            )
        })
        .collect();
    Err(ChaosError::Stuck(format!(
        "client backends were still alive 20 s after the lock was freed: {}",
        left.join("; ")
    )))
}

/// What followed the fault.
struct After {
    /// Claims committed by a backend whose client had given up: `(owner, range id, epoch)`.
    late: Vec<(String, i64, i64)>,
    /// How many of them a stale checkpoint could no longer settle.
    fenced: usize,
    /// Every message delivered within `bound`.
    complete: bool,
    bound: Duration,
}

/// Finds the late claims, lets a courier worker deliver the backlog, then checks that every late
/// claim's checkpoint is fenced (its epoch moved on).
async fn deliver_and_fence(
    options: &Options,
    p: &mut Pipeline,
    workers: &mut Vec<crate::workers::WorkerHandle>,
    harness: &Store,
    monitor: &RawSession,
    fault: &Fault,
) -> Result<After, ChaosError> {
    let abandoned = fault.clients.abandoned();
    let owners: HashSet<&str> = abandoned
        .iter()
        .map(|(owner, _, _)| owner.as_str())
        .collect();
    let late: Vec<(String, i64, i64)> = monitor
        .query(
            "SELECT owner, range_id, epoch FROM chaos_claims ORDER BY claimed_at",
            &[],
        )
        .await
        .map_err(sql_error("reading chaos_claims"))?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .filter(|(owner, _, _): &(String, i64, i64)| owners.contains(owner.as_str()))
        .collect();

    workers.push(p.start_worker(&p.good_url()).await?);
    let bound = options
        .length
        .pick(Duration::from_secs(60), Duration::from_secs(180));
    let complete = p.wait_all_delivered(bound).await;

    let mut fenced = 0;
    for (_, range_id, epoch) in &late {
        if stale_checkpoint_is_fenced(harness, *range_id, *epoch).await? {
            fenced += 1;
        }
    }
    Ok(After {
        late,
        fenced,
        complete,
        bound,
    })
}

/// Whether a checkpoint of range `range_id` at the claim's `epoch` is refused now.
async fn stale_checkpoint_is_fenced(
    harness: &Store,
    range_id: i64,
    epoch: i64,
) -> Result<bool, ChaosError> {
    let unread =
        |e: String| ChaosError::Setup(format!("reading late-claimed range {range_id}: {e}"));
    let now = harness
        .ranges_by_id(&[range_id])
        .await
        .map_err(|e| unread(e.to_string()))?
        .pop()
        .ok_or_else(|| unread("it is gone".into()))?;
    let (partition, start, now_epoch) = (now.partition, now.start_offset, now.epoch);
    let Ok(range) = OffsetRange::new(start, now.end_offset) else {
        return Ok(false);
    };
    let stale = Lease {
        id: range_id,
        route: ROUTE.to_owned(),
        partition,
        range,
        epoch: Epoch(epoch),
        attempts: 1,
        kind: RangeKind::Live,
        resume_from: start,
        replay_id: None,
    };
    let outcome = harness
        .checkpoint(&stale)
        .await
        .map_err(|e| ChaosError::Setup(format!("stale checkpoint of range {range_id}: {e}")))?;
    Ok(now_epoch > epoch && outcome == CheckpointOutcome::Fenced)
}

/// The report: what the clients did, the orphans, the late claims, and the checks.
fn judge(
    report: &mut ScenarioReport,
    mode: Mode,
    fault: &Fault,
    after: &After,
    judgement: crate::judge::Judgement,
) {
    let clients = &fault.clients;
    let (orphan_max, window) = (fault.orphan_max, fault.window);
    let late = after.late.len();
    let abandoned = clients.abandoned();
    let attempts = clients.attempts.load(AtomicOrdering::Relaxed);
    let server_gave_up = clients.server_gave_up.load(AtomicOrdering::Relaxed);
    let lifetimes: Vec<Duration> = abandoned
        .iter()
        .filter_map(|(_, pid, at)| {
            fault
                .gone_at
                .get(pid)
                .map(|gone| gone.saturating_duration_since(*at))
        })
        .collect();
    let longest_orphan = lifetimes.iter().max().copied().unwrap_or_default();
    let survived = abandoned.len() - lifetimes.len();
    report.note(format!(
        "{CLIENTS} clients, {attempts} claim attempts in {:.0} s: {} abandoned by their client ({} ms deadline, every third {} ms), {server_gave_up} answered by the server first (lock_timeout), {} received",
        window.as_secs_f64(),
        abandoned.len(),
        DEADLINE.as_millis(),
        CANCELLED.as_millis(),
        clients.received.load(AtomicOrdering::Relaxed),
    ));
    report.note(format!(
        "orphan backends queued on the lock: {} (sampled every 100 ms; max {orphan_max}, {} still queued when the lock was freed)",
        growth(&fault.series),
        fault.orphans_at_release
    ));
    if mode == Mode::Naive {
        match &fault.connections {
            Ok((max, in_use)) if orphan_max > 0 => {
                let rate = orphan_max as f64 / window.as_secs_f64();
                report.note(format!(
                    "at {rate:.1} new orphans/s, this server (max_connections {max}, {in_use} connections in use at the end of the window) refuses every new connection (`too many clients already`) after ~{:.0} s",
                    f64::from(*max) / rate
                ));
            }
            Ok(_) => {}
            Err(error) => report.evidence.push(format!(
                "could not read max_connections: {}",
                db_error(error)
            )),
        }
        if clients.capped.load(AtomicOrdering::Relaxed) {
            report.note(format!("clients stopped opening connections at {ORPHAN_CAP} orphans, to spare the shared server"));
        }
    } else {
        report.note(format!(
            "abandoned backends ended by the server after at most {:.0} ms (client_connection_check_interval {} ms); {survived} outlived the window",
            longest_orphan.as_secs_f64() * 1000.0,
            client_timeouts().client_connection_check_interval.as_millis()
        ));
    }
    report.note(format!(
        "late claims committed after the lock was freed, received by no client: {late}; fenced afterwards (epoch moved on, stale checkpoint changed nothing): {}",
        after.fenced
    ));
    for error in clients
        .other_errors
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .take(3)
    {
        report.evidence.push(error.clone());
    }
    report.check(
        "every message delivered",
        after.complete,
        format!(
            "{} of {} within {:?}",
            judgement.delivered, judgement.messages_in, after.bound
        ),
    );
    report.check(
        "every late claim fenced",
        after.fenced == late,
        format!("{} of {late}", after.fenced),
    );
    match mode {
        Mode::Naive => report.check(
            "reproduced",
            orphan_max > 0 && late > 0,
            format!(
                "up to {orphan_max} orphan backends; {late} claims committed that no client received"
            ),
        ),
        Mode::Courier => {
            // The interval, plus the sampler's own cadence and latency on a busy machine.
            let bound = client_timeouts().client_connection_check_interval + Duration::from_secs(1);
            report.check(
                "no orphan survives the connection check",
                survived == 0 && longest_orphan <= bound && late == 0,
                format!(
                    "longest orphan {:.0} ms (bound {} ms), {survived} survived, {late} late claims",
                    longest_orphan.as_secs_f64() * 1000.0,
                    bound.as_millis(),
                ),
            );
        }
    }
    // No stall column: the lock is the harness's in both modes, and the worker starts after it.
    report.incident8 = Some(Incident8Figures {
        orphan_backends_max: Some(orphan_max),
        late_claims: Some(late),
        lost: Some(judgement.lost),
        ..Incident8Figures::default()
    });
    report.judgement = Some(judgement);
}

/// "+N per 5 s" from the sampled series.
fn growth(series: &[(Duration, usize)]) -> String {
    let mut marks = Vec::new();
    let mut next = Duration::from_secs(5);
    for (at, count) in series {
        if *at >= next {
            marks.push(format!("{count} at {:.0} s", at.as_secs_f64()));
            next += Duration::from_secs(5);
        }
    }
    if let Some((at, count)) = series.last() {
        marks.push(format!("{count} at {:.1} s", at.as_secs_f64()));
    }
    marks.join(", ")
}

/// Registers the route and carves every produced offset into pending ranges (as the planner would).
async fn plan_everything(p: &Pipeline, store: &Store) -> Result<(), ChaosError> {
    let setup =
        |e: courier_store::StoreError| ChaosError::Setup(format!("planning the backlog: {e}"));
    store
        .ensure_route(
            &RouteSpec {
                name: ROUTE.to_owned(),
                topic: p.topic.clone(),
                destination: DESTINATION.to_owned(),
            },
            &[],
        )
        .await
        .map_err(setup)?;
    let mut high: HashMap<i32, i64> = HashMap::new();
    for produced in p.produced() {
        let mark = high.entry(produced.partition).or_default();
        *mark = (*mark).max(produced.offset + 1);
    }
    let initial: Vec<(i32, i64)> = (0..p.spec.partitions)
        .map(|partition| (partition, 0))
        .collect();
    store
        .ensure_partitions(ROUTE, &initial)
        .await
        .map_err(setup)?;
    for (partition, high_watermark) in high {
        store
            .plan(&PlanRequest {
                route: ROUTE.to_owned(),
                partition,
                high_watermark,
                range_size: p.spec.range_size,
                max_new_ranges: 100_000,
                max_tail_age: Duration::ZERO,
            })
            .await
            .map_err(setup)?;
    }
    Ok(())
}
