//! "What changed?": the timeline of events an operator asks about after the fact, and pausing a route.
//!
//! This module owns `courier_changes` (migration 0006): what each event is called ([`Kind`]), how one is
//! written, read back (`courier changes --since 2h`) and pruned. Events are written by the statement or
//! transaction that makes the change, wherever that lives (a replay's audit, a settings update, a failed
//! range's report, a destination's first `Retry-After`), so an event is recorded if and only if its change
//! is. Writes stay cheap: one row per event, never per message, and transitions only (a destination
//! answering 429 a thousand times records the first). Rows older than `worker.changes_retention` are
//! pruned by the workers' heartbeat task, a bounded batch at a time.
//!
//! It also owns pausing: `courier_routes.paused` with who, why and since when. A paused route's ranges are
//! never leased (the lease statement reads the paused routes, see [`crate::lease`]), so every worker
//! honours a pause at its next lease call; the planner keeps carving, so the lag stays visible.

use std::fmt;
use std::time::Duration;

use crate::error::Result;
use crate::pool::{millis, Store};
use crate::query::{db, invalid, params};

/// What happened. Stored as its [`Kind::as_str`] text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    WorkerStarted,
    WorkerStopped,
    MigrationApplied,
    Replay,
    RoutePaused,
    RouteResumed,
    RouteCreated,
    RouteSettingsChanged,
    /// A destination asked every worker to wait (`Retry-After`), where it was not holding anyone off.
    DestinationRetryAfter,
    /// A worker's circuit breaker for a destination opened (it failed continuously) or closed again.
    CircuitOpened,
    CircuitClosed,
    RangeFailed,
    RangeQuarantined,
    /// Kafka had deleted offsets of a range (retention, `DeleteRecords`) before they were delivered.
    RangeLost,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WorkerStarted => "worker.started",
            Self::WorkerStopped => "worker.stopped",
            Self::MigrationApplied => "migration.applied",
            Self::Replay => "replay",
            Self::RoutePaused => "route.paused",
            Self::RouteResumed => "route.resumed",
            Self::RouteCreated => "route.created",
            Self::RouteSettingsChanged => "route.settings_changed",
            Self::DestinationRetryAfter => "destination.retry_after",
            Self::CircuitOpened => "destination.circuit_opened",
            Self::CircuitClosed => "destination.circuit_closed",
            Self::RangeFailed => "range.failed",
            Self::RangeQuarantined => "range.quarantined",
            Self::RangeLost => "range.lost",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: Kind,
    pub route: Option<String>,
    pub destination: Option<String>,
    /// Who: a worker id, an operator's `user@host`.
    pub actor: Option<String>,
    /// One line a person reads at 2 a.m.
    pub summary: String,
}

impl Change {
    pub fn new(kind: Kind, summary: impl Into<String>) -> Self {
        Self {
            kind,
            route: None,
            destination: None,
            actor: None,
            summary: summary.into(),
        }
    }

    pub fn route(mut self, route: &str) -> Self {
        self.route = Some(route.to_owned());
        self
    }

    pub fn destination(mut self, destination: &str) -> Self {
        self.destination = Some(destination.to_owned());
        self
    }

    pub fn actor(mut self, actor: &str) -> Self {
        self.actor = Some(actor.to_owned());
        self
    }
}

/// A recorded event, as `courier changes` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRow {
    pub id: i64,
    /// RFC 3339, UTC, milliseconds.
    pub at: String,
    pub kind: String,
    pub route: Option<String>,
    pub destination: Option<String>,
    pub actor: Option<String>,
    pub summary: String,
}

/// A paused route, as `courier status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PausedRoute {
    pub route: String,
    /// RFC 3339, UTC; `None` for a route paused by hand before migration 0006.
    pub since: Option<String>,
    pub paused_secs_ago: Option<i64>,
    pub by: Option<String>,
    pub reason: Option<String>,
}

/// Rows pruned per statement: a backlog (retention shortened, or pruning long off) goes in bounded bites.
const PRUNE_BATCH: i64 = 10_000;

/// `to_char` pattern of [`ChangeRow::at`].
const AT: &str = "to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')";

/// Records `change` inside the caller's transaction, so it commits or rolls back with the change itself.
pub(crate) async fn insert(tx: &tokio_postgres::Transaction<'_>, change: &Change) -> Result<()> {
    tx.execute(
        "INSERT INTO courier_changes (kind, route, destination, actor, summary) VALUES ($1, $2, $3, $4, $5)",
        &[
            &change.kind.as_str(),
            &change.route,
            &change.destination,
            &change.actor,
            &change.summary,
        ],
    )
    .await
    .map_err(db("record change"))?;
    Ok(())
}

impl Store {
    /// Records one event on its own (a worker starting or stopping, a circuit opening): one insert.
    pub async fn record_change(&self, change: &Change) -> Result<()> {
        self.execute(
            "record change",
            "INSERT INTO courier_changes (kind, route, destination, actor, summary) VALUES ($1, $2, $3, $4, $5)",
            params![
                change.kind.as_str(),
                change.route.clone(),
                change.destination.clone(),
                change.actor.clone(),
                change.summary.clone(),
            ],
        )
        .await
        .map(drop)
    }

    /// Events of the last `since`, oldest first; with `route`, only that route's. At most `limit`: the
    /// newest ones when there are more.
    pub async fn changes(
        &self,
        since: Duration,
        route: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ChangeRow>> {
        let sql = format!(
            "SELECT * FROM (
                 SELECT id, {AT}, kind, route, destination, actor, summary FROM courier_changes
                 WHERE at >= now() - $1::bigint * interval '1 millisecond'
                   AND ($2::text IS NULL OR route = $2)
                 ORDER BY id DESC LIMIT $3) newest
             ORDER BY id"
        );
        let rows = self
            .query(
                "read changes",
                sql,
                params![millis(since), route.map(str::to_owned), limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| ChangeRow {
                id: row.get(0),
                at: row.get(1),
                kind: row.get(2),
                route: row.get(3),
                destination: row.get(4),
                actor: row.get(5),
                summary: row.get(6),
            })
            .collect())
    }

    /// Deletes events older than `retention`, at most [`PRUNE_BATCH`] per call; returns how many.
    pub async fn prune_changes(&self, retention: Duration) -> Result<u64> {
        self.execute(
            "prune changes",
            "DELETE FROM courier_changes WHERE id IN (
                 SELECT id FROM courier_changes
                 WHERE at < now() - $1::bigint * interval '1 millisecond'
                 ORDER BY at LIMIT $2)",
            params![millis(retention), PRUNE_BATCH],
        )
        .await
    }

    /// Pauses (`paused`) or resumes a recorded route and records the event, in one transaction. Returns
    /// false when the route already was in that state (nothing recorded). Every worker honours it at its
    /// next lease call; ranges leased before finish their delivery.
    pub async fn set_route_paused(
        &self,
        route: &str,
        paused: bool,
        reason: &str,
        actor: &str,
    ) -> Result<bool> {
        const OP: &str = "pause or resume route";
        let (route, reason, actor) = (route.to_owned(), reason.to_owned(), actor.to_owned());
        self.transaction(OP, move |tx| {
            Box::pin(async move {
                let Some(row) = tx
                    .query_opt(
                        "SELECT paused FROM courier_routes WHERE name = $1 FOR UPDATE",
                        &[&route],
                    )
                    .await?
                else {
                    let known: Vec<String> = tx
                        .query("SELECT name FROM courier_routes ORDER BY name", &[])
                        .await?
                        .iter()
                        .map(|row| row.get(0))
                        .collect();
                    return Err(invalid(
                        OP,
                        format!(
                            "route {route:?} is not recorded in this store (recorded routes: {}). A route is recorded \
                             when a worker first starts it; `courier routes list` shows them",
                            if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                        ),
                    ));
                };
                if row.get::<_, bool>(0) == paused {
                    return Ok(false);
                }
                tx.execute(
                    "UPDATE courier_routes
                     SET paused = $2,
                         paused_at = CASE WHEN $2 THEN now() END,
                         paused_by = CASE WHEN $2 THEN $3 END,
                         pause_reason = CASE WHEN $2 THEN $4 END
                     WHERE name = $1",
                    &[&route, &paused, &actor, &reason],
                )
                .await?;
                let (kind, verb) = if paused {
                    (Kind::RoutePaused, "paused: no worker leases its ranges until `courier resume`")
                } else {
                    (Kind::RouteResumed, "resumed: workers lease its ranges again")
                };
                let summary = if reason.is_empty() {
                    format!("route {route} {verb}")
                } else {
                    format!("route {route} {verb}; reason: {reason}")
                };
                insert(tx, &Change::new(kind, summary).route(&route).actor(&actor)).await?;
                Ok(true)
            })
        })
        .await
    }

    /// Every paused route, by name.
    pub async fn paused_routes(&self) -> Result<Vec<PausedRoute>> {
        let rows = self
            .query(
                "read paused routes",
                "SELECT name,
                        to_char(paused_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                        extract(epoch FROM now() - paused_at)::bigint, paused_by, pause_reason
                 FROM courier_routes WHERE paused ORDER BY name",
                params![],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| PausedRoute {
                route: row.get(0),
                since: row.get(1),
                paused_secs_ago: row.get(2),
                by: row.get(3),
                reason: row.get(4),
            })
            .collect())
    }
}
