//! The embedded, forward-only migration runner: the only code in courier that runs DDL.
//!
//! Incident 8 was startup DDL run by every booting container against the live offset-range tables. Here:
//! - migrations are applied by `courier migrate` (or `courier run --migrate`), never by worker code;
//! - a booting process first reads `courier_migrations` without any lock: when the schema is current it
//!   touches nothing (the common case, and what 49 of 50 simultaneous boots see);
//! - otherwise it takes a transaction-scoped advisory lock (released by commit, rollback or a dropped
//!   connection, so an error can never leak it), on a dedicated connection that is closed afterwards;
//! - each migration runs with its bookkeeping row in one transaction, under a short `lock_timeout`, and is
//!   retried with backoff when a table lock is not granted in time, so the DDL never queues in front of
//!   every lease and checkpoint;
//! - the checksum of every applied migration is verified: an edited migration refuses to start.

use std::time::{Duration, Instant};

use rand::Rng;
use sha2::{Digest, Sha256};
use tokio_postgres::error::SqlState;

use crate::config::StoreConfig;
use crate::error::{Result, StoreError};
use crate::pool::{millis, DedicatedConnection, Endpoint};

/// Key of the advisory lock that serialises migration runners (ASCII "courier\0" as an i64).
const MIGRATION_LOCK_KEY: i64 = 0x636f_7572_6965_7200;

/// How often a migration whose DDL could not get its table lock is tried again before giving up.
const DDL_ATTEMPTS: u32 = 8;

/// Between DDL attempts that timed out on their lock: full jitter under a ceiling that doubles from
/// 200 ms (the first retry is attempt 1) to at most 5 s.
const DDL_BACKOFF: courier_core::Backoff = courier_core::Backoff {
    base: Duration::from_millis(100),
    cap: Duration::from_secs(5),
};

/// One forward-only schema change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub version: i64,
    /// The file name, e.g. `0001_initial.sql`, quoted in errors so the operator knows which file to look at.
    pub name: String,
    pub sql: String,
}

impl Migration {
    /// SHA-256 of the SQL text, hex encoded.
    pub fn checksum(&self) -> String {
        Sha256::digest(self.sql.as_bytes())
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

/// The schema version a database is at, against the one this binary needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaVersion {
    pub applied: i64,
    pub expected: i64,
}

/// What one runner did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions this runner applied (empty when another runner had already done it).
    pub applied: Vec<i64>,
    /// True when the schema was current on arrival and no lock was taken at all.
    pub already_current: bool,
    /// DDL attempts that hit `lock_timeout` and were retried.
    pub ddl_retries: u32,
    /// Time spent waiting for the advisory lock.
    pub lock_wait: Duration,
}

/// Applies or checks the migrations it was built with.
#[derive(Debug, Clone)]
pub struct Migrator {
    migrations: Vec<Migration>,
}

impl Migrator {
    /// The migrations embedded from the workspace's `migrations/` folder at build time.
    pub fn embedded() -> Self {
        let files: &[(i64, &str, &str)] = include!(concat!(env!("OUT_DIR"), "/migrations.rs"));
        Self::new(
            files
                .iter()
                .map(|(version, name, sql)| Migration {
                    version: *version,
                    name: (*name).to_owned(),
                    sql: (*sql).to_owned(),
                })
                .collect(),
        )
    }

    /// A runner over an explicit list (tests use it to simulate an edited or a newer migration).
    pub fn new(mut migrations: Vec<Migration>) -> Self {
        migrations.sort_by_key(|m| m.version);
        Self { migrations }
    }

    /// The migrations this runner applies, in version order.
    pub fn migrations(&self) -> &[Migration] {
        &self.migrations
    }

    /// The version this binary needs.
    pub fn expected_version(&self) -> i64 {
        self.migrations.last().map_or(0, |m| m.version)
    }

    /// Brings the database up to date. Safe to run from many processes at once and while workers run.
    pub async fn run(&self, config: &StoreConfig) -> Result<MigrationReport> {
        // A dedicated connection, closed when this function returns: nothing it did can outlive it.
        let mut client = Endpoint::new(config)?.connect_dedicated().await?;
        let mut report = MigrationReport::default();

        if let Some(applied) = read_applied(&client).await? {
            let version = self.verify(&applied)?;
            if version.applied == version.expected {
                report.already_current = true;
                return Ok(report);
            }
        }

        let timeouts = &config.timeouts;
        let mut attempt = 0;
        loop {
            match self.apply_next(&mut client, config, &mut report).await {
                Ok(true) => attempt = 0,
                Ok(false) => return Ok(report),
                Err(StoreError::LockTimeout { .. }) if attempt + 1 < DDL_ATTEMPTS => {
                    attempt += 1;
                    report.ddl_retries += 1;
                    let pause = DDL_BACKOFF.delay(attempt, rand::rng().random::<f64>());
                    tracing::warn!(
                        attempt,
                        ?pause,
                        ddl_lock_timeout = ?timeouts.ddl_lock_timeout,
                        "Migration DDL did not get its table lock in time; retrying. Something holds a lock on courier's tables (see docs/runbooks/lock-timeout.md)."
                    );
                    tokio::time::sleep(pause).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Reads the schema version without any lock and refuses to go on when it is not exactly current.
    pub async fn check(&self, config: &StoreConfig) -> Result<SchemaVersion> {
        let endpoint = Endpoint::new(config)?;
        let client = endpoint.connect_dedicated().await?;
        let applied = read_applied(&client)
            .await?
            .ok_or(StoreError::SchemaMissing {
                target: endpoint.target,
            })?;
        let version = self.verify(&applied)?;
        if version.applied < version.expected {
            return Err(StoreError::SchemaBehind {
                applied: version.applied,
                expected: version.expected,
            });
        }
        Ok(version)
    }

    /// [`Migrator::check`] through `store`'s pool, without a new connection: what a running worker's
    /// readiness check asks every few seconds.
    pub async fn check_store(&self, store: &crate::Store) -> Result<SchemaVersion> {
        let applied = store
            .run("check the schema version", |c| {
                Box::pin(async move { read_applied(c).await })
            })
            .await?
            .ok_or_else(|| StoreError::SchemaMissing {
                target: store.target().to_owned(),
            })?;
        let version = self.verify(&applied)?;
        if version.applied < version.expected {
            return Err(StoreError::SchemaBehind {
                applied: version.applied,
                expected: version.expected,
            });
        }
        Ok(version)
    }

    /// Checks applied rows against the known migrations: checksums match, nothing unknown is applied.
    fn verify(&self, applied: &[(i64, String)]) -> Result<SchemaVersion> {
        let expected = self.expected_version();
        let mut version = 0;
        for (applied_version, checksum) in applied {
            match self
                .migrations
                .iter()
                .find(|m| m.version == *applied_version)
            {
                Some(known) if known.checksum() != *checksum => {
                    return Err(StoreError::MigrationEdited {
                        version: known.version,
                        name: known.name.clone(),
                    });
                }
                Some(_) => version = version.max(*applied_version),
                None => {
                    return Err(StoreError::SchemaAhead {
                        applied: *applied_version,
                        expected,
                    });
                }
            }
        }
        Ok(SchemaVersion {
            applied: version,
            expected,
        })
    }

    /// Under the advisory lock, applies the lowest pending migration with its bookkeeping row in one
    /// transaction. Returns false when nothing was pending.
    async fn apply_next(
        &self,
        client: &mut DedicatedConnection,
        config: &StoreConfig,
        report: &mut MigrationReport,
    ) -> Result<bool> {
        let timeouts = &config.timeouts;
        let tx = client
            .transaction()
            .await
            .map_err(|e| StoreError::from_db("migrate: begin", e))?;

        // Wait for the advisory lock up to migration_lock_wait; the server's limits follow suit.
        let lock_wait = millis(timeouts.migration_lock_wait);
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = {lock_wait}; SET LOCAL statement_timeout = {}",
            lock_wait + millis(timeouts.statement_timeout)
        ))
        .await
        .map_err(|e| StoreError::from_db("migrate: set limits", e))?;
        let waiting = Instant::now();
        if let Err(error) = tx
            .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
            .await
        {
            return Err(match error.code() {
                Some(code)
                    if *code == SqlState::LOCK_NOT_AVAILABLE
                        || *code == SqlState::QUERY_CANCELED =>
                {
                    StoreError::MigrationLockTimeout {
                        waited: timeouts.migration_lock_wait,
                    }
                }
                _ => StoreError::from_db("migrate: advisory lock", error),
            });
        }
        report.lock_wait += waiting.elapsed();

        // From here on, DDL: a short lock_timeout, so it never queues for long in front of the workers'
        // leases and checkpoints; the caller retries with backoff.
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = {}; SET LOCAL statement_timeout = {}",
            millis(timeouts.ddl_lock_timeout),
            lock_wait
        ))
        .await
        .map_err(|e| StoreError::from_db("migrate: set DDL limits", e))?;
        // Under the advisory lock, so two runners can never race on creating it.
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS courier_migrations (
                version    bigint PRIMARY KEY,
                name       text NOT NULL,
                checksum   text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(|e| StoreError::from_db("migrate: bookkeeping table", e))?;

        let applied = select_applied(&tx).await?;
        let version = self.verify(&applied)?;
        let Some(next) = self.migrations.iter().find(|m| m.version > version.applied) else {
            tx.commit()
                .await
                .map_err(|e| StoreError::from_db("migrate: commit", e))?;
            return Ok(false);
        };
        tx.batch_execute(&next.sql)
            .await
            .map_err(|e| match e.code() {
                Some(code) if *code == SqlState::LOCK_NOT_AVAILABLE => StoreError::LockTimeout {
                    operation: "migrate",
                },
                _ => StoreError::Invalid {
                    operation: "migrate",
                    message: format!(
                        "migration {} failed and was rolled back: {}. Nothing of it was applied; fix the cause the \
                         server names (or the migration, if it was never released) and run `courier migrate` again",
                        next.name,
                        crate::error::describe(&e)
                    ),
                },
            })?;
        tx.execute(
            "INSERT INTO courier_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&next.version, &next.name, &next.checksum()],
        )
        .await
        .map_err(|e| StoreError::from_db("migrate: record", e))?;
        // "What changed?" from migration 0006 on, which creates the timeline.
        let timeline: bool = tx
            .query_one("SELECT to_regclass('courier_changes') IS NOT NULL", &[])
            .await
            .map_err(|e| StoreError::from_db("migrate: record", e))?
            .get(0);
        if timeline {
            let change = crate::changes::Change::new(
                crate::changes::Kind::MigrationApplied,
                format!("migration {} applied by `courier migrate`", next.name),
            );
            let actor = format!("courier migrate {}", env!("CARGO_PKG_VERSION"));
            crate::changes::insert(&tx, &change.actor(&actor)).await?;
        }
        tx.commit()
            .await
            .map_err(|e| StoreError::from_db("migrate: commit", e))?;
        tracing::info!(version = next.version, name = %next.name, "Applied migration.");
        report.applied.push(next.version);
        Ok(true)
    }
}

/// The applied `(version, checksum)` rows, or `None` when the bookkeeping table does not exist yet.
async fn read_applied(client: &tokio_postgres::Client) -> Result<Option<Vec<(i64, String)>>> {
    let exists: bool = client
        .query_one("SELECT to_regclass('courier_migrations') IS NOT NULL", &[])
        .await
        .map_err(|e| StoreError::from_db("migrate: read version", e))?
        .get(0);
    if !exists {
        return Ok(None);
    }
    Ok(Some(select_applied(client).await?))
}

async fn select_applied(client: &impl tokio_postgres::GenericClient) -> Result<Vec<(i64, String)>> {
    let rows = client
        .query(
            "SELECT version, checksum FROM courier_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(|e| StoreError::from_db("migrate: read version", e))?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_migrations_are_ordered_and_start_at_one() {
        let migrator = Migrator::embedded();
        assert_eq!(migrator.migrations.first().map(|m| m.version), Some(1));
        assert!(migrator
            .migrations
            .windows(2)
            .all(|w| w[0].version < w[1].version));
        assert!(migrator.migrations.iter().all(|m| !m.sql.trim().is_empty()));
    }

    #[test]
    fn checksum_changes_with_the_text() {
        let a = Migration {
            version: 1,
            name: "0001_a.sql".into(),
            sql: "SELECT 1".into(),
        };
        let b = Migration {
            sql: "SELECT 2".into(),
            ..a.clone()
        };
        assert_ne!(a.checksum(), b.checksum());
        assert_eq!(a.checksum().len(), 64);
    }
}
