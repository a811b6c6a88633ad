//! `courier run`: one worker process, until a signal, then a graceful drain.

use std::path::Path;

use anyhow::Context as _;
use courier_worker::{open_store, BootRetry, Schema, Worker, WorkerStats};
use tokio::sync::watch;

use crate::config::Config;
use crate::telemetry;

pub async fn run(
    path: &Path,
    migrate: bool,
    accept_route_changes: Vec<String>,
) -> anyhow::Result<()> {
    let mut config = Config::load(path)?;
    if let Some(unknown) = accept_route_changes
        .iter()
        .find(|route| !config.routes.contains_key(*route))
    {
        anyhow::bail!(
            "--accept-route-changes {unknown}: {} has no [routes.{unknown}] section (configured routes: {})",
            path.display(),
            config.routes.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    config.worker.accept_route_changes = accept_route_changes;
    if let Some(metrics) = &config.metrics {
        telemetry::install_metrics(metrics)?;
    }
    let boot = BootRetry::new(config.worker.boot_timeout);
    let schema = if migrate {
        Schema::Migrate
    } else {
        Schema::Check
    };
    let (store, _) = open_store(&config.store, schema, &boot).await?;
    let worker = Worker::new(
        store,
        config.kafka.clone(),
        &config.destinations,
        config.route_list(),
        config.worker.clone(),
    )
    .await
    .context("cannot start the worker")?;
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    let stats = worker.run(stopped).await?;
    tracing::info!(
        checkpointed = WorkerStats::get(&stats.ranges_checkpointed),
        messages = WorkerStats::get(&stats.messages_delivered),
        fenced = WorkerStats::get(&stats.ranges_fenced),
        failed = WorkerStats::get(&stats.ranges_failed),
        released = WorkerStats::get(&stats.ranges_released),
        "Worker summary."
    );
    Ok(())
}

/// SIGTERM (orchestrators) or SIGINT (a terminal).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub fn check_config(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    println!("{} is valid.", path.display());
    println!(
        "  store: {} connections, client deadline {:?}",
        config.store.pool_size, config.store.timeouts.client_deadline
    );
    println!("  kafka: {}", config.kafka.brokers);
    for route in config.routes.values() {
        println!(
            "  route {}: topic {:?} -> destination {:?} ({}), ranges of {}, ordering {:?}",
            route.name,
            route.topic,
            route.destination,
            config.destinations[&route.destination].url,
            route.range_size,
            route.ordering
        );
    }
    Ok(())
}
