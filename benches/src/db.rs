//! The bench's scratch databases on the shared PostgreSQL server, and the server's own count of the
//! transactions each one ran.
//!
//! Transactions are counted by PostgreSQL (`pg_stat_database.xact_commit + xact_rollback`), read over a
//! connection to the server's default database so that reading never adds to the count being read. A
//! backend publishes its counts when it exits, and otherwise at most once a second while busy and within
//! 10 s of going idle (PostgreSQL 15's `PGSTAT_IDLE_INTERVAL`): a figure is exact once every connection
//! to the database is closed, and lags by up to ~10 s while a pool holds connections open.

use std::time::Duration;

use anyhow::Context as _;
use tokio_postgres::NoTls;

pub use courier_store::url::with_database;

/// How long a closed connection's backend may take to exit and publish its counts.
const EXIT_SETTLE: Duration = Duration::from_millis(1_200);

/// How long a backend that went idle may keep its counts unpublished (10 s), plus a margin.
pub const IDLE_PUBLISH_LAG: Duration = Duration::from_secs(11);

async fn connect(server: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(server, NoTls)
        .await
        .context("bench: cannot reach PostgreSQL (make postgres)")?;
    tokio::spawn(connection);
    Ok(client)
}

/// Creates a scratch database on the server and returns its name.
pub async fn fresh(server: &str, prefix: &str) -> anyhow::Result<String> {
    let name = format!("{prefix}_{}", rand::random::<u32>());
    connect(server)
        .await?
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await?;
    Ok(name)
}

/// Drops a scratch database, closing whatever is still connected to it. Best effort: a database left
/// behind costs disk, not correctness, and must not hide the figures of a run that did finish.
pub async fn discard(server: &str, name: &str) {
    if let Ok(client) = connect(server).await {
        let _ = client
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await;
    }
}

/// Committed plus rolled-back transactions of `database` that PostgreSQL has published so far.
pub async fn transactions(server: &str, database: &str) -> anyhow::Result<i64> {
    let row = connect(server)
        .await?
        .query_one(
            "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = $1",
            &[&database],
        )
        .await
        .with_context(|| format!("reading pg_stat_database for {database}"))?;
    Ok(row.get(0))
}

/// [`transactions`] once every connection to `database` has been closed by its owner: waits for the
/// backends to exit (each publishes its counts as it does), so the figure is exact.
pub async fn transactions_after_close(server: &str, database: &str) -> anyhow::Result<i64> {
    tokio::time::sleep(EXIT_SETTLE).await;
    transactions(server, database).await
}
