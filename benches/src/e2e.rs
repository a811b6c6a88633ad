//! End-to-end variants over the same topic and the same sink: the raw pipe (the ceiling), a naive
//! consumer-group forwarder (what users would write), and courier.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use courier_core::{Message, Ordering};
use courier_http::{DestinationConfig, Format};
use courier_kafka::KafkaConfig;
use courier_store::{Migrator, Store, StoreConfig};
use courier_worker::{RouteConfig, StartFrom, Worker, WorkerConfig};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::{watch, Semaphore};

use crate::sink::Counters;

pub const BATCH: usize = 500;

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
        payload: m.payload().map(<[u8]>::to_vec),
    }
}

async fn post(client: &reqwest::Client, url: &str, batch: &[Message]) -> anyhow::Result<()> {
    let body = courier_http::body::encode(batch, Format::Json);
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

/// The ceiling: read every partition from the start with a tuned consumer, POST the same batches with
/// `in_flight` requests at once. No store, no progress kept: not something to run in production.
pub async fn pipe(
    brokers: &str,
    topic: &str,
    partitions: i32,
    url: &str,
    in_flight: usize,
    counters: &Counters,
    total: u64,
) -> anyhow::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Message>>(in_flight * 2);
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
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
        let mut batches: BTreeMap<i32, Vec<Message>> = BTreeMap::new();
        let mut read = 0u64;
        while read < total {
            let Some(result) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let message = result?;
            read += 1;
            let batch = batches.entry(message.partition()).or_default();
            batch.push(to_message(&message));
            if batch.len() >= BATCH {
                let full = std::mem::take(batch);
                tx.blocking_send(full).context("sender gone")?;
            }
        }
        for (_, batch) in batches.into_iter().filter(|(_, b)| !b.is_empty()) {
            tx.blocking_send(batch).context("sender gone")?;
        }
        Ok(())
    });
    let client = reqwest::Client::new();
    let slots = Arc::new(Semaphore::new(in_flight));
    let mut sends = tokio::task::JoinSet::new();
    while let Some(batch) = rx.recv().await {
        let permit = Arc::clone(&slots).acquire_owned().await?;
        let (client, url) = (client.clone(), url.to_owned());
        sends.spawn(async move {
            let result = post(&client, &url, &batch).await;
            drop(permit);
            result
        });
    }
    reader.await??;
    while let Some(result) = sends.join_next().await {
        result??;
    }
    wait_for(counters, total, Duration::from_secs(600)).await
}

/// What a user would write: a consumer group, POST each batch, commit offsets after each batch.
pub async fn naive(
    brokers: &str,
    topic: &str,
    url: &str,
    counters: &Counters,
    total: u64,
    stop: Option<watch::Receiver<bool>>,
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
        if counters.messages() >= total || stop.as_ref().is_some_and(|s| *s.borrow()) {
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

/// A courier worker in this process, on its own fresh database.
pub struct CourierRun {
    pub store: Store,
    pub database: String,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<
        Result<Arc<courier_worker::WorkerStats>, courier_worker::WorkerError>,
    >,
}

pub async fn start_courier(
    server_url: &str,
    brokers: &str,
    topic: &str,
    url: &str,
    tasks: usize,
    range_size: u32,
) -> anyhow::Result<CourierRun> {
    let database = crate::fresh_database(server_url, "bench").await?;
    let config = StoreConfig {
        pool_size: tasks + 4,
        ..StoreConfig::new(crate::with_database(server_url, &database))
    };
    Migrator::embedded().run(&config).await?;
    let store = Store::connect(&config).await?;
    let destinations = BTreeMap::from([(
        "sink".to_owned(),
        DestinationConfig {
            max_batch_messages: BATCH,
            max_in_flight: tasks.max(1),
            ..DestinationConfig::new(url)
        },
    )]);
    let routes = vec![RouteConfig {
        name: "bench".into(),
        topic: topic.into(),
        destination: "sink".into(),
        ordering: Ordering::None,
        range_size,
        max_attempts: 10,
        start: StartFrom::Earliest,
    }];
    let worker_config = WorkerConfig {
        delivery_tasks: tasks,
        replay_tasks: 0,
        plan_interval: Duration::from_millis(100),
        max_tail_age: Duration::from_millis(50),
        poll_interval: Duration::from_millis(10),
        ranges_ahead: 64,
        ..WorkerConfig::default()
    };
    let worker = Worker::new(
        store.clone(),
        KafkaConfig::new(brokers),
        &destinations,
        routes,
        worker_config,
    )
    .await?;
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(worker.run(stopped));
    Ok(CourierRun {
        store,
        database,
        stop,
        task,
    })
}

impl CourierRun {
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.await??;
        Ok(())
    }

    /// Committed plus rolled-back transactions of this run's database so far.
    pub async fn transactions(&self) -> anyhow::Result<i64> {
        transactions(&self.store, &self.database).await
    }
}

/// Committed plus rolled-back transactions of `database` so far (PostgreSQL publishes them at most
/// once a second).
pub async fn transactions(store: &Store, database: &str) -> anyhow::Result<i64> {
    let database = database.to_owned();
    {
        Ok(store
            .run("bench: transactions", move |c| {
                Box::pin(async move {
                    let row = c
                        .query_one("SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = $1", &[&database])
                        .await
                        .map_err(|e| courier_store::StoreError::from_db("bench", e))?;
                    Ok(row.get::<_, i64>(0))
                })
            })
            .await?)
    }
}
