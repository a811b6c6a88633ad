//! A fresh database per test, so no test depends on another's leftovers.

use std::time::Duration;

use courier_store::url::with_database;
use courier_store::{Migrator, Store, StoreConfig, Timeouts};
use tokio_postgres::NoTls;

/// The server the tests use: `DATABASE_URL`, or the cluster `scripts/postgres.sh start` creates.
pub fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://courier:courier@127.0.0.1:54329/courier".to_owned())
}

/// A database created for one test. Databases are dropped in bulk by
/// `scripts/postgres.sh clean-test-databases` (run by `make test`), not on drop: async drop does not exist
/// and a failed test's database is worth keeping for a look.
#[derive(Debug, Clone)]
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// Creates an empty database with a unique name.
    pub async fn create() -> Self {
        let server = server_url();
        let name = crate::unique_name("courier_test");
        let (client, connection) = tokio_postgres::connect(&server, NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL at {server}: {e}. Run `make postgres` (scripts/postgres.sh start) or set DATABASE_URL."));
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        Self {
            url: with_database(&server, &name),
            name,
        }
    }

    /// Creates a database and applies courier's migrations.
    pub async fn migrated() -> Self {
        let db = Self::create().await;
        Migrator::embedded()
            .run(&db.config())
            .await
            .unwrap_or_else(|e| panic!("migrating test database {}: {e}", db.name));
        db
    }

    /// A store configuration for this database with the default timeouts.
    pub fn config(&self) -> StoreConfig {
        StoreConfig::new(&self.url)
    }

    /// A store configuration with short, still-consistent limits, so tests see timeouts in seconds.
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
