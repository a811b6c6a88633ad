//! The preamble every call of several statements shares, written once: a pooled connection under the
//! client deadline ([`Store::run`]), `BEGIN`, each statement's driver error mapped to the [`StoreError`]
//! that names the operation, and `COMMIT` when the body succeeds. With it each such store method reads as
//! its SQL and its row mapping, like the single-statement calls of `query`.
//!
//! An error rolls the transaction back (dropping it sends `ROLLBACK`, and [`Store::run`] throws the
//! connection away). A body that returns early with `Ok` after only reading or fencing (no row changed)
//! is committed: that changes nothing either, and releases its row locks the same way.
//!
//! The migration runner keeps its own transaction: it runs on a dedicated connection, not the pool, sets
//! its own `lock_timeout`s and names a different operation for each step.
//!
//! [`StoreError`]: crate::StoreError

use std::ops::Deref;

use futures::future::BoxFuture;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, ToStatement};

use crate::error::Result;
use crate::pool::Store;
use crate::query::db;

/// A transaction of one store operation: the driver's calls, each error mapped to that operation.
///
/// Dereferences to the driver's transaction for the helpers that record into it (`changes::insert`,
/// `losses::insert`, `replay::insert_audit`), which name operations of their own.
pub(crate) struct Tx<'c> {
    tx: deadpool_postgres::Transaction<'c>,
    operation: &'static str,
}

impl Store {
    /// Runs `body` in one transaction of `operation` on a pooled connection under the client deadline,
    /// and commits it when `body` returns `Ok`.
    pub(crate) async fn transaction<T, F>(&self, operation: &'static str, body: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'t, 'c> FnOnce(&'t Tx<'c>) -> BoxFuture<'t, Result<T>> + Send + 'static,
    {
        self.run(operation, move |c| {
            Box::pin(async move {
                let tx = Tx {
                    tx: c.transaction().await.map_err(db(operation))?,
                    operation,
                };
                let value = body(&tx).await?;
                tx.tx.commit().await.map_err(db(operation))?;
                Ok(value)
            })
        })
        .await
    }
}

impl Tx<'_> {
    /// Runs one statement and returns its rows.
    pub(crate) async fn query<S>(
        &self,
        statement: &S,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>>
    where
        S: ?Sized + ToStatement,
    {
        self.tx
            .query(statement, params)
            .await
            .map_err(db(self.operation))
    }

    /// Runs one statement and returns its one row (none, or more, is an error).
    pub(crate) async fn query_one<S>(
        &self,
        statement: &S,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row>
    where
        S: ?Sized + ToStatement,
    {
        self.tx
            .query_one(statement, params)
            .await
            .map_err(db(self.operation))
    }

    /// Runs one statement and returns its row, if any (more than one is an error).
    pub(crate) async fn query_opt<S>(
        &self,
        statement: &S,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>>
    where
        S: ?Sized + ToStatement,
    {
        self.tx
            .query_opt(statement, params)
            .await
            .map_err(db(self.operation))
    }

    /// Runs one statement and returns how many rows it changed.
    pub(crate) async fn execute<S>(
        &self,
        statement: &S,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64>
    where
        S: ?Sized + ToStatement,
    {
        self.tx
            .execute(statement, params)
            .await
            .map_err(db(self.operation))
    }

    /// `sql` prepared once per connection, for a statement run on every call.
    pub(crate) async fn prepare_cached(&self, sql: &str) -> Result<tokio_postgres::Statement> {
        self.tx
            .prepare_cached(sql)
            .await
            .map_err(db(self.operation))
    }
}

impl<'c> Deref for Tx<'c> {
    type Target = deadpool_postgres::Transaction<'c>;

    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}
