//! Fifty workers booting at once against a fresh database that is slow to accept connections
//! (incident 8's "suddenly very high amounts").
//!
//! Every worker boots the way `courier run --migrate` does: the migration runner, then the store, then
//! the worker. In-process in the tests; real `courier run --migrate` processes in `courier gameday`.
//! They reach PostgreSQL through a [`SlowDoor`] that turns every connection away while the herd
//! arrives and is slow after that, so every first attempt fails on purpose and the boot must wait
//! politely (backoff with jitter until `worker.boot_timeout`) rather than crash.
//! Checks: the door really was slow, no boot fails, the migrations are applied exactly once in all
//! (the others wait on the advisory lock or find the schema current; none touches a table lock), then
//! every message is delivered with nothing lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_store::{Migrator, StoreError};
use courier_worker::WorkerConfig;
use tokio::sync::Barrier;

use crate::pipeline::{fast_worker_config, Pipeline, PipelineSpec};
use crate::report::ScenarioReport;
use crate::slow_door::SlowDoor;
use crate::workers::{Launcher, WorkerHandle};
use crate::{scenario, ChaosError, Options};

/// Workers booting at once.
pub const WORKERS: usize = 50;

pub async fn run(options: &Options) -> Result<ScenarioReport, ChaosError> {
    // Fifty workers on two cores: each polls and plans less often than a lone chaos worker would.
    let spec = PipelineSpec {
        partitions: 4,
        migrate: false,
        pool_size: 2,
        worker: WorkerConfig {
            delivery_tasks: 1,
            poll_interval: Duration::from_millis(250),
            plan_interval: Duration::from_secs(1),
            heartbeat_every: Duration::from_secs(5),
            ..fast_worker_config()
        },
        ..PipelineSpec::fast("bootstorm")
    };
    scenario::on_pipeline("boot-storm", options, spec, async |p, report, workers| {
        drive(options, p, workers, report).await
    })
    .await
}

async fn drive(
    options: &Options,
    p: &mut Pipeline,
    workers: &mut Vec<WorkerHandle>,
    report: &mut ScenarioReport,
) -> Result<(), ChaosError> {
    p.produce(options.length.pick(2000, 10_000)).await?;
    let mut spec = p.worker_spec(&p.good_url());
    spec.migrate = true;
    let client_limit = spec.store.timeouts.pool_create;
    // The herd arrives within this window (the workers wait on a barrier): all of it is turned away.
    let stall = options
        .length
        .pick(Duration::from_secs(5), Duration::from_secs(10));
    let door = SlowDoor::open(server_address(&spec.store.url).await?, stall, client_limit).await?;
    spec.store.url = courier_store::url::with_address(&spec.store.url, &door.address().to_string());

    let booting = Instant::now();
    let barrier = Arc::new(Barrier::new(WORKERS));
    let mut boots = tokio::task::JoinSet::new();
    for _ in 0..WORKERS {
        let (barrier, spec, launcher) = (Arc::clone(&barrier), spec.clone(), p.launcher.clone());
        boots.spawn(async move {
            barrier.wait().await;
            WorkerHandle::start(&launcher, &spec).await
        });
    }
    let (mut failures, mut applied, mut retries, mut current) = (Vec::new(), Vec::new(), 0, 0);
    while let Some(joined) = boots.join_next().await {
        match joined {
            Ok(Ok(started)) => {
                if let Some(migration) = started.migration {
                    applied.extend(migration.applied);
                    retries += migration.ddl_retries;
                    current += usize::from(migration.already_current);
                }
                workers.push(started.handle);
            }
            Ok(Err(error)) => failures.push(error.to_string()),
            Err(join) => failures.push(format!("boot task failed: {join}")),
        }
    }
    let booted_in = booting.elapsed();

    let bound = options
        .length
        .pick(Duration::from_secs(120), Duration::from_secs(300));
    let complete = p.wait_all_delivered(bound).await;
    // A process that died at boot (or later) shows up here.
    for worker in workers.iter_mut() {
        if let Some(how) = worker.exited() {
            failures.push(how);
        }
    }
    if let Launcher::Process { .. } = p.launcher {
        // Each process logs the migrations it applied.
        for worker in workers.iter() {
            if let Some(log) = worker.log() {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let text = crate::workers::strip_ansi(&text);
                for line in text.lines().filter(|l| l.contains("Applied migration")) {
                    if let Some(version) = line
                        .split("version=")
                        .nth(1)
                        .and_then(|rest| rest.split_whitespace().next())
                        .and_then(|v| v.parse::<i64>().ok())
                    {
                        applied.push(version);
                    }
                }
            }
        }
    }
    let store = p.harness().await?;
    let rows: i64 = store
        .run("chaos: migrations", |c| {
            Box::pin(async move {
                let row = c
                    .query_one("SELECT count(*) FROM courier_migrations", &[])
                    .await
                    .map_err(|e| StoreError::from_db("chaos: migrations", e))?;
                Ok(row.get(0))
            })
        })
        .await
        .map_err(|e| ChaosError::Setup(format!("reading courier_migrations: {e}")))?;
    // The versions embedded, not 1..=last: a number can be reserved for a migration of another branch.
    let migrator = Migrator::embedded();
    let expected: Vec<i64> = migrator.migrations().iter().map(|m| m.version).collect();
    let expected_version = expected.len() as i64;
    applied.sort_unstable();
    let judgement = p.judge(None).await?;

    report.note(format!(
        "{WORKERS} workers ({}) booted in {:.1} s; migrations applied {:?} in all{}",
        match p.launcher {
            Launcher::InProcess => "in-process",
            Launcher::Process { .. } => "`courier run --migrate` processes",
        },
        booted_in.as_secs_f64(),
        applied,
        match p.launcher {
            Launcher::InProcess => format!(", {current} runner(s) found the schema current without a lock, ddl_retries {retries}"),
            Launcher::Process { .. } => String::new(),
        }
    ));
    for failure in failures.iter().take(5) {
        report.evidence.push(failure.clone());
    }
    report.check(
        "the store was slow to accept on purpose",
        door.held_past_limit() > 0,
        format!(
            "{} of {} connection(s) turned away unanswered past the client's connect limit ({client_limit:?})",
            door.held_past_limit(),
            door.connections()
        ),
    );
    report.check(
        "no boot failed",
        failures.is_empty(),
        format!("{} of {WORKERS} failed", failures.len()),
    );
    report.check(
        "exactly one apply",
        applied == expected && rows == expected_version,
        format!("versions applied across workers {applied:?}, expected {expected:?}; courier_migrations has {rows} row(s)"),
    );
    report.check(
        "every message delivered",
        complete,
        format!(
            "{} of {} within {bound:?}",
            judgement.delivered, judgement.messages_in
        ),
    );
    report.judgement = Some(judgement);
    Ok(())
}

/// The server's `host:port` from a PostgreSQL URL, resolved.
async fn server_address(url: &str) -> Result<std::net::SocketAddr, ChaosError> {
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| ChaosError::Setup(format!("boot storm: cannot parse the store URL: {e}")))?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    tokio::net::lookup_host((host.as_str(), port))
        .await
        .ok()
        .and_then(|mut addresses| addresses.next())
        .ok_or_else(|| ChaosError::Setup(format!("boot storm: cannot resolve {host}:{port}")))
}
