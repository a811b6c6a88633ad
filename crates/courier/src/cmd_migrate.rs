//! `courier migrate`: the only way courier's schema changes.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _};
use courier_core::local::LOCAL_DATABASE_URL;
use courier_store::url::redact;
use courier_store::{Migrator, StoreConfig, StoreError};
use courier_worker::{BootRetry, Service, WorkerConfig};

use crate::config::Config;

/// Which database to migrate: the file's `store.url` (with `DATABASE_URL` layered over it), else
/// `DATABASE_URL`, else the development cluster, but only when asked for with `--dev`: a schema change
/// must never land on a database nobody named.
fn target(config: Option<&Path>, dev: bool) -> anyhow::Result<(StoreConfig, Duration)> {
    let database_url = std::env::var("DATABASE_URL").ok();
    match (config, database_url) {
        (Some(path), _) => {
            let config = Config::load(path)?;
            Ok((config.store, config.worker.boot_timeout))
        }
        (None, Some(url)) if dev && url != LOCAL_DATABASE_URL => bail!(
            "--dev names the local development cluster ({}) but DATABASE_URL names {}: unset one of them",
            redact(LOCAL_DATABASE_URL),
            redact(&url)
        ),
        (None, Some(url)) => Ok((StoreConfig::new(url), WorkerConfig::default().boot_timeout)),
        (None, None) if dev => Ok((
            StoreConfig::new(LOCAL_DATABASE_URL),
            WorkerConfig::default().boot_timeout,
        )),
        (None, None) => bail!(
            "no database named: `courier migrate` changes a schema, so say which one: --config FILE (its \
             store.url), DATABASE_URL=postgres://USER:PASSWORD@HOST:PORT/DATABASE, or --dev for the local \
             development cluster ({})",
            redact(LOCAL_DATABASE_URL)
        ),
    }
}

pub async fn run(config: Option<&Path>, dev: bool, flag: Option<Duration>) -> anyhow::Result<()> {
    let (store, boot_timeout) = target(config, dev)?;
    let migrator = Migrator::embedded();
    let target = redact(&store.url);
    let report = BootRetry::new(flag.unwrap_or(boot_timeout))
        .run(
            Service::Store,
            "apply migrations",
            &target,
            StoreError::is_transient,
            || migrator.run(&store),
        )
        .await
        .with_context(|| format!("migrating {target}"))?;
    if report.already_current {
        println!(
            "Schema of {target} is current (version {}); nothing to do.",
            migrator.expected_version()
        );
    } else if report.applied.is_empty() {
        println!(
            "Another process applied the migrations to {target}; schema is at version {}.",
            migrator.expected_version()
        );
    } else {
        println!(
            "Applied migrations {:?} to {target}; schema is at version {}.",
            report.applied,
            migrator.expected_version()
        );
    }
    Ok(())
}
