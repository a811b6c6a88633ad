//! End-to-end variants over the same topic and the same sink: the raw pipe (the ceiling), a naive
//! consumer-group forwarder (what users would write), and courier in this process.
//!
//! Owns: [`Pipe`], [`naive`], [`CourierSetup`] (a worker's settings: defaults, or tuned for draining)
//! and [`CourierRun`] (a running worker on its own scratch database, and the store transactions it ran).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use courier_core::{Message, Ordering};
use courier_http::{DestinationConfig, Format};
use courier_kafka::KafkaConfig;
use courier_store::{Migrator, Store, StoreConfig};
use courier_worker::{RouteConfig, Worker, WorkerConfig};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::{watch, Semaphore};

use crate::sink::Counters;

pub const BATCH: usize = 500;

/// Messages a tuned delivery task holds at once: the defaults' 8 ranges of 1,000.
const MESSAGES_IN_HAND: usize = 8_000;
/// Messages a tuned planner carves ahead per partition: 64 ranges of 1,000.
const MESSAGES_AHEAD: usize = 64_000;

/// Waits until the sink has counted `expected` messages.
pub async fn wait_for(counters: &Counters, expected: u64, limit: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    while counters.messages() < expected {
        anyhow::ensure!(
            started.elapsed() < limit,
            "only {} of {expected} messages arrived within {limit:?}",
            counters.messages()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

fn to_message(m: &rdkafka::message::BorrowedMessage<'_>) -> Message {
    Message {
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis(),
        key: m.key().map(<[u8]>::to_vec),
        // The bench produces none; courier's reader copies them, so the comparison stays fair only
        // while they are empty.
        headers: Vec::new(),
        payload: m.payload().map(<[u8]>::to_vec),
    }
}

/// Sends `messages` as courier would: a JSON array of envelopes.
async fn post(client: &reqwest::Client, url: &str, messages: &[Message]) -> anyhow::Result<()> {
    let batch = courier_http::Batch {
        route: "bench",
        topic: "bench",
        partition: messages.first().map_or(0, |m| m.partition),
        first_offset: messages.first().map_or(0, |m| m.offset),
        end_offset: messages.last().map_or(0, |m| m.offset + 1),
        replay_id: None,
        messages,
    };
    let body = courier_http::encode_body(&batch, Format::Json);
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "sink answered {}",
        response.status()
    );
    Ok(())
}

/// The ceiling: one tuned consumer assigned every partition from the start, the same batches POSTed
/// with `in_flight` requests at once. No store, no progress kept: not something to run in production.
pub struct Pipe<'a> {
    pub brokers: &'a str,
    pub topic: &'a str,
    pub partitions: i32,
    pub url: &'a str,
    pub in_flight: usize,
}

/// How long the pipe holds a partial batch for more messages (the naive forwarder flushes after the
/// log has been quiet for as long).
const LINGER: Duration = Duration::from_millis(10);

impl Pipe<'_> {
    /// Delivers the first `total` messages of the topic and returns once the sink has them all.
    pub async fn run(&self, counters: &Counters, total: u64) -> anyhow::Result<()> {
        let in_flight = self.in_flight;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Message>>(in_flight * 2);
        let (brokers, topic, partitions) = (
            self.brokers.to_owned(),
            self.topic.to_owned(),
            self.partitions,
        );
        let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", "bench-pipe")
                .set("enable.auto.commit", "false")
                .set("fetch.wait.max.ms", "10")
                .set("fetch.queue.backoff.ms", "10")
                .create()?;
            let mut assignment = TopicPartitionList::new();
            for p in 0..partitions {
                assignment.add_partition_offset(&topic, p, Offset::Beginning)?;
            }
            consumer.assign(&assignment)?;
            // Per partition: the batch being filled and when its first message came.
            let mut batches: BTreeMap<i32, (Vec<Message>, Instant)> = BTreeMap::new();
            let mut read = 0u64;
            while read < total {
                let polled = consumer.poll(LINGER / 2);
                let now = Instant::now();
                if let Some(result) = polled {
                    let message = result?;
                    read += 1;
                    let (batch, since) = batches
                        .entry(message.partition())
                        .or_insert_with(|| (Vec::new(), now));
                    if batch.is_empty() {
                        *since = now;
                    }
                    batch.push(to_message(&message));
                }
                // Full batches, and partial ones that waited `LINGER` (a trickle is not held back).
                for (batch, since) in batches.values_mut() {
                    let due = batch.len() >= BATCH
                        || (!batch.is_empty()
                            && (now.duration_since(*since) >= LINGER || read >= total));
                    if due {
                        tx.blocking_send(std::mem::take(batch))
                            .context("sender gone")?;
                    }
                }
            }
            drop(tx);
            Ok(())
        });
        let client = reqwest::Client::new();
        let slots = Arc::new(Semaphore::new(in_flight));
        let mut sends = tokio::task::JoinSet::new();
        while let Some(batch) = rx.recv().await {
            let permit = Arc::clone(&slots).acquire_owned().await?;
            let (client, url) = (client.clone(), self.url.to_owned());
            sends.spawn(async move {
                let result = post(&client, &url, &batch).await;
                drop(permit);
                result
            });
        }
        while let Some(result) = sends.join_next().await {
            result??;
        }
        wait_for(counters, total, Duration::from_secs(600)).await?;
        reader.await?
    }
}

/// What a user would write: a consumer group, POST each batch, commit offsets after each batch.
pub async fn naive(
    brokers: &str,
    topic: &str,
    url: &str,
    counters: &Counters,
    total: u64,
) -> anyhow::Result<()> {
    let group = format!("bench-naive-{}", rand::random::<u32>());
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[topic])?;
    let client = reqwest::Client::new();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        if counters.messages() >= total {
            return Ok(());
        }
        // A full batch, or a partial one once the log has nothing more for 10 ms.
        let idle = match tokio::time::timeout(Duration::from_millis(10), consumer.recv()).await {
            Ok(Ok(message)) => {
                batch.push(to_message(&message));
                false
            }
            Ok(Err(error)) => return Err(error.into()),
            Err(_) => true,
        };
        if batch.len() >= BATCH || (idle && !batch.is_empty()) {
            post(&client, url, &batch).await?;
            consumer.commit_consumer_state(CommitMode::Sync)?;
            batch.clear();
        }
    }
}

/// A courier worker's settings: routes, destinations, `[worker]` and the store's pool size.
pub struct CourierSetup {
    pub worker: WorkerConfig,
    pub routes: Vec<RouteConfig>,
    pub destinations: BTreeMap<String, DestinationConfig>,
    /// `None`: the store's default.
    pub pool_size: Option<usize>,
}

/// A route with every setting at its configuration-file default (read through the same deserializer as
/// `courier.toml`, so a changed default shows up here).
pub fn default_route(name: &str, topic: &str, destination: &str) -> anyhow::Result<RouteConfig> {
    let mut route: RouteConfig =
        serde_json::from_value(serde_json::json!({ "topic": topic, "destination": destination }))
            .context("a route with only topic and destination")?;
    route.name = name.to_owned();
    Ok(route)
}

impl CourierSetup {
    /// What `courier run` does with nothing but a route and a destination configured.
    pub fn defaults(topic: &str, url: &str) -> anyhow::Result<Self> {
        Ok(Self {
            worker: WorkerConfig::default(),
            routes: vec![default_route("bench", topic, "sink")?],
            destinations: BTreeMap::from([("sink".to_owned(), DestinationConfig::new(url))]),
            pool_size: None,
        })
    }

    /// Tuned for draining a backlog fast (the settings of the throughput matrix): sized in messages, not
    /// ranges ([`MESSAGES_AHEAD`] carved ahead per partition, [`MESSAGES_IN_HAND`] per task), idle tasks
    /// polling every 10 ms, as many requests in flight to the destination as the pipe sends
    /// ([`crate::PIPE_IN_FLIGHT`]) or one per task, whichever is more.
    pub fn tuned(topic: &str, url: &str, tasks: usize, range_size: u32) -> anyhow::Result<Self> {
        let mut route = default_route("bench", topic, "sink")?;
        route.range_size = range_size;
        route.ordering = Ordering::None;
        Ok(Self {
            worker: WorkerConfig {
                delivery_tasks: tasks,
                // A task holds as many messages as with the defaults (8 ranges of 1,000): small ranges
                // are held, and go out as spans, many at a time (docs/scaling.md, "Small ranges").
                leases_per_task: (MESSAGES_IN_HAND / range_size as usize).max(8),
                replay_tasks: 0,
                max_tail_age: Duration::from_millis(50),
                poll_interval: Duration::from_millis(10),
                // As many messages carved ahead as 64 ranges of 1,000, whatever the range size.
                ranges_ahead: (MESSAGES_AHEAD / range_size as usize).max(64),
                ..WorkerConfig::default()
            },
            routes: vec![route],
            destinations: BTreeMap::from([(
                "sink".to_owned(),
                DestinationConfig {
                    max_batch_messages: BATCH,
                    // The destination takes as many requests at once as the pipe sends (or one per
                    // task, if more): the same destination for both sides of the ratio.
                    max_in_flight: tasks.max(crate::PIPE_IN_FLIGHT),
                    ..DestinationConfig::new(url)
                },
            )]),
            pool_size: Some(tasks + 4),
        })
    }

    /// Creates a scratch database, migrates it and starts a worker on it.
    pub async fn start(self, server: &str, brokers: &str) -> anyhow::Result<CourierRun> {
        let database = crate::db::fresh(server, "bench").await?;
        match self.start_on(server, brokers, &database).await {
            Ok(run) => Ok(run),
            Err(error) => {
                crate::db::discard(server, &database).await;
                Err(error)
            }
        }
    }

    async fn start_on(
        self,
        server: &str,
        brokers: &str,
        database: &str,
    ) -> anyhow::Result<CourierRun> {
        let mut config = StoreConfig::new(crate::db::with_database(server, database));
        if let Some(pool_size) = self.pool_size {
            config.pool_size = pool_size;
        }
        Migrator::embedded().run(&config).await?;
        let store = Store::connect(&config).await?;
        let started = Instant::now();
        let worker = Worker::new(
            store.clone(),
            KafkaConfig::new(brokers),
            &self.destinations,
            self.routes,
            self.worker,
        )
        .await?;
        let startup = started.elapsed();
        let before = crate::db::transactions(server, database).await?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(worker.run(stopped));
        Ok(CourierRun {
            store,
            server: server.to_owned(),
            database: database.to_owned(),
            before,
            startup,
            stop,
            task,
        })
    }
}

/// A courier worker in this process, on its own scratch database.
pub struct CourierRun {
    store: Store,
    server: String,
    database: String,
    /// The database's transactions when the worker started (after migrations and `Worker::new`).
    before: i64,
    /// How long `Worker::new` took (validation, Kafka metadata per route, recording the routes).
    pub startup: Duration,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<
        Result<Arc<courier_worker::WorkerStats>, courier_worker::WorkerError>,
    >,
}

impl CourierRun {
    /// Store transactions since the worker started, as published so far (see [`crate::db`]: lags by up
    /// to ~10 s while the worker runs).
    pub async fn transactions(&self) -> anyhow::Result<i64> {
        Ok(crate::db::transactions(&self.server, &self.database).await? - self.before)
    }

    /// Stops the worker (drain), closes its store and drops its database; returns the exact number of
    /// store transactions it ran since it started, shutdown included.
    pub async fn finish(self) -> anyhow::Result<i64> {
        let Self {
            store,
            server,
            database,
            before,
            stop,
            task,
            ..
        } = self;
        let _ = stop.send(true);
        let stopped = task.await;
        // The worker dropped its clones of the store when it stopped; this closes the pool's connections,
        // and each backend publishes its counts as it exits.
        drop(store);
        let counted = crate::db::transactions_after_close(&server, &database).await;
        crate::db::discard(&server, &database).await;
        stopped??;
        Ok(counted? - before)
    }
}
