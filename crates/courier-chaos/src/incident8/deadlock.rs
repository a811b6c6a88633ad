//! Incident 8, failure 1: workers booting at once run "idempotent" startup DDL and kill each other.
//!
//! Naive: N sessions at once, each `BEGIN; CREATE TABLE IF NOT EXISTS ...; CREATE INDEX IF NOT EXISTS
//! ...; ALTER TABLE ... ADD COLUMN IF NOT EXISTS ...; COMMIT`, for several rounds. Round 1 races on
//! creating the table (losers fail with a duplicate key on `pg_type_typname_nsp_index`); later rounds
//! find the table and deadlock: `CREATE INDEX` holds ShareLock, every `ALTER` wants AccessExclusiveLock.
//! Courier: N `Migrator::run` at once per round on a fresh database: the advisory lock lets exactly one
//! apply, the others wait or see the schema current, none fails.

use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_store::{Migrator, Timeouts};
use courier_testkit::db::db_error;
use courier_testkit::TestDb;
use tokio::sync::Barrier;

use crate::env::{raw_session, RawSession};
use crate::report::{Incident8Figures, Mode, ScenarioReport};
use crate::{ChaosError, Options};

/// A worker's boot transaction in the naive service: its tables, "created if missing" at every boot.
const NAIVE_BOOT: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS worker_ranges (id bigserial PRIMARY KEY, route text NOT NULL,
        partition int NOT NULL, start_offset bigint NOT NULL, end_offset bigint NOT NULL,
        state text NOT NULL DEFAULT 'pending')",
    "CREATE INDEX IF NOT EXISTS worker_ranges_workable ON worker_ranges (route, partition, start_offset)",
    "ALTER TABLE worker_ranges ADD COLUMN IF NOT EXISTS lease_owner text",
];

/// How long one boot may take before it counts as hung (the server has no limit of its own here).
const BOOT_BOUND: Duration = Duration::from_secs(30);

/// How one naive boot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Boot {
    Ok,
    Deadlock,
    DuplicateKey,
    AlreadyExists,
    Other,
    Hung,
}

pub async fn run(options: &Options) -> Result<Vec<ScenarioReport>, ChaosError> {
    let (workers, rounds) = options.length.pick((16, 3), (16, 10));
    let naive = naive(options, workers, rounds).await?;
    let courier = courier(options, workers, rounds).await?;
    Ok(vec![naive, courier])
}

async fn naive(
    options: &Options,
    workers: usize,
    rounds: usize,
) -> Result<ScenarioReport, ChaosError> {
    let started = Instant::now();
    let mut report = ScenarioReport::new("deadlock", Some(Mode::Naive), options.length);
    let db = options.services.scratch_db("deadlock_naive", false).await?;
    let outcome = naive_rounds(&db, workers, rounds).await;
    db.drop_now().await?;
    let (outcomes, other_errors) = outcome?;

    let count =
        |rounds: &[Vec<Boot>], kind: Boot| rounds.iter().flatten().filter(|b| **b == kind).count();
    let failed = outcomes
        .iter()
        .flatten()
        .filter(|b| **b != Boot::Ok)
        .count();
    let (first, rest) = outcomes.split_at(1.min(outcomes.len()));
    report.note(format!(
        "round 1 (racing to create the table): {} of {workers} boots died: {} duplicate key (pg_type_typname_nsp_index), {} \"already exists\", {} deadlock detected, {} other",
        first.iter().flatten().filter(|b| **b != Boot::Ok).count(),
        count(first, Boot::DuplicateKey),
        count(first, Boot::AlreadyExists),
        count(first, Boot::Deadlock),
        count(first, Boot::Other) + count(first, Boot::Hung),
    ));
    report.note(format!(
        "rounds 2-{rounds} (table exists): {} of {} boots died with `deadlock detected` (40P01), {} other",
        count(rest, Boot::Deadlock),
        rest.iter().flatten().count(),
        rest.iter().flatten().filter(|b| !matches!(b, Boot::Ok | Boot::Deadlock)).count(),
    ));
    for error in other_errors {
        report.evidence.push(error);
    }
    report.check(
        "reproduced",
        count(rest, Boot::Deadlock) > 0 && failed > 0,
        format!(
            "{failed} of {} boots failed; {} deadlocks once the table existed",
            workers * rounds,
            count(rest, Boot::Deadlock)
        ),
    );
    report.incident8 = Some(Incident8Figures {
        failed_boots: Some(failed),
        ..Incident8Figures::default()
    });
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The naive boots, round after round, in `db`.
async fn naive_rounds(
    db: &TestDb,
    workers: usize,
    rounds: usize,
) -> Result<(Vec<Vec<Boot>>, Vec<String>), ChaosError> {
    let mut outcomes: Vec<Vec<Boot>> = Vec::new();
    let mut other_errors: Vec<String> = Vec::new();
    for _ in 0..rounds {
        // Connect first, so the boots start together at the barrier, not staggered by connecting.
        let mut sessions = Vec::new();
        for _ in 0..workers {
            sessions.push(raw_session(db, "naive-worker-boot").await?);
        }
        let barrier = Arc::new(Barrier::new(workers));
        let mut boots = tokio::task::JoinSet::new();
        for session in sessions {
            let barrier = Arc::clone(&barrier);
            boots.spawn(async move {
                barrier.wait().await;
                match tokio::time::timeout(BOOT_BOUND, naive_boot(&session)).await {
                    Ok(result) => result,
                    Err(_) => (Boot::Hung, None),
                }
            });
        }
        let mut round = Vec::new();
        while let Some(joined) = boots.join_next().await {
            let (boot, error) =
                joined.map_err(|e| ChaosError::Setup(format!("a naive boot task failed: {e}")))?;
            if let Some(error) = error {
                if other_errors.len() < 3 {
                    other_errors.push(error);
                }
            }
            round.push(boot);
        }
        outcomes.push(round);
    }
    Ok((outcomes, other_errors))
}

/// One naive boot: the DDL in one transaction. Returns how it ended and, for an unexpected error, what.
async fn naive_boot(session: &RawSession) -> (Boot, Option<String>) {
    let result = async {
        session.batch_execute("BEGIN").await?;
        for statement in NAIVE_BOOT {
            session.batch_execute(statement).await?;
        }
        session.batch_execute("COMMIT").await
    }
    .await;
    match result {
        Ok(()) => (Boot::Ok, None),
        Err(error) => match error.code().map(|c| c.code()) {
            Some("40P01") => (Boot::Deadlock, None),
            Some("23505") => (Boot::DuplicateKey, None),
            Some("42P07") => (Boot::AlreadyExists, None),
            _ => (
                Boot::Other,
                Some(format!("naive boot failed: {}", db_error(&error))),
            ),
        },
    }
}

async fn courier(
    options: &Options,
    workers: usize,
    rounds: usize,
) -> Result<ScenarioReport, ChaosError> {
    let started = Instant::now();
    let mut report = ScenarioReport::new("deadlock", Some(Mode::Courier), options.length);
    let db = options
        .services
        .scratch_db("deadlock_courier", false)
        .await?;
    let migrator = Migrator::embedded();
    let outcome = courier_rounds(&db, &migrator, workers, rounds).await;
    db.drop_now().await?;
    let Runs {
        failed,
        mut applied,
        retries,
        current,
        errors,
        longest_wait,
        rows,
    } = outcome?;

    // The versions embedded, not 1..=last: a number can be reserved for a migration of another branch.
    let expected: Vec<i64> = migrator.migrations().iter().map(|m| m.version).collect();
    applied.sort_unstable();
    report.note(format!(
        "{} runners in {rounds} round(s): {} applied {:?}, {current} found the schema current without any lock, ddl_retries {retries}, longest advisory-lock wait {:.0} ms",
        workers * rounds,
        applied.len(),
        applied,
        longest_wait.as_secs_f64() * 1000.0,
    ));
    report.evidence.extend(errors);
    report.check(
        "no boot failed",
        failed == 0,
        format!("{failed} of {} runners failed", workers * rounds),
    );
    report.check(
        "exactly one apply",
        applied == expected && rows == expected.len() as i64,
        format!("versions applied across runners {applied:?}, expected {expected:?}; courier_migrations has {rows} row(s)"),
    );
    report.incident8 = Some(Incident8Figures {
        failed_boots: Some(failed),
        ..Incident8Figures::default()
    });
    report.elapsed = started.elapsed();
    Ok(report)
}

/// What the migration runners did, over every round.
struct Runs {
    failed: usize,
    applied: Vec<i64>,
    retries: u32,
    current: usize,
    errors: Vec<String>,
    longest_wait: Duration,
    /// Rows in `courier_migrations` afterwards.
    rows: i64,
}

/// Courier's boots, round after round, in `db`.
async fn courier_rounds(
    db: &TestDb,
    migrator: &Migrator,
    workers: usize,
    rounds: usize,
) -> Result<Runs, ChaosError> {
    let config = db.config_with(Timeouts::default());
    let (mut failed, mut applied, mut retries, mut current) = (0, Vec::new(), 0, 0);
    let mut errors = Vec::new();
    let mut longest_wait = Duration::ZERO;
    for _ in 0..rounds {
        let barrier = Arc::new(Barrier::new(workers));
        let mut boots = tokio::task::JoinSet::new();
        for _ in 0..workers {
            let (barrier, migrator, config) =
                (Arc::clone(&barrier), migrator.clone(), config.clone());
            boots.spawn(async move {
                barrier.wait().await;
                migrator.run(&config).await
            });
        }
        while let Some(joined) = boots.join_next().await {
            match joined
                .map_err(|e| ChaosError::Setup(format!("a migration runner task failed: {e}")))?
            {
                Ok(run) => {
                    applied.extend(run.applied);
                    retries += run.ddl_retries;
                    current += usize::from(run.already_current);
                    longest_wait = longest_wait.max(run.lock_wait);
                }
                Err(error) => {
                    failed += 1;
                    if errors.len() < 3 {
                        errors.push(error.to_string());
                    }
                }
            }
        }
    }
    let monitor = raw_session(db, crate::env::HARNESS_APP).await?;
    let rows: i64 = monitor
        .query_one("SELECT count(*) FROM courier_migrations", &[])
        .await
        .map_err(|e| {
            ChaosError::Setup(format!("cannot read courier_migrations: {}", db_error(&e)))
        })?
        .get(0);
    Ok(Runs {
        failed,
        applied,
        retries,
        current,
        errors,
        longest_wait,
        rows,
    })
}
