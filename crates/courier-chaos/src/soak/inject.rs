//! Injecting one fault of the soak and undoing it: every fault is bounded by its duration and ends with
//! the pipeline as it was (worker restarted or continued, service started, destination answering).
//!
//! Owns [`Target`] (what faults hit) and [`inject`], which returns an [`Injected`]: when the fault
//! really started and ended (restarts take longer than their planned downtime), what it did, and what
//! went wrong injecting or undoing it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use courier_sink::Behaviour;
use courier_store::{RangeRecord, Store};
use serde::Serialize;
use tokio::sync::Mutex;

use super::fleet::Fleet;
use super::schedule::{Fault, FaultKind};
use super::services::SoakServices;
use crate::pg_faults::terminate_courier_connections;
use crate::pipeline::{poll, Pipeline};
use crate::report::fmt_duration;
use crate::ChaosError;

/// What the faults hit.
pub struct Target {
    pub pipeline: Arc<Pipeline>,
    pub fleet: Arc<Mutex<Fleet>>,
    pub services: SoakServices,
    /// The harness's store handle (not named `courier`, so terminating never ends it).
    pub harness: Store,
}

/// One fault as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct Injected {
    pub fault: Fault,
    /// From the start of the soak.
    #[serde(with = "crate::report::secs")]
    pub started_after: Duration,
    #[serde(skip)]
    pub started: SystemTime,
    #[serde(skip)]
    pub ended: SystemTime,
    pub detail: String,
    /// It could not be injected or undone as planned.
    pub error: Option<String>,
    /// From its end to the first message first delivered after it (filled in by the judge).
    #[serde(with = "crate::report::opt_secs")]
    pub recovery: Option<Duration>,
    /// Another fault was active during that recovery, so it measures both (filled in by the judge).
    pub masked_by: Option<FaultKind>,
}

impl Injected {
    /// How long it really lasted.
    pub fn lasted(&self) -> Duration {
        self.ended.duration_since(self.started).unwrap_or_default()
    }
}

/// Injects `fault`, holds it for its duration and undoes it.
pub async fn inject(target: Arc<Target>, fault: Fault, started_after: Duration) -> Injected {
    let started = SystemTime::now();
    let outcome = match fault.kind {
        FaultKind::WorkerKill => worker_kill(&target, fault).await,
        FaultKind::WorkerStop => worker_stop(&target, fault).await,
        FaultKind::PgTerminate => pg_terminate(&target, fault.duration).await,
        FaultKind::PgRestart => pg_restart(&target, fault.duration).await,
        FaultKind::KafkaRestart => kafka_restart(&target, fault.duration).await,
        FaultKind::Http5xx => {
            destination(
                &target,
                Behaviour::Status(503),
                "answered 503",
                fault.duration,
            )
            .await
        }
        FaultKind::Http429 => {
            let storm = Behaviour::StatusWithRetryAfter(429, 1);
            destination(
                &target,
                storm,
                "answered 429 Retry-After: 1",
                fault.duration,
            )
            .await
        }
        FaultKind::Hang => {
            destination(&target, Behaviour::Hang, "never answered", fault.duration).await
        }
        FaultKind::Dns => dns(&target, fault.duration).await,
    };
    let (detail, error) = match outcome {
        Ok(detail) => (detail, None),
        Err((detail, error)) => (detail, Some(error)),
    };
    Injected {
        fault,
        started_after,
        started,
        ended: SystemTime::now(),
        detail,
        error,
        recovery: None,
        masked_by: None,
    }
}

/// `Ok(detail)`, or `Err((detail, what went wrong))`.
type Outcome = Result<String, (String, String)>;

/// Holding the fault (not synchronisation: the fault lasts this long by design).
async fn hold(duration: Duration) {
    tokio::time::sleep(duration).await;
}

/// Joins the results of injecting and undoing into one outcome.
fn both(detail: String, inject: Result<(), ChaosError>, undo: Result<(), ChaosError>) -> Outcome {
    let errors: Vec<String> = [
        inject.err().map(|e| format!("injecting: {e}")),
        undo.err().map(|e| format!("undoing: {e}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if errors.is_empty() {
        Ok(detail)
    } else {
        Err((detail, errors.join("; ")))
    }
}

fn slot(fault: Fault) -> usize {
    fault.worker.unwrap_or(0)
}

/// How long a worker fault waits for its worker to hold a lease, so it interrupts a delivery.
const AIM_FOR: Duration = Duration::from_secs(10);

/// Waits (at most [`AIM_FOR`]) until the slot's worker holds a lease; says how many it held.
async fn aim(target: &Target, fault: Fault) -> String {
    let Some(owner) = target.fleet.lock().await.owner(slot(fault)) else {
        return "no worker in the slot".to_owned();
    };
    let held = poll(AIM_FOR, || async {
        held_leases(&target.harness, &owner)
            .await
            .ok()
            .filter(|held| !held.is_empty())
    })
    .await;
    match held {
        Some(held) => format!("holding {} lease(s)", held.len()),
        None => format!("holding no lease within {}", fmt_duration(AIM_FOR)),
    }
}

async fn worker_kill(target: &Target, fault: Fault) -> Outcome {
    let aimed = aim(target, fault).await;
    let killed = target.fleet.lock().await.kill(slot(fault)).await;
    hold(fault.duration).await;
    let restarted = target
        .fleet
        .lock()
        .await
        .restart(&target.pipeline, slot(fault))
        .await;
    match killed {
        Ok(what) => both(
            format!("SIGKILL {what} ({aimed}), restarted"),
            Ok(()),
            restarted,
        ),
        Err(e) => both(String::new(), Err(e), restarted),
    }
}

async fn worker_stop(target: &Target, fault: Fault) -> Outcome {
    aim(target, fault).await;
    let owner = match target.fleet.lock().await.freeze(slot(fault), true).await {
        Ok(owner) => owner,
        Err(e) => return Err((String::new(), format!("injecting: {e}"))),
    };
    let held = held_leases(&target.harness, &owner).await;
    hold(fault.duration).await;
    let stolen = match &held {
        Ok(held) => stolen_leases(&target.harness, held).await,
        Err(e) => Err(e.clone()),
    };
    let thawed = target.fleet.lock().await.freeze(slot(fault), false).await;
    let detail = match (held, stolen) {
        (Ok(held), Ok(stolen)) => format!(
            "SIGSTOP worker {owner}, SIGCONT; {stolen} of the {} lease(s) it held were taken over while it was stopped",
            held.len()
        ),
        (Err(e), _) | (_, Err(e)) => format!("SIGSTOP worker {owner}, SIGCONT; leases not read: {e}"),
    };
    both(detail, Ok(()), thawed.map(|_| ()))
}

/// `(id, epoch)` of the ranges `owner_like` holds.
async fn held_leases(store: &Store, owner_like: &str) -> Result<Vec<RangeRecord>, String> {
    store
        .leases_held_by(owner_like)
        .await
        .map_err(|e| e.to_string())
}

/// How many of `held` have been leased again since (a greater epoch).
async fn stolen_leases(store: &Store, held: &[RangeRecord]) -> Result<usize, String> {
    let ids: Vec<i64> = held.iter().map(|range| range.id).collect();
    let now = store.ranges_by_id(&ids).await.map_err(|e| e.to_string())?;
    Ok(now
        .iter()
        .filter(|r| held.iter().any(|h| h.id == r.id && r.epoch > h.epoch))
        .count())
}

async fn pg_terminate(target: &Target, duration: Duration) -> Outcome {
    let until = tokio::time::Instant::now() + duration;
    let (mut rounds, mut ended, mut failures) = (0, 0, Vec::new());
    loop {
        rounds += 1;
        match terminate_courier_connections(&target.harness, &target.pipeline.db.name).await {
            Ok(count) => ended += count,
            Err(e) => failures.push(e.to_string()),
        }
        if tokio::time::Instant::now() + Duration::from_secs(1) > until {
            break;
        }
        hold(Duration::from_secs(1)).await;
    }
    let detail = format!("pg_terminate_backend x{rounds}: {ended} courier connection(s) ended");
    if failures.is_empty() {
        Ok(detail)
    } else {
        Err((detail, failures.join("; ")))
    }
}

async fn pg_restart(target: &Target, down: Duration) -> Outcome {
    let stopped = target.services.stop_postgres().await;
    hold(down).await;
    let started = target.services.start_postgres().await;
    both(
        format!("PostgreSQL down {:.1} s, started", down.as_secs_f64()),
        stopped,
        started,
    )
}

async fn kafka_restart(target: &Target, down: Duration) -> Outcome {
    // A message produced while the broker is down has an unknown fate, not a place in the count: the
    // generator holds its messages until the broker is back.
    target.pipeline.pause_trickle(true);
    let stopped = target.services.stop_kafka().await;
    hold(down).await;
    let started = target.services.start_kafka().await;
    target.pipeline.pause_trickle(false);
    both(
        format!("Kafka down {:.1} s, started", down.as_secs_f64()),
        stopped,
        started,
    )
}

async fn destination(
    target: &Target,
    behaviour: Behaviour,
    how: &str,
    duration: Duration,
) -> Outcome {
    let sink = &target.pipeline.sink;
    let before = sink.stats().requests;
    sink.set_behaviour(behaviour);
    hold(duration).await;
    sink.set_behaviour(Behaviour::Ok);
    Ok(format!(
        "the destination {how} {} request(s)",
        sink.stats().requests.saturating_sub(before)
    ))
}

async fn dns(target: &Target, duration: Duration) -> Outcome {
    let p = &target.pipeline;
    // `.invalid` never resolves (RFC 6761); the deliverer answers it locally, nothing leaves the machine.
    let bad_url = format!("http://courier-soak.invalid:{}/", p.sink.addr().port());
    let broken = target.fleet.lock().await.redeploy(p, &bad_url).await;
    hold(duration).await;
    let fixed = target.fleet.lock().await.redeploy(p, &p.good_url()).await;
    let mut notes = Vec::new();
    for problems in [&broken, &fixed].into_iter().flatten() {
        notes.extend(problems.iter().cloned());
    }
    let detail = format!(
        "every worker redeployed to {bad_url}, then back{}",
        if notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", notes.join("; "))
        }
    );
    both(detail, broken.map(|_| ()), fixed.map(|_| ()))
}
