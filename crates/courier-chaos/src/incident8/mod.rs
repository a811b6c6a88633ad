//! Incident 8 reproduced in PostgreSQL: each failure shown in **naive** mode (startup DDL in every
//! worker's boot transaction, sessions with the server's defaults) and in **courier** mode (advisory-
//! locked once-only migrations, client-aligned server limits on every session), side by side.
//!
//! "Naive" is a switch of this harness only: its sessions are raw `tokio_postgres` connections with no
//! options. courier's shipped code paths are never changed; the courier workers in these scenarios are
//! the real ones.
//!
//! # Layout
//! - [`deadlock`]: N workers boot at once running `CREATE TABLE / CREATE INDEX / ALTER TABLE ... IF NOT
//!   EXISTS` in one transaction, versus N migration runners.
//! - [`pileup`]: a frozen lock holder plus a booting worker's `ALTER TABLE` stall every lease and
//!   checkpoint, versus the idle-in-transaction timeout and a migration under `ddl_lock_timeout`.
//! - [`orphans`]: clients with short deadlines leave orphaned backends queued on a lock, which later
//!   commit claims nobody received, versus the connection check (and fencing).
//! - here: what they share: the extra migration, and reading `pg_stat_activity` / `pg_locks`.

pub mod deadlock;
pub mod orphans;
pub mod pileup;

use std::time::{Duration, SystemTime};

use courier_store::migrate::Migration;
use courier_store::Migrator;

use crate::env::RawSession;
use crate::pipeline::poll;

/// The booting worker's "idempotent" startup DDL on the hot table (AccessExclusiveLock, even when the
/// column exists).
pub const BOOT_ALTER: &str = "ALTER TABLE courier_ranges ADD COLUMN IF NOT EXISTS boot_marker int";

/// Version of the extra migration carrying [`BOOT_ALTER`].
pub const BOOT_MIGRATION_VERSION: i64 = 9001;

/// The migrations embedded in this build.
pub fn embedded_migrations() -> Vec<Migration> {
    Migrator::embedded().migrations().to_vec()
}

/// The shipped migrations plus one pending migration holding [`BOOT_ALTER`]: what a new release's
/// booting worker brings, applied by courier's runner.
pub fn with_boot_migration() -> Vec<Migration> {
    let mut list = embedded_migrations();
    list.push(Migration {
        version: BOOT_MIGRATION_VERSION,
        name: format!("{BOOT_MIGRATION_VERSION}_boot_marker.sql"),
        sql: format!("{BOOT_ALTER};\n"),
    });
    list
}

/// One row of `pg_stat_activity`, as the evidence prints it.
#[derive(Debug, Clone)]
pub struct Activity {
    pub pid: i32,
    pub application: String,
    pub state: String,
    pub wait_event_type: String,
    pub wait_event: String,
    pub blocked_by: Vec<i32>,
    pub query: String,
    pub xact_seconds: f64,
}

/// The client sessions of the current database (the monitor itself excluded).
pub async fn activity(monitor: &RawSession) -> Result<Vec<Activity>, tokio_postgres::Error> {
    let rows = monitor
        .query(
            "SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.state, ''),
                    coalesce(a.wait_event_type, ''), coalesce(a.wait_event, ''), pg_blocking_pids(a.pid),
                    left(regexp_replace(coalesce(a.query, ''), '\\s+', ' ', 'g'), 70),
                    coalesce(extract(epoch FROM now() - a.xact_start), 0)::float8
             FROM pg_stat_activity a
             WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
               AND a.backend_type = 'client backend'
             ORDER BY a.xact_start NULLS LAST, a.pid",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Activity {
            pid: r.get(0),
            application: r.get(1),
            state: r.get(2),
            wait_event_type: r.get(3),
            wait_event: r.get(4),
            blocked_by: r.get(5),
            query: r.get(6),
            xact_seconds: r.get(7),
        })
        .collect())
}

/// True while backend `pid` exists.
pub async fn backend_alive(monitor: &RawSession, pid: i32) -> Result<bool, tokio_postgres::Error> {
    let row = monitor
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await?;
    Ok(row.get::<_, i64>(0) > 0)
}

/// Polls until backend `pid` is gone; returns when it was first seen gone, or `None` after `bound`.
pub async fn wait_backend_gone(
    monitor: &RawSession,
    pid: i32,
    bound: Duration,
) -> Option<SystemTime> {
    poll(bound, || async {
        match backend_alive(monitor, pid).await {
            Ok(false) => Some(SystemTime::now()),
            _ => None,
        }
    })
    .await
}

/// Polls until a session whose query starts with `query_prefix` waits on a lock; returns its pid.
pub async fn wait_lock_waiter(
    monitor: &RawSession,
    query_prefix: &str,
    bound: Duration,
) -> Option<i32> {
    poll(bound, || async {
        activity(monitor).await.ok()?.into_iter().find_map(|a| {
            (a.wait_event_type == "Lock" && a.query.starts_with(query_prefix)).then_some(a.pid)
        })
    })
    .await
}

/// Deadlocks PostgreSQL has reported in the current database so far.
pub async fn deadlocks_reported(monitor: &RawSession) -> Result<i64, tokio_postgres::Error> {
    Ok(monitor
        .query_one(
            "SELECT coalesce(deadlocks, 0) FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await?
        .get(0))
}

/// The pile-up, as an operator at 2 a.m. would read it: who waits on what, who `pg_blocking_pids()`
/// names, and who really holds the lock. `alter_pid` is the booting worker's DDL, `holder_pid` the frozen
/// session.
pub async fn pileup_evidence(
    monitor: &RawSession,
    holder_pid: i32,
    alter_pid: Option<i32>,
    after: Duration,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let sessions = activity(monitor).await?;
    let waiting: Vec<&Activity> = sessions
        .iter()
        .filter(|a| a.wait_event_type == "Lock")
        .collect();
    let behind_alter = alter_pid.map_or(0, |alter| {
        waiting
            .iter()
            .filter(|a| a.blocked_by.contains(&alter))
            .count()
    });
    let mut lines = vec![format!(
        "pg_stat_activity after {:.1} s: {} session(s) wait with wait_event_type=Lock ({}); pg_blocking_pids() of {} of them names only pid {} (the booting worker's ALTER TABLE, itself waiting), not the real cause",
        after.as_secs_f64(),
        waiting.len(),
        distinct(waiting.iter().map(|a| format!("wait_event={}", a.wait_event))),
        behind_alter,
        alter_pid.map_or_else(|| "?".to_owned(), |p| p.to_string()),
    )];
    if let Some(holder) = sessions.iter().find(|a| a.pid == holder_pid) {
        lines.push(format!(
            "the real cause: pid {} ({}), state '{}' for {:.1} s, holding row locks: `{}`",
            holder.pid, holder.application, holder.state, holder.xact_seconds, holder.query
        ));
    }
    let locks = monitor
        .query(
            "SELECT l.pid, l.mode, l.granted FROM pg_locks l
             WHERE l.locktype = 'relation' AND l.relation = to_regclass('courier_ranges')
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
             ORDER BY l.granted DESC, l.pid",
            &[],
        )
        .await?;
    let locks: Vec<String> = locks
        .iter()
        .map(|r| {
            format!(
                "{} {} {}",
                r.get::<_, i32>(0),
                r.get::<_, String>(1),
                if r.get::<_, bool>(2) {
                    "granted"
                } else {
                    "waiting"
                }
            )
        })
        .collect();
    lines.push(format!("pg_locks on courier_ranges: {}", locks.join("; ")));
    lines.push("pid | application | state | wait_event_type/wait_event | pg_blocking_pids | xact s | query".to_owned());
    for a in sessions.iter().take(14) {
        lines.push(format!(
            "{} | {} | {} | {}/{} | {:?} | {:.1} | {}",
            a.pid,
            a.application,
            a.state,
            a.wait_event_type,
            a.wait_event,
            a.blocked_by,
            a.xact_seconds,
            a.query
        ));
    }
    if sessions.len() > 14 {
        lines.push(format!("... and {} more session(s)", sessions.len() - 14));
    }
    Ok(lines)
}

fn distinct(items: impl Iterator<Item = String>) -> String {
    let mut seen: Vec<String> = Vec::new();
    for item in items {
        if !seen.contains(&item) {
            seen.push(item);
        }
    }
    seen.join(", ")
}
