//! Helpers shared by courier's integration tests, chaos runs (`courier gameday`) and benches.
//!
//! # Layout
//! - [`db`]: a fresh PostgreSQL database per test or chaos scenario (sqlx-test style), migrated or not,
//!   store handles on it, dropping it.
//! - [`kafka_log`]: the local broker's log on disk: its record batches, and corrupting one.
//! - [`unique_name`]: names no other test (or earlier run) uses, for routes and topics.
//!
//! Everything here talks to the services [`courier_core::local`] names: `DATABASE_URL` and
//! `KAFKA_BROKERS`, or the PostgreSQL and Kafka `scripts/postgres.sh` and `scripts/kafka.sh` start.

pub mod db;
pub mod kafka_log;

pub use db::{SetupError, TestDb};

/// A name unique to this process and call, e.g. `orders_4821_9f3a1c`: safe for routes, topics, databases.
pub fn unique_name(prefix: &str) -> String {
    use rand::Rng;
    let suffix: u32 = rand::rng().random();
    format!("{prefix}_{}_{suffix:08x}", std::process::id())
}
