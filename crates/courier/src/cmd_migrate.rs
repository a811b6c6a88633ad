//! `courier migrate`: the only way courier's schema changes.

use std::path::Path;
use std::time::Duration;

use courier_store::{Migrator, StoreConfig, StoreError};
use courier_worker::{BootRetry, Service, WorkerConfig};

use crate::config::Config;

/// The development cluster `make postgres` starts, used when neither a file nor DATABASE_URL says otherwise.
pub const LOCAL_DATABASE_URL: &str = "postgres://courier:courier@127.0.0.1:54329/courier";

pub async fn run(config: Option<&Path>, flag: Option<Duration>) -> anyhow::Result<()> {
    let (store, boot_timeout) = match config {
        Some(path) => {
            let config = Config::load(path)?;
            (config.store, config.worker.boot_timeout)
        }
        None => (
            StoreConfig::new(
                std::env::var("DATABASE_URL").unwrap_or_else(|_| LOCAL_DATABASE_URL.to_owned()),
            ),
            WorkerConfig::default().boot_timeout,
        ),
    };
    let migrator = Migrator::embedded();
    let target = courier_store::url::redact(&store.url);
    let report = BootRetry::new(flag.unwrap_or(boot_timeout))
        .run(
            Service::Store,
            "apply migrations",
            &target,
            StoreError::is_transient,
            || migrator.run(&store),
        )
        .await?;
    if report.already_current {
        println!(
            "Schema is current (version {}); nothing to do.",
            migrator.expected_version()
        );
    } else if report.applied.is_empty() {
        println!(
            "Another process applied the migrations; schema is at version {}.",
            migrator.expected_version()
        );
    } else {
        println!(
            "Applied migrations {:?}; schema is at version {}.",
            report.applied,
            migrator.expected_version()
        );
    }
    Ok(())
}
