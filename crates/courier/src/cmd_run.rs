//! `courier run`: one worker process, until a signal, then a graceful drain; its admin endpoint (status
//! page, `/healthz`, `/readyz`, `/metrics`) from before it boots until it exits.

use std::path::Path;

use anyhow::Context as _;
use courier_admin::{AdminServer, Setup};
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
    let admin_on = config
        .admin
        .address()
        .map_err(anyhow::Error::msg)?
        .is_some();
    let telemetry = telemetry::install_metrics(config.metrics.as_ref(), admin_on)?;
    let admin = start_admin(&config, telemetry).await?;
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
    if let Some(admin) = &admin {
        admin.attach(worker.view());
    }
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

/// Starts the admin endpoint, before the worker boots. A busy default port is a warning (another worker
/// on this host has it); a busy port the configuration chose stops the start.
async fn start_admin(
    config: &Config,
    telemetry: telemetry::Telemetry,
) -> anyhow::Result<Option<AdminServer>> {
    let topics: std::collections::BTreeSet<&str> =
        config.routes.values().map(|r| r.topic.as_str()).collect();
    let setup = Setup {
        config: config.admin.clone(),
        stall_bound: config
            .admin
            .stall_bound(topics.len(), config.kafka.read_timeout),
        prometheus: telemetry.prometheus,
        latency: telemetry.latency,
        kafka: config.kafka.clone(),
        routes: config.configured_routes(),
        status: config.status.clone(),
        heartbeat_every: config.worker.heartbeat_every,
        version: courier_worker::VERSION,
    };
    match AdminServer::start(setup).await {
        Ok(server) => Ok(server),
        Err(error) if error.is_busy_default(&config.admin) => {
            tracing::warn!(%error, "Running without the admin endpoint.");
            Ok(None)
        }
        Err(error) => Err(error.into()),
    }
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
    match config.admin.address().map_err(anyhow::Error::msg)? {
        Some(address) => {
            println!("  admin: http://{address}/ (status page, /healthz, /readyz, /metrics)")
        }
        None => println!("  admin: off"),
    }
    println!("  log format: {:?}", config.log.format);
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
