//! Incident 8, failure 2: the pile-up stall, in which no deadlock is ever reported.
//!
//! A live pipeline (a courier worker in-process or as a process, a steady trickle, compaction off) is
//! delivering. Then:
//! 1. a **holder** opens a transaction holding row locks on `courier_ranges` (`SELECT ... FOR UPDATE` of
//!    the two newest ranges, as a worker mid-lease would) and freezes: it never sends again;
//! 2. a **booting worker** runs `ALTER TABLE courier_ranges ADD COLUMN IF NOT EXISTS boot_marker int`,
//!    which queues for AccessExclusiveLock behind the holder, and every lease and checkpoint queues
//!    behind *it*.
//!
//! Naive: holder and ALTER on sessions with the server's defaults. Nothing moves until the harness's
//! bound, when it captures `pg_stat_activity` / `pg_locks` (the queue points at the ALTER, not at the
//! idle transaction that is the cause) and ends the holder with `pg_terminate_backend`.
//! Courier: the holder is a courier session (`idle_in_transaction_session_timeout` ends it), and the
//! booting worker is courier's migration runner applying a pending migration with that ALTER under
//! `ddl_lock_timeout`, retried with backoff: the ALTER never queues for long, the server frees the lock,
//! the migration is applied once.

use std::time::{Duration, Instant, SystemTime};

use courier_store::{Migrator, Store, Timeouts};
use courier_testkit::db::db_error;

use crate::env::{raw_session, HARNESS_APP};
use crate::incident8::{
    deadlocks_reported, pileup_evidence, wait_backend_gone, wait_lock_waiter, with_boot_migration,
    BOOT_ALTER, BOOT_MIGRATION_VERSION,
};
use crate::judge::FaultWindow;
use crate::pipeline::{Pipeline, PipelineSpec};
use crate::report::{Incident8Figures, Mode, ScenarioReport};
use crate::{ChaosError, Options};

/// The frozen worker's transaction: row locks on the two newest ranges.
const HOLDER_SQL: &str = "BEGIN; SELECT id FROM courier_ranges ORDER BY id DESC LIMIT 2 FOR UPDATE";

/// Messages per second of the trickle.
const RATE: usize = 50;

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
    let length = options.length;
    let mut report = ScenarioReport::new("pile-up", Some(mode), length);
    // Naive: how long the harness lets the stall run before it steps in. Courier: the holder's
    // transaction budget, after which the server ends it.
    let naive_bound = length.pick(Duration::from_secs(15), Duration::from_secs(120));
    let idle_timeout = length.pick(Duration::from_secs(3), Duration::from_secs(10));

    let mut p = Pipeline::start(
        &options.services,
        PipelineSpec::fast(&format!("pileup_{}", mode.as_str())),
        options.launcher.clone(),
    )
    .await?;
    let total = RATE * (naive_bound.as_secs() as usize + 120);
    p.start_trickle(RATE, total);
    let worker = p.start_worker(&p.good_url()).await?;
    let workers = vec![worker];
    let outcome = drive(
        options,
        mode,
        &mut p,
        &mut report,
        naive_bound,
        idle_timeout,
    )
    .await;
    let finished = p.finish(workers).await;
    outcome?;
    finished?;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Warm-up, then the fault (a frozen holder, a booting worker's DDL queued behind it, the stall), the
/// booting worker's outcome, and recovery with the judgement.
async fn drive(
    options: &Options,
    mode: Mode,
    p: &mut Pipeline,
    report: &mut ScenarioReport,
    naive_bound: Duration,
    idle_timeout: Duration,
) -> Result<(), ChaosError> {
    let long = options
        .length
        .pick(Duration::from_secs(60), Duration::from_secs(240));
    p.wait_delivered_elements(
        RATE as u64,
        long,
        "warm-up: the worker delivers before the fault",
    )
    .await?;
    let monitor = raw_session(&p.db, HARNESS_APP).await?;
    let deadlocks_before = deadlocks_reported(&monitor)
        .await
        .map_err(sql_error("reading pg_stat_database"))?;

    // Kept alive, and silent, until the fault is over.
    let (holder_pid, holder) = freeze_a_holder(mode, p, idle_timeout).await?;
    let started = SystemTime::now();
    let frozen_at = Instant::now();
    let booting = boot_a_worker(mode, p).await?;
    let alter_pid = wait_lock_waiter(
        &monitor,
        "ALTER TABLE courier_ranges",
        Duration::from_secs(10),
    )
    .await;
    report.note(match alter_pid {
        Some(pid) => format!("the booting worker's ALTER TABLE (pid {pid}) queued for AccessExclusiveLock behind the holder (pid {holder_pid})"),
        None => "the booting worker's ALTER TABLE was not seen waiting on the lock".to_owned(),
    });
    let stall = Stall {
        holder_pid,
        alter_pid,
        frozen_at,
        started,
        naive_bound,
        idle_timeout,
    };
    let ended = stall_until_the_holder_is_gone(mode, &monitor, &stall, report).await?;
    drop(holder);
    booted(mode, &monitor, booting, report).await?;
    let fault = FaultWindow { started, ended };
    recover_and_judge(
        options,
        mode,
        p,
        &monitor,
        deadlocks_before,
        fault,
        &stall,
        report,
    )
    .await
}

/// The booting worker's DDL, running: `Some(migration)` for courier's runner.
type Booting = tokio::task::JoinHandle<Result<Option<courier_store::MigrationReport>, String>>;

/// 1. A holder takes row locks and freezes: a raw session (naive) or a courier session whose
///    `idle_in_transaction_session_timeout` is `idle_timeout` (courier). Its pid and the session.
async fn freeze_a_holder(
    mode: Mode,
    p: &Pipeline,
    idle_timeout: Duration,
) -> Result<(i32, Box<dyn Send>), ChaosError> {
    Ok(match mode {
        Mode::Naive => {
            let holder = raw_session(&p.db, "frozen-worker").await?;
            let pid = holder
                .backend_pid()
                .await
                .map_err(sql_error("holder pid"))?;
            holder
                .batch_execute(HOLDER_SQL)
                .await
                .map_err(sql_error("holder locks rows"))?;
            (pid, Box::new(holder))
        }
        Mode::Courier => {
            let timeouts = Timeouts {
                idle_in_transaction_session_timeout: idle_timeout,
                ..Timeouts::default()
            };
            let config = courier_store::StoreConfig {
                application_name: "frozen-worker".to_owned(),
                pool_size: 1,
                ..p.db.config_with(timeouts)
            };
            let holder_store = Store::connect(&config)
                .await
                .map_err(|e| ChaosError::Setup(format!("holder store: {e}")))?;
            let holder = holder_store
                .dedicated_connection()
                .await
                .map_err(|e| ChaosError::Setup(format!("holder connection: {e}")))?;
            let pid: i32 = holder
                .query_one("SELECT pg_backend_pid()", &[])
                .await
                .map_err(sql_error("holder pid"))?
                .get(0);
            holder
                .batch_execute(HOLDER_SQL)
                .await
                .map_err(sql_error("holder locks rows"))?;
            (pid, Box::new(holder))
        }
    })
}

/// 2. A booting worker's DDL: a raw `ALTER TABLE` (naive) or courier's migration runner applying it as a
///    migration under `ddl_lock_timeout`, retried (courier).
async fn boot_a_worker(mode: Mode, p: &Pipeline) -> Result<Booting, ChaosError> {
    Ok(match mode {
        Mode::Naive => {
            let session = raw_session(&p.db, "booting-worker").await?;
            tokio::spawn(async move {
                let result = session
                    .batch_execute(BOOT_ALTER)
                    .await
                    .map_err(|e| db_error(&e));
                drop(session);
                result.map(|()| None)
            })
        }
        Mode::Courier => {
            let config = p.db.config_with(Timeouts::default());
            tokio::spawn(async move {
                Migrator::new(with_boot_migration())
                    .run(&config)
                    .await
                    .map(Some)
                    .map_err(|e| e.to_string())
            })
        }
    })
}

/// The fault as it stands once the DDL queued.
struct Stall {
    holder_pid: i32,
    alter_pid: Option<i32>,
    frozen_at: Instant,
    started: SystemTime,
    naive_bound: Duration,
    idle_timeout: Duration,
}

/// 3. The stall: naive, until the harness steps in at `naive_bound`; courier, until the server ends the
///    holder. When the holder was gone.
async fn stall_until_the_holder_is_gone(
    mode: Mode,
    monitor: &crate::env::RawSession,
    stall: &Stall,
    report: &mut ScenarioReport,
) -> Result<SystemTime, ChaosError> {
    let Stall {
        holder_pid,
        alter_pid,
        frozen_at,
        started: fault_started,
        naive_bound,
        idle_timeout,
    } = *stall;
    Ok(match mode {
        Mode::Naive => {
            // Holding the fault window open (not synchronisation): this is the stall being measured.
            tokio::time::sleep(naive_bound.saturating_sub(frozen_at.elapsed())).await;
            report.evidence = pileup_evidence(monitor, holder_pid, alter_pid, frozen_at.elapsed())
                .await
                .map_err(sql_error("capturing pg_stat_activity"))?;
            monitor
                .execute("SELECT pg_terminate_backend($1)", &[&holder_pid])
                .await
                .map_err(sql_error("pg_terminate_backend of the holder"))?;
            let ended = wait_backend_gone(monitor, holder_pid, Duration::from_secs(10))
                .await
                .ok_or_else(|| {
                    ChaosError::Stuck(format!(
                        "the holder (pid {holder_pid}) survived pg_terminate_backend for 10 s"
                    ))
                })?;
            report.note(format!(
                "the harness ended the holder with pg_terminate_backend after {:.1} s (no server-side limit would have)",
                naive_bound.as_secs_f64()
            ));
            ended
        }
        Mode::Courier => {
            let bound = idle_timeout + Duration::from_secs(15);
            let ended = wait_backend_gone(monitor, holder_pid, bound)
                .await
                .ok_or_else(|| {
                    ChaosError::Stuck(format!(
                        "the frozen holder (pid {holder_pid}) was not ended within {bound:?}"
                    ))
                })?;
            let freed_after = ended.duration_since(fault_started).unwrap_or_default();
            report.check(
                "the server freed the frozen holder's locks",
                freed_after <= idle_timeout + Duration::from_secs(3),
                format!(
                    "after {:.1} s (idle_in_transaction_session_timeout {:.0} s)",
                    freed_after.as_secs_f64(),
                    idle_timeout.as_secs_f64()
                ),
            );
            ended
        }
    })
}

/// 4. The booting worker finishes; courier's migration is applied exactly once.
async fn booted(
    mode: Mode,
    monitor: &crate::env::RawSession,
    booting: Booting,
    report: &mut ScenarioReport,
) -> Result<(), ChaosError> {
    let boot = tokio::time::timeout(Duration::from_secs(60), booting)
        .await
        .map_err(|_| {
            ChaosError::Stuck(
                "the booting worker's DDL did not finish within 60 s of the lock being freed"
                    .into(),
            )
        })?
        .map_err(|e| ChaosError::Setup(format!("booting worker task: {e}")))?;
    match (mode, boot) {
        (Mode::Naive, Ok(_)) => {
            report.note("the booting worker's ALTER TABLE completed once the holder was gone")
        }
        (Mode::Naive, Err(e)) => {
            report.note(format!("the booting worker's ALTER TABLE failed: {e}"))
        }
        (Mode::Courier, Ok(Some(migration))) => {
            let rows: i64 = monitor
                .query_one(
                    "SELECT count(*) FROM courier_migrations WHERE version = $1",
                    &[&BOOT_MIGRATION_VERSION],
                )
                .await
                .map_err(sql_error("reading courier_migrations"))?
                .get(0);
            report.note(format!(
                "migration {BOOT_MIGRATION_VERSION} applied by courier's runner after {} DDL retr{} under ddl_lock_timeout {:.0} ms",
                migration.ddl_retries,
                if migration.ddl_retries == 1 { "y" } else { "ies" },
                Timeouts::default().ddl_lock_timeout.as_secs_f64() * 1000.0
            ));
            report.check(
                "migration applied once",
                migration.applied == vec![BOOT_MIGRATION_VERSION] && rows == 1,
                format!("runner applied {:?}; courier_migrations rows for {BOOT_MIGRATION_VERSION}: {rows}", migration.applied),
            );
        }
        (Mode::Courier, Ok(None)) => {}
        (Mode::Courier, Err(e)) => report.check(
            "migration applied once",
            false,
            format!("the migration runner failed: {e}"),
        ),
    }
    Ok(())
}

/// 5. Recovery: everything produced is delivered; then the judgement.
#[allow(clippy::too_many_arguments)]
async fn recover_and_judge(
    options: &Options,
    mode: Mode,
    p: &mut Pipeline,
    monitor: &crate::env::RawSession,
    deadlocks_before: i64,
    fault: FaultWindow,
    stall: &Stall,
    report: &mut ScenarioReport,
) -> Result<(), ChaosError> {
    let (naive_bound, idle_timeout) = (stall.naive_bound, stall.idle_timeout);
    let (fault_started, fault_ended) = (fault.started, fault.ended);
    let bound = options
        .length
        .pick(Duration::from_secs(60), Duration::from_secs(240));
    p.wait_progress(1, bound, "first delivery after the lock was freed")
        .await?;
    p.stop_trickle().await?;
    let complete = p.wait_all_delivered(bound).await;
    let deadlocks = deadlocks_reported(monitor)
        .await
        .map_err(sql_error("reading pg_stat_database"))?
        - deadlocks_before;
    let judgement = p.judge(Some(fault)).await?;
    report.check(
        "every message delivered",
        complete,
        format!(
            "{} of {} within {bound:?} of the end of the fault",
            judgement.delivered, judgement.messages_in
        ),
    );
    report.note(format!(
        "deadlocks reported by PostgreSQL during the pile-up: {deadlocks}"
    ));
    let fault = fault_ended
        .duration_since(fault_started)
        .unwrap_or_default();
    match mode {
        Mode::Naive => report.check(
            "reproduced",
            judgement.longest_stall >= naive_bound.mul_f64(0.8) && report.evidence.iter().any(|l| l.contains("wait_event_type=Lock")),
            format!(
                "no message delivered for {:.1} s (harness bound {:.0} s); evidence captured",
                judgement.longest_stall.as_secs_f64(),
                naive_bound.as_secs_f64()
            ),
        ),
        Mode::Courier => report.check(
            "stall bounded by the transaction budget",
            judgement.longest_stall <= idle_timeout + Duration::from_secs(3),
            format!(
                "longest stall {:.1} s; lock held {:.1} s (idle_in_transaction_session_timeout {:.0} s)",
                judgement.longest_stall.as_secs_f64(),
                fault.as_secs_f64(),
                idle_timeout.as_secs_f64()
            ),
        ),
    }
    report.incident8 = Some(Incident8Figures {
        longest_stall: Some(judgement.longest_stall),
        lost: Some(judgement.lost),
        ..Incident8Figures::default()
    });
    report.judgement = Some(judgement);
    Ok(())
}
