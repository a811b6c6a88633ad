//! A small live pipeline for a scenario to break: a scratch database, a topic, a recording
//! destination, a message generator, and courier workers.
//!
//! Owns [`Pipeline`]: the fast settings every scenario starts from ([`fast_worker_config`]), the
//! generator (a backlog at once, or a steady trickle, every message's id, partition, offset and
//! acknowledgement time kept for the judge), the observed-state waits scenarios synchronise on, and
//! the evidence the judge reads (the sink's record, `courier_ranges`, `courier_partitions`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use courier_core::RangeKind;
use courier_http::DestinationConfig;
use courier_kafka::{create_topic, KafkaConfig, Producer};
use courier_sink::Sink;
use courier_store::{Store, Timeouts};
use courier_testkit::{unique_name, TestDb};
use courier_worker::WorkerConfig;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::env::{harness_config, Services};
use crate::judge::{
    element_id, judge_with_timeline, Evidence, FaultWindow, Judgement, PartitionBounds, Produced,
    RangeRecord,
};
use crate::report::ScenarioReport;
use crate::workers::{Launcher, Started, WorkerHandle, WorkerSpec};
use crate::ChaosError;

/// The route every scenario runs.
pub const ROUTE: &str = "chaos";
/// The destination name in every chaos configuration.
pub const DESTINATION: &str = "d";

/// Worker settings for chaos runs: fast polling and short leases so faults and recoveries take
/// seconds, and compaction off so the judge can read every range's epoch.
pub fn fast_worker_config() -> WorkerConfig {
    WorkerConfig {
        delivery_tasks: 4,
        leases_per_task: 1,
        replay_tasks: 0,
        lease_ttl: Duration::from_secs(4),
        renew_every: Duration::from_secs(1),
        poll_interval: Duration::from_millis(20),
        max_idle_poll: Duration::from_millis(200),
        plan_interval: Duration::from_millis(50),
        max_tail_age: Duration::from_millis(50),
        ranges_ahead: 32,
        drain_timeout: Duration::from_secs(3),
        heartbeat_every: Duration::from_secs(1),
        compact_every: Duration::from_secs(3600),
        boot_timeout: Duration::from_secs(60),
        retry_base: Duration::from_millis(50),
        retry_cap: Duration::from_secs(1),
        ..WorkerConfig::default()
    }
}

/// The destination settings of chaos runs: a short timeout, small batches, a circuit that rests 1 s.
pub fn fast_destination(timeout: Duration) -> DestinationConfig {
    DestinationConfig {
        timeout,
        max_batch_messages: 25,
        pause_after_failures: 20,
        pause_for: Duration::from_secs(1),
        ..DestinationConfig::new("http://127.0.0.1:9/")
    }
}

/// How to build a pipeline.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    /// Names the scratch database and topic.
    pub label: String,
    pub partitions: i32,
    pub range_size: u32,
    pub destination: DestinationConfig,
    pub worker: WorkerConfig,
    pub store_timeouts: Timeouts,
    /// Pooled connections per worker.
    pub pool_size: usize,
    /// Apply migrations before the first worker starts (off for the boot storm, which migrates itself).
    pub migrate: bool,
}

impl PipelineSpec {
    pub fn fast(label: &str) -> Self {
        Self {
            label: label.to_owned(),
            partitions: 2,
            range_size: 50,
            destination: fast_destination(Duration::from_secs(2)),
            worker: fast_worker_config(),
            store_timeouts: Timeouts::default(),
            pool_size: 8,
            migrate: true,
        }
    }
}

/// Messages produced so far and the trickle's state, shared with the generator task.
#[derive(Default)]
struct Produce {
    produced: Mutex<Vec<Produced>>,
    next_id: AtomicU64,
    paused: AtomicBool,
}

impl Produce {
    fn record(&self, batch: Vec<Produced>) {
        self.produced
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(batch);
    }

    fn count(&self) -> usize {
        self.produced
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn snapshot(&self) -> Vec<Produced> {
        self.produced
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

struct Trickle {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), ChaosError>>,
}

/// A running pipeline. Call [`Pipeline::finish`] at the end to stop everything and drop the database.
pub struct Pipeline {
    pub services: Services,
    pub db: TestDb,
    /// The harness's own store handle (`application_name = 'courier-chaos'`).
    pub harness: Option<Store>,
    pub topic: String,
    pub sink: Sink,
    pub spec: PipelineSpec,
    pub launcher: Launcher,
    producer: Arc<Producer>,
    produce: Arc<Produce>,
    trickle: Option<Trickle>,
}

impl Pipeline {
    /// Creates the database (migrated unless the spec says otherwise), the topic and the destination.
    pub async fn start(
        services: &Services,
        spec: PipelineSpec,
        launcher: Launcher,
    ) -> Result<Self, ChaosError> {
        let db = services.scratch_db(&spec.label, spec.migrate).await?;
        match Self::start_in(services, spec, launcher, db.clone()).await {
            Ok(pipeline) => Ok(pipeline),
            Err(error) => {
                // Nothing else holds the database yet: drop it, and report the first error.
                let _dropped = db.drop_now().await;
                Err(error)
            }
        }
    }

    async fn start_in(
        services: &Services,
        spec: PipelineSpec,
        launcher: Launcher,
        db: TestDb,
    ) -> Result<Self, ChaosError> {
        let harness = if spec.migrate {
            Some(Store::connect(&harness_config(&db)).await.map_err(|e| {
                ChaosError::Setup(format!(
                    "cannot open the harness's store on {}: {e}",
                    db.name
                ))
            })?)
        } else {
            None
        };
        let topic = unique_name(&format!("courier-chaos-{}", spec.label));
        create_topic(&services.brokers, &topic, spec.partitions).await.map_err(|e| {
            ChaosError::Setup(format!(
                "cannot create topic {topic} on {} ({e}): start Kafka with `scripts/kafka.sh start`, or set KAFKA_BROKERS",
                services.brokers
            ))
        })?;
        let producer = Producer::connect(KafkaConfig::new(services.brokers.clone()))
            .await
            .map_err(|e| ChaosError::Setup(format!("cannot create a Kafka producer: {e}")))?;
        let sink = Sink::start(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .map_err(|e| {
                ChaosError::Setup(format!("cannot start the recording destination: {e}"))
            })?;
        Ok(Self {
            services: services.clone(),
            db,
            harness,
            topic,
            sink,
            spec,
            launcher,
            producer: Arc::new(producer),
            produce: Arc::default(),
            trickle: None,
        })
    }

    /// The harness store, opening it on first use (a pipeline that starts unmigrated has none at first).
    pub async fn harness(&mut self) -> Result<Store, ChaosError> {
        if let Some(store) = &self.harness {
            return Ok(store.clone());
        }
        let store = Store::connect(&harness_config(&self.db))
            .await
            .map_err(|e| {
                ChaosError::Setup(format!(
                    "cannot open the harness's store on {}: {e}",
                    self.db.name
                ))
            })?;
        self.harness = Some(store.clone());
        Ok(store)
    }

    /// The destination URL that works.
    pub fn good_url(&self) -> String {
        self.sink.url()
    }

    /// A worker's full configuration, delivering to `url`.
    pub fn worker_spec(&self, url: &str) -> WorkerSpec {
        WorkerSpec {
            store: courier_store::StoreConfig {
                pool_size: self.spec.pool_size,
                ..self.db.config_with(self.spec.store_timeouts.clone())
            },
            brokers: self.services.brokers.clone(),
            route: ROUTE.to_owned(),
            topic: self.topic.clone(),
            destination_url: url.to_owned(),
            destination: self.spec.destination.clone(),
            range_size: self.spec.range_size,
            worker: self.spec.worker.clone(),
            migrate: false,
        }
    }

    /// Records `url` as the route's destination, on purpose, as an operator does with `courier routes
    /// update` before rolling workers over to a new URL: a worker configured with another URL than the
    /// recorded one refuses to start (docs/runbooks/route-settings-changed.md).
    pub async fn record_url(&self, url: &str) -> Result<(), ChaosError> {
        let spec = self.worker_spec(url);
        let route = spec.route();
        let settings = spec
            .destinations()
            .get(DESTINATION)
            .map(|destination| route.settings(destination))
            .unwrap_or_default();
        let route = courier_store::RouteSpec {
            name: route.name,
            topic: route.topic,
            destination: route.destination,
        };
        let store = match &self.harness {
            Some(store) => store.clone(),
            None => Store::connect(&harness_config(&self.db))
                .await
                .map_err(|e| ChaosError::Setup(format!("cannot open the harness's store: {e}")))?,
        };
        store
            .update_route_settings(&route, &settings)
            .await
            .map_err(|e| {
                ChaosError::Setup(format!("cannot record the route's new URL {url}: {e}"))
            })?;
        Ok(())
    }

    /// Starts a worker delivering to `url` with this pipeline's launcher.
    pub async fn start_worker(&self, url: &str) -> Result<WorkerHandle, ChaosError> {
        let Started { handle, .. } =
            WorkerHandle::start(&self.launcher, &self.worker_spec(url)).await?;
        Ok(handle)
    }

    /// Produces `count` messages at once, round-robin over the partitions.
    pub async fn produce(&self, count: usize) -> Result<(), ChaosError> {
        for chunk_start in (0..count).step_by(1000) {
            let n = (count - chunk_start).min(1000);
            send(
                &self.producer,
                &self.topic,
                self.spec.partitions,
                &self.produce,
                n,
            )
            .await?;
        }
        Ok(())
    }

    /// Starts a steady trickle of `per_second` messages (in 10 sends a second), at most `limit` in all.
    pub fn start_trickle(&mut self, per_second: usize, limit: usize) {
        let (stop, mut stopped) = watch::channel(false);
        let producer = Arc::clone(&self.producer);
        let produce = Arc::clone(&self.produce);
        let topic = self.topic.clone();
        let partitions = self.spec.partitions;
        let per_tick = (per_second / 10).max(1);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut sent = 0;
            while sent < limit {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.wait_for(|stop| *stop) => return Ok(()),
                }
                if produce.paused.load(AtomicOrdering::Relaxed) {
                    continue;
                }
                let n = per_tick.min(limit - sent);
                send(&producer, &topic, partitions, &produce, n).await?;
                sent += n;
            }
            Ok(())
        });
        self.trickle = Some(Trickle { stop, task });
    }

    /// Holds the trickle (e.g. while the broker is down) or lets it go on.
    pub fn pause_trickle(&self, paused: bool) {
        self.produce.paused.store(paused, AtomicOrdering::Relaxed);
    }

    /// Stops the trickle; an error it met while producing is returned here.
    pub async fn stop_trickle(&mut self) -> Result<(), ChaosError> {
        let Some(trickle) = self.trickle.take() else {
            return Ok(());
        };
        let _ = trickle.stop.send(true);
        match tokio::time::timeout(Duration::from_secs(60), trickle.task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(ChaosError::Setup(format!(
                "the message generator failed: {join}"
            ))),
            Err(_) => Err(ChaosError::Setup(
                "the message generator did not stop within 60 s".into(),
            )),
        }
    }

    /// Every message produced (and acknowledged) so far.
    pub fn produced(&self) -> Vec<Produced> {
        self.produce.snapshot()
    }

    /// Messages produced (and acknowledged) so far.
    pub fn produced_count(&self) -> usize {
        self.produce.count()
    }

    /// Waits until the sink has recorded at least `elements` delivered elements in all (duplicates
    /// included). `what` names the wait in the error.
    pub async fn wait_delivered_elements(
        &self,
        elements: u64,
        bound: Duration,
        what: &str,
    ) -> Result<(), ChaosError> {
        self.sink
            .wait_until(|s| s.delivered_elements >= elements, bound)
            .await
            .map(|_| ())
            .map_err(|e| ChaosError::Stuck(format!("{what}: {e}")))
    }

    /// Waits until new deliveries arrive: `more` elements beyond what the sink holds now.
    pub async fn wait_progress(
        &self,
        more: u64,
        bound: Duration,
        what: &str,
    ) -> Result<(), ChaosError> {
        let now = self.sink.stats().delivered_elements;
        self.wait_delivered_elements(now + more, bound, what).await
    }

    /// Waits until every message produced so far has been delivered at least once, re-checking on every
    /// delivery. Returns false when `bound` passed first.
    pub async fn wait_all_delivered(&self, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            // Cheap first: not even as many elements as messages means not yet (woken per delivery).
            let produced = self.produced_count() as u64;
            let _ = self
                .sink
                .wait_until(
                    |s| s.delivered_elements >= produced,
                    remaining.min(Duration::from_secs(1)),
                )
                .await;
            let seen = self.sink.stats().delivered_elements;
            if seen >= produced {
                let delivered = self.sink.count_by(element_id);
                if self
                    .produce
                    .snapshot()
                    .iter()
                    .all(|p| delivered.contains_key(&p.id))
                {
                    return true;
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
            if seen >= produced {
                // Duplicates made up the count: wait for the next delivery before checking again.
                let _ = self
                    .sink
                    .wait_until(
                        |s| s.delivered_elements > seen,
                        remaining.min(Duration::from_millis(500)),
                    )
                    .await;
            }
        }
    }

    /// `courier_ranges` and `courier_partitions` of the route.
    pub async fn store_evidence(
        &mut self,
    ) -> Result<(Vec<RangeRecord>, Vec<PartitionBounds>), ChaosError> {
        let store = self.harness().await?;
        read_store_evidence(&store, ROUTE).await
    }

    /// Judges the run so far. `fault` is the window the judge measures recovery from.
    pub async fn judge(&mut self, fault: Option<FaultWindow>) -> Result<Judgement, ChaosError> {
        Ok(self.judge_with_timeline(fault).await?.0)
    }

    /// [`Pipeline::judge`], with the sorted first-delivery times it measured on (see
    /// [`judge_with_timeline`]).
    pub async fn judge_with_timeline(
        &mut self,
        fault: Option<FaultWindow>,
    ) -> Result<(Judgement, Vec<SystemTime>), ChaosError> {
        let (ranges, partitions) = self.store_evidence().await?;
        let produced = self.produce.snapshot();
        let delivered = self.sink.received();
        Ok(judge_with_timeline(&Evidence {
            produced: &produced,
            delivered: &delivered,
            ranges: &ranges,
            partitions: &partitions,
            fault,
            judged_at: SystemTime::now(),
        }))
    }

    /// The tail every fault scenario shares once its fault is over: wait for the first delivery after it
    /// (`after` names it in a timeout), stop production, wait until every message is delivered (at most
    /// `bound`), judge every message against the fault's window, and check that none was lost. Returns
    /// the judgement for the scenario's own checks; it goes into the report last.
    pub async fn settle(
        &mut self,
        report: &mut ScenarioReport,
        fault: FaultWindow,
        bound: Duration,
        after: &str,
    ) -> Result<Judgement, ChaosError> {
        self.wait_progress(1, bound, after).await?;
        self.stop_trickle().await?;
        let complete = self.wait_all_delivered(bound).await;
        let judgement = self.judge(Some(fault)).await?;
        report.check(
            "every message delivered",
            complete,
            format!(
                "{} of {} within {bound:?} of the end of the fault",
                judgement.delivered, judgement.messages_in
            ),
        );
        Ok(judgement)
    }

    /// Stops the workers (gracefully, bounded), the trickle and the sink, and drops the database.
    pub async fn finish(mut self, workers: Vec<WorkerHandle>) -> Result<(), ChaosError> {
        // All at once: a boot storm leaves fifty of them.
        let mut stopping = tokio::task::JoinSet::new();
        for mut worker in workers {
            stopping.spawn(async move {
                if worker.stop(Duration::from_secs(10)).await.is_err() {
                    worker.kill().await;
                }
            });
        }
        while stopping.join_next().await.is_some() {}
        let trickle = self.stop_trickle().await;
        self.sink.shutdown().await;
        drop(self.harness.take());
        self.db.drop_now().await?;
        trickle
    }
}

/// Produces `n` messages `{"id": "<n>", "seq": n}` round-robin over the partitions and records them.
async fn send(
    producer: &Producer,
    topic: &str,
    partitions: i32,
    produce: &Produce,
    n: usize,
) -> Result<(), ChaosError> {
    let first = produce.next_id.fetch_add(n as u64, AtomicOrdering::Relaxed);
    let seqs: Vec<u64> = (first..first + n as u64).collect();
    let partitions = u64::try_from(partitions.max(1)).unwrap_or(1);
    // Collected first: a borrowing iterator held across the await makes the future not `Send`.
    let records: Vec<courier_kafka::Record> = seqs
        .iter()
        .map(|seq| {
            let partition = i32::try_from(seq % partitions).unwrap_or(0);
            (
                Some(partition),
                None,
                json!({ "id": seq.to_string(), "seq": seq })
                    .to_string()
                    .into_bytes(),
            )
        })
        .collect();
    let acked = producer
        .send_batch(topic, records)
        .await
        .map_err(|e| ChaosError::Setup(format!("producing to {topic} failed: {e}")))?;
    let at = SystemTime::now();
    produce.record(
        seqs.iter()
            .zip(acked)
            .map(|(seq, delivered)| Produced {
                id: seq.to_string(),
                partition: delivered.partition,
                offset: delivered.offset,
                at,
            })
            .collect(),
    );
    Ok(())
}

/// Reads every range and partition row of `route`.
pub async fn read_store_evidence(
    store: &Store,
    route: &str,
) -> Result<(Vec<RangeRecord>, Vec<PartitionBounds>), ChaosError> {
    let unread = |e| ChaosError::Setup(format!("cannot read the store's ranges: {e}"));
    let ranges = store
        .ranges(route)
        .await
        .map_err(unread)?
        .into_iter()
        .map(|r| RangeRecord {
            partition: r.partition,
            start: r.start_offset,
            end: r.end_offset,
            epoch: r.epoch,
            state: r.state.to_string(),
            live: r.kind == RangeKind::Live,
            replayed: r.replay_id.is_some(),
        })
        .collect();
    let partitions = store
        .partitions(route)
        .await
        .map_err(unread)?
        .into_iter()
        .map(|p| PartitionBounds {
            partition: p.partition,
            initial: p.initial_offset,
            frontier: p.frontier,
        })
        .collect();
    Ok((ranges, partitions))
}

/// Polls `probe` every 100 ms until it returns `Some`, for at most `bound`.
pub async fn poll<T, F, Fut>(bound: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + bound;
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
