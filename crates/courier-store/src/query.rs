//! The preamble every single-statement store call shares, written once: a pooled connection under the
//! client deadline ([`Store::run`]), the statement prepared once per connection (`prepare_cached`), and a
//! driver error mapped to the [`StoreError`] that names the operation. With it each store method reads as
//! its SQL, its parameters ([`params!`]) and its row mapping.
//!
//! There is no retry here on purpose: whether a failed call is retried, and after which backoff, is the
//! caller's decision ([`StoreError`] says which calls are safe to retry).
//!
//! Calls of several statements in one transaction go through `transaction`'s [`Store::transaction`],
//! which maps each statement's error with [`db`] the same way.

use std::borrow::Cow;

use deadpool_postgres::ClientWrapper;
use futures::future::BoxFuture;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};

use crate::error::{Result, StoreError};
use crate::pool::Store;

/// An owned query parameter: the call may outlive the caller's borrows (it runs under a deadline on a
/// connection of its own), so parameters are moved into it.
pub(crate) type Param = Box<dyn ToSql + Sync + Send>;

/// The parameters `$1, $2, ...` of a statement, in order, as owned [`Param`]s.
macro_rules! params {
    ($($param:expr),* $(,)?) => {
        vec![$(Box::new($param) as $crate::query::Param),*]
    };
}
pub(crate) use params;

/// Maps a driver error of `operation` to the [`StoreError`] that says what to do about it.
pub(crate) fn db(operation: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |e| StoreError::from_db(operation, e)
}

/// A request the store refuses, or a row it cannot make sense of, in `operation`.
pub(crate) fn invalid(operation: &'static str, message: String) -> StoreError {
    StoreError::Invalid { operation, message }
}

/// How a prepared statement is run: `query`, `query_one`, `query_opt` or `execute` of the driver.
type Exec<T> = for<'a> fn(
    &'a ClientWrapper,
    &'a Statement,
    &'a [&'a (dyn ToSql + Sync)],
) -> BoxFuture<'a, std::result::Result<T, tokio_postgres::Error>>;

impl Store {
    /// Runs one statement outside a transaction and returns its rows.
    pub(crate) async fn query(
        &self,
        operation: &'static str,
        sql: impl Into<Cow<'static, str>>,
        params: Vec<Param>,
    ) -> Result<Vec<Row>> {
        self.statement(operation, sql.into(), params, |c, s, p| {
            Box::pin(c.query(s, p))
        })
        .await
    }

    /// Runs one statement outside a transaction and returns its one row (none, or more, is an error).
    pub(crate) async fn query_one(
        &self,
        operation: &'static str,
        sql: impl Into<Cow<'static, str>>,
        params: Vec<Param>,
    ) -> Result<Row> {
        self.statement(operation, sql.into(), params, |c, s, p| {
            Box::pin(c.query_one(s, p))
        })
        .await
    }

    /// Runs one statement outside a transaction and returns its row, if any (more than one is an error).
    pub(crate) async fn query_opt(
        &self,
        operation: &'static str,
        sql: impl Into<Cow<'static, str>>,
        params: Vec<Param>,
    ) -> Result<Option<Row>> {
        self.statement(operation, sql.into(), params, |c, s, p| {
            Box::pin(c.query_opt(s, p))
        })
        .await
    }

    /// Runs one statement outside a transaction and returns how many rows it changed.
    pub(crate) async fn execute(
        &self,
        operation: &'static str,
        sql: impl Into<Cow<'static, str>>,
        params: Vec<Param>,
    ) -> Result<u64> {
        self.statement(operation, sql.into(), params, |c, s, p| {
            Box::pin(c.execute(s, p))
        })
        .await
    }

    async fn statement<T: Send + 'static>(
        &self,
        operation: &'static str,
        sql: Cow<'static, str>,
        params: Vec<Param>,
        exec: Exec<T>,
    ) -> Result<T> {
        self.run(operation, move |c| {
            Box::pin(async move {
                let statement = c.prepare_cached(&sql).await.map_err(db(operation))?;
                let refs: Vec<&(dyn ToSql + Sync)> = params
                    .iter()
                    .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                    .collect();
                exec(c, &statement, &refs).await.map_err(db(operation))
            })
        })
        .await
    }
}
