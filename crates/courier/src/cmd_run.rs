//! `courier run`: one worker process, until a signal, then a graceful drain.
//!
//! SIGTERM (orchestrators), SIGINT (a terminal) and SIGHUP (a closed terminal or SSH session, `systemctl
//! reload`, `kill -HUP` by habit) all drain: no new leases, in-flight ranges finish within
//! `worker.drain_timeout`, the rest are released, the stop is recorded, exit 0. SIGHUP does not reload
//! the configuration: a reload would change a route's delivery settings under ranges in flight, and a
//! restart (which the service manager does after the drain) is the one way settings change.
//!
//! Its admin endpoint (status page, `/healthz`, `/readyz`, `/metrics`) serves from before it boots until
//! it exits.

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
    config.worker.config_hash = file_hash(path);
    let admin_on = config
        .admin
        .address()
        .map_err(anyhow::Error::msg)?
        .is_some();
    let telemetry = telemetry::install_metrics(config.metrics.as_ref(), admin_on)?;
    let admin = start_admin(&config, telemetry).await?;
    // Installed first: from here on a stop signal is handled, never the default action (SIGHUP's kills
    // the process on the spot). While starting nothing is leased yet, so a signal just ends the start.
    let mut signals = Signals::install().context(
        "cannot install the signal handlers (SIGTERM, SIGINT, SIGHUP) that let the worker drain before it exits",
    )?;
    let worker = tokio::select! {
        worker = start(&config, migrate) => worker?,
        signal = signals.recv() => {
            tracing::info!(signal, "Received {signal} while starting: nothing leased yet; exiting.");
            return Ok(());
        }
    };
    if let Some(admin) = &admin {
        admin.attach(worker.view());
    }
    let (stop, stopped) = watch::channel(false);
    let id = worker.id().to_owned();
    tokio::spawn(async move {
        let signal = signals.recv().await;
        tracing::info!(worker = %id, signal, "Received {signal}: draining, then exiting.");
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

/// Reaches the store (migrating it with `--migrate`) and Kafka, records the routes.
async fn start(config: &Config, migrate: bool) -> anyhow::Result<Worker> {
    let boot = BootRetry::new(config.worker.boot_timeout);
    let schema = if migrate {
        Schema::Migrate
    } else {
        Schema::Check
    };
    let (store, _) = open_store(&config.store, schema, &boot).await?;
    Worker::new(
        store,
        config.kafka.clone(),
        &config.destinations,
        config.route_list(),
        config.worker.clone(),
    )
    .await
    .context("cannot start the worker")
}

/// The signals that stop a worker, installed before it leases anything: a signal arriving at any time
/// after that drains (without a handler, SIGHUP's default action kills the process at once, leases held).
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                hangup: signal(SignalKind::hangup())?,
                interrupt: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    /// The name of the first stop signal received.
    async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.hangup.recv() => "SIGHUP",
                _ = self.interrupt.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

/// `sha256:` and the first 12 hex digits of the configuration file, recorded with "worker started" so
/// `courier changes` shows which workers run which file. (Environment overrides are not part of it.)
fn file_hash(path: &Path) -> Option<String> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).ok()?;
    let digest = Sha256::digest(&bytes);
    Some(format!(
        "sha256:{}",
        digest
            .iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ))
}
