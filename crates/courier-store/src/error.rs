//! What can go wrong with the store, worded for the person paged at 2 a.m.
//!
//! Each variant decides what the caller does next (retry the call, count a fence, refuse to start), and
//! each message says what happened, the likely cause, what to do, and which runbook to open.

use std::time::Duration;

use tokio_postgres::error::SqlState;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("invalid store configuration: {0}")]
    Config(String),

    #[error(
        "cannot reach the store at {target}: {detail}. Is PostgreSQL running and is the URL right? \
         Start it with `make postgres` or set DATABASE_URL / store.url. Runbook: docs/runbooks/store-unavailable.md"
    )]
    Unreachable { target: String, detail: String },

    #[error(
        "the store at {target} refused the login: {detail}. Check the user and password in DATABASE_URL / store.url. \
         Runbook: docs/runbooks/store-unavailable.md"
    )]
    Authentication { target: String, detail: String },

    /// TLS to the store failed for a reason waiting will not fix (an untrusted certificate, a host name it
    /// does not name, a server without TLS, or one that requires it): not retried at boot.
    #[error(
        "TLS to the store at {target} failed: {problem}. Runbook: docs/runbooks/store-unavailable.md"
    )]
    Tls { target: String, problem: String },

    #[error(
        "the database at {target} has no courier schema (no courier_migrations table). \
         Run `courier migrate` against it first (or `courier run --migrate`)."
    )]
    SchemaMissing { target: String },

    #[error(
        "the courier schema is behind: the database is at version {applied}, this courier needs {expected}. \
         Run `courier migrate` (it is safe while workers run), then start again."
    )]
    SchemaBehind { applied: i64, expected: i64 },

    #[error(
        "the courier schema is ahead: the database is at version {applied}, this courier knows only up to {expected}. \
         A newer courier migrated this database; run that version (see `courier status` for worker versions)."
    )]
    SchemaAhead { applied: i64, expected: i64 },

    #[error(
        "migration {version} ({name}) was edited after it was applied: its checksum no longer matches the one recorded \
         in courier_migrations. Applied migrations are immutable: restore migrations/{name} as released and put the \
         change in a new migration."
    )]
    MigrationEdited { version: i64, name: String },

    #[error(
        "could not take the migration lock within {waited:?}: another process has been applying migrations for that long. \
         Find it with `SELECT * FROM pg_locks WHERE locktype = 'advisory'`. Runbook: docs/runbooks/migration-lock-held.md"
    )]
    MigrationLockTimeout { waited: Duration },

    #[error(
        "{operation}: gave up waiting for a lock after lock_timeout. Something holds a lock on courier's tables: often a \
         transaction whose client froze or vanished, or DDL queued behind one (incident 8). The call is safe to retry. \
         Runbook: docs/runbooks/lock-timeout.md"
    )]
    LockTimeout { operation: &'static str },

    #[error(
        "{operation}: the server cancelled the statement at statement_timeout. The store is overloaded or a lock is held. \
         The call is safe to retry. Runbook: docs/runbooks/lock-timeout.md"
    )]
    StatementTimeout { operation: &'static str },

    #[error(
        "{operation}: no answer from the store within the client deadline ({deadline:?}); the connection was discarded. \
         The store is overloaded or unreachable. Runbook: docs/runbooks/store-unavailable.md"
    )]
    Deadline {
        operation: &'static str,
        deadline: Duration,
    },

    #[error(
        "{operation}: no free store connection within pool_wait: every pooled connection is busy. Raise store.pool_size \
         or lower the number of delivery tasks. Runbook: docs/runbooks/store-unavailable.md"
    )]
    PoolExhausted { operation: &'static str },

    #[error(
        "route {route:?} is recorded with other delivery settings than this configuration has: {}. Workers that disagree \
         would split the route's messages between them. If this configuration is wrong, fix it. If the change is \
         deliberate, record it once with `courier routes update --config FILE {route}` before rolling the fleet (or \
         start one worker with `courier run --accept-route-changes {route}`). Runbook: \
         docs/runbooks/route-settings-changed.md",
        crate::routes::describe_changes(changes)
    )]
    RouteSettingsChanged {
        route: String,
        /// Only keys recorded with another value.
        changes: Vec<crate::routes::SettingChange>,
    },

    #[error("{operation}: {message}")]
    Invalid {
        operation: &'static str,
        message: String,
    },

    #[error("{operation}: {}{}", describe(source), hint(source))]
    Database {
        operation: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// The driver's own `Display` says only "db error" for server errors: show the server's words instead
/// (message, SQLSTATE, and the detail and hint when the server gave them).
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut text = format!("{} ({}): {}", db.severity(), db.code().code(), db.message());
            if let Some(detail) = db.detail() {
                text.push_str(&format!("; detail: {detail}"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; hint: {hint}"));
            }
            text
        }
        None => error.to_string(),
    }
}

fn hint(error: &tokio_postgres::Error) -> &'static str {
    match error.code() {
        Some(code) if *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT => {
            " (the server ended a transaction left idle past idle_in_transaction_session_timeout)"
        }
        Some(code) if *code == SqlState::TOO_MANY_CONNECTIONS => {
            " (PostgreSQL is out of connections: look for orphaned backends in pg_stat_activity; runbook docs/runbooks/store-unavailable.md)"
        }
        None if error.is_closed() => " (the connection was closed; the call is safe to retry)",
        _ => "",
    }
}

impl StoreError {
    /// Maps a driver error from `operation` to the variant that decides what happens next.
    pub fn from_db(operation: &'static str, source: tokio_postgres::Error) -> Self {
        match source.code() {
            Some(code) if *code == SqlState::LOCK_NOT_AVAILABLE => Self::LockTimeout { operation },
            Some(code) if *code == SqlState::QUERY_CANCELED => Self::StatementTimeout { operation },
            _ => Self::Database { operation, source },
        }
    }

    /// Whether the same call may succeed if tried again (the store or a lock was busy, a connection died).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::LockTimeout { .. }
            | Self::StatementTimeout { .. }
            | Self::Deadline { .. }
            | Self::PoolExhausted { .. }
            | Self::Unreachable { .. }
            | Self::MigrationLockTimeout { .. } => true,
            Self::Database { source, .. } => {
                source.is_closed()
                    || source.code().is_some_and(|code| {
                        *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
                            || *code == SqlState::ADMIN_SHUTDOWN
                            || *code == SqlState::T_R_SERIALIZATION_FAILURE
                            || *code == SqlState::T_R_DEADLOCK_DETECTED
                            || *code == SqlState::TOO_MANY_CONNECTIONS
                            || *code == SqlState::CANNOT_CONNECT_NOW
                    })
            }
            _ => false,
        }
    }
}
