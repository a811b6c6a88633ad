//! Integration tests against a real broker: `KAFKA_BROKERS` (default `127.0.0.1:9092`, started by
//! `scripts/kafka.sh start`). Every test makes its own topics, named after the test plus a random suffix,
//! and bounds every wait: nothing here sleeps to synchronise.

use std::future::Future;
use std::time::Duration;

use courier_core::local::kafka_brokers as brokers;
use courier_core::{Header, Message, OffsetRange};
use courier_kafka::{
    create_topic, create_topic_with_config, delete_records_before, Delivered, Error, KafkaConfig,
    OutgoingRecord, PartitionWatermarks, Producer, RangeContents, RangeReader, ReadError,
};
use courier_testkit::kafka_log;
use rdkafka::consumer::Consumer as _;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};
use rdkafka::ClientConfig;

/// The upper bound on any one test.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

fn config() -> KafkaConfig {
    KafkaConfig::new(brokers()).with_read_timeout(Duration::from_secs(20))
}

fn unique_topic(test: &str) -> String {
    format!("courier-it-{test}-{:08x}", rand::random::<u32>())
}

fn range(start: i64, end: i64) -> OffsetRange {
    OffsetRange::new(start, end).expect("a valid test range")
}

async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("the test did not finish within its time bound")
}

/// Creates a topic and produces `count` messages `"{partition}-{i}"` to each listed partition.
async fn topic_with_messages(test: &str, partitions: i32, fill: &[(i32, usize)]) -> String {
    let topic = unique_topic(test);
    create_topic(&brokers(), &topic, partitions)
        .await
        .expect("create the test topic");
    let producer = Producer::connect(config()).await.expect("producer");
    for &(partition, count) in fill {
        let delivered = producer
            .send_batch(
                &topic,
                (0..count).map(|i| {
                    (
                        Some(partition),
                        Some(format!("k{i}").into_bytes()),
                        format!("{partition}-{i}").into_bytes(),
                    )
                }),
            )
            .await
            .expect("produce the test messages");
        let offsets: Vec<i64> = delivered.iter().map(|d| d.offset).collect();
        assert_eq!(offsets, (0..count as i64).collect::<Vec<_>>());
    }
    topic
}

fn offsets(messages: &[Message]) -> Vec<i64> {
    messages.iter().map(|m| m.offset).collect()
}

fn assert_exact(messages: &[Message], partition: i32, start: i64, end: i64) {
    assert_eq!(
        offsets(messages),
        (start..end).collect::<Vec<_>>(),
        "offsets of {partition}:[{start}, {end})"
    );
    for m in messages {
        assert_eq!(m.partition, partition);
        assert_eq!(
            m.payload.as_deref(),
            Some(format!("{partition}-{}", m.offset).as_bytes())
        );
        assert_eq!(m.key.as_deref(), Some(format!("k{}", m.offset).as_bytes()));
        assert!(m.timestamp_ms.is_some_and(|t| t > 0), "timestamp of {m:?}");
    }
}

#[tokio::test]
async fn reads_exact_ranges_including_one_in_the_middle() {
    bounded(async {
        let topic = topic_with_messages("exact", 2, &[(0, 100), (1, 30)]).await;
        let reader = RangeReader::connect(config()).await.expect("reader");

        let first = reader.read(&topic, 0, range(0, 10)).await.expect("[0, 10)");
        assert_exact(&first, 0, 0, 10);
        let middle = reader
            .read(&topic, 0, range(37, 64))
            .await
            .expect("[37, 64)");
        assert_exact(&middle, 0, 37, 64);
        let one = reader
            .read(&topic, 0, range(50, 51))
            .await
            .expect("[50, 51)");
        assert_exact(&one, 0, 50, 51);
        let other_partition = reader.read(&topic, 1, range(3, 9)).await.expect("1:[3, 9)");
        assert_exact(&other_partition, 1, 3, 9);
    })
    .await;
}

/// Everything a record holds reaches courier: keys, headers in order with repeated names and null
/// values, payloads that are not UTF-8, tombstones with their key.
#[tokio::test]
async fn reads_keys_headers_tombstones_and_binary_payloads_as_produced() {
    bounded(async {
        let topic = unique_topic("faithful");
        create_topic(&brokers(), &topic, 1)
            .await
            .expect("create the test topic");
        let header = |name: &str, value: Option<&[u8]>| Header {
            name: name.to_owned(),
            value: value.map(<[u8]>::to_vec),
        };
        let records = vec![
            OutgoingRecord {
                partition: Some(0),
                key: Some(vec![0xde, 0xad]),
                headers: vec![
                    header("trace", Some(b"a")),
                    header("trace", Some(b"b")),
                    header("gone", None),
                    header("empty", Some(b"")),
                    header("bin", Some(&[0xff, 0x00])),
                ],
                payload: Some(vec![0xff, 0xfe, 0x00]),
            },
            OutgoingRecord {
                partition: Some(0),
                key: Some(b"customer-7".to_vec()),
                headers: Vec::new(),
                payload: None,
            },
            OutgoingRecord {
                partition: Some(0),
                key: None,
                headers: Vec::new(),
                payload: Some(Vec::new()),
            },
        ];
        let producer = Producer::connect(config()).await.expect("producer");
        producer
            .send_records(&topic, records.clone())
            .await
            .expect("produce");
        let reader = RangeReader::connect(config()).await.expect("reader");
        let messages = reader.read(&topic, 0, range(0, 3)).await.expect("[0, 3)");
        assert_eq!(offsets(&messages), [0, 1, 2]);
        for (message, record) in messages.iter().zip(&records) {
            assert_eq!(message.key, record.key, "offset {}", message.offset);
            assert_eq!(message.headers, record.headers, "offset {}", message.offset);
            assert_eq!(message.payload, record.payload, "offset {}", message.offset);
        }
        // An empty payload is not a tombstone.
        assert_eq!(messages[2].payload.as_deref(), Some(&[][..]));
    })
    .await;
}

#[tokio::test]
async fn reads_a_range_ending_at_the_high_watermark() {
    bounded(async {
        let topic = topic_with_messages("at-hw", 1, &[(0, 50)]).await;
        let reader = RangeReader::connect(config()).await.expect("reader");
        let watermarks = reader.high_watermarks(&topic).await.expect("watermarks");
        assert_eq!(
            watermarks,
            vec![PartitionWatermarks {
                partition: 0,
                low: 0,
                high: 50
            }]
        );
        let tail = reader
            .read(&topic, 0, range(40, 50))
            .await
            .expect("[40, 50)");
        assert_exact(&tail, 0, 40, 50);
        let whole = reader.read(&topic, 0, range(0, 50)).await.expect("[0, 50)");
        assert_exact(&whole, 0, 0, 50);
    })
    .await;
}

/// The last message of the log: nothing follows it, so the read must end on the message itself (and, per
/// DESIGN.md, without waiting out fetch.wait.max.ms; only correctness is asserted here).
#[tokio::test]
async fn reads_the_tail_of_the_log_repeatedly() {
    bounded(async {
        let topic = topic_with_messages("tail", 1, &[(0, 20)]).await;
        let reader = RangeReader::connect(config()).await.expect("reader");
        for _ in 0..20 {
            let last = reader
                .read(&topic, 0, range(19, 20))
                .await
                .expect("[19, 20)");
            assert_exact(&last, 0, 19, 20);
        }
    })
    .await;
}

/// A worker keeping up with a live partition: each range is read as soon as it is written, and a range
/// not yet written is an error that a later retry gets past.
#[tokio::test]
async fn follows_the_tail_range_by_range() {
    bounded(async {
        let topic = topic_with_messages("follow", 1, &[(0, 1)]).await;
        let reader = RangeReader::connect(config()).await.expect("reader");
        let producer = Producer::connect(config()).await.expect("producer");
        assert_exact(
            &reader.read(&topic, 0, range(0, 1)).await.expect("[0, 1)"),
            0,
            0,
            1,
        );
        for i in 1..30_i64 {
            if i % 5 == 0 {
                match reader.read(&topic, 0, range(i, i + 1)).await {
                    Err(ReadError::NotYetWritten { readable_end, .. }) if readable_end == i => {}
                    other => panic!("[{i}, {}): expected NotYetWritten, got {other:?}", i + 1),
                }
            }
            producer
                .send_batch(
                    &topic,
                    [(
                        Some(0),
                        Some(format!("k{i}").into_bytes()),
                        format!("0-{i}").into_bytes(),
                    )],
                )
                .await
                .expect("produce one");
            let messages = reader
                .read(&topic, 0, range(i, i + 1))
                .await
                .expect("the new message");
            assert_exact(&messages, 0, i, i + 1);
        }
        // Sequential ranges over what is already there.
        for start in (0..30).step_by(3) {
            let messages = reader
                .read(&topic, 0, range(start, start + 3))
                .await
                .expect("read");
            assert_exact(&messages, 0, start, start + 3);
        }
    })
    .await;
}

#[tokio::test]
async fn one_reader_reads_the_same_partition_again_and_again() {
    bounded(async {
        let topic = topic_with_messages("reuse", 2, &[(0, 60), (1, 60)]).await;
        let reader = RangeReader::connect(config()).await.expect("reader");
        // Forward, backward, overlapping, repeated, and across partitions, on one reader.
        let plan = [
            (0, 0, 10),
            (0, 10, 20),
            (0, 5, 15),
            (0, 0, 10),
            (1, 50, 60),
            (0, 55, 60),
            (0, 20, 60),
            (1, 0, 1),
            (0, 0, 60),
        ];
        for (partition, start, end) in plan {
            let messages = reader
                .read(&topic, partition, range(start, end))
                .await
                .expect("read");
            assert_exact(&messages, partition, start, end);
        }

        // Clones share the pool; concurrent reads each get their own consumer.
        let reads = (0..6).map(|i| {
            let reader = reader.clone();
            let topic = topic.clone();
            tokio::spawn(async move {
                let (partition, start) = (i % 2, i64::from(i) * 10);
                let messages = reader
                    .read(&topic, partition, range(start, start + 10))
                    .await
                    .expect("concurrent read");
                assert_exact(&messages, partition, start, start + 10);
            })
        });
        for read in reads.collect::<Vec<_>>() {
            read.await.expect("the concurrent read task");
        }
    })
    .await;
}

#[tokio::test]
async fn offsets_deleted_by_retention_are_an_explicit_error() {
    bounded(async {
        let topic = topic_with_messages("retention", 1, &[(0, 20)]).await;
        let low = delete_records_before(&config(), &topic, 0, 10)
            .await
            .expect("delete records below 10");
        assert_eq!(low, 10);
        let reader = RangeReader::connect(config()).await.expect("reader");

        for (start, end) in [(5, 15), (0, 10), (9, 10)] {
            match reader.read(&topic, 0, range(start, end)).await {
                Err(ReadError::Retention {
                    topic: t,
                    partition: 0,
                    deleted,
                }) if t == topic && deleted == range(start, end.min(10)) => {}
                other => panic!("[{start}, {end}): expected a retention error, got {other:?}"),
            }
        }
        let error = reader
            .read(&topic, 0, range(0, 20))
            .await
            .expect_err("retention");
        assert!(!error.is_retryable());
        assert_eq!(error.reason(), "retention");

        // What retention left is still readable, by the same reader.
        let kept = reader
            .read(&topic, 0, range(10, 20))
            .await
            .expect("[10, 20)");
        assert_exact(&kept, 0, 10, 20);
        assert_eq!(
            reader.high_watermarks(&topic).await.expect("watermarks")[0],
            PartitionWatermarks {
                partition: 0,
                low: 10,
                high: 20
            }
        );
    })
    .await;
}

/// Tasks ask for ranges of a partition out of order: a read that finds the partition's consumer a little
/// behind reads on through the gap, and the gap's ranges are then served from the read-ahead window
/// without asking Kafka again (proved by deleting them from Kafka in between: a read from Kafka would
/// fail as retention).
#[tokio::test]
async fn ranges_read_through_by_an_earlier_read_come_from_the_window() {
    bounded(async {
        let topic = topic_with_messages("window", 1, &[(0, 400)]).await;
        let reader = RangeReader::connect(config()).await.expect("reader");
        let first = reader
            .read(&topic, 0, range(0, 100))
            .await
            .expect("[0, 100)");
        assert_exact(&first, 0, 0, 100);
        // The consumer stands at 100; [300, 400) reads [100, 400) and keeps [100, 300) for later.
        let ahead = reader
            .read(&topic, 0, range(300, 400))
            .await
            .expect("[300, 400)");
        assert_exact(&ahead, 0, 300, 400);
        let low = delete_records_before(&config(), &topic, 0, 350)
            .await
            .expect("delete records below 350");
        assert_eq!(low, 350);
        for (start, end) in [(200, 300), (100, 200), (150, 250)] {
            let got = reader
                .read(&topic, 0, range(start, end))
                .await
                .unwrap_or_else(|e| panic!("[{start}, {end}) from the window: {e}"));
            assert_exact(&got, 0, start, end);
        }
    })
    .await;
}

/// How many idle consumers of `reader` still have a partition assigned (and so keep prefetching).
fn still_assigned(reader: &RangeReader) -> usize {
    let debug = format!("{reader:?}");
    debug
        .split("still_assigned: ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no still_assigned in {debug}"))
}

#[tokio::test]
async fn a_range_read_out_of_order_leaves_no_consumer_prefetching_what_was_read() {
    bounded(async {
        let topic = topic_with_messages("out_of_order", 1, &[(0, 400)]).await;
        let reader = RangeReader::connect(config()).await.expect("reader");
        // A later range first: its consumer stays assigned at 200, prefetching what follows.
        let later = reader
            .read(&topic, 0, range(100, 200))
            .await
            .expect("[100, 200)");
        assert_exact(&later, 0, 100, 200);
        assert_eq!(still_assigned(&reader), 1);
        // The earlier range needs a consumer of its own, assigned at 0. What follows it was read
        // already: left assigned, that consumer would fetch [100, ...) from the broker a second time.
        let earlier = reader
            .read(&topic, 0, range(0, 100))
            .await
            .expect("[0, 100)");
        assert_exact(&earlier, 0, 0, 100);
        assert_eq!(
            still_assigned(&reader),
            1,
            "the consumer of the out-of-order read was left prefetching: {reader:?}"
        );
        // The first consumer still continues where it stood.
        let next = reader
            .read(&topic, 0, range(200, 300))
            .await
            .expect("[200, 300)");
        assert_exact(&next, 0, 200, 300);
        assert_eq!(still_assigned(&reader), 1);
    })
    .await;
}

#[tokio::test]
async fn a_range_past_the_high_watermark_is_an_error_not_a_hang() {
    bounded(async {
        let topic = topic_with_messages("beyond-hw", 1, &[(0, 10)]).await;
        let reader = RangeReader::connect(config()).await.expect("reader");
        // Straddling the end, starting exactly at it, and starting past it.
        for (start, end) in [(5, 20), (10, 20), (15, 20)] {
            match reader.read(&topic, 0, range(start, end)).await {
                Err(ReadError::NotYetWritten {
                    readable_end: 10,
                    range: r,
                    ..
                }) if r == range(start, end) => {}
                other => panic!("[{start}, {end}): expected NotYetWritten, got {other:?}"),
            }
        }
        let error = reader
            .read(&topic, 0, range(10, 11))
            .await
            .expect_err("past the end");
        assert!(error.is_retryable());

        // Once written, the same range reads fine on the same reader.
        let producer = Producer::connect(config()).await.expect("producer");
        producer
            .send_batch(
                &topic,
                (10..20).map(|i| {
                    (
                        Some(0),
                        Some(format!("k{i}").into_bytes()),
                        format!("0-{i}").into_bytes(),
                    )
                }),
            )
            .await
            .expect("produce 10 more");
        let messages = reader.read(&topic, 0, range(5, 20)).await.expect("[5, 20)");
        assert_exact(&messages, 0, 5, 20);
    })
    .await;
}

#[tokio::test]
async fn unknown_topics_and_partitions_are_clear_errors() {
    bounded(async {
        let reader = RangeReader::connect(config()).await.expect("reader");
        let missing = unique_topic("missing");
        match reader.read(&missing, 0, range(0, 10)).await {
            Err(ReadError::UnknownTopic { topic }) if topic == missing => {}
            other => panic!("expected UnknownTopic, got {other:?}"),
        }
        match reader.high_watermarks(&missing).await {
            Err(Error::UnknownTopic { topic }) if topic == missing => {}
            other => panic!("expected UnknownTopic, got {other:?}"),
        }
        match reader.partition_count(&missing).await {
            Err(Error::UnknownTopic { .. }) => {}
            other => panic!("expected UnknownTopic, got {other:?}"),
        }

        let topic = topic_with_messages("few-partitions", 2, &[(0, 3)]).await;
        match reader.read(&topic, 2, range(0, 10)).await {
            Err(ReadError::UnknownPartition {
                partition: 2,
                partition_count: 2,
                ..
            }) => {}
            other => panic!("expected UnknownPartition, got {other:?}"),
        }
        // The reader still works after those errors.
        let messages = reader.read(&topic, 0, range(0, 3)).await.expect("[0, 3)");
        assert_eq!(offsets(&messages), [0, 1, 2]);
    })
    .await;
}

#[tokio::test]
async fn watermarks_and_partition_counts_for_the_planner() {
    bounded(async {
        let topic = topic_with_messages("watermarks", 3, &[(0, 5), (2, 2)]).await;
        let reader = RangeReader::connect(config()).await.expect("reader");
        assert_eq!(reader.partition_count(&topic).await.expect("count"), 3);
        let watermarks = reader.high_watermarks(&topic).await.expect("watermarks");
        let summary: Vec<_> = watermarks
            .iter()
            .map(|w| (w.partition, w.low, w.high))
            .collect();
        assert_eq!(summary, vec![(0, 0, 5), (1, 0, 0), (2, 0, 2)]);
        // Creating it again is fine and changes nothing.
        create_topic(&brokers(), &topic, 3)
            .await
            .expect("idempotent create");
        assert_eq!(reader.partition_count(&topic).await.expect("count"), 3);
    })
    .await;
}

/// The whole topic's watermarks at once (one ListOffsets request per side), including partitions whose
/// log start was moved, agree with librdkafka's per-partition query.
#[tokio::test]
async fn watermarks_of_every_partition_at_once_follow_deleted_records() {
    bounded(async {
        let topic =
            topic_with_messages("all-watermarks", 5, &[(0, 30), (2, 7), (3, 12), (4, 1)]).await;
        assert_eq!(
            delete_records_before(&config(), &topic, 0, 20)
                .await
                .expect("delete"),
            20
        );
        assert_eq!(
            delete_records_before(&config(), &topic, 3, 12)
                .await
                .expect("delete all"),
            12
        );
        let reader = RangeReader::connect(config()).await.expect("reader");
        let watermarks = reader.high_watermarks(&topic).await.expect("watermarks");
        let summary: Vec<_> = watermarks
            .iter()
            .map(|w| (w.partition, w.low, w.high))
            .collect();
        assert_eq!(
            summary,
            vec![(0, 20, 30), (1, 0, 0), (2, 0, 7), (3, 12, 12), (4, 0, 1)]
        );

        // The per-partition query the planner used before, under the same isolation level.
        let name = topic.clone();
        let one_by_one = tokio::task::spawn_blocking(move || {
            let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", brokers())
                .set("isolation.level", "read_committed")
                .create()
                .expect("consumer");
            (0..5)
                .map(|partition| {
                    let (low, high) = consumer
                        .fetch_watermarks(&name, partition, Duration::from_secs(20))
                        .expect("fetch_watermarks");
                    (partition, low, high)
                })
                .collect::<Vec<_>>()
        })
        .await
        .expect("per-partition query");
        assert_eq!(summary, one_by_one);

        // Right after a topic is created, leaders may not be known everywhere yet: still an answer.
        let fresh = unique_topic("fresh-watermarks");
        create_topic(&brokers(), &fresh, 16).await.expect("create");
        let watermarks = reader.high_watermarks(&fresh).await.expect("watermarks");
        assert_eq!(watermarks.len(), 16);
        assert!(
            watermarks.iter().all(|w| (w.low, w.high) == (0, 0)),
            "{watermarks:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn the_producer_reports_where_each_message_landed() {
    bounded(async {
        let topic = unique_topic("producer");
        create_topic_with_config(&config(), &topic, 2, &[("retention.ms", "3600000")])
            .await
            .expect("create");
        let producer = Producer::connect(config()).await.expect("producer");
        let delivered = producer
            .send_batch(
                &topic,
                [
                    (Some(1), None, b"a".to_vec()),
                    (Some(0), Some(b"key".to_vec()), b"b".to_vec()),
                    (Some(1), None, b"c".to_vec()),
                ],
            )
            .await
            .expect("send");
        assert_eq!(
            delivered,
            vec![
                Delivered {
                    partition: 1,
                    offset: 0
                },
                Delivered {
                    partition: 0,
                    offset: 0
                },
                Delivered {
                    partition: 1,
                    offset: 1
                },
            ]
        );
        let reader = RangeReader::connect(config()).await.expect("reader");
        let messages = reader.read(&topic, 1, range(0, 2)).await.expect("read");
        let payloads: Vec<_> = messages.iter().map(|m| m.payload.clone()).collect();
        assert_eq!(payloads, vec![Some(b"a".to_vec()), Some(b"c".to_vec())]);
        assert_eq!(messages[0].key, None);

        // A batch larger than librdkafka's local queue still completes (QueueFull is waited out).
        let big = Producer::connect(config().with_extra("queue.buffering.max.messages", "100"))
            .await
            .expect("small-queue producer");
        let delivered = big
            .send_batch(
                &topic,
                (0..1_000).map(|i| (Some(0), None, format!("{i}").into_bytes())),
            )
            .await
            .expect("send 1000");
        assert_eq!(delivered.len(), 1_000);
        assert_eq!(delivered.last().map(|d| d.offset), Some(1_000));
    })
    .await;
}

/// One transactional step, run on the blocking pool (librdkafka's transaction calls block).
enum Txn {
    Commit(Vec<&'static str>),
    Abort(Vec<&'static str>),
    /// Sends and flushes, but leaves the transaction open.
    Open(Vec<&'static str>),
    CommitOpen,
}

fn transactional_producer(id: &str) -> ThreadedProducer<DefaultProducerContext> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("transactional.id", id)
        .set("transaction.timeout.ms", "60000")
        .create()
        .expect("transactional producer");
    producer
        .init_transactions(Duration::from_secs(30))
        .expect("init transactions");
    producer
}

async fn run_txn(
    producer: &std::sync::Arc<ThreadedProducer<DefaultProducerContext>>,
    topic: &str,
    step: Txn,
) {
    let producer = std::sync::Arc::clone(producer);
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let timeout = Duration::from_secs(30);
        let send = |payloads: &[&str]| {
            producer.begin_transaction().expect("begin");
            for payload in payloads {
                producer
                    .send(
                        BaseRecord::<(), str>::to(&topic)
                            .partition(0)
                            .payload(payload),
                    )
                    .map_err(|(e, _)| e)
                    .expect("send in transaction");
            }
            producer.flush(timeout).expect("flush");
        };
        match step {
            Txn::Commit(payloads) => {
                send(&payloads);
                producer.commit_transaction(timeout).expect("commit");
            }
            Txn::Abort(payloads) => {
                send(&payloads);
                producer.abort_transaction(timeout).expect("abort");
            }
            Txn::Open(payloads) => send(&payloads),
            Txn::CommitOpen => producer.commit_transaction(timeout).expect("commit"),
        }
    })
    .await
    .expect("transaction task");
}

/// `(start, end, expected (offset, payload) pairs)`.
type Case = (i64, i64, Vec<(i64, &'static str)>);

fn payloads(messages: &[Message]) -> Vec<(i64, String)> {
    messages
        .iter()
        .map(|m| {
            (
                m.offset,
                String::from_utf8_lossy(m.payload.as_deref().unwrap_or_default()).into_owned(),
            )
        })
        .collect()
}

/// Transactions leave a control record after each commit or abort, and read_committed hides aborted
/// records: both are offset gaps. Layout: a(0) b(1) C(2) | x(3) y(4) A(5) | c(6) C(7); C/A = markers.
#[tokio::test]
async fn transaction_markers_and_aborted_records_leave_gaps_that_end_the_read() {
    bounded(async {
        let topic = unique_topic("txn");
        create_topic(&brokers(), &topic, 1).await.expect("create");
        let id = format!("{topic}-producer");
        let producer = std::sync::Arc::new(
            tokio::task::spawn_blocking(move || transactional_producer(&id))
                .await
                .expect("producer task"),
        );
        run_txn(&producer, &topic, Txn::Commit(vec!["a", "b"])).await;
        run_txn(&producer, &topic, Txn::Abort(vec!["x", "y"])).await;
        run_txn(&producer, &topic, Txn::Commit(vec!["c"])).await;

        let reader = RangeReader::connect(config()).await.expect("reader");
        assert_eq!(reader.high_watermarks(&topic).await.expect("wm")[0].high, 8);

        // Range after range, as a worker keeping up with the partition reads it: each read continues
        // where the previous one stopped (on a message, past a gap, on a marker at the tail).
        let walk: [Case; 5] = [
            (0, 2, vec![(0, "a"), (1, "b")]),
            (2, 4, vec![]),
            (4, 7, vec![(6, "c")]),
            (7, 8, vec![]),
            (8, 9, vec![]),
        ];
        for (start, end, expected) in walk {
            let result = reader.read(&topic, 0, range(start, end)).await;
            if end > 8 {
                match result {
                    Err(ReadError::NotYetWritten {
                        readable_end: 8, ..
                    }) => continue,
                    other => panic!("[{start}, {end}): expected NotYetWritten, got {other:?}"),
                }
            }
            let messages = result.expect("read");
            let expected: Vec<(i64, String)> = expected
                .into_iter()
                .map(|(o, p)| (o, p.to_owned()))
                .collect();
            assert_eq!(payloads(&messages), expected, "walk [{start}, {end})");
        }

        let cases: [Case; 7] = [
            (0, 8, vec![(0, "a"), (1, "b"), (6, "c")]),
            // Only a commit marker and aborted records: ended by the message at 6.
            (2, 6, vec![]),
            (3, 5, vec![]),
            // Ends on a marker at the tail of the log: ended by the end of the partition.
            (6, 8, vec![(6, "c")]),
            (7, 8, vec![]),
            (5, 7, vec![(6, "c")]),
            (1, 3, vec![(1, "b")]),
        ];
        for (start, end, expected) in cases {
            let messages = reader
                .read(&topic, 0, range(start, end))
                .await
                .expect("read");
            let expected: Vec<(i64, String)> = expected
                .into_iter()
                .map(|(o, p)| (o, p.to_owned()))
                .collect();
            assert_eq!(payloads(&messages), expected, "[{start}, {end})");
        }

        // An open transaction: its records are past the last stable offset, so a range over them is
        // not readable yet (and the planner's watermark stops before them).
        run_txn(&producer, &topic, Txn::Open(vec!["d", "e"])).await;
        assert_eq!(reader.high_watermarks(&topic).await.expect("wm")[0].high, 8);
        match reader.read(&topic, 0, range(8, 10)).await {
            Err(ReadError::NotYetWritten {
                readable_end: 8, ..
            }) => {}
            other => panic!("expected NotYetWritten behind the open transaction, got {other:?}"),
        }
        run_txn(&producer, &topic, Txn::CommitOpen).await;
        let messages = reader
            .read(&topic, 0, range(8, 11))
            .await
            .expect("after commit");
        assert_eq!(
            payloads(&messages),
            vec![(8, "d".to_owned()), (9, "e".to_owned())]
        );
        tokio::task::spawn_blocking(move || drop(producer))
            .await
            .expect("close the producer");
    })
    .await;
}

/// The bytes received, from librdkafka's statistics, cover at least the payloads read.
#[tokio::test]
async fn counts_the_bytes_received_from_the_brokers() {
    bounded(async {
        const COUNT: usize = 2_000;
        const SIZE: usize = 1_000;
        let topic = unique_topic("bytes");
        create_topic(&brokers(), &topic, 1).await.expect("create");
        let producer = Producer::connect(config()).await.expect("producer");
        // Random bytes, so that no compression can make the wire smaller than the payloads.
        let payloads: Vec<Vec<u8>> = (0..COUNT)
            .map(|_| (0..SIZE).map(|_| rand::random::<u8>()).collect())
            .collect();
        producer
            .send_batch(&topic, payloads.iter().map(|p| (Some(0), None, p.clone())))
            .await
            .expect("produce");
        let reader = RangeReader::connect(config()).await.expect("reader");
        assert_eq!(reader.bytes_received(), 0, "nothing read yet");
        let messages = reader
            .read(&topic, 0, range(0, COUNT as i64))
            .await
            .expect("read");
        assert_eq!(messages.len(), COUNT);
        let payload_bytes = (COUNT * SIZE) as u64;
        // Statistics are periodic: the figure covers the read once the consumer has reported after it
        // (within a second while reading, or once parked when idle). `bounded` limits the wait.
        while reader.bytes_received() < payload_bytes {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(reader.bytes_received() >= payload_bytes);
    })
    .await;
}

/// Batches of every codec, mixed in one partition, read back intact and in order in one range.
#[tokio::test]
async fn reads_batches_of_every_compression_codec_mixed_in_one_partition() {
    bounded(async {
        const CODECS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];
        const ROUNDS: usize = 3;
        const PER_BATCH: usize = 40;
        let topic = unique_topic("codecs");
        create_topic(&brokers(), &topic, 1).await.expect("create");
        let mut producers = Vec::new();
        for codec in CODECS {
            let producer = Producer::connect(config().with_extra("compression.codec", codec))
                .await
                .unwrap_or_else(|e| panic!("a producer compressing with {codec}: {e}"));
            producers.push((codec, producer));
        }
        // Compressible payloads, so that every codec really compresses its batch.
        let payload = |codec: &str, round: usize, i: usize| {
            format!("{codec}-{round}-{i}-{}", "courier ".repeat(40)).into_bytes()
        };
        let mut expected = Vec::new();
        for round in 0..ROUNDS {
            for (codec, producer) in &producers {
                let batch: Vec<Vec<u8>> =
                    (0..PER_BATCH).map(|i| payload(codec, round, i)).collect();
                producer
                    .send_batch(&topic, batch.iter().map(|p| (Some(0), None, p.clone())))
                    .await
                    .unwrap_or_else(|e| panic!("produce a {codec} batch: {e}"));
                expected.extend(batch);
            }
        }
        let reader = RangeReader::connect(config()).await.expect("reader");
        let total = expected.len() as i64;
        let messages = reader
            .read(&topic, 0, range(0, total))
            .await
            .expect("read every codec");
        assert_eq!(offsets(&messages), (0..total).collect::<Vec<_>>());
        let payloads: Vec<Vec<u8>> = messages
            .into_iter()
            .map(|m| m.payload.unwrap_or_default())
            .collect();
        assert!(
            payloads == expected,
            "payloads differ from what was produced"
        );
    })
    .await;
}

/// A "broker" that accepts connections and never answers: every call must end with a retryable timeout.
#[tokio::test]
async fn a_broker_that_never_answers_gives_a_retryable_timeout() {
    bounded(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let accept = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let config =
            KafkaConfig::new(address.to_string()).with_read_timeout(Duration::from_secs(2));
        let reader = RangeReader::connect(config).await.expect("reader");
        let error = reader
            .read("anything", 0, range(0, 10))
            .await
            .expect_err("no broker");
        assert!(error.is_retryable(), "{error}");
        assert!(matches!(error, ReadError::Timeout { .. }), "{error:?}");
        let error = reader
            .high_watermarks("anything")
            .await
            .expect_err("no broker");
        assert!(error.is_retryable(), "{error}");
        accept.abort();
    })
    .await;
}

/// A topic of one partition laid out as `batches` says: each `(records, codec)` produced as one record
/// batch (checked on disk), payloads `"0-{offset}-..."` (compressible) and keys `"k{offset}"`.
async fn topic_of_batches(test: &str, batches: &[(usize, &str)]) -> String {
    let topic = unique_topic(test);
    create_topic(&brokers(), &topic, 1).await.expect("create");
    let mut next = 0usize;
    for &(records, codec) in batches {
        let producer = Producer::connect(config().with_extra("compression.codec", codec))
            .await
            .unwrap_or_else(|e| panic!("a producer compressing with {codec}: {e}"));
        producer
            .send_batch(
                &topic,
                (next..next + records).map(|i| {
                    let payload = format!("0-{i}-{}", "courier ".repeat(8));
                    (
                        Some(0),
                        Some(format!("k{i}").into_bytes()),
                        payload.into_bytes(),
                    )
                }),
            )
            .await
            .unwrap_or_else(|e| panic!("produce a {codec} batch: {e}"));
        next += records;
    }
    let on_disk: Vec<(i64, i64)> = kafka_log::batches(&kafka_log::partition_dir(&topic, 0))
        .iter()
        .map(|b| (b.base_offset, b.last_offset))
        .collect();
    let mut expected = Vec::new();
    let mut base = 0i64;
    for &(records, _) in batches {
        expected.push((base, base + records as i64 - 1));
        base += records as i64;
    }
    assert_eq!(on_disk, expected, "each send landed in one record batch");
    topic
}

/// The messages of `contents` are exactly `expected`, as [`topic_of_batches`] produced them.
fn assert_messages(contents: &RangeContents, expected: impl IntoIterator<Item = i64>) {
    let expected: Vec<i64> = expected.into_iter().collect();
    assert_eq!(offsets(&contents.messages), expected);
    for m in &contents.messages {
        let payload = m.payload.as_deref().unwrap_or_default();
        assert!(
            payload.starts_with(format!("0-{}-", m.offset).as_bytes()),
            "payload of {}",
            m.offset
        );
        assert_eq!(m.key.as_deref(), Some(format!("k{}", m.offset).as_bytes()));
    }
}

fn undecodable_spans(contents: &RangeContents) -> Vec<OffsetRange> {
    contents.undecodable.iter().map(|u| u.offsets).collect()
}

/// A record batch corrupt on the broker (its compressed bytes overwritten in the segment file) is
/// stepped over exactly: the messages on both sides of it are read, its offsets reported undecodable,
/// never as a gap; a good batch between two corrupt ones is read; a range starting or ending inside a
/// corrupt batch reports just its own part of it. The batch's end is found in a bounded number of probes.
#[tokio::test]
async fn steps_over_a_corrupt_batch_and_reads_the_messages_on_both_sides() {
    bounded(async {
        let topic = topic_of_batches(
            "corrupt",
            &[
                (5, "none"),
                (100, "gzip"),
                (5, "none"),
                (20, "lz4"),
                (5, "none"),
            ],
        )
        .await;
        kafka_log::corrupt_compressed_batch(&topic, 0, 5);
        kafka_log::corrupt_compressed_batch(&topic, 0, 110);
        let reader = RangeReader::connect(config()).await.expect("reader");

        let whole = reader
            .read_surviving(&topic, 0, range(0, 135))
            .await
            .expect("a read stepping over both batches");
        assert_messages(&whole, (0..5).chain(105..110).chain(130..135));
        assert_eq!(undecodable_spans(&whole), [range(5, 105), range(110, 130)]);
        assert!(whole.deleted.is_empty());
        // librdkafka's words name the failure, for the operator.
        assert!(
            whole.undecodable[0]
                .cause
                .contains("Decompression (codec 0x1) of message at 5"),
            "{:?}",
            whole.undecodable[0]
        );
        for span in &whole.undecodable {
            // Exponential then binary search over at most 135 offsets.
            assert!(
                (1..=16).contains(&span.probes),
                "probes to find the end of {}: {}",
                span.offsets,
                span.probes
            );
        }

        // Ranges starting and ending inside a corrupt batch; read by the same reader (its window must
        // not pass an undecodable batch off as a gap either).
        for (start, end, messages, spans) in [
            (50, 108, 105..108, vec![range(50, 105)]),
            (60, 70, 0..0, vec![range(60, 70)]),
            (107, 112, 107..110, vec![range(110, 112)]),
            (104, 106, 105..106, vec![range(104, 105)]),
        ] {
            let read = reader
                .read_surviving(&topic, 0, range(start, end))
                .await
                .unwrap_or_else(|e| panic!("[{start}, {end}): {e}"));
            assert_messages(&read, messages);
            assert_eq!(undecodable_spans(&read), spans, "[{start}, {end})");
        }

        // All or nothing: a named, permanent error at the batch, never a timeout.
        match reader.read(&topic, 0, range(0, 135)).await {
            Err(error @ ReadError::Undecodable { offsets, .. }) if offsets == range(5, 105) => {
                assert!(!error.is_retryable());
                assert_eq!(error.reason(), "undecodable");
            }
            other => panic!("expected the undecodable batch at [5, 105), got {other:?}"),
        }
    })
    .await;
}

#[test]
fn errors_read_well() {
    let error = ReadError::Retention {
        topic: "orders".into(),
        partition: 3,
        deleted: range(100, 250),
    };
    let text = error.to_string();
    assert!(text.contains("orders/3"), "{text}");
    assert!(text.contains("[100, 250)"), "{text}");
    assert!(text.contains("retention.md"), "{text}");
    // The data is gone from Kafka: a replay cannot help, and the message must not say it would.
    assert!(text.contains("No replay can bring them back"), "{text}");
    assert!(!text.contains("replay the"), "{text}");
}

/// Kafka's log start inside a range (retention never lines up with ranges): what Kafka still holds is
/// read, and the offsets deleted are reported exactly, whether the read starts afresh, continues a
/// consumer that stood before the deletion, or lies wholly below the log start.
#[tokio::test]
async fn a_range_across_the_log_start_yields_what_kafka_holds_and_exactly_what_was_deleted() {
    bounded(async {
        let topic = topic_with_messages("log-start", 1, &[(0, 60)]).await;
        let reader = RangeReader::connect(config()).await.expect("reader");
        // The consumer continues at 10 after this read, before the deletion.
        let first = reader
            .read_surviving(&topic, 0, range(0, 10))
            .await
            .expect("[0, 10)");
        assert_exact(&first.messages, 0, 0, 10);
        assert!(first.deleted.is_empty());
        let low = delete_records_before(&config(), &topic, 0, 23)
            .await
            .expect("delete records below 23");
        assert_eq!(low, 23);

        // A continuing read: its consumer stood at 10, now below the log start. What it had prefetched
        // before the deletion was read all the same; every offset is either read or reported deleted.
        let across = reader
            .read_surviving(&topic, 0, range(10, 30))
            .await
            .expect("[10, 30)");
        let mut covered = offsets(&across.messages);
        covered.extend(across.deleted.iter().flat_map(|d| d.start()..d.end()));
        covered.sort_unstable();
        assert_eq!(covered, (10..30).collect::<Vec<_>>(), "{across:?}");
        assert!(across.deleted.iter().all(|d| d.end() <= 23), "{across:?}");
        // The consumer re-assigned at the log start continues into the next range.
        let next = reader
            .read_surviving(&topic, 0, range(30, 40))
            .await
            .expect("[30, 40)");
        assert_exact(&next.messages, 0, 30, 40);
        assert!(next.deleted.is_empty());

        // A fresh reader: a range straddling the log start, one wholly below it (no hang, no error),
        // and the read after it.
        let fresh = RangeReader::connect(config()).await.expect("reader");
        let wholly = fresh
            .read_surviving(&topic, 0, range(0, 20))
            .await
            .expect("[0, 20)");
        assert!(
            wholly.messages.is_empty(),
            "{:?}",
            offsets(&wholly.messages)
        );
        assert_eq!(wholly.deleted, vec![range(0, 20)]);
        let straddling = fresh
            .read_surviving(&topic, 0, range(20, 50))
            .await
            .expect("[20, 50)");
        assert_exact(&straddling.messages, 0, 23, 50);
        assert_eq!(straddling.deleted, vec![range(20, 23)]);
        assert_eq!(straddling.deleted_offsets(), 3);
        // Served from the window now: the deletion is not in it, so a read of [20, 30) again still
        // reports it rather than taking it for a gap.
        let again = fresh
            .read_surviving(&topic, 0, range(20, 30))
            .await
            .expect("[20, 30) again");
        assert_exact(&again.messages, 0, 23, 30);
        assert_eq!(again.deleted, vec![range(20, 23)]);
    })
    .await;
}

/// How long the broker may take to apply retention: its `log.retention.check.interval.ms` (1 s as
/// scripts/kafka.sh configures it; Kafka's default is 5 minutes, hence the margin).
const RETENTION_CHECK_BOUND: Duration = Duration::from_secs(330);

/// Real retention, not DeleteRecords: Kafka deletes whole segments, whose boundaries have nothing to do
/// with courier's ranges. Two segments of old records are deleted; a range across the new log start
/// yields what Kafka still holds and exactly the offsets deleted.
#[tokio::test]
async fn real_retention_deletes_segments_and_a_range_across_the_log_start_reports_it_exactly() {
    let topic = unique_topic("real-retention");
    // Segments roll as soon as records older than segment.ms are followed by more; records older than
    // retention.ms (the hour-old ones; never the fresh ones within the test's bound) are deleted with
    // their segment at the broker's next retention check.
    create_topic_with_config(
        &config(),
        &topic,
        1,
        &[("retention.ms", "1800000"), ("segment.ms", "1000")],
    )
    .await
    .expect("create a topic with short retention");
    let old = unix_now_ms() - 3_600_000;
    // Three produce requests, so three record batches and (with the old timestamps) three segments:
    // [0, 37) and [37, 74) an hour old, [74, 100) now.
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("acks", "all")
        .create()
        .expect("producer");
    let mut offset = 0;
    for (count, timestamp) in [(37, Some(old)), (37, Some(old)), (26, None)] {
        for _ in 0..count {
            // What assert_exact expects of the message at `offset`.
            let (key, payload) = (format!("k{offset}"), format!("0-{offset}"));
            let mut record = BaseRecord::<str, str>::to(&topic)
                .partition(0)
                .key(&key)
                .payload(&payload);
            if let Some(timestamp) = timestamp {
                record = record.timestamp(timestamp);
            }
            producer.send(record).map_err(|(e, _)| e).expect("send");
            offset += 1;
        }
        producer.flush(Duration::from_secs(30)).expect("flush");
    }
    let reader = RangeReader::connect(config()).await.expect("reader");
    let low = tokio::time::timeout(RETENTION_CHECK_BOUND, async {
        loop {
            let marks = reader.high_watermarks(&topic).await.expect("watermarks");
            if marks[0].low > 0 {
                assert_eq!(marks[0].high, 100);
                return marks[0].low;
            }
            // Polling the broker's answer, not sleeping for an outcome: the check runs on its own clock.
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await
    .expect("the broker applied retention within its check interval");
    assert!(
        low == 37 || low == 74,
        "the log starts at a segment boundary: {low}"
    );

    let across = reader
        .read_surviving(&topic, 0, range(10, 100))
        .await
        .expect("[10, 100)");
    assert_eq!(across.deleted, vec![range(10, low)]);
    assert_exact(&across.messages, 0, low, 100);
    let below = reader
        .read_surviving(&topic, 0, range(20, 30))
        .await
        .expect("[20, 30)");
    assert_eq!(below.deleted, vec![range(20, 30)]);
    assert!(below.messages.is_empty());
}

fn unix_now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970");
    i64::try_from(now.as_millis()).expect("milliseconds fit an i64")
}
