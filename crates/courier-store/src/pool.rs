//! The connection pool: client-aligned limits on every connection, a client deadline around every call.
//!
//! Every pooled connection is opened with the server-side limits of [`Timeouts`] as connection
//! `options`, so they hold from the first statement and show as `source = client` in `pg_settings`.
//! Every call runs under the client deadline. Only a call that succeeds gives its connection back to the
//! pool; one that failed or did not finish (it outlived the deadline, or its caller stopped waiting for
//! it) loses it: the connection is detached and closed, so one stuck behind a lock or left inside a
//! transaction is never handed to the next caller. Connections therefore come back clean without a
//! `ROLLBACK` round trip per checkout (which cost a transaction and a server warning on every call).

use std::time::{Duration, Instant};

use deadpool_postgres::{
    ClientWrapper, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use futures::future::BoxFuture;
use tokio_postgres::error::SqlState;

use crate::config::{SslMode, StoreConfig, Timeouts};
use crate::error::{Result, StoreError};
use crate::tls::Tls;

/// A handle on the store: cheap to clone, shared by every task of a process.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    endpoint: Endpoint,
    timeouts: Timeouts,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the URL: it carries the password.
        f.debug_struct("Store")
            .field("target", &self.endpoint.target)
            .field("ssl_mode", &self.endpoint.tls.mode)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Validates `config`, opens the pool and makes one round trip, so a wrong URL, a wrong password or a
    /// server that is down is reported here, once, clearly.
    pub async fn connect(config: &StoreConfig) -> Result<Self> {
        let endpoint = Endpoint::new(config)?;
        let timeouts = config.timeouts.clone();
        let manager = Manager::from_config(
            endpoint.pg_config.clone(),
            endpoint.tls.connector.clone(),
            ManagerConfig {
                // Only a closed connection is replaced on checkout; one a call did not finish with never
                // comes back (see `run`).
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .wait_timeout(Some(timeouts.pool_wait))
            .create_timeout(Some(timeouts.pool_create))
            .recycle_timeout(Some(timeouts.pool_recycle))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Config(format!("cannot build the store pool: {e}")))?;
        let store = Self {
            pool,
            endpoint,
            timeouts,
        };
        store
            .run("connect", |client| {
                Box::pin(async move {
                    client
                        .simple_query("SELECT 1")
                        .await
                        .map_err(|e| StoreError::from_db("connect", e))?;
                    Ok(())
                })
            })
            .await?;
        Ok(store)
    }

    /// The timeouts this store was opened with.
    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// `host:port/database`, safe to print (no password).
    pub fn target(&self) -> &str {
        &self.endpoint.target
    }

    /// The `sslmode` this store connects with.
    pub fn ssl_mode(&self) -> SslMode {
        self.endpoint.tls.mode
    }

    /// How a connection of this store is protected, as one phrase: the TLS version the server agreed
    /// on or "not encrypted", then what the `sslmode` verifies. Asks the server (`pg_stat_ssl`), since
    /// with `prefer` only the server's answer says whether TLS is in use.
    pub async fn describe_security(&self) -> Result<String> {
        let version: Option<String> = self
            .run("describe_security", |client| {
                Box::pin(async move {
                    let row = client
                        .query_one(
                            "SELECT CASE WHEN ssl THEN version END FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                            &[],
                        )
                        .await
                        .map_err(|e| StoreError::from_db("describe_security", e))?;
                    Ok(row.get(0))
                })
            })
            .await?;
        let channel = match version {
            Some(version) => format!("encrypted with {version}"),
            None => "not encrypted".to_owned(),
        };
        Ok(format!("{channel}, {}", self.endpoint.tls.describe()))
    }

    /// Runs `call` on a pooled connection under the client deadline.
    ///
    /// If the deadline passes, the call is abandoned and its connection detached and closed: the server
    /// sees the client leave (and `client_connection_check_interval` ends a backend still waiting on a lock).
    pub async fn run<T, F>(&self, operation: &'static str, call: F) -> Result<T>
    where
        F: for<'c> FnOnce(&'c mut ClientWrapper) -> BoxFuture<'c, Result<T>>,
    {
        let deadline = self.timeouts.client_deadline;
        let started = Instant::now();
        let client = match tokio::time::timeout(deadline, self.pool.get()).await {
            Ok(Ok(client)) => client,
            Ok(Err(error)) => return Err(self.pool_error(operation, error)),
            Err(_) => {
                return Err(StoreError::Deadline {
                    operation,
                    deadline,
                })
            }
        };
        let remaining = deadline.saturating_sub(started.elapsed());
        let mut checkout = Checkout(Some(client));
        let Some(client) = checkout.0.as_mut() else {
            unreachable!("a checkout holds its connection until it is finished or dropped")
        };
        let outcome = tokio::time::timeout(remaining, call(client)).await;
        match outcome {
            Ok(Ok(value)) => {
                checkout.finished();
                Ok(value)
            }
            // A failed call may have left a transaction open or aborted (its guard's ROLLBACK is not
            // awaited): the connection goes, the next caller gets a clean one. Errors are rare; a
            // reconnect is cheap next to a round trip on every checkout.
            Ok(Err(error)) => Err(error),
            Err(_) => Err(StoreError::Deadline {
                operation,
                deadline,
            }),
        }
    }

    /// A connection outside the pool, with the same limits, for work that must not share a session
    /// (the migration runner, tests that hold locks on purpose). Dropping the client closes it.
    pub async fn dedicated_connection(&self) -> Result<DedicatedConnection> {
        self.endpoint.connect_dedicated().await
    }

    fn pool_error(&self, operation: &'static str, error: PoolError) -> StoreError {
        match error {
            PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => {
                StoreError::PoolExhausted { operation }
            }
            PoolError::Timeout(_) => StoreError::Unreachable {
                target: self.endpoint.target.clone(),
                detail: format!("no connection within {:?}", self.timeouts.pool_create),
            },
            PoolError::Backend(error) => self.endpoint.connect_error(error),
            other => StoreError::Unreachable {
                target: self.endpoint.target.clone(),
                detail: other.to_string(),
            },
        }
    }
}

/// A pooled connection lent to one call. Unless the call finished cleanly, dropping the checkout
/// detaches the connection from the pool and closes it: a caller that gave up (deadline, or its own
/// future dropped mid-call) may have left a statement running or a transaction open.
struct Checkout(Option<Object>);

impl Checkout {
    /// The call finished and closed its transaction: the connection may serve the next caller.
    fn finished(mut self) {
        drop(self.0.take());
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            drop(Object::take(client));
        }
    }
}

/// Where and how every courier connection to the store goes: the driver configuration (server-side
/// limits as `options`, keepalives, connect timeout, TLS mode), the TLS connector, and the printable
/// target. The pool, dedicated connections and the migration runner all connect through one.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pg_config: tokio_postgres::Config,
    tls: Tls,
    pub(crate) target: String,
}

impl Endpoint {
    /// Validates `config` and builds the endpoint.
    pub(crate) fn new(config: &StoreConfig) -> Result<Self> {
        config.validate()?;
        let (tls, url) = Tls::from_config(config)?;
        let mut pg_config: tokio_postgres::Config = url.parse().map_err(|e| {
            StoreError::Config(format!(
                "store.url is not a valid PostgreSQL URL ({e}); expected postgres://USER:PASSWORD@HOST:PORT/DATABASE"
            ))
        })?;
        let timeouts = &config.timeouts;
        pg_config
            .application_name(&config.application_name)
            .options(timeouts.server_options())
            .ssl_mode(tls.driver_mode())
            .connect_timeout(timeouts.pool_create)
            // The client also watches the server: a dead store is found by keepalives, not by waiting.
            .keepalives(true)
            .keepalives_idle(timeouts.tcp_keepalives_idle)
            .keepalives_interval(timeouts.tcp_keepalives_interval)
            .keepalives_retries(timeouts.tcp_keepalives_count)
            .tcp_user_timeout(timeouts.tcp_user_timeout);
        let target = describe_target(&pg_config);
        Ok(Self {
            pg_config,
            tls,
            target,
        })
    }

    /// Opens one connection outside any pool, with the same limits and TLS as pooled ones.
    pub(crate) async fn connect_dedicated(&self) -> Result<DedicatedConnection> {
        let (client, connection) = self
            .pg_config
            .connect(self.tls.connector.clone())
            .await
            .map_err(|e| self.connect_error(e))?;
        let connection = tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "Dedicated store connection ended.");
            }
        });
        Ok(DedicatedConnection { client, connection })
    }

    /// Turns a failure to connect into the error that tells the operator what to fix.
    fn connect_error(&self, error: tokio_postgres::Error) -> StoreError {
        let target = self.target.clone();
        let detail = db_message(&error);
        if let Some(tls) = self.tls.explain(&target, &error, &detail) {
            return tls;
        }
        match error.code() {
            Some(code)
                if *code == SqlState::INVALID_PASSWORD
                    || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
            {
                StoreError::Authentication { target, detail }
            }
            // A database that does not exist will not appear by waiting: a configuration error, not an outage.
            Some(code) if *code == SqlState::INVALID_CATALOG_NAME => StoreError::Config(format!(
                "{target}: {detail} (create it, or fix the database name in DATABASE_URL / store.url)"
            )),
            _ => StoreError::Unreachable { target, detail },
        }
    }
}

/// One connection outside the pool. Dropping it closes the socket at once, even with a statement in
/// flight, so the server sees its client leave (a plain `tokio_postgres::Client` would keep the socket
/// open until the pending answer arrived).
pub struct DedicatedConnection {
    client: tokio_postgres::Client,
    connection: tokio::task::JoinHandle<()>,
}

impl std::ops::Deref for DedicatedConnection {
    type Target = tokio_postgres::Client;
    fn deref(&self) -> &Self::Target {
        &self.client
    }
}

impl std::ops::DerefMut for DedicatedConnection {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.client
    }
}

impl Drop for DedicatedConnection {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

fn db_message(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                // TLS errors repeat their cause in their own text: say each part once.
                let cause_text = cause.to_string();
                if !text.contains(&cause_text) {
                    text.push_str(": ");
                    text.push_str(&cause_text);
                }
                source = cause.source();
            }
            text
        }
    }
}

fn describe_target(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let database = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("{host}:{port}/{database}")
}

/// Converts a duration to the whole milliseconds PostgreSQL takes for interval arithmetic.
pub(crate) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
