//! The delivery runtime: one worker process serving every configured route.
//!
//! A worker runs, concurrently:
//! - a **planner** that, for the routes this worker plans (one worker per route at a time), reads Kafka's
//!   high watermarks once per topic, registers new partitions, carves ranges ahead of delivery, advances
//!   watermarks and compacts settled ranges; and shares destinations' `Retry-After`;
//! - **delivery tasks** that lease ranges, read them from Kafka, deliver them in batches and checkpoint
//!   them, renewing the lease while a long delivery runs (live and replay tasks are separate budgets);
//! - a **heartbeat** that records the worker's host and version, so `courier status` can answer
//!   "who runs what?", and prunes `courier changes` events older than `worker.changes_retention`;
//! - a **circuit watcher** that records each destination's circuit opening and closing in the timeline
//!   (`courier changes`), as does starting and stopping the worker.
//!
//! The worker holds nothing that cannot be lost: every fact lives in the store. No store transaction is
//! open while Kafka or a destination is being talked to.
//!
//! # Layout
//! - `worker`: [`Worker`]: start (validate, connect, record the routes), run, drain, stop.
//! - `error`: [`WorkerError`], why a worker could not start.
//! - `boot`: reaching the store and Kafka at start, retried with backoff until `worker.boot_timeout`.
//! - `register`: recording the routes at start (first partitions, settings compared, dead-letter topics).
//! - `context`: what the tasks share ([`WorkerStats`], the routes, the store, the reader) and the log
//!   throttle.
//! - `config`: [`WorkerConfig`] and [`RouteConfig`], and [`validate_delivery`], the one place their
//!   rules (and the destinations') are checked.
//! - [`metrics`]: every metric name, in one place.
//! - `planner`: the planner tick; its `schedule`, when each of its steps is due (time only, no I/O).
//! - `delivery`: lease → read → deliver → checkpoint for one range.
//! - `idle`: idle delivery tasks take turns polling; the planner wakes one per range it carves.
//! - `isolate`: bisecting a batch the destination refused for good, to quarantine only the bad messages.
//! - `dead_letter`: writing quarantined messages to a route's dead-letter topic, with Connect's headers.
//! - `heartbeat`: the heartbeat loop, and pruning old `courier changes` events.
//! - `timeline`: what the worker records in `courier changes` (start, stop, circuits).
//! - `view`: what the admin endpoint sees: loop beats ([`Liveness`]), routes, destinations' circuits.

#![forbid(unsafe_code)]

mod boot;
mod config;
mod context;
mod dead_letter;
mod delivery;
mod error;
mod heartbeat;
mod idle;
mod isolate;
pub mod metrics;
mod planner;
mod register;
mod timeline;
mod view;
mod worker;

pub use boot::{open_store, BootError, BootRetry, GaveUp, Schema, Service};
pub use config::{validate_delivery, OnPoison, RouteConfig, StartFrom, WorkerConfig};
pub use context::WorkerStats;
pub use error::WorkerError;
pub use view::{DestinationState, Liveness, Loop, WorkerView};
pub use worker::{Worker, VERSION};

// The paths the delivery tasks name their shared state by (`crate::Context`, `crate::stopped`, ...).
pub(crate) use context::{Context, Route, Throttle};
pub(crate) use worker::stopped;
