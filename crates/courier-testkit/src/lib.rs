//! Test-only helpers shared by courier's integration tests, chaos runs and benches.
//!
//! # Layout
//! - [`db`]: a fresh PostgreSQL database per test (sqlx-test style), migrated or not, and store handles.
//! - [`kafka_log`]: the local broker's log on disk: its record batches, and corrupting one.
//! - [`unique_name`]: names no other test (or earlier run) uses, for routes and topics.
//!
//! Everything here talks to real services on 127.0.0.1: the PostgreSQL started by
//! `scripts/postgres.sh` (or `DATABASE_URL`) and the Kafka broker started by `scripts/kafka.sh` (or
//! `KAFKA_BROKERS`).

pub mod db;
pub mod kafka_log;

pub use db::TestDb;

/// A name unique to this process and call, e.g. `orders_4821_9f3a1c`: safe for routes, topics, databases.
pub fn unique_name(prefix: &str) -> String {
    use rand::Rng;
    let suffix: u32 = rand::rng().random();
    format!("{prefix}_{}_{suffix:08x}", std::process::id())
}

/// The Kafka bootstrap servers the tests use: `KAFKA_BROKERS`, or the broker `scripts/kafka.sh` starts.
pub fn kafka_brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}
