//! A worker's admin endpoint, and the status report `courier status` prints.
//!
//! Every worker serves, by default on `127.0.0.1:9464` (`[admin]`, see [`AdminConfig`]):
//!
//! | path | answers |
//! |---|---|
//! | `/` | the status page: what needs attention, lag, failures, destinations, workers; refreshes itself |
//! | `/healthz` | 200 while the worker's loops come round; 503 naming the stuck one (restart it) |
//! | `/readyz` | 200 while the store (with the current schema) and Kafka answer; 503 with the reason |
//! | `/metrics` | every metric in Prometheus' text format (StatsD export goes on alongside) |
//! | `/status.json` | what `courier status --json` prints |
//!
//! # Layout
//! - `config`: [`AdminConfig`], the `[admin]` section.
//! - `server`: [`AdminServer`]: binds, serves the paths above, is attached to the worker once it runs.
//! - `health`: liveness from the worker's loop beats; readiness from background checks.
//! - [`report`]: the status report: the store's snapshot and Kafka's watermarks (each call bounded by a
//!   short timeout), judged into [`Attention`] items (what, since when, which runbook); its JSON.
//! - `latency`: end-to-end latency of the last minutes per route, a `metrics` recorder, for p50/p99.
//! - `page`: the status page's HTML.

#![forbid(unsafe_code)]

mod config;
mod health;
mod latency;
mod page;
// Public as a namespace: `courier status` gathers, judges and words the report with its functions.
pub mod report;
mod server;

pub use config::AdminConfig;
pub use latency::LatencyWindow;
pub use report::{Attention, Code, ConfiguredRoute, Report, StatusConfig};
pub use server::{AdminError, AdminServer, Setup};
