//! Where the local development services are: the one place their addresses are written.
//!
//! Owns [`LOCAL_DATABASE_URL`] (the cluster `scripts/postgres.sh start` creates) and
//! [`LOCAL_KAFKA_BROKERS`] (the broker `scripts/kafka.sh start` runs), and how tests, chaos runs, the
//! demo and the benches pick the services they talk to: `DATABASE_URL` and `KAFKA_BROKERS` when set
//! (and not empty), else these. A deployment never reaches these defaults: its store and brokers come
//! from its configuration.

/// The local development cluster `scripts/postgres.sh start` (`make postgres`) creates.
pub const LOCAL_DATABASE_URL: &str = "postgres://courier:courier@127.0.0.1:54329/courier";
/// The local broker `scripts/kafka.sh start` (`make kafka`) runs.
pub const LOCAL_KAFKA_BROKERS: &str = "127.0.0.1:9092";

/// `DATABASE_URL` when set, else [`LOCAL_DATABASE_URL`].
pub fn database_url() -> String {
    env_or("DATABASE_URL", LOCAL_DATABASE_URL)
}

/// `KAFKA_BROKERS` when set, else [`LOCAL_KAFKA_BROKERS`].
pub fn kafka_brokers() -> String {
    env_or("KAFKA_BROKERS", LOCAL_KAFKA_BROKERS)
}

/// The variable when it is set and not empty (`DATABASE_URL= cmd` means "unset"), else `default`.
fn env_or(variable: &str, default: &str) -> String {
    std::env::var(variable)
        .ok()
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| default.to_owned())
}
