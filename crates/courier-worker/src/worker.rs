//! The worker itself: [`Worker::new`] validates the configuration, builds one deliverer per destination,
//! connects to Kafka and records the routes; [`Worker::run`] starts the planner, heartbeat, circuit
//! watcher and delivery tasks, and on shutdown drains them (in-flight ranges get `drain_timeout`, the rest
//! are released for other workers) and records the stop.

use std::collections::BTreeMap;
use std::sync::Arc;

use courier_core::RangeKind;
use courier_http::{Deliverer, DestinationConfig};
use courier_kafka::{KafkaConfig, RangeReader};
use courier_store::Store;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::boot::BootRetry;
use crate::config::{validate_delivery, RouteConfig, WorkerConfig};
use crate::context::{Context, Route, WorkerStats};
use crate::error::WorkerError;
use crate::timeline::{record_change, started_change, watch_circuits};
use crate::view::{Liveness, WorkerView};
use crate::{delivery, heartbeat, idle, metrics, planner, register};

/// The version recorded in `courier_workers`, shown by `courier status`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A configured worker, ready to [`run`](Worker::run).
pub struct Worker {
    context: Arc<Context>,
}

impl Worker {
    /// Validates the configuration, connects to Kafka, records the routes. Nothing is leased yet.
    pub async fn new(
        store: Store,
        kafka: KafkaConfig,
        destinations: &BTreeMap<String, DestinationConfig>,
        routes: Vec<RouteConfig>,
        config: WorkerConfig,
    ) -> Result<Self, WorkerError> {
        if routes.is_empty() {
            return Err(WorkerError::Config(
                "no routes configured: add a [routes.NAME] section with topic and destination"
                    .into(),
            ));
        }
        validate_delivery(&config, destinations, &routes).map_err(WorkerError::Config)?;
        let runtime_routes = with_deliverers(destinations, routes)?;
        let boot = BootRetry::new(config.boot_timeout);
        let brokers = kafka.brokers.clone();
        let dead_letters = if runtime_routes
            .iter()
            .any(|route| route.config.dead_letter_topic.is_some())
        {
            Some(courier_kafka::Producer::connect(kafka.clone()).await?)
        } else {
            None
        };
        let reader = RangeReader::connect(kafka).await?;
        register::record_routes(
            &boot,
            &store,
            &reader,
            &brokers,
            &runtime_routes,
            destinations,
            &config,
        )
        .await?;
        register::check_dead_letter_topics(&boot, &reader, &brokers, &runtime_routes).await?;
        let route_index = runtime_routes
            .iter()
            .enumerate()
            .map(|(i, route)| (route.config.name.clone(), i))
            .collect();
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        let id = format!(
            "{host}-{}-{:04x}",
            std::process::id(),
            rand::random::<u16>()
        );
        Ok(Self {
            context: Arc::new(Context {
                id,
                store,
                reader,
                dead_letters,
                routes: runtime_routes,
                config,
                stats: Arc::default(),
                route_index,
                live: idle::Gate::default(),
                replays: idle::Gate::default(),
                settled: tokio::sync::Notify::new(),
                liveness: Liveness::default(),
            }),
        })
    }

    /// This worker's id, as recorded in `lease_owner` and `courier_workers`.
    pub fn id(&self) -> &str {
        &self.context.id
    }

    /// A read-only handle for the admin endpoint, valid while and after the worker runs.
    pub fn view(&self) -> WorkerView {
        WorkerView {
            ctx: Arc::clone(&self.context),
        }
    }

    /// Live counters, readable while the worker runs.
    pub fn stats(&self) -> Arc<WorkerStats> {
        Arc::clone(&self.context.stats)
    }

    /// Runs until `shutdown` turns true, then drains: no new leases; in-flight ranges get
    /// `drain_timeout` to finish, and whatever is still running after that is given back (released)
    /// so another worker takes it over at once instead of after the lease TTL.
    pub async fn run(
        self,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<Arc<WorkerStats>, WorkerError> {
        let ctx = self.context;
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        // A store that is slow right now must not stop a worker that booted: the heartbeat task
        // records it on its next tick.
        if let Err(error) = ctx
            .store
            .heartbeat(&ctx.id, &host, std::process::id(), VERSION)
            .await
        {
            metrics::store_error("heartbeat");
            tracing::warn!(worker = %ctx.id, %error, "Could not record this worker's first heartbeat; retrying every heartbeat_every.");
        }
        tracing::info!(worker = %ctx.id, routes = ctx.routes.len(), tasks = ctx.config.delivery_tasks, "Worker started.");
        record_change(&ctx, started_change(&ctx, &host)).await;

        let (stop_leasing, leasing_stopped) = watch::channel(false);
        let (hard_stop, hard_stopped) = watch::channel(false);
        let mut background = JoinSet::new();
        background.spawn(planner::run(Arc::clone(&ctx), leasing_stopped.clone()));
        background.spawn(heartbeat::run(
            Arc::clone(&ctx),
            host,
            leasing_stopped.clone(),
        ));
        background.spawn(watch_circuits(Arc::clone(&ctx), leasing_stopped.clone()));
        let mut deliveries = JoinSet::new();
        let tasks = std::iter::repeat_n(RangeKind::Live, ctx.config.delivery_tasks).chain(
            std::iter::repeat_n(RangeKind::Replay, ctx.config.replay_tasks),
        );
        for kind in tasks {
            deliveries.spawn(delivery::run(
                Arc::clone(&ctx),
                kind,
                leasing_stopped.clone(),
                hard_stopped.clone(),
            ));
        }
        // Tasks start waiting at their gate: wake one of each kind to look for work at once (it wakes
        // more if it finds a full hand), rather than every task asking the store as it starts.
        ctx.gate(RangeKind::Live).work.notify_one();
        ctx.gate(RangeKind::Replay).work.notify_one();

        // A closed channel (the sender dropped) also means stop.
        stopped(&mut shutdown).await;
        ctx.liveness.set_draining();
        tracing::info!(worker = %ctx.id, drain_timeout = ?ctx.config.drain_timeout, "Draining: no new leases; finishing in-flight ranges.");
        let _ = stop_leasing.send(true);
        let drained = tokio::time::timeout(ctx.config.drain_timeout, async {
            while deliveries.join_next().await.is_some() {}
        })
        .await;
        let released_before = WorkerStats::get(&ctx.stats.ranges_released);
        if drained.is_err() {
            tracing::warn!(worker = %ctx.id, "Drain timeout passed; releasing the leases still in flight.");
            let _ = hard_stop.send(true);
            // Releasing is one short store call per lease, bounded by the client deadline.
            let bound = ctx.store.timeouts().client_deadline * 2;
            if tokio::time::timeout(bound, async {
                while deliveries.join_next().await.is_some() {}
            })
            .await
            .is_err()
            {
                deliveries.abort_all();
            }
        }
        background.abort_all();
        // Another worker takes over this one's routes at its next claim, not after the planner TTL.
        if let Err(error) = ctx.store.release_planning(&ctx.id).await {
            tracing::warn!(worker = %ctx.id, %error, "Could not give up planning; another worker takes it over when the claim lapses.");
        }
        if let Err(error) = ctx.store.worker_stopped(&ctx.id).await {
            tracing::warn!(worker = %ctx.id, %error, "Could not record the worker as stopped; its heartbeat will simply age.");
        }
        let drain = if drained.is_ok() {
            "drained: every in-flight range finished".to_owned()
        } else {
            format!(
                "drain timeout ({:?}) passed: {} range(s) released for other workers",
                ctx.config.drain_timeout,
                WorkerStats::get(&ctx.stats.ranges_released).saturating_sub(released_before)
            )
        };
        let summary = format!(
            "worker {} stopped, {drain}; {} range(s) checkpointed, {} failed",
            ctx.id,
            WorkerStats::get(&ctx.stats.ranges_checkpointed),
            WorkerStats::get(&ctx.stats.ranges_failed)
        );
        record_change(
            &ctx,
            courier_store::Change::new(courier_store::ChangeKind::WorkerStopped, summary),
        )
        .await;
        tracing::info!(worker = %ctx.id, "Worker stopped.");
        Ok(Arc::clone(&ctx.stats))
    }
}

/// The routes (validated) with the deliverer of their destination, one deliverer per destination (shared
/// by its routes, so its concurrency limit and circuit breaker are per destination).
fn with_deliverers(
    destinations: &BTreeMap<String, DestinationConfig>,
    routes: Vec<RouteConfig>,
) -> Result<Vec<Route>, WorkerError> {
    let mut deliverers = BTreeMap::new();
    for (name, destination) in destinations {
        let deliverer = Deliverer::new(destination.clone())
            .map_err(|e| WorkerError::Config(format!("destinations.{name}: {e}")))?;
        deliverers.insert(name.clone(), deliverer);
    }
    let mut runtime_routes = Vec::new();
    for route in routes {
        // Every route's destination is configured: `validate_delivery` checked.
        let Some(deliverer) = deliverers.get(&route.destination).cloned() else {
            continue;
        };
        runtime_routes.push(Route {
            config: route,
            deliverer,
        });
    }
    Ok(runtime_routes)
}

/// Resolves once `signal` turns true or its sender is gone. (The guard `wait_for` returns is not `Send`,
/// so it is dropped here, inside.)
pub(crate) async fn stopped(signal: &mut watch::Receiver<bool>) {
    let _ = signal.wait_for(|stop| *stop).await;
}
