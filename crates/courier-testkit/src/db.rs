//! A fresh database per test or chaos scenario, so no run depends on another's leftovers.
//!
//! Owns [`TestDb`]: creating it (empty or migrated) on the local server or any other, the store
//! configurations and connections on it, and dropping it; and [`SetupError`], what went wrong doing so
//! and what to do about it.

use std::time::Duration;

use courier_store::url::{redact, with_database};
use courier_store::{Migrator, Store, StoreConfig, Timeouts};
use tokio_postgres::NoTls;

/// Every test database's name starts with this, so `scripts/postgres.sh clean-test-databases` (run by
/// `make test`) drops the ones runs left behind.
pub const PREFIX: &str = "courier_test";

/// A database created for one test or scenario. Tests leave theirs for
/// `scripts/postgres.sh clean-test-databases` (async drop does not exist, and a failed test's database is
/// worth a look); chaos runs drop theirs with [`TestDb::drop_now`].
#[derive(Debug, Clone)]
pub struct TestDb {
    pub name: String,
    pub url: String,
    /// The URL it was created from: its database is where this one is dropped from.
    server: String,
}

/// A test database that could not be created, migrated or dropped; the message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupError(pub String);

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SetupError {}

impl TestDb {
    /// Creates an empty database on the local server ([`courier_core::local::database_url`]).
    pub async fn create() -> Self {
        Self::create_on(&courier_core::local::database_url(), "")
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Creates a database on the local server and applies courier's migrations.
    pub async fn migrated() -> Self {
        Self::migrated_on(&courier_core::local::database_url(), "")
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Creates an empty database on the server of `server_url`, named
    /// `courier_test_<label>_<pid>_<random>` (`label` lowercased, anything but letters and digits `_`).
    pub async fn create_on(server_url: &str, label: &str) -> Result<Self, SetupError> {
        let label: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        let name = if label.is_empty() {
            crate::unique_name(PREFIX)
        } else {
            crate::unique_name(&format!("{PREFIX}_{label}"))
        };
        let admin = admin(server_url).await?;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .map_err(|e| {
                SetupError(format!(
                    "cannot create the test database {name}: {}; the role needs CREATEDB (scripts/postgres.sh grants it)",
                    db_error(&e)
                ))
            })?;
        Ok(Self {
            url: with_database(server_url, &name),
            name,
            server: server_url.to_owned(),
        })
    }

    /// [`TestDb::create_on`], then courier's migrations.
    pub async fn migrated_on(server_url: &str, label: &str) -> Result<Self, SetupError> {
        let db = Self::create_on(server_url, label).await?;
        Migrator::embedded()
            .run(&db.config())
            .await
            .map_err(|e| SetupError(format!("migrating test database {}: {e}", db.name)))?;
        Ok(db)
    }

    /// Drops the database, ending whatever sessions are still in it.
    pub async fn drop_now(self) -> Result<(), SetupError> {
        let admin = admin(&self.server).await?;
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        match tokio::time::timeout(Duration::from_secs(30), admin.batch_execute(&sql)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SetupError(format!(
                "cannot drop test database {}: {}; `scripts/postgres.sh clean-test-databases` drops it later",
                self.name,
                db_error(&e)
            ))),
            Err(_) => Err(SetupError(format!(
                "dropping test database {} took over 30 s; `scripts/postgres.sh clean-test-databases` drops it later",
                self.name
            ))),
        }
    }

    /// A store configuration for this database with the default timeouts.
    pub fn config(&self) -> StoreConfig {
        StoreConfig::new(&self.url)
    }

    /// A store configuration with other limits (e.g. [`fast_timeouts`], so tests see timeouts in seconds).
    pub fn config_with(&self, timeouts: Timeouts) -> StoreConfig {
        StoreConfig {
            timeouts,
            ..self.config()
        }
    }

    /// Opens a store on this database.
    pub async fn store(&self) -> Store {
        Store::connect(&self.config())
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.name))
    }

    /// A plain connection (no courier limits), for tests that play a misbehaving client.
    pub async fn raw_client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.name));
        tokio::spawn(connection);
        client
    }
}

/// A session on the server's own database, to create and drop test databases.
async fn admin(server_url: &str) -> Result<tokio_postgres::Client, SetupError> {
    let unreachable = |e: tokio_postgres::Error| {
        SetupError(format!(
            "cannot reach PostgreSQL at {} ({}): start it with `make postgres` (scripts/postgres.sh start), or set DATABASE_URL",
            redact(server_url),
            db_error(&e)
        ))
    };
    let mut config: tokio_postgres::Config = server_url.parse().map_err(unreachable)?;
    config
        .application_name("courier-testkit")
        .connect_timeout(Duration::from_secs(5));
    let (client, connection) = config.connect(NoTls).await.map_err(unreachable)?;
    tokio::spawn(connection);
    Ok(client)
}

/// A database error's own message and SQLSTATE when it has one, else the driver's text with causes.
pub fn db_error(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    }
}

/// Short limits for tests, keeping every rule of [`Timeouts::validate`].
pub fn fast_timeouts() -> Timeouts {
    Timeouts {
        client_deadline: Duration::from_secs(5),
        statement_timeout: Duration::from_millis(4000),
        lock_timeout: Duration::from_millis(300),
        ddl_lock_timeout: Duration::from_millis(300),
        idle_in_transaction_session_timeout: Duration::from_millis(1500),
        client_connection_check_interval: Duration::from_millis(500),
        ..Timeouts::default()
    }
}
