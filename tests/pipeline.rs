//! End-to-end: real Kafka in, real HTTP destinations out, the real store in between.
//!
//! Every test creates its own topic and database and synchronises on what the destination received or
//! what the store says, never on sleeps.

use crate::common::{self, id};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use courier_core::local::kafka_brokers;
use courier_core::{Header, OffsetRange, Ordering};
use courier_http::{DestinationConfig, Format};
use courier_kafka::{create_topic, KafkaConfig, OutgoingRecord, Producer};
use courier_sink::{Behaviour, Sink};
use courier_store::{ReplayAudit, Store};
use courier_testkit::{unique_name, TestDb};
use courier_worker::{
    OnPoison, RouteConfig, StartFrom, Worker, WorkerConfig, WorkerError, WorkerStats,
};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const LONG: Duration = Duration::from_secs(240);

struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<Arc<WorkerStats>, WorkerError>>,
}

impl Running {
    async fn stop(self) -> Arc<WorkerStats> {
        let _ = self.stop.send(true);
        self.task.await.expect("worker task").expect("worker ran")
    }
}

fn fast_worker() -> WorkerConfig {
    WorkerConfig {
        delivery_tasks: 4,
        poll_interval: Duration::from_millis(20),
        plan_interval: Duration::from_millis(50),
        max_tail_age: Duration::from_millis(50),
        retry_base: Duration::from_millis(50),
        retry_cap: Duration::from_secs(2),
        ..WorkerConfig::default()
    }
}

fn route(
    name: &str,
    topic: &str,
    destination: &str,
    ordering: Ordering,
    range_size: u32,
) -> RouteConfig {
    RouteConfig {
        name: name.into(),
        topic: topic.into(),
        destination: destination.into(),
        ordering,
        range_size,
        max_attempts: 50,
        start: StartFrom::Earliest,
        on_poison: OnPoison::Quarantine,
        dead_letter_topic: None,
    }
}

async fn start_worker(
    store: &Store,
    destinations: &BTreeMap<String, DestinationConfig>,
    routes: Vec<RouteConfig>,
    config: WorkerConfig,
) -> Running {
    let worker = Worker::new(
        store.clone(),
        KafkaConfig::new(kafka_brokers()),
        destinations,
        routes,
        config,
    )
    .await
    .expect("worker starts");
    let (stop, stopped) = watch::channel(false);
    Running {
        stop,
        task: tokio::spawn(worker.run(stopped)),
    }
}

/// Waits, woken by each delivery, until `expected` distinct ids have arrived at `sink`.
async fn wait_for_all(sink: &Sink, expected: usize) -> HashMap<String, usize> {
    let deadline = tokio::time::Instant::now() + LONG;
    let mut target = expected as u64;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let stats = sink
            .wait_until(|s| s.delivered_elements >= target, left)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "only {} of {expected} elements arrived: {e:?}",
                    sink.count_by(id).len()
                )
            });
        let counts = sink.count_by(id);
        if counts.len() >= expected {
            return counts;
        }
        target = stats.delivered_elements + 1;
    }
}

/// Waits until every partition's watermark of `route` reaches its high watermark.
async fn wait_for_watermarks(store: &Store, route: &str, high: i64) {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let progress = store.partitions(route).await.expect("partitions");
        if !progress.is_empty() && progress.iter().all(|p| p.watermark == high) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "watermarks of {route} stuck at {progress:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_messages_reach_three_destinations_and_a_slow_one_holds_back_no_other() {
    const PARTITIONS: i32 = 8;
    const PER_PARTITION: usize = 12_500;
    let db = TestDb::migrated().await;
    let store = db.store().await;
    let topic = common::topic_with("pipeline", PARTITIONS, PER_PARTITION).await;
    let (healthy, slow, flaky) = (
        common::sink().await,
        common::sink().await,
        common::sink().await,
    );
    // The slow destination does not answer at all until the healthy route is done: if routes shared
    // anything that makes one wait for another, the healthy route could not finish.
    slow.set_behaviour(Behaviour::Hang);
    flaky.set_behaviour(Behaviour::FailEvery { n: 2, status: 503 });
    let destinations = BTreeMap::from([
        ("healthy".to_owned(), DestinationConfig::new(healthy.url())),
        (
            "slow".to_owned(),
            DestinationConfig {
                timeout: Duration::from_secs(2),
                ..DestinationConfig::new(slow.url())
            },
        ),
        ("flaky".to_owned(), DestinationConfig::new(flaky.url())),
    ]);
    let routes = vec![
        route("to-healthy", &topic, "healthy", Ordering::None, 1000),
        route("to-slow", &topic, "slow", Ordering::None, 1000),
        route("to-flaky", &topic, "flaky", Ordering::None, 1000),
    ];
    let config = WorkerConfig {
        delivery_tasks: 6,
        ..fast_worker()
    };
    let worker = start_worker(&store, &destinations, routes, config).await;
    let total = PARTITIONS as usize * PER_PARTITION;

    let counts = wait_for_all(&healthy, total).await;
    assert_eq!(counts.len(), total);
    wait_for_watermarks(&store, "to-healthy", PER_PARTITION as i64).await;
    assert_eq!(
        slow.stats().delivered_elements,
        0,
        "the slow destination has not acknowledged anything yet"
    );

    slow.set_behaviour(Behaviour::Delay(Duration::from_millis(5)));
    assert_eq!(wait_for_all(&slow, total).await.len(), total);
    assert_eq!(wait_for_all(&flaky, total).await.len(), total);
    assert!(
        flaky.stats().failed > 0,
        "the flaky destination did answer 503s"
    );
    for route in ["to-slow", "to-flaky"] {
        wait_for_watermarks(&store, route, PER_PARTITION as i64).await;
    }
    let stats = worker.stop().await;
    assert!(
        WorkerStats::get(&stats.ranges_retried) > 0,
        "503s were retried"
    );
    assert_eq!(
        WorkerStats::get(&stats.ranges_failed),
        0,
        "nothing failed for good"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_partition_delivers_each_partition_in_offset_order_through_retries() {
    let db = TestDb::migrated().await;
    let store = db.store().await;
    let topic = common::topic_with("pipeline", 3, 2000).await;
    let destination = common::sink().await;
    destination.set_behaviour(Behaviour::FailEvery { n: 3, status: 503 });
    let destinations = BTreeMap::from([(
        "d".to_owned(),
        DestinationConfig {
            max_batch_messages: 150,
            ..DestinationConfig::new(destination.url())
        },
    )]);
    let worker = start_worker(
        &store,
        &destinations,
        vec![route("ordered", &topic, "d", Ordering::Partition, 400)],
        fast_worker(),
    )
    .await;
    wait_for_all(&destination, 6000).await;
    worker.stop().await;

    let mut next_start: HashMap<i32, i64> = HashMap::new();
    for request in destination
        .received()
        .into_iter()
        .filter(|r| r.answer.is_success())
    {
        let partition = request.partition.expect("partition header");
        let (start, end) = request.offset_bounds().expect("offsets header");
        let expected = next_start.entry(partition).or_insert(0);
        assert_eq!(
            start, *expected,
            "partition {partition}: batch [{start}, {end}) arrived out of order"
        );
        *expected = end;
        let seqs: Vec<u64> = request
            .elements
            .iter()
            .filter_map(|e| e.get("seq").and_then(Value::as_u64))
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "messages inside a batch out of order: {seqs:?}"
        );
    }
    assert_eq!(
        next_start.values().copied().collect::<Vec<_>>(),
        vec![2000; 3]
    );
}

/// With `ordering = "none"` a range's batches go out together, up to the destination's `max_in_flight`
/// (and never more); `ordering = "partition"` keeps one request at a time per partition (the test above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_none_sends_a_ranges_batches_concurrently_up_to_max_in_flight() {
    let db = TestDb::migrated().await;
    let store = db.store().await;
    let topic = common::topic_with("pipeline", 1, 100).await;
    let destination = common::sink().await;
    // Slow enough that requests sent together overlap at the destination.
    destination.set_behaviour(Behaviour::Delay(Duration::from_millis(200)));
    let destinations = BTreeMap::from([(
        "d".to_owned(),
        DestinationConfig {
            max_batch_messages: 10,
            max_in_flight: 4,
            ..DestinationConfig::new(destination.url())
        },
    )]);
    let worker = start_worker(
        &store,
        &destinations,
        vec![route("unordered", &topic, "d", Ordering::None, 100)],
        WorkerConfig {
            delivery_tasks: 1,
            leases_per_task: 1,
            ..fast_worker()
        },
    )
    .await;
    wait_for_all(&destination, 100).await;
    worker.stop().await;
    let stats = destination.stats();
    assert!(
        (2..=4).contains(&stats.max_in_flight),
        "expected 2 to 4 requests in flight at once (max_in_flight = 4), saw {}",
        stats.max_in_flight
    );
}

/// Neighbouring ranges leased by one task go out as one span: ranges of 100 fill batches of 500 instead
/// of sending one short request per range, and every range is still checkpointed on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neighbouring_ranges_in_hand_fill_whole_batches_and_each_range_is_checkpointed() {
    let db = TestDb::migrated().await;
    let store = db.store().await;
    // Everything is in Kafka before the worker starts, so its first planning round carves all 20
    // ranges at once and the task leases 8 neighbours per statement.
    let topic = common::topic_with("pipeline", 1, 2000).await;
    let destination = common::sink().await;
    let destinations = BTreeMap::from([(
        "d".to_owned(),
        DestinationConfig {
            max_batch_messages: 500,
            ..DestinationConfig::new(destination.url())
        },
    )]);
    let worker = start_worker(
        &store,
        &destinations,
        vec![route("spans", &topic, "d", Ordering::None, 100)],
        WorkerConfig {
            delivery_tasks: 1,
            leases_per_task: 8,
            ..fast_worker()
        },
    )
    .await;
    let counts = wait_for_all(&destination, 2000).await;
    // The watermark passes a range only once it is checkpointed: all 20 were, each on its own row.
    wait_for_watermarks(&store, "spans", 2000).await;
    worker.stop().await;
    assert!(counts.values().all(|&n| n == 1), "a message arrived twice");
    // Ranges of 100 one request each would be 20 requests; spans of 8, 8 and 4 ranges send 2 + 2 + 1.
    let requests = destination.stats().requests;
    assert!(
        requests <= 10,
        "{requests} requests for 20 ranges of 100 with batches of 500: ranges were not spanned"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_4xx_fails_its_range_with_the_response_and_the_partition_keeps_moving() {
    let db = TestDb::migrated().await;
    let store = db.store().await;
    let topic = common::topic_with("pipeline", 1, 1000).await;
    let destination = common::sink().await;
    destination.set_behaviour(Behaviour::StatusWithBody(
        422,
        "unknown event schema v0".into(),
    ));
    let destinations =
        BTreeMap::from([("d".to_owned(), DestinationConfig::new(destination.url()))]);
    let config = WorkerConfig {
        delivery_tasks: 1,
        ..fast_worker()
    };
    let worker = start_worker(
        &store,
        &destinations,
        // Failing the range is what this test is about (the default quarantines refused messages).
        vec![RouteConfig {
            on_poison: OnPoison::FailRange,
            ..route("r", &topic, "d", Ordering::Partition, 100)
        }],
        config,
    )
    .await;
    destination
        .wait_until(|s| s.failed >= 1, LONG)
        .await
        .expect("a refused batch");
    destination.set_behaviour(Behaviour::Ok);
    wait_for_watermarks(&store, "r", 1000).await;
    worker.stop().await;

    let failed = store.failed_ranges(Some("r")).await.expect("failed ranges");
    assert!(!failed.is_empty(), "the refused range is failed and listed");
    let mut lost_to_failure = 0;
    for range in &failed {
        let error = range.last_error.as_deref().unwrap_or_default();
        assert!(
            error.contains("422") && error.contains("unknown event schema v0"),
            "{error}"
        );
        lost_to_failure += range.end_offset - range.start_offset;
    }
    let delivered = destination.count_by(id).len() as i64;
    assert_eq!(
        delivered + lost_to_failure,
        1000,
        "everything outside the failed ranges was delivered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_holds_off_every_worker_for_that_long() {
    let db = TestDb::migrated().await;
    let store = db.store().await;
    let topic = common::topic_with("pipeline", 1, 600).await;
    let destination = common::sink().await;
    destination.set_behaviour(Behaviour::StatusWithRetryAfter(429, 2));
    let destinations = BTreeMap::from([(
        "d".to_owned(),
        DestinationConfig {
            max_batch_messages: 100,
            ..DestinationConfig::new(destination.url())
        },
    )]);
    // Two workers share the destination; ordering keeps one request in flight at a time.
    let routes = vec![route("r", &topic, "d", Ordering::Partition, 100)];
    let first = start_worker(&store, &destinations, routes.clone(), fast_worker()).await;
    let second = start_worker(&store, &destinations, routes, fast_worker()).await;
    destination
        .wait_until(|s| s.failed >= 1, LONG)
        .await
        .expect("a 429");
    destination.set_behaviour(Behaviour::Ok);
    wait_for_all(&destination, 600).await;
    first.stop().await;
    second.stop().await;

    let refused = destination.failed().first().expect("the 429").received_at;
    let after: Vec<_> = destination
        .received()
        .into_iter()
        .filter(|r| r.received_at > refused)
        .collect();
    assert!(!after.is_empty(), "delivery resumed after the wait");
    for request in &after {
        let waited = request
            .received_at
            .duration_since(refused)
            .unwrap_or_default();
        assert!(
            waited >= Duration::from_secs(2),
            "a request came {waited:?} after the 429 with Retry-After: 2"
        );
    }
}

#[tokio::test]
async fn a_route_to_a_missing_topic_is_refused_at_startup_naming_the_route() {
    let db = TestDb::migrated().await;
    let store = db.store().await;
    let destinations = BTreeMap::from([(
        "d".to_owned(),
        DestinationConfig::new("http://127.0.0.1:9/"),
    )]);
    let routes = vec![route(
        "orders",
        &unique_name("no_such_topic"),
        "d",
        Ordering::None,
        100,
    )];
    let error = Worker::new(
        store,
        KafkaConfig::new(kafka_brokers()),
        &destinations,
        routes,
        fast_worker(),
    )
    .await
    .err()
    .expect("missing topic must be refused");
    let message = error.to_string();
    assert!(
        message.contains("routes.orders") && message.contains("does not exist"),
        "{message}"
    );
}

/// Produces `count` messages `{"id": "<label>-<seq>"}` to `topic`/`partition` with a fresh producer (a
/// producer made before partitions were added would not know them yet).
async fn produce_labelled(topic: &str, partition: i32, label: &str, count: usize) -> Vec<String> {
    let producer = courier_kafka::Producer::connect(KafkaConfig::new(kafka_brokers()))
        .await
        .expect("producer");
    let ids: Vec<String> = (0..count).map(|seq| format!("{label}-{seq}")).collect();
    let records = ids.iter().map(|id| {
        let body = serde_json::json!({ "id": id });
        (Some(partition), None, body.to_string().into_bytes())
    });
    producer.send_batch(topic, records).await.expect("produce");
    ids
}

async fn grow(topic: &str, partitions: i32) {
    courier_kafka::add_partitions(&KafkaConfig::new(kafka_brokers()), topic, partitions)
        .await
        .expect("add partitions");
}

/// `start` decides only where a route begins. Partitions added to its topic later, while a worker runs
/// or while none does, are delivered from their first message whatever `start` says.
async fn partitions_added_later_are_delivered_from_their_first_message(start: StartFrom) {
    let db = TestDb::migrated().await;
    let store = db.store().await;
    let topic = common::topic_with("grow", 1, 0).await;
    let before = produce_labelled(&topic, 0, "before-start", 30).await;
    let destination = common::sink().await;
    let destinations =
        BTreeMap::from([("d".to_owned(), DestinationConfig::new(destination.url()))]);
    let routes = vec![RouteConfig {
        start,
        ..route("grow", &topic, "d", Ordering::None, 50)
    }];
    let mut expected: Vec<String> = match start {
        StartFrom::Earliest => before,
        StartFrom::Latest => Vec::new(),
    };

    // Worker::new records the route and its first partitions (where `start` says) before it returns.
    let worker = start_worker(&store, &destinations, routes.clone(), fast_worker()).await;
    expected.extend(produce_labelled(&topic, 0, "live", 40).await);
    grow(&topic, 2).await;
    expected.extend(produce_labelled(&topic, 1, "added-while-running", 200).await);
    wait_for_all(&destination, expected.len()).await;
    worker.stop().await;

    grow(&topic, 3).await;
    expected.extend(produce_labelled(&topic, 2, "added-while-stopped", 200).await);
    let worker = start_worker(&store, &destinations, routes, fast_worker()).await;
    let counts = wait_for_all(&destination, expected.len()).await;
    worker.stop().await;

    let mut delivered: Vec<String> = counts.into_keys().collect();
    delivered.sort();
    expected.sort();
    assert_eq!(
        delivered, expected,
        "exactly the messages written after the route began, every one of the added partitions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_added_later_are_delivered_from_their_first_message_with_start_latest() {
    partitions_added_later_are_delivered_from_their_first_message(StartFrom::Latest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_added_later_are_delivered_from_their_first_message_with_start_earliest() {
    partitions_added_later_are_delivered_from_their_first_message(StartFrom::Earliest).await;
}

/// One worker serves a route with a deep backlog and a route with a little: leasing looks across routes
/// oldest range first, so the small route's ranges wait only behind the busy route's ranges carved before
/// them (a bounded window: `ranges_ahead` per partition), never behind its whole backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_with_little_to_do_is_not_starved_by_one_with_a_deep_backlog() {
    const BUSY_PARTITIONS: i32 = 4;
    const BUSY_PER_PARTITION: usize = 5_000;
    let db = TestDb::migrated().await;
    let store = db.store().await;
    let busy_topic = common::topic_with("busy", BUSY_PARTITIONS, BUSY_PER_PARTITION).await;
    let small_topic = common::topic_with("small", 1, 100).await;
    let (busy, small) = (common::sink().await, common::sink().await);
    busy.set_behaviour(Behaviour::Delay(Duration::from_millis(5)));
    let destinations = BTreeMap::from([
        (
            "busy".to_owned(),
            DestinationConfig {
                max_batch_messages: 50,
                ..DestinationConfig::new(busy.url())
            },
        ),
        ("small".to_owned(), DestinationConfig::new(small.url())),
    ]);
    // Named so that any order by route name would serve the busy route first.
    let routes = vec![
        route("a-busy", &busy_topic, "busy", Ordering::None, 50),
        route("b-small", &small_topic, "small", Ordering::None, 50),
    ];
    let config = WorkerConfig {
        delivery_tasks: 1,
        ranges_ahead: 8,
        ..fast_worker()
    };
    let worker = start_worker(&store, &destinations, routes, config).await;

    assert_eq!(wait_for_all(&small, 100).await.len(), 100);
    let busy_done = busy.stats().delivered_elements;
    let busy_total = (BUSY_PARTITIONS as usize * BUSY_PER_PARTITION) as u64;
    worker.stop().await;
    assert!(
        busy_done < busy_total / 4,
        "the small route waited for {busy_done} of the busy route's {busy_total} messages"
    );
}

/// The records users found mangled on the way: a binary key and payload with repeated, null,
/// binary and non-ASCII headers; a tombstone with its key; JSON; plain text.
fn faithful_records() -> Vec<OutgoingRecord> {
    let header = |name: &str, value: Option<&[u8]>| Header {
        name: name.to_owned(),
        value: value.map(<[u8]>::to_vec),
    };
    let record =
        |key: Option<&[u8]>, headers: Vec<Header>, payload: Option<&[u8]>| OutgoingRecord {
            partition: Some(0),
            key: key.map(<[u8]>::to_vec),
            headers,
            payload: payload.map(<[u8]>::to_vec),
        };
    vec![
        record(
            Some(&[0xff, 0xfe]),
            vec![
                header("trace", Some(b"a")),
                header("trace", None),
                header("bin", Some(&[0xff, 0x00])),
                header("città", Some("ünï".as_bytes())),
            ],
            Some(&[0x89, b'P', b'N', b'G', 0x00, 0xff]),
        ),
        record(Some(b"customer-7"), Vec::new(), None),
        record(None, Vec::new(), Some(br#"{"id": 3,  "ok": true}"#)),
        record(Some("ключ".as_bytes()), Vec::new(), Some(b"plain text")),
    ]
}

/// The bytes an envelope value stands for, by its encoding marker (`None` for null). A JSON payload
/// is compared as JSON: it is embedded as the producer wrote it, but a receiver sees the value.
fn decoded(value: &Value, encoding: &Value) -> Option<Vec<u8>> {
    match encoding.as_str() {
        None => {
            assert_eq!(value, &Value::Null, "a value without encoding is null");
            None
        }
        Some("text") => Some(
            value
                .as_str()
                .expect("text is a string")
                .as_bytes()
                .to_vec(),
        ),
        Some("base64") => Some(
            BASE64
                .decode(value.as_str().expect("base64 is a string"))
                .expect("valid base64"),
        ),
        Some("json") => Some(serde_json::to_vec(value).expect("JSON")),
        Some(other) => panic!("unknown encoding {other:?}"),
    }
}

fn assert_envelope_is_the_record(envelope: &Value, record: &OutgoingRecord, topic: &str) {
    assert_eq!(envelope["topic"], json!(topic));
    assert_eq!(envelope["partition"], json!(0));
    assert!(envelope["timestamp"].is_i64(), "{envelope}");
    assert_eq!(
        decoded(&envelope["key"], &envelope["key_encoding"]),
        record.key,
        "{envelope}"
    );
    let headers: Vec<Header> = envelope["headers"]
        .as_array()
        .expect("headers is a list")
        .iter()
        .map(|h| Header {
            name: h["name"].as_str().expect("a name").to_owned(),
            value: decoded(&h["value"], &h["encoding"]),
        })
        .collect();
    assert_eq!(headers, record.headers, "{envelope}");
    let payload = decoded(&envelope["payload"], &envelope["payload_encoding"]);
    let expected = match (&record.payload, envelope["payload_encoding"].as_str()) {
        (Some(bytes), Some("json")) => {
            let value: Value = serde_json::from_slice(bytes).expect("JSON payload");
            Some(serde_json::to_vec(&value).expect("JSON"))
        }
        (payload, _) => payload.clone(),
    };
    assert_eq!(payload, expected, "{envelope}");
}

/// Keys, headers, tombstones and bytes that are not UTF-8 arrive whole through Kafka, the worker and
/// HTTP, in every format: a JSON array and NDJSON of envelopes, and one request per message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_headers_tombstones_and_binary_payloads_arrive_whole_in_every_format() {
    let db = TestDb::migrated().await;
    let store = db.store().await;
    let topic = unique_name("faithful");
    create_topic(&kafka_brokers(), &topic, 1)
        .await
        .expect("create topic");
    let records = faithful_records();
    Producer::connect(KafkaConfig::new(kafka_brokers()))
        .await
        .expect("producer")
        .send_records(&topic, records.clone())
        .await
        .expect("produce");
    let sink = common::sink().await;
    let formats = [
        ("json", Format::Json),
        ("ndjson", Format::Ndjson),
        ("each", Format::PerMessage),
    ];
    let destinations = formats
        .iter()
        .map(|(name, format)| {
            let mut config = DestinationConfig::new(sink.url_for(name));
            config.format = *format;
            ((*name).to_owned(), config)
        })
        .collect();
    let routes = formats
        .iter()
        .map(|(name, _)| route(name, &topic, name, Ordering::None, 100))
        .collect();
    let worker = start_worker(&store, &destinations, routes, fast_worker()).await;
    let expected = (formats.len() * records.len()) as u64;
    sink.wait_until(|s| s.delivered_elements >= expected, LONG)
        .await
        .expect("every message to every destination");
    worker.stop().await;

    let received = sink.received();
    let mut by_format = Vec::new();
    for (name, _) in formats {
        let path = format!("/{name}");
        // Keyed by offset; a retried request would only repeat the same envelope.
        let envelopes: BTreeMap<i64, Value> = received
            .iter()
            .filter(|r| r.path == path)
            .flat_map(|r| r.envelopes.iter().cloned())
            .map(|e| (e["offset"].as_i64().expect("an offset"), e))
            .collect();
        assert_eq!(envelopes.len(), records.len(), "{name}");
        for (offset, record) in records.iter().enumerate() {
            let envelope = &envelopes[&(offset as i64)];
            assert_eq!(envelope["id"], json!(format!("{name}/0/{offset}")));
            assert_envelope_is_the_record(envelope, record, &topic);
        }
        by_format.push(envelopes);
    }
    // The same message reads the same whatever the format, but for the route in its id and how the
    // key is written (per message, a key that is not visible ASCII travels base64 in its header;
    // checked above to decode to the same bytes).
    let without_id = |envelopes: &BTreeMap<i64, Value>| -> Vec<Value> {
        envelopes
            .values()
            .map(|e| {
                let mut e = e.clone();
                for field in ["id", "key", "key_encoding"] {
                    e[field] = Value::Null;
                }
                e
            })
            .collect()
    };
    assert_eq!(without_id(&by_format[0]), without_id(&by_format[1]));
    assert_eq!(without_id(&by_format[0]), without_id(&by_format[2]));
    // Per message: one request each, the raw payload as the body.
    let each: Vec<_> = received.iter().filter(|r| r.path == "/each").collect();
    assert!(each.iter().all(|r| r.envelopes.len() == 1));
    let binary = each
        .iter()
        .find(|r| r.envelopes[0]["offset"] == json!(0))
        .expect("offset 0");
    assert_eq!(binary.body[..], [0x89, b'P', b'N', b'G', 0x00, 0xff]);
}

/// A window replay carves its own ranges, so its batches have other bounds and other batch keys than
/// the first deliveries; every message keeps its id, and every replayed request names the replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_replay_with_other_bounds_resends_the_same_message_ids_naming_the_replay() {
    let db = TestDb::migrated().await;
    let store = db.store().await;
    let topic = common::topic_with("replay-ids", 1, 100).await;
    let sink = common::sink().await;
    let mut destination = DestinationConfig::new(sink.url());
    destination.max_batch_messages = 25;
    let destinations = BTreeMap::from([("d".to_owned(), destination)]);
    let worker = start_worker(
        &store,
        &destinations,
        vec![route("r", &topic, "d", Ordering::None, 40)],
        fast_worker(),
    )
    .await;
    wait_for_all(&sink, 100).await;
    wait_for_watermarks(&store, "r", 100).await;
    let first = sink.received();

    let audit = ReplayAudit {
        requested_by: "test".into(),
        reason: "lost data".into(),
        dry_run: false,
    };
    let window = OffsetRange::new(30, 70).expect("window");
    let replay_id = store
        .replay_window("r", 0, window, 15, &audit)
        .await
        .expect("replay")
        .replay_id
        .expect("a replay id");
    let delivered = first.iter().map(|r| r.elements.len()).sum::<usize>() as u64;
    sink.wait_until(|s| s.delivered_elements >= delivered + 40, LONG)
        .await
        .expect("the window delivered again");
    worker.stop().await;

    let replayed = sink.received().split_off(first.len());
    assert!(
        first.iter().all(|r| r.replay.is_none()),
        "first deliveries name no replay"
    );
    assert!(
        replayed.iter().all(|r| r.replay == Some(replay_id)),
        "every replayed request names replay {replay_id}"
    );
    let first_by_id: HashMap<&str, &Value> = first
        .iter()
        .flat_map(|r| &r.envelopes)
        .map(|e| (e["id"].as_str().expect("an id"), e))
        .collect();
    let replayed_ids: Vec<&str> = replayed
        .iter()
        .flat_map(|r| &r.envelopes)
        .map(|e| {
            let id = e["id"].as_str().expect("an id");
            assert_eq!(
                Some(&e),
                first_by_id.get(id),
                "the same envelope, id and all"
            );
            id
        })
        .collect();
    let mut expected: Vec<String> = (30..70).map(|offset| format!("r/0/{offset}")).collect();
    let mut got: Vec<String> = replayed_ids.iter().map(|id| (*id).to_owned()).collect();
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "the window's messages, each once");
    // Why destinations dedupe on message ids: the replay's batch keys are new.
    let first_keys: HashSet<_> = first.iter().map(|r| r.idempotency_key.clone()).collect();
    assert!(replayed
        .iter()
        .any(|r| !first_keys.contains(&r.idempotency_key)));
}

/// `courier status --json` against `config`: its exit code and output.
fn status_json(config: &str) -> (Option<i32>, Value) {
    let output = common::courier(&["status", "--config", config, "--json"])
        .output()
        .expect("courier status");
    let status = serde_json::from_str(&common::stdout_of(&output)).unwrap_or_else(|e| {
        panic!(
            "status --json is JSON ({e}): {}",
            common::stderr_of(&output)
        )
    });
    (output.status.code(), status)
}

/// Kafka's log start falls inside ranges (retention never lines up with them): `courier status` flags
/// the offsets deleted before delivery before any worker reaches them, with lag counting only what Kafka
/// holds; the worker delivers every message Kafka still holds and records exactly what was deleted,
/// settling the ranges (none failed); a range an older courier failed for retention is replayed with
/// `--failed`: its survivors are delivered and its loss recorded; status then lists the losses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_deleted_before_delivery_are_flagged_recorded_exactly_and_the_survivors_delivered()
{
    let db = TestDb::migrated().await;
    let store = db.store().await;
    let topic = common::topic_with("retention", 1, 100).await;
    let sink = common::sink().await;
    let destinations = BTreeMap::from([("d".to_owned(), DestinationConfig::new(sink.url()))]);
    let routes = || vec![route("r", &topic, "d", Ordering::None, 100)];
    // [0, 100) delivered; then no worker runs while 400 more messages arrive and Kafka deletes the
    // log below 371.
    let worker = start_worker(&store, &destinations, routes(), fast_worker()).await;
    wait_for_all(&sink, 100).await;
    wait_for_watermarks(&store, "r", 100).await;
    worker.stop().await;
    produce_labelled(&topic, 0, "later", 400).await;
    store
        .plan(&courier_store::PlanRequest {
            route: "r".into(),
            partition: 0,
            high_watermark: 500,
            range_size: 100,
            max_new_ranges: 100,
            max_tail_age: Duration::ZERO,
        })
        .await
        .expect("plan [100, 500)");
    // [300, 400) as an older courier left it: failed whole for retention.
    let client = db.raw_client().await;
    client
        .execute(
            "UPDATE courier_ranges SET state = 'failed', attempts = 1,
                    last_error = 'retention: offsets 0..371 were deleted by retention'
             WHERE route = 'r' AND start_offset = 300",
            &[],
        )
        .await
        .expect("fail [300, 400)");
    let low =
        courier_kafka::delete_records_before(&KafkaConfig::new(kafka_brokers()), &topic, 0, 371)
            .await
            .expect("delete records below 371");
    assert_eq!(low, 371);

    let config = common::write_config(
        "courier.toml",
        &common::one_route_config(&db.url, &topic, &sink.url(), ""),
    );
    let config = config.to_str().expect("path");
    let (code, status) = status_json(config);
    assert_eq!(code, Some(3), "{status}");
    let partition = &status["partitions"][0];
    assert_eq!(
        (
            partition["kafka_log_start"].as_i64(),
            partition["deleted_before_delivery"].as_i64(),
            partition["lag"].as_i64()
        ),
        (Some(371), Some(271), Some(129)),
        "deleted before delivery: [100, 371), reported apart from the lag: {partition}"
    );
    let attention = status["attention"].to_string();
    assert!(
        attention.contains("271 offset(s) below Kafka's log start 371")
            && attention.contains("docs/runbooks/retention.md"),
        "{attention}"
    );

    let worker = start_worker(&store, &destinations, routes(), fast_worker()).await;
    wait_for_watermarks(&store, "r", 500).await;
    let audit = ReplayAudit {
        requested_by: "test".into(),
        reason: "retention".into(),
        dry_run: false,
    };
    let replay_id = store
        .replay_failed("r", &courier_store::ReplayFilter::default(), &audit)
        .await
        .expect("replay --failed")
        .replay_id
        .expect("a replay");
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let (settled, total) = store.replay_progress(replay_id).await.expect("progress");
        if settled == total {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "replay not settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = worker.stop().await;
    assert_eq!(
        stats
            .ranges_failed
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "no range fails for retention"
    );

    // Exactly what Kafka still held: [0, 100) first, then [371, 500) (message ids are r/0/<offset>).
    let mut offsets: Vec<i64> = sink
        .received()
        .iter()
        .flat_map(|request| &request.envelopes)
        .map(|envelope| {
            envelope["id"]
                .as_str()
                .and_then(|id| id.rsplit('/').next())
                .and_then(|offset| offset.parse().ok())
                .unwrap_or_else(|| panic!("an envelope id: {envelope}"))
        })
        .collect();
    offsets.sort_unstable();
    offsets.dedup();
    let expected: Vec<i64> = (0..100).chain(371..500).collect();
    assert_eq!(offsets, expected);
    // Recorded exactly: one loss per range, covering [100, 371) and nothing Kafka held.
    let mut losses: Vec<(i64, i64, Option<i64>)> = store
        .losses(Some("r"), 100)
        .await
        .expect("losses")
        .iter()
        .map(|l| (l.offsets.start(), l.offsets.end(), l.replay_id))
        .collect();
    losses.sort_unstable();
    assert_eq!(
        losses,
        [
            (100, 200, None),
            (200, 300, None),
            (300, 371, Some(replay_id))
        ]
    );
    let failed = store.range_counts(None).await.expect("failed").failed;
    assert_eq!(
        failed, 0,
        "the replayed range is settled, its loss recorded"
    );

    let (code, status) = status_json(config);
    assert_eq!(code, Some(3), "recent losses need attention: {status}");
    let partition = &status["partitions"][0];
    assert_eq!(
        (
            partition["deleted_before_delivery"].as_i64(),
            partition["lag"].as_i64()
        ),
        (Some(0), Some(0)),
        "{partition}"
    );
    assert_eq!(status["recent_losses"][0]["offsets"].as_i64(), Some(271));
    assert_eq!(status["losses"].as_array().map(Vec::len), Some(3));
    let attention = status["attention"].to_string();
    assert!(
        attention.contains("271 offset(s) lost")
            && attention.contains("docs/runbooks/retention.md"),
        "{attention}"
    );
    assert!(!attention.contains("failed range"), "{attention}");
    // The text output lists the losses too.
    let output = common::courier(&["status", "--config", config])
        .output()
        .expect("courier status");
    let text = common::stdout_of(&output);
    assert!(
        text.contains("LOST") && text.contains("[300, 371) (71 offset(s))"),
        "{text}"
    );
}
