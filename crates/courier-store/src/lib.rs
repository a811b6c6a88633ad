//! courier's PostgreSQL store: the single source of truth for delivery progress.
//!
//! Kafka holds the data, workers hold nothing that cannot be lost, and this crate holds every fact about
//! progress: which ranges exist, who leases them under which epoch, what is done or failed.
//!
//! # Layout
//! - [`config`]: [`StoreConfig`] and the client-aligned [`Timeouts`] (the server gives up before the
//!   client does), validated at startup.
//! - [`pool`]: the connection pool that sets those limits on every connection, and the client deadline
//!   around every call.
//! - [`migrate`]: the embedded, forward-only, once-only migration runner. The only place with DDL.
//! - `query`: the preamble of every single-statement call, once (connection, deadline,
//!   prepared statement, error mapping), so each method below reads as its SQL and its row mapping.
//! - `transaction`: the same for calls of several statements in one transaction (`BEGIN`, error
//!   mapping, `COMMIT`), once.
//! - [`protocol`]: the lease protocol's vocabulary (route specs, lease requests, failures, replays and
//!   their outcomes), spoken by the statements in:
//!   - `lease`: claiming ranges and renewing leases (the one lease statement);
//!   - `settle`: checkpoint, release, fail (compare-and-set on the epoch);
//!   - `replay`: failed ranges and planned windows queued again, audited;
//!   - `workers`: worker heartbeats and graceful stops;
//!   - `destinations`: a destination's shared `Retry-After`.
//! - `quarantine`: messages a destination refused on their own: recorded with their range's checkpoint,
//!   listed, replayed one offset at a time.
//! - `losses`: offsets Kafka deleted before delivery: recorded with their range's checkpoint, listed,
//!   and counted against Kafka's log start for `courier status`.
//! - [`routes`]: a route's identity: registering it and its partitions, its recorded delivery settings,
//!   compared by every worker that starts it, changed only on purpose.
//! - `changes`: "what changed?": the timeline of workers, migrations, replays, pauses, settings,
//!   `Retry-After`, circuits and failed or quarantined ranges; pausing and resuming a route.
//! - `planning`: who plans a route, planning rounds (carve, advance watermarks), partition progress,
//!   compaction: paid per round, not per route.
//! - `tls`: `sslmode` and the CA from the URL or `[store]`, the one OpenSSL connector every connection
//!   goes through, and what a TLS failure means.
//! - [`url`]: swapping the database of a URL, hiding its password.
//! - `status`: the read-only snapshot behind `courier status`.
//! - `evidence`: the ranges as they are, typed ([`RangeRecord`], [`RangeCounts`]): of a route, by id,
//!   leased by a worker, failed; what tests, chaos runs and benches check, read without SQL of their own.
//! - `error`: [`StoreError`], whose variants decide what the caller does next and whose messages say
//!   what to do at 2 a.m.
//!
//! # Rules this crate keeps
//! - No transaction spans network I/O to Kafka or a destination: every call here is a few statements.
//! - Every query is parameterised.
//! - A connection whose call outlived the client deadline is thrown away, never handed out again.

#![forbid(unsafe_code)]

mod changes;
// `config` and `pool` stay public while the TLS work adds to them; `migrate`, `protocol`, `routes` and
// `url` are paths other crates and the tests name (`migrate::Migration`, `protocol::ReplayAudit`,
// `routes::describe_changes`, `url::redact`).
pub mod config;
mod destinations;
mod error;
mod evidence;
mod lease;
mod losses;
pub mod migrate;
mod planning;
pub mod pool;
pub mod protocol;
mod quarantine;
mod query;
mod replay;
pub mod routes;
mod settle;
mod status;
mod tls;
mod transaction;
pub mod url;
mod workers;

pub use changes::{Change, ChangeRow, Kind as ChangeKind, PausedRoute};
pub use config::{SslMode, StoreConfig, Timeouts};
pub use error::{Result, StoreError};
pub use evidence::{RangeCounts, RangeRecord};
pub use losses::{DeletedBeforeDelivery, Loss, LossRow, LossSummary, RECENT_LOSSES_HOURS};
pub use migrate::{MigrationReport, Migrator, SchemaVersion};
pub use planning::{PlanOutcome, PlanRequest, PlanRound, RoundOutcome};
pub use pool::{DedicatedConnection, Store};
pub use protocol::{
    FailOutcome, Failure, LeaseRequest, PartitionProgress, ReplayAudit, ReplayFilter,
    ReplayOutcome, RouteSpec,
};
pub use quarantine::{QuarantineFilter, QuarantineRow, Quarantined};
pub use routes::{Registration, RouteRecord, RouteSettings, SettingChange};
pub use status::{
    DeferredRow, FailedPartitionRow, FailedRow, LeaseRow, PartitionRow, QuarantineSummary,
    RetryingRow, RouteRow, Snapshot, WorkerRow,
};
