//! Helpers shared by the end-to-end tests: running the `courier` binary, writing its configuration,
//! producing test messages, serving a destination.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use courier_core::local::kafka_brokers;
use courier_kafka::{create_topic, KafkaConfig, Producer};
use courier_sink::Sink;
use courier_store::RangeCounts;
use courier_testkit::{unique_name, TestDb};
use serde_json::{json, Value};

pub const COURIER: &str = env!("CARGO_BIN_EXE_courier");

/// A `courier` command wired to the test's services only: no DATABASE_URL from the environment leaks in.
pub fn courier(args: &[&str]) -> Command {
    let mut command = Command::new(COURIER);
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env("KAFKA_BROKERS", kafka_brokers())
        .env("RUST_LOG", "warn,courier=info");
    command
}

pub fn write_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name("courier-config"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

pub fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn stdout_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A new topic of `partitions` partitions with `per_partition` messages `{"id": "<p>-<seq>"}` each.
pub async fn topic_with(prefix: &str, partitions: i32, per_partition: usize) -> String {
    let topic = unique_name(prefix);
    create_topic(&kafka_brokers(), &topic, partitions)
        .await
        .expect("create topic");
    let producer = Producer::connect(KafkaConfig::new(kafka_brokers()))
        .await
        .expect("producer");
    for partition in 0..partitions {
        let records = (0..per_partition).map(|seq| {
            let body =
                json!({ "id": format!("{partition}-{seq}"), "partition": partition, "seq": seq });
            (Some(partition), None, body.to_string().into_bytes())
        });
        producer.send_batch(&topic, records).await.expect("produce");
    }
    topic
}

pub async fn sink() -> Sink {
    Sink::start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("sink")
}

/// The configuration of one route `r` from `topic` to `destination_url`, with fast timings and no
/// compaction (tests read range epochs after the fact).
pub fn one_route_config(
    database_url: &str,
    topic: &str,
    destination_url: &str,
    extra: &str,
) -> String {
    format!(
        r#"
[store]
url = "{database_url}"
[kafka]
brokers = "{brokers}"
[worker]
delivery_tasks = 2
lease_ttl = "4s"
renew_every = "1s"
poll_interval = "20ms"
plan_interval = "50ms"
max_tail_age = "50ms"
retry_base = "50ms"
heartbeat_every = "1s"
compact_every = "1h"
[destinations.d]
url = "{destination_url}"
timeout = "2s"
max_batch_messages = 50
[routes.r]
topic = "{topic}"
destination = "d"
range_size = 200
{extra}
"#,
        brokers = kafka_brokers()
    )
}

/// A `courier run` process, killed when dropped (a failing test leaves no worker behind).
pub struct Worker(pub Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `courier run --config config`, its output discarded.
pub fn start_worker(config: &str) -> Worker {
    Worker(
        courier(&["run", "--config", config])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn courier run"),
    )
}

/// Polls the store until `sql` (returning one bigint) equals `expected`.
pub async fn wait_for_count(db: &TestDb, sql: &str, expected: i64) {
    let client = db.raw_client().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let value: i64 = client.query_one(sql, &[]).await.expect("query").get(0);
        if value == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sql} stayed at {value}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls the store until `pick` of its range counts (every route's) equals `expected`.
pub async fn wait_for_ranges(db: &TestDb, pick: fn(&RangeCounts) -> i64, expected: i64) {
    let store = db.store().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let counts = store.range_counts(None).await.expect("range counts");
        if pick(&counts) == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ranges stayed at {counts:?}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The envelope id (`route/partition/offset`) of a delivered element.
pub fn id(element: &Value) -> Option<String> {
    element.get("id").and_then(Value::as_str).map(str::to_owned)
}
