//! The store goes away under the workers: every courier connection ended with `pg_terminate_backend`
//! (repeatedly), and a PostgreSQL restart.
//!
//! `pg-terminate` is scoped to the scenario's scratch database (`datname = $db`, `application_name =
//! 'courier'`), so it is safe next to other tests and runs in `make test`. `pg-restart` restarts the
//! whole cluster: only in `courier gameday --full`, and only when the cluster is the one
//! `scripts/postgres.sh` created (`DATABASE_URL` unset); otherwise it is skipped with a note.

use std::time::{Duration, Instant, SystemTime};

use courier_store::{Store, StoreError};

use crate::judge::FaultWindow;
use crate::pipeline::{Pipeline, PipelineSpec};
use crate::report::ScenarioReport;
use crate::{scenario, ChaosError, Length, Options};

const RATE: usize = 100;

/// `pg_terminate_backend` of every courier connection of the scratch database, several times.
pub async fn terminate(options: &Options) -> Result<ScenarioReport, ChaosError> {
    scenario::on_pipeline(
        "pg-terminate",
        options,
        PipelineSpec::fast("terminate"),
        async |p, report, workers| {
            p.start_trickle(RATE, RATE * 600);
            workers.push(p.start_worker(&p.good_url()).await?);
            workers.push(p.start_worker(&p.good_url()).await?);
            drive_terminate(options, p, report).await
        },
    )
    .await
}

/// Ends every courier connection to `database` (not the harness's); returns how many.
pub(crate) async fn terminate_courier_connections(
    store: &Store,
    database: &str,
) -> Result<i64, ChaosError> {
    let database = database.to_owned();
    store
        .run("chaos: terminate", move |c| {
            Box::pin(async move {
                let row = c
                    .query_one(
                        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
                         WHERE datname = $1 AND application_name = 'courier' AND pid <> pg_backend_pid()",
                        &[&database],
                    )
                    .await
                    .map_err(|e| StoreError::from_db("chaos: terminate", e))?;
                Ok(row.get(0))
            })
        })
        .await
        .map_err(|e| ChaosError::Setup(format!("pg_terminate_backend: {e}")))
}

async fn drive_terminate(
    options: &Options,
    p: &mut Pipeline,
    report: &mut ScenarioReport,
) -> Result<(), ChaosError> {
    let bound = options
        .length
        .pick(Duration::from_secs(60), Duration::from_secs(240));
    let rounds = options.length.pick(3, 6);
    p.wait_delivered_elements(
        RATE as u64,
        bound,
        "warm-up: the workers deliver before the first terminate",
    )
    .await?;
    let (mut first, mut last) = (None, SystemTime::now());
    let mut ended = Vec::new();
    let mut slowest = Duration::ZERO;
    for _ in 0..rounds {
        let count = terminate_courier_connections(&p.harness().await?, &p.db.name).await?;
        let at = Instant::now();
        last = SystemTime::now();
        first.get_or_insert(last);
        ended.push(count);
        p.wait_progress(10, bound, "delivery after pg_terminate_backend")
            .await?;
        slowest = slowest.max(at.elapsed());
        // Pacing the rounds (not synchronisation): a second of normal traffic between faults.
        tokio::time::sleep(
            options
                .length
                .pick(Duration::from_secs(1), Duration::from_secs(5)),
        )
        .await;
    }
    p.stop_trickle().await?;
    let complete = p.wait_all_delivered(bound).await;
    let judgement = p
        .judge(Some(FaultWindow {
            started: first.unwrap_or(last),
            ended: last,
        }))
        .await?;
    report.note(format!(
        "{rounds} round(s) of pg_terminate_backend ended {ended:?} courier connection(s); deliveries resumed within {:.1} s each time at worst",
        slowest.as_secs_f64()
    ));
    report.check(
        "the fault hit courier's connections",
        ended.iter().all(|n| *n > 0),
        format!("connections ended per round: {ended:?}"),
    );
    report.check(
        "every message delivered",
        complete,
        format!(
            "{} of {} within {bound:?} of the last terminate",
            judgement.delivered, judgement.messages_in
        ),
    );
    report.judgement = Some(judgement);
    Ok(())
}

/// The `scripts/postgres.sh` cluster's version, when it exists (`pg_lsclusters`).
async fn our_cluster_version() -> Option<String> {
    let output = tokio::process::Command::new("pg_lsclusters")
        .arg("-h")
        .output()
        .await
        .ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(1) == Some(&"courier")).then(|| fields[0].to_owned())
        })
}

/// Why a restart may not run here, if it may not.
pub fn restart_refused(
    options: &Options,
    service: &str,
    external: bool,
    variable: &str,
) -> Option<String> {
    if options.length == Length::Short || !options.allow_restarts {
        return Some(format!(
            "restarting {service} runs only in `courier gameday --full`: other tests share this server"
        ));
    }
    external.then(|| format!("{variable} is set: that {service} is not ours to restart"))
}

/// A PostgreSQL restart under live workers (full runs, our cluster only).
pub async fn restart(options: &Options) -> Result<ScenarioReport, ChaosError> {
    if let Some(why) = restart_refused(
        options,
        "PostgreSQL",
        options.services.external_database,
        "DATABASE_URL",
    ) {
        return Ok(ScenarioReport::skipped("pg-restart", options.length, why));
    }
    let Some(version) = our_cluster_version().await else {
        return Ok(ScenarioReport::skipped(
            "pg-restart",
            options.length,
            "no cluster named `courier` (scripts/postgres.sh) found with pg_lsclusters",
        ));
    };
    let bound = Duration::from_secs(240);
    scenario::on_pipeline(
        "pg-restart",
        options,
        PipelineSpec::fast("pgrestart"),
        async |p, report, workers| {
            p.start_trickle(RATE, RATE * 600);
            workers.push(p.start_worker(&p.good_url()).await?);
            p.wait_delivered_elements(RATE as u64, bound, "warm-up")
                .await?;
            let fault_started = SystemTime::now();
            let restart = tokio::process::Command::new("pg_ctlcluster")
                .args([version.as_str(), "courier", "restart"])
                .output();
            let output = tokio::time::timeout(Duration::from_secs(120), restart)
                .await
                .map_err(|_| ChaosError::Stuck("pg_ctlcluster restart took over 120 s".into()))?
                .map_err(|e| {
                    ChaosError::Setup(format!(
                        "cannot run pg_ctlcluster (needs root, as scripts/postgres.sh): {e}"
                    ))
                })?;
            if !output.status.success() {
                return Err(ChaosError::Setup(format!(
                    "pg_ctlcluster {version} courier restart failed: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                )));
            }
            let fault = FaultWindow {
                started: fault_started,
                ended: SystemTime::now(),
            };
            report.note(format!(
                "pg_ctlcluster {version} courier restart took {:.1} s (it returns once the server accepts connections; the longest stall is the outage as the workers saw it)",
                fault
                    .ended
                    .duration_since(fault.started)
                    .unwrap_or_default()
                    .as_secs_f64()
            ));
            let judgement = p
                .settle(report, fault, bound, "first delivery after the restart")
                .await?;
            report.judgement = Some(judgement);
            Ok(())
        },
    )
    .await
}
