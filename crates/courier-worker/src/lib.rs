//! The delivery runtime: one worker process serving every configured route.
//!
//! A worker runs, concurrently:
//! - a **planner** that, for the routes this worker plans (one worker per route at a time), reads Kafka's
//!   high watermarks once per topic, registers new partitions, carves ranges ahead of delivery, advances
//!   watermarks and compacts settled ranges; and shares destinations' `Retry-After`;
//! - **delivery tasks** that lease ranges, read them from Kafka, deliver them in batches and checkpoint
//!   them, renewing the lease while a long delivery runs (live and replay tasks are separate budgets);
//! - a **heartbeat** that records the worker's host and version, so `courier status` can answer
//!   "who runs what?", and prunes `courier changes` events older than `worker.changes_retention`;
//! - a **circuit watcher** that records each destination's circuit opening and closing in the timeline
//!   (`courier changes`), as does starting and stopping the worker.
//!
//! The worker holds nothing that cannot be lost: every fact lives in the store. No store transaction is
//! open while Kafka or a destination is being talked to.
//!
//! # Layout
//! - `dead_letter`: writing quarantined messages to a route's dead-letter topic, with Connect's headers.
//! - `boot`: reaching the store and Kafka at start, retried with backoff until `worker.boot_timeout`.
//! - [`config`]: [`WorkerConfig`] and [`RouteConfig`].
//! - [`metrics`]: every metric name, in one place.
//! - `delivery`: lease → read → deliver → checkpoint for one range.
//! - `idle`: idle delivery tasks take turns polling; the planner wakes one per range it carves.
//! - `isolate`: bisecting a batch the destination refused for good, to quarantine only the bad messages.
//! - `planner`: the planner tick.

#![forbid(unsafe_code)]

mod boot;
pub mod config;
mod dead_letter;
mod delivery;
mod idle;
mod isolate;
pub mod metrics;
mod planner;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use courier_core::{Ordering, RangeKind};
use courier_http::{Deliverer, DestinationConfig};
use courier_kafka::{KafkaConfig, RangeReader};
use courier_store::{LeaseRequest, RouteSpec, Store, StoreError};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use boot::{open_store, BootError, BootRetry, GaveUp, Schema, Service};
pub use config::{OnPoison, RouteConfig, StartFrom, WorkerConfig};

/// The version recorded in `courier_workers`, shown by `courier status`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot reach Kafka: {0}")]
    Kafka(#[from] courier_kafka::Error),
    #[error(transparent)]
    GaveUp(#[from] GaveUp),
}

impl<E: Into<WorkerError>> From<BootError<E>> for WorkerError {
    fn from(error: BootError<E>) -> Self {
        match error {
            BootError::Permanent(error) => error.into(),
            BootError::GaveUp(gave_up) => Self::GaveUp(gave_up),
        }
    }
}

/// One route as the runtime sees it: its settings and the deliverer of its destination (shared with every
/// other route to the same destination, so the concurrency limit and circuit breaker are per destination).
pub(crate) struct Route {
    pub config: RouteConfig,
    pub deliverer: Deliverer,
}

/// What a worker did, counted as it went.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub ranges_checkpointed: AtomicU64,
    pub messages_delivered: AtomicU64,
    pub ranges_fenced: AtomicU64,
    pub ranges_retried: AtomicU64,
    pub ranges_failed: AtomicU64,
    pub ranges_released: AtomicU64,
}

impl WorkerStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, AtomicOrdering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(AtomicOrdering::Relaxed)
    }
}

/// Everything the worker's tasks share.
pub(crate) struct Context {
    pub id: String,
    pub store: Store,
    pub reader: RangeReader,
    /// Writes dead letters; only when some route names a `dead_letter_topic`.
    pub dead_letters: Option<courier_kafka::Producer>,
    pub routes: Vec<Route>,
    pub config: WorkerConfig,
    pub stats: Arc<WorkerStats>,
    /// `routes` by name.
    pub route_index: HashMap<String, usize>,
    /// Idle live delivery tasks.
    pub live: idle::Gate,
    /// Idle replay tasks.
    pub replays: idle::Gate,
    /// Ranges were checkpointed: a planner holding a partition's tail back until its ranges in flight
    /// settle carves it now rather than at its next tick.
    pub settled: tokio::sync::Notify,
}

impl Context {
    pub fn route(&self, name: &str) -> Option<&Route> {
        self.route_index.get(name).map(|i| &self.routes[*i])
    }

    pub fn gate(&self, kind: RangeKind) -> &idle::Gate {
        match kind {
            RangeKind::Live => &self.live,
            RangeKind::Replay => &self.replays,
        }
    }

    /// What to ask the store for: every route whose destination is not holding everyone off, or `None`
    /// when all of them are.
    pub fn lease_request(&self, kind: RangeKind, max_ranges: usize) -> Option<LeaseRequest> {
        let open: Vec<&Route> = self
            .routes
            .iter()
            .filter(|route| !delivery::destination_is_holding_off(route))
            .collect();
        if open.is_empty() {
            return None;
        }
        Some(LeaseRequest {
            routes: open.iter().map(|r| r.config.name.clone()).collect(),
            ordered: open
                .iter()
                .filter(|r| r.config.ordering == Ordering::Partition)
                .map(|r| r.config.name.clone())
                .collect(),
            owner: self.id.clone(),
            max_ranges,
            ttl: self.config.lease_ttl,
            kind,
        })
    }
}

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
        let longest_timeout = destinations
            .values()
            .map(|d| d.timeout)
            .max()
            .unwrap_or_default();
        config
            .validate(longest_timeout)
            .map_err(WorkerError::Config)?;
        let mut deliverers = BTreeMap::new();
        for (name, destination) in destinations {
            let deliverer = Deliverer::new(destination.clone())
                .map_err(|e| WorkerError::Config(format!("destinations.{name}: {e}")))?;
            deliverers.insert(name.clone(), deliverer);
        }
        let mut runtime_routes = Vec::new();
        for route in routes {
            route.validate().map_err(WorkerError::Config)?;
            let deliverer = deliverers.get(&route.destination).cloned().ok_or_else(|| {
                WorkerError::Config(format!(
                    "routes.{}.destination names {:?}, which is not a [destinations.{}] section; known destinations: {}",
                    route.name,
                    route.destination,
                    route.destination,
                    deliverers.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            })?;
            runtime_routes.push(Route {
                config: route,
                deliverer,
            });
        }
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
        // Watermarks once per topic, however many routes read it.
        let mut topics: HashMap<String, Vec<courier_kafka::PartitionWatermarks>> = HashMap::new();
        for route in &runtime_routes {
            let route = &route.config;
            if let Some(marks) = topics.get(&route.topic) {
                let first = first_partitions(marks, route.start);
                record_route(&boot, &store, route, destinations, &config, &first).await?;
                continue;
            }
            // A route to a topic that does not exist is a configuration error: say so now, not every
            // tick. A broker that does not answer yet is waited for, politely, until the boot deadline.
            let what = format!("read the watermarks of topic {:?}", route.topic);
            let marks = boot
                .run(
                    Service::Kafka,
                    &what,
                    &brokers,
                    courier_kafka::Error::is_retryable,
                    || watermarks(&reader, &route.topic, &brokers, boot.remaining()),
                )
                .await
                .map_err(|error| match error {
                    BootError::Permanent(e) => WorkerError::Config(format!(
                        "routes.{}: topic {:?}: {e}",
                        route.name, route.topic
                    )),
                    BootError::GaveUp(gave_up) => WorkerError::GaveUp(gave_up),
                })?;
            let first = first_partitions(&marks, route.start);
            record_route(&boot, &store, route, destinations, &config, &first).await?;
            topics.insert(route.topic.clone(), marks);
        }
        // A dead-letter topic that does not exist would fail every range holding a quarantined message:
        // say so now.
        for route in &runtime_routes {
            let route = &route.config;
            let Some(topic) = &route.dead_letter_topic else {
                continue;
            };
            let what = format!("read the watermarks of dead-letter topic {topic:?}");
            boot.run(
                Service::Kafka,
                &what,
                &brokers,
                courier_kafka::Error::is_retryable,
                || watermarks(&reader, topic, &brokers, boot.remaining()),
            )
            .await
            .map_err(|error| match error {
                BootError::Permanent(e) => {
                    WorkerError::Config(format!("routes.{}.dead_letter_topic: {e}", route.name))
                }
                BootError::GaveUp(gave_up) => WorkerError::GaveUp(gave_up),
            })?;
        }
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
            }),
        })
    }

    /// This worker's id, as recorded in `lease_owner` and `courier_workers`.
    pub fn id(&self) -> &str {
        &self.context.id
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
        background.spawn(heartbeat(Arc::clone(&ctx), host, leasing_stopped.clone()));
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

        // A closed channel (the sender dropped) also means stop.
        stopped(&mut shutdown).await;
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

/// Where a route begins, should it be new: `start` decides only this.
fn first_partitions(
    marks: &[courier_kafka::PartitionWatermarks],
    start: StartFrom,
) -> Vec<(i32, i64)> {
    marks
        .iter()
        .map(|m| match start {
            StartFrom::Earliest => (m.partition, m.low),
            StartFrom::Latest => (m.partition, m.high),
        })
        .collect()
}

/// Records `route` in the store (with its first partitions, if it is new), retried until the boot
/// deadline while the store is unreachable. Its delivery settings must match the recorded ones (a worker
/// that disagrees would silently take part of the route's messages elsewhere) unless the operator
/// accepted the change for this route.
async fn record_route(
    boot: &BootRetry,
    store: &Store,
    route: &RouteConfig,
    destinations: &BTreeMap<String, DestinationConfig>,
    config: &WorkerConfig,
    first: &[(i32, i64)],
) -> Result<(), WorkerError> {
    let spec = RouteSpec {
        name: route.name.clone(),
        topic: route.topic.clone(),
        destination: route.destination.clone(),
    };
    // The destination was resolved when the deliverers were built.
    let settings = destinations
        .get(&route.destination)
        .map(|destination| route.settings(destination))
        .unwrap_or_default();
    let accept = config.accept_route_changes.contains(&route.name);
    let registration = boot
        .run(
            Service::Store,
            "record the route",
            store.target(),
            StoreError::is_transient,
            || store.register_route(&spec, &settings, first, accept),
        )
        .await?;
    let (adopted, replaced): (Vec<_>, Vec<_>) = registration
        .recorded
        .into_iter()
        .partition(|change| change.recorded.is_none());
    if !adopted.is_empty() {
        tracing::info!(route = %route.name, settings = %courier_store::routes::describe_changes(&adopted), "The store had no value for these delivery settings of the route (recorded before courier compared them): recorded this worker's. Workers that disagree with them will now refuse to start.");
    }
    if !replaced.is_empty() {
        tracing::warn!(route = %route.name, changes = %courier_store::routes::describe_changes(&replaced), "Recorded this worker's delivery settings for the route, as --accept-route-changes asked. Workers still running the old settings deliver with them until restarted; workers started with them now refuse to start.");
    }
    Ok(())
}

/// One boot attempt at `topic`'s watermarks, bounded by what is left of the boot deadline (and at most
/// [`KAFKA_BOOT_ATTEMPT`], so a broker that is away is asked again rather than waited on once).
async fn watermarks(
    reader: &RangeReader,
    topic: &str,
    brokers: &str,
    remaining: Duration,
) -> Result<Vec<courier_kafka::PartitionWatermarks>, courier_kafka::Error> {
    let bound = remaining.min(KAFKA_BOOT_ATTEMPT);
    match tokio::time::timeout(bound, reader.high_watermarks(topic)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(courier_kafka::Error::Timeout {
            operation: format!("reading the watermarks of topic {topic:?}"),
            brokers: brokers.to_owned(),
            after: bound,
        }),
    }
}

/// Longest single attempt at Kafka's metadata during boot.
const KAFKA_BOOT_ATTEMPT: Duration = Duration::from_secs(5);

/// Resolves once `signal` turns true or its sender is gone. (The guard `wait_for` returns is not `Send`,
/// so it is dropped here, inside.)
pub(crate) async fn stopped(signal: &mut watch::Receiver<bool>) {
    let _ = signal.wait_for(|stop| *stop).await;
}

async fn heartbeat(ctx: Arc<Context>, host: String, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(ctx.config.heartbeat_every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Pruning is rare: every worker does it, and a delete that finds nothing still costs a statement.
    let mut last_prune: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = crate::stopped(&mut stop) => return,
        }
        if let Err(error) = ctx
            .store
            .heartbeat(&ctx.id, &host, std::process::id(), VERSION)
            .await
        {
            metrics::store_error("heartbeat");
            tracing::warn!(worker = %ctx.id, %error, "Heartbeat failed.");
        }
        if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_CHANGES_EVERY) {
            last_prune = Some(tokio::time::Instant::now());
            match ctx.store.prune_changes(ctx.config.changes_retention).await {
                Ok(0) => {}
                Ok(pruned) => {
                    tracing::info!(worker = %ctx.id, pruned, retention = ?ctx.config.changes_retention, "Pruned old events of `courier changes`.")
                }
                Err(error) => {
                    metrics::store_error("prune changes");
                    tracing::warn!(worker = %ctx.id, %error, "Could not prune old events of `courier changes`; retrying at the next prune.");
                }
            }
        }
    }
}

/// How often a worker deletes events older than `worker.changes_retention`.
const PRUNE_CHANGES_EVERY: Duration = Duration::from_secs(3600);

/// How often this worker's circuit breakers are looked at (in memory; the store hears of transitions only).
const CIRCUIT_WATCH_EVERY: Duration = Duration::from_secs(1);

/// Records each destination's circuit opening and closing again in "what changed?". The breaker lives in
/// the deliverer, per worker, and changes state on a request's outcome; looking at it once a second costs
/// nothing and records transitions only (a half-open probe that fails again is still "open").
async fn watch_circuits(ctx: Arc<Context>, mut stop: watch::Receiver<bool>) {
    let mut destinations: BTreeMap<&str, (&Deliverer, bool)> = BTreeMap::new();
    for route in &ctx.routes {
        destinations
            .entry(route.config.destination.as_str())
            .or_insert((&route.deliverer, false));
    }
    let mut every = tokio::time::interval(CIRCUIT_WATCH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = crate::stopped(&mut stop) => return,
        }
        for (name, (deliverer, was_open)) in destinations.iter_mut() {
            let state = deliverer.circuit_state();
            let open = state != courier_http::CircuitState::Closed;
            if open == *was_open {
                continue;
            }
            *was_open = open;
            let (kind, summary) = match state {
                courier_http::CircuitState::Open { failures, .. }
                | courier_http::CircuitState::HalfOpen { failures, .. } => (
                    courier_store::ChangeKind::CircuitOpened,
                    format!("destination {name}: circuit opened on worker {} after {failures} consecutive failures; it sends nothing there until a probe succeeds", ctx.id),
                ),
                courier_http::CircuitState::Closed => (
                    courier_store::ChangeKind::CircuitClosed,
                    format!("destination {name}: circuit closed on worker {}: a request succeeded", ctx.id),
                ),
            };
            record_change(
                &ctx,
                courier_store::Change::new(kind, summary).destination(name),
            )
            .await;
        }
    }
}

/// "Worker started": who, where, which version and configuration, serving what.
fn started_change(ctx: &Context, host: &str) -> courier_store::Change {
    let routes: Vec<&str> = ctx.routes.iter().map(|r| r.config.name.as_str()).collect();
    let summary = format!(
        "worker {} started on host {host} (pid {}), version {VERSION}, config {}, routes {}",
        ctx.id,
        std::process::id(),
        ctx.config
            .config_hash
            .as_deref()
            .unwrap_or("not from a file"),
        routes.join(", ")
    );
    courier_store::Change::new(courier_store::ChangeKind::WorkerStarted, summary)
}

/// Records an event of this worker. A store that is away must not stop or slow the worker: the event is
/// logged instead.
async fn record_change(ctx: &Context, change: courier_store::Change) {
    let change = change.actor(&ctx.id);
    if let Err(error) = ctx.store.record_change(&change).await {
        metrics::store_error("record change");
        tracing::warn!(worker = %ctx.id, %error, change = %change.summary, "Could not record this event for `courier changes`.");
    }
}

/// Logs at most once per `every` for a given key, so a failure repeating every tick does not flood the
/// log at 2 a.m. while still being visible.
pub(crate) struct Throttle {
    every: Duration,
    last: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl Throttle {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: std::sync::Mutex::default(),
        }
    }

    pub fn ready(&self, key: &str) -> bool {
        let now = std::time::Instant::now();
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match last.get(key) {
            Some(at) if now.duration_since(*at) < self.every => false,
            _ => {
                last.insert(key.to_owned(), now);
                true
            }
        }
    }
}
