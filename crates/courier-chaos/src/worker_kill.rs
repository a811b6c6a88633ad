//! Workers SIGKILLed mid-batch, repeatedly.
//!
//! Two workers deliver to a slow destination (every request takes 40 ms, so ranges are mid-delivery
//! most of the time). Again and again, a worker is killed while it holds a lease, and a new one is
//! started in its place. Checks: every range a dead worker held is leased again within the lease TTL
//! plus a margin (liveness), duplicates fall only in those interrupted ranges (the judge), nothing is
//! lost. `courier gameday` kills real `courier run` processes with SIGKILL; the tests abort an
//! in-process worker's task (see `workers`).
//!
//! "What a worker held when it died" is read only once the server has no session of it left: a
//! statement the worker sent just before the kill still runs to its commit on the server (a checkpoint
//! settling a range, a lease taking one), and a snapshot taken before that commit would wait for ranges
//! that were never abandoned. Each worker runs under its own `application_name` to tell its sessions
//! apart.

use std::time::{Duration, Instant, SystemTime};

use courier_sink::Behaviour;
use courier_store::{RangeRecord, Store, StoreError};

use crate::judge::FaultWindow;
use crate::pipeline::{poll, Pipeline, PipelineSpec};
use crate::report::ScenarioReport;
use crate::workers::{Started, WorkerHandle};
use crate::{scenario, ChaosError, Options};

const RATE: usize = 100;

pub async fn run(options: &Options) -> Result<ScenarioReport, ChaosError> {
    let spec = PipelineSpec {
        partitions: 4,
        ..PipelineSpec::fast("kill")
    };
    let kills = options.length.pick(3, 10);
    scenario::on_pipeline("worker-kill", options, spec, async |p, report, workers| {
        p.sink
            .set_behaviour(Behaviour::Delay(Duration::from_millis(40)));
        p.produce(options.length.pick(1000, 4000)).await?;
        p.start_trickle(RATE, RATE * 600);
        workers.push(start_named(p, 0).await?.0);
        workers.push(start_named(p, 1).await?.0);
        drive(options, p, workers, report, kills).await
    })
    .await
}

/// Starts worker number `n` under the `application_name` `courier-kill-{n}`, returned with it.
async fn start_named(p: &Pipeline, n: usize) -> Result<(WorkerHandle, String), ChaosError> {
    let mut spec = p.worker_spec(&p.good_url());
    let app = format!("courier-kill-{n}");
    spec.store.application_name = app.clone();
    let Started { handle, .. } = WorkerHandle::start(&p.launcher, &spec).await?;
    Ok((handle, app))
}

/// How many server sessions named `app` remain.
async fn sessions_of(store: &Store, app: &str) -> Result<i64, ChaosError> {
    let app = app.to_owned();
    store
        .run("chaos: sessions", move |c| {
            Box::pin(async move {
                let row = c
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1",
                        &[&app],
                    )
                    .await
                    .map_err(|e| StoreError::from_db("chaos: sessions", e))?;
                Ok(row.get(0))
            })
        })
        .await
        .map_err(|e| ChaosError::Setup(format!("reading pg_stat_activity: {e}")))
}

/// Whether a worker matching `owner_like` has recorded its heartbeat (it booted and runs).
async fn has_booted(store: &Store, owner_like: &str) -> Result<bool, ChaosError> {
    let owner = owner_like.to_owned();
    store
        .run("chaos: booted", move |c| {
            Box::pin(async move {
                let row = c
                    .query_one(
                        "SELECT count(*) FROM courier_workers WHERE id LIKE $1 AND stopped_at IS NULL",
                        &[&owner],
                    )
                    .await
                    .map_err(|e| StoreError::from_db("chaos: booted", e))?;
                Ok(row.get::<_, i64>(0) > 0)
            })
        })
        .await
        .map_err(|e| ChaosError::Setup(format!("reading courier_workers: {e}")))
}

/// The ranges `owner_like` holds right now, with their epochs.
async fn held_by(store: &Store, owner_like: &str) -> Result<Vec<RangeRecord>, ChaosError> {
    store
        .leases_held_by(owner_like)
        .await
        .map_err(|e| ChaosError::Setup(format!("reading leases: {e}")))
}

/// Whether every `(id, epoch)` has been leased again since (its epoch moved on).
async fn all_leased_again(store: &Store, held: &[RangeRecord]) -> Result<bool, ChaosError> {
    let ids: Vec<i64> = held.iter().map(|range| range.id).collect();
    let now = store
        .ranges_by_id(&ids)
        .await
        .map_err(|e| ChaosError::Setup(format!("reading epochs: {e}")))?;
    Ok(held
        .iter()
        .all(|h| now.iter().any(|r| r.id == h.id && r.epoch > h.epoch)))
}

async fn drive(
    options: &Options,
    p: &mut Pipeline,
    workers: &mut [WorkerHandle],
    report: &mut ScenarioReport,
    kills: usize,
) -> Result<(), ChaosError> {
    let bound = options
        .length
        .pick(Duration::from_secs(60), Duration::from_secs(240));
    let lease_ttl = p.spec.worker.lease_ttl;
    let store = p.harness().await?;
    p.wait_delivered_elements(
        50,
        bound,
        "warm-up: the workers deliver before the first kill",
    )
    .await?;
    let (mut first_kill, mut last_kill) = (None, SystemTime::now());
    let mut slowest_release = Duration::ZERO;
    let mut held_total = 0;
    let mut apps: Vec<String> = (0..workers.len())
        .map(|n| format!("courier-kill-{n}"))
        .collect();
    for k in 0..kills {
        // Every worker is up and has booted, so someone is left to take over.
        for (i, worker) in workers.iter_mut().enumerate() {
            if let Some(how) = worker.exited() {
                return Err(ChaosError::Stuck(format!(
                    "before kill {}: worker {i} is gone ({how})",
                    k + 1
                )));
            }
            let owner = worker.owner_like();
            poll(bound, || async {
                has_booted(&store, &owner).await.ok().filter(|b| *b)
            })
            .await
            .ok_or_else(|| {
                ChaosError::Stuck(format!(
                    "{} never recorded a heartbeat within {bound:?}",
                    worker.describe()
                ))
            })?;
        }
        // Kill a worker while it holds a lease, mid-delivery: whichever holds one (at low load the
        // worker planning the route, whose tasks its planner wakes first, often holds them all).
        let owners: Vec<String> = workers.iter().map(WorkerHandle::owner_like).collect();
        let slot = poll(bound, || async {
            for (i, owner) in owners.iter().enumerate() {
                if held_by(&store, owner)
                    .await
                    .is_ok_and(|held| !held.is_empty())
                {
                    return Some(i);
                }
            }
            None
        })
        .await
        .ok_or_else(|| ChaosError::Stuck(format!("no worker held a lease within {bound:?}")))?;
        let owner = owners[slot].clone();
        workers[slot].kill().await;
        let killed_at = Instant::now();
        last_kill = SystemTime::now();
        first_kill.get_or_insert(last_kill);
        // Its last statements may still be running on the server: wait for its sessions to end, then
        // read what it held when it died. Nothing but expiry and another worker's lease changes these
        // rows now.
        let app = apps[slot].clone();
        poll(bound, || async {
            sessions_of(&store, &app).await.ok().filter(|n| *n == 0)
        })
        .await
        .ok_or_else(|| {
            ChaosError::Stuck(format!(
                "sessions of the killed worker ({app}) outlived it by {bound:?}"
            ))
        })?;
        let held = held_by(&store, &owner).await?;
        held_total += held.len();
        let (replacement, app) = start_named(p, workers.len() + k).await?;
        workers[slot] = replacement;
        apps[slot] = app;
        if held.is_empty() {
            report.note(format!(
                "kill {} landed between two ranges: it interrupted nothing",
                k + 1
            ));
            p.wait_progress(25, bound, "delivery after a kill").await?;
            continue;
        }

        // Liveness: the dead worker's ranges are leased again after their TTL.
        poll(lease_ttl + Duration::from_secs(30), || async {
            all_leased_again(&store, &held)
                .await
                .ok()
                .filter(|again| *again)
        })
        .await
        .ok_or_else(|| {
            ChaosError::Stuck(format!(
                "ranges {:?} (id, epoch) of a killed worker were not leased again",
                held.iter().map(|r| (r.id, r.epoch)).collect::<Vec<_>>()
            ))
        })?;
        slowest_release = slowest_release.max(killed_at.elapsed());
        p.wait_progress(25, bound, "delivery after a kill").await?;
    }
    p.stop_trickle().await?;
    let complete = p.wait_all_delivered(bound).await;
    let judgement = p
        .judge(Some(FaultWindow {
            started: first_kill.unwrap_or(last_kill),
            ended: last_kill,
        }))
        .await?;
    report.note(format!(
        "{kills} kill(s) mid-batch, {held_total} leased range(s) interrupted; slowest re-lease {:.1} s after the kill (lease_ttl {:.0} s); {} duplicate deliveries, {} of them outside an interrupted range",
        slowest_release.as_secs_f64(),
        lease_ttl.as_secs_f64(),
        judgement.duplicates(),
        judgement.duplicates_unexplained
    ));
    let margin = Duration::from_secs(3);
    report.check(
        "a dead worker's ranges are leased again within lease_ttl + margin",
        slowest_release <= lease_ttl + margin,
        format!(
            "slowest {:.1} s, bound {:.1} s",
            slowest_release.as_secs_f64(),
            (lease_ttl + margin).as_secs_f64()
        ),
    );
    report.check(
        "every message delivered",
        complete,
        format!(
            "{} of {} within {bound:?} of the last kill",
            judgement.delivered, judgement.messages_in
        ),
    );
    report.judgement = Some(judgement);
    Ok(())
}
