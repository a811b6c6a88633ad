//! Poison isolation end to end (issue 11 item 3), against real PostgreSQL, Kafka and an HTTP destination:
//! a destination refusing the batches that hold a bad message, or too large a body, holds back only the
//! bad messages; they are quarantined, listed by `courier status`, written to the dead-letter topic, and
//! replayed one by one or together with `courier replay --quarantined`.

use crate::common::{self, id, start_worker, wait_for_count, wait_for_ranges, Worker};

use std::collections::BTreeSet;
use std::time::Duration;

use common::{courier, one_route_config, sink, stderr_of, stdout_of, write_config};
use courier_core::local::kafka_brokers;
use courier_core::OffsetRange;
use courier_kafka::{create_topic, KafkaConfig, Producer, RangeReader};
use courier_sink::Behaviour;
use courier_store::RangeCounts;
use courier_testkit::{unique_name, TestDb};
use serde_json::{json, Value};

/// A topic of `partitions` x `per_partition` messages `{"id": "<p>-<seq>"}`; those with `bad(seq)` also
/// carry `"poison": true`, and those with `big(seq)` a 4 KiB filler. Returns the topic and the ids of the
/// bad messages with their offsets.
async fn topic_with_poison(
    partitions: i32,
    per_partition: usize,
    bad: impl Fn(usize) -> bool,
    big: impl Fn(usize) -> bool,
) -> (String, BTreeSet<(i32, i64)>) {
    let topic = unique_name("poison");
    create_topic(&kafka_brokers(), &topic, partitions)
        .await
        .expect("create topic");
    let producer = Producer::connect(KafkaConfig::new(kafka_brokers()))
        .await
        .expect("producer");
    let mut poisoned = BTreeSet::new();
    for partition in 0..partitions {
        let records: Vec<_> = (0..per_partition)
            .map(|seq| {
                let mut body = json!({ "id": format!("{partition}-{seq}"), "seq": seq });
                if bad(seq) {
                    body["poison"] = json!(true);
                }
                if big(seq) {
                    body["filler"] = json!("x".repeat(4096));
                }
                (Some(partition), None, body.to_string().into_bytes())
            })
            .collect();
        let delivered = producer.send_batch(&topic, records).await.expect("produce");
        for (seq, at) in delivered.iter().enumerate() {
            if bad(seq) || big(seq) {
                poisoned.insert((at.partition, at.offset));
            }
        }
    }
    (topic, poisoned)
}

fn status(config: &str) -> (Option<i32>, Value) {
    let output = courier(&["status", "--config", config, "--json"])
        .output()
        .expect("status");
    let json = serde_json::from_str(&stdout_of(&output))
        .unwrap_or_else(|e| panic!("status --json is JSON ({e}): {}", stderr_of(&output)));
    (output.status.code(), json)
}

fn quarantined(status: &Value) -> BTreeSet<(i32, i64)> {
    status["quarantined"]
        .as_array()
        .expect("quarantined list")
        .iter()
        .map(|q| {
            (
                q["partition"].as_i64().expect("partition") as i32,
                q["offset"].as_i64().expect("offset"),
            )
        })
        .collect()
}

/// Reads StatsD lines until one starting with each of `wanted` has arrived.
async fn wait_for_metrics(udp: &tokio::net::UdpSocket, wanted: &[&str]) {
    let mut seen: Vec<String> = Vec::new();
    let mut buffer = vec![0u8; 65_536];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !wanted
        .iter()
        .all(|w| seen.iter().any(|line| line.starts_with(w)))
    {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Ok(Ok(n)) = tokio::time::timeout(left, udp.recv(&mut buffer)).await else {
            panic!("metrics {wanted:?} never all arrived; seen {seen:?}");
        };
        seen.extend(
            String::from_utf8_lossy(&buffer[..n])
                .lines()
                .map(str::to_owned),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_quarantined_dead_lettered_listed_and_replayed_while_the_rest_flows() {
    const PER_PARTITION: usize = 500;
    let db = TestDb::migrated().await;
    // 2 x 500 messages in ranges of 200 and batches of 50: 20 bad messages spread over every range.
    let (topic, bad) = topic_with_poison(2, PER_PARTITION, |seq| seq % 50 == 17, |_| false).await;
    let dead_letters = unique_name("poison-dlq");
    create_topic(&kafka_brokers(), &dead_letters, 1)
        .await
        .expect("dead-letter topic");
    let destination = sink().await;
    destination.set_behaviour(Behaviour::RefuseContaining {
        needle: "\"poison\":true".into(),
        status: 400,
    });
    let config = write_config(
        "courier.toml",
        &one_route_config(
            &db.url,
            &topic,
            &destination.url(),
            &format!("dead_letter_topic = \"{dead_letters}\""),
        ),
    );
    let config = config.to_str().expect("path");
    let worker = start_worker(config);

    // Every good message arrives, and both partitions' watermarks reach the end: nothing is held back.
    wait_for_count(
        &db,
        "SELECT count(*) FROM courier_partitions WHERE watermark = 500",
        2,
    )
    .await;
    let delivered: BTreeSet<String> = destination.count_by(id).into_keys().collect();
    assert_eq!(delivered.len(), 2 * PER_PARTITION - bad.len());
    assert!(
        delivered.iter().all(|id| id
            .rsplit('-')
            .next()
            .and_then(|seq| seq.parse::<usize>().ok())
            .is_some_and(|seq| seq % 50 != 17)),
        "no bad message was accepted"
    );
    wait_for_ranges(&db, |c| c.failed, 0).await;

    // Listed, one by one, with the destination's answer; attention with the runbook.
    let (code, json) = status(config);
    assert_eq!(code, Some(3), "quarantined messages need attention");
    assert_eq!(quarantined(&json), bad);
    assert!(json["quarantined"][0]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("400")));
    let attention = json["attention"].to_string();
    assert!(
        attention.contains("20 message(s) quarantined")
            && attention.contains("docs/runbooks/quarantined-messages.md"),
        "{attention}"
    );

    let output = courier(&["status", "--config", config])
        .output()
        .expect("status");
    let text = stdout_of(&output);
    assert!(
        text.contains("QUARANTINED")
            && text.contains(&format!(
                "offset {:<12} HTTP 400",
                bad.iter().next().expect("bad").1
            )),
        "{text}"
    );

    // Each bad message is in the dead-letter topic.
    let reader = RangeReader::connect(KafkaConfig::new(kafka_brokers()))
        .await
        .expect("reader");
    let high = reader
        .high_watermarks(&dead_letters)
        .await
        .expect("watermarks")[0]
        .high;
    let letters = reader
        .read(&dead_letters, 0, OffsetRange::new(0, high).expect("range"))
        .await
        .expect("dead letters");
    let letter_ids: BTreeSet<String> = letters
        .iter()
        .filter_map(|m| serde_json::from_slice::<Value>(m.payload.as_deref()?).ok())
        .filter_map(|v| id(&v))
        .collect();
    assert_eq!(letter_ids.len(), 20, "{letter_ids:?}");

    // The destination is fixed: replay one message alone, then the rest together.
    destination.set_behaviour(Behaviour::Ok);
    let &(partition, offset) = bad.iter().next().expect("a bad message");
    let output = courier(&[
        "replay",
        "--config",
        config,
        "--route",
        "r",
        "--quarantined",
        "--partition",
        &partition.to_string(),
        "--offset",
        &offset.to_string(),
        "--reason",
        "TICKET-7 fixed the schema",
        "--wait",
        "--timeout",
        "120s",
    ])
    .output()
    .expect("replay one");
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert!(
        stdout_of(&output).contains(&format!("partition {partition} [{offset}, {})", offset + 1)),
        "{}",
        stdout_of(&output)
    );
    let (_, json) = status(config);
    assert_eq!(
        quarantined(&json).len(),
        19,
        "the replayed one is no longer listed"
    );
    assert_eq!(
        destination.count_by(id).len(),
        2 * PER_PARTITION - 19,
        "the replayed message arrived"
    );

    let output = courier(&[
        "replay",
        "--config",
        config,
        "--route",
        "r",
        "--quarantined",
        "--reason",
        "TICKET-7 the rest",
        "--wait",
        "--timeout",
        "120s",
    ])
    .output()
    .expect("replay all");
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(destination.count_by(id).len(), 2 * PER_PARTITION);
    let (code, json) = status(config);
    assert!(quarantined(&json).is_empty());
    assert_eq!(code, Some(0), "{}", json["attention"]);
    drop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_batches_are_split_and_a_message_too_large_alone_is_quarantined() {
    let db = TestDb::migrated().await;
    // Batches of 50 messages of ~40 bytes are ~2 KB: the destination takes at most 1 KB, and one message
    // of 4 KB can never fit.
    let (topic, too_big) = topic_with_poison(1, 300, |_| false, |seq| seq == 123).await;
    let destination = sink().await;
    destination.set_behaviour(Behaviour::TooLargeOver { bytes: 1024 });
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("udp");
    let port = udp.local_addr().expect("addr").port();
    let metrics = format!("[metrics]\nstatsd_host = \"127.0.0.1\"\nstatsd_port = {port}\n");
    let config = write_config(
        "courier.toml",
        &one_route_config(&db.url, &topic, &destination.url(), &metrics),
    );
    let config = config.to_str().expect("path");
    let worker = start_worker(config);
    wait_for_count(
        &db,
        "SELECT count(*) FROM courier_partitions WHERE watermark = 300",
        1,
    )
    .await;
    assert_eq!(
        destination.count_by(id).len(),
        299,
        "every message but the huge one"
    );
    let refused = destination.failed();
    assert!(
        refused.len() > 1
            && refused
                .iter()
                .all(|r| r.answer == courier_sink::Answer::Status(413)),
        "batches were refused as too large, then split: {refused:?}"
    );
    let (_, json) = status(config);
    assert_eq!(quarantined(&json), too_big);
    assert!(json["quarantined"][0]["status"].as_i64() == Some(413));
    wait_for_metrics(
        &udp,
        &[
            "courier_isolation_requests_total:",
            "courier_messages_quarantined_total:1|c",
        ],
    )
    .await;
    drop(worker);
}

/// Starts a worker on an ordered `fail-range` route from `topic` to `destination` and waits until one of
/// its ranges has failed. Returns the configuration's path and the worker.
async fn run_until_a_range_fails(
    db: &TestDb,
    topic: &str,
    destination: &courier_sink::Sink,
) -> (String, Worker) {
    let config = write_config(
        "courier.toml",
        &one_route_config(
            &db.url,
            topic,
            &destination.url(),
            "ordering = \"partition\"\non_poison = \"fail-range\"",
        ),
    );
    let config = config.to_str().expect("path").to_owned();
    let worker = start_worker(&config);
    wait_for_ranges(db, |c| c.failed, 1).await;
    (config, worker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_range_keeps_todays_behaviour_for_ordered_destinations() {
    let db = TestDb::migrated().await;
    let (topic, _) = topic_with_poison(1, 200, |seq| seq == 73, |_| false).await;
    let destination = sink().await;
    destination.set_behaviour(Behaviour::RefuseContaining {
        needle: "\"poison\":true".into(),
        status: 422,
    });
    let (config, worker) = run_until_a_range_fails(&db, &topic, &destination).await;
    let config = config.as_str();
    let (code, json) = status(config);
    assert_eq!(code, Some(3));
    assert!(quarantined(&json).is_empty(), "nothing quarantined");
    assert!(json["failed"][0]["newest_error"]
        .as_str()
        .is_some_and(|e| e.contains("422")));
    // The batches before the poison's one were delivered; the poison's batch and the rest of its range
    // were not.
    assert_eq!(destination.count_by(id).len(), 50);
    drop(worker);
}

#[tokio::test]
async fn a_dead_letter_topic_that_does_not_exist_is_refused_at_start() {
    let db = TestDb::migrated().await;
    let (topic, _) = topic_with_poison(1, 1, |_| false, |_| false).await;
    let missing = unique_name("no_such_dlq");
    let config = write_config(
        "courier.toml",
        &one_route_config(
            &db.url,
            &topic,
            "http://127.0.0.1:9/",
            &format!("dead_letter_topic = \"{missing}\""),
        ),
    );
    let output = courier(&["run", "--config", config.to_str().expect("path")])
        .output()
        .expect("courier run");
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("routes.r.dead_letter_topic") && stderr.contains("does not exist"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_route_isolates_in_place_and_keeps_the_other_messages_in_offset_order() {
    let db = TestDb::migrated().await;
    let (topic, bad) = topic_with_poison(1, 400, |seq| seq == 73 || seq == 260, |_| false).await;
    let destination = sink().await;
    destination.set_behaviour(Behaviour::RefuseContaining {
        needle: "\"poison\":true".into(),
        status: 422,
    });
    let config = write_config(
        "courier.toml",
        &one_route_config(
            &db.url,
            &topic,
            &destination.url(),
            "ordering = \"partition\"",
        ),
    );
    let config = config.to_str().expect("path");
    let worker = start_worker(config);
    wait_for_count(
        &db,
        "SELECT count(*) FROM courier_partitions WHERE watermark = 400",
        1,
    )
    .await;
    let (_, json) = status(config);
    assert_eq!(quarantined(&json), bad);
    // In the order the destination accepted them: every good message once, by offset.
    let seqs: Vec<u64> = destination
        .delivered_elements()
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    let expected: Vec<u64> = (0..400).filter(|s| *s != 73 && *s != 260).collect();
    assert_eq!(seqs, expected);
    drop(worker);
}

/// One partition of 400 messages `{"id": "0-<seq>", "seq": <seq>}` (offset = seq): [0, 50) and
/// [90, 400) as plain batches, [50, 90) as one gzip batch whose compressed bytes are then corrupted in the
/// broker's segment file, so no consumer can decode it. Returns the topic.
async fn topic_with_a_corrupt_batch() -> String {
    let topic = unique_name("undecodable");
    create_topic(&kafka_brokers(), &topic, 1)
        .await
        .expect("create topic");
    let body = |seq: usize| {
        let body = json!({ "id": format!("0-{seq}"), "seq": seq });
        (Some(0), None, body.to_string().into_bytes())
    };
    for (seqs, codec) in [(0..50, "none"), (50..90, "gzip"), (90..400, "none")] {
        let producer = Producer::connect(
            KafkaConfig::new(kafka_brokers()).with_extra("compression.codec", codec),
        )
        .await
        .expect("producer");
        producer
            .send_batch(&topic, seqs.map(body))
            .await
            .expect("produce");
    }
    let batch = courier_testkit::kafka_log::corrupt_compressed_batch(&topic, 0, 50);
    assert_eq!(
        (batch.base_offset, batch.last_offset),
        (50, 89),
        "the gzip messages landed in one batch"
    );
    topic
}

fn seqs_delivered(destination: &courier_sink::Sink) -> BTreeSet<u64> {
    destination
        .delivered_elements()
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect()
}

/// Issue 11 item 1: a record batch Kafka serves but no consumer can decode does not take its range's
/// good messages down with it. The messages on both sides of it are delivered, its offsets quarantined
/// (listed by `courier status`, replayable, never dead-lettered), the range checkpointed and the later
/// range delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_batch_is_quarantined_and_the_messages_around_it_are_delivered() {
    let db = TestDb::migrated().await;
    let topic = topic_with_a_corrupt_batch().await;
    let dead_letters = unique_name("undecodable-dlq");
    create_topic(&kafka_brokers(), &dead_letters, 1)
        .await
        .expect("dead-letter topic");
    let destination = sink().await;
    let config = write_config(
        "courier.toml",
        &one_route_config(
            &db.url,
            &topic,
            &destination.url(),
            &format!("dead_letter_topic = \"{dead_letters}\""),
        ),
    );
    let config = config.to_str().expect("path");
    let worker = start_worker(config);

    wait_for_count(
        &db,
        "SELECT count(*) FROM courier_partitions WHERE watermark = 400",
        1,
    )
    .await;
    let expected: BTreeSet<u64> = (0..50).chain(90..400).collect();
    assert_eq!(seqs_delivered(&destination), expected);
    wait_for_ranges(&db, RangeCounts::not_done, 0).await;
    let client = db.raw_client().await;
    let reasons: Vec<(i64, String, Option<String>)> = client
        .query(
            "SELECT message_offset, reason, dead_letter_topic FROM courier_quarantine ORDER BY message_offset",
            &[],
        )
        .await
        .expect("quarantine")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        reasons.iter().map(|(o, _, _)| *o).collect::<Vec<_>>(),
        (50..90).collect::<Vec<_>>()
    );
    assert!(
        reasons.iter().all(|(_, reason, topic)| reason
            .starts_with("undecodable: Decompression (codec 0x1)")
            && topic.is_none()),
        "{reasons:?}"
    );
    // No dead letter: there are no bytes to write.
    let reader = RangeReader::connect(KafkaConfig::new(kafka_brokers()))
        .await
        .expect("reader");
    let letters = reader
        .high_watermarks(&dead_letters)
        .await
        .expect("watermarks");
    assert_eq!(letters[0].high, 0, "nothing dead-lettered");
    let (code, json) = status(config);
    assert_eq!(code, Some(3), "quarantined offsets need attention");
    assert_eq!(
        quarantined(&json),
        (50..90).map(|offset| (0, offset)).collect::<BTreeSet<_>>()
    );

    // Replayable: a replay that still cannot decode it quarantines it again, and delivers nothing.
    let output = courier(&[
        "replay",
        "--config",
        config,
        "--route",
        "r",
        "--quarantined",
        "--partition",
        "0",
        "--offset",
        "60",
        "--reason",
        "the broker's log was repaired",
        "--wait",
        "--timeout",
        "120s",
    ])
    .output()
    .expect("replay");
    assert!(output.status.success(), "{}", stderr_of(&output));
    wait_for_count(
        &db,
        "SELECT count(*) FROM courier_quarantine WHERE message_offset = 60 AND times = 2 AND replayed_at IS NULL",
        1,
    )
    .await;
    assert_eq!(seqs_delivered(&destination), expected);
    drop(worker);
}

/// With `on_poison = "fail-range"` order matters more than progress: the range fails at the undecodable
/// batch, once the messages before it went through, and resumes there on replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_batch_fails_its_range_there_when_the_route_says_fail_range() {
    let db = TestDb::migrated().await;
    let topic = topic_with_a_corrupt_batch().await;
    let destination = sink().await;
    let (config, worker) = run_until_a_range_fails(&db, &topic, &destination).await;
    let config = config.as_str();
    let failed = db
        .store()
        .await
        .failed_ranges(None)
        .await
        .expect("the failed range");
    let [range] = failed.as_slice() else {
        panic!("one failed range: {failed:?}")
    };
    let error = &range.last_error;
    assert_eq!((range.start_offset, range.resume_offset), (0, Some(50)));
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.starts_with("undecodable:") && e.contains("offsets [50, 90)")),
        "{error:?}"
    );
    let (_, json) = status(config);
    assert!(quarantined(&json).is_empty(), "nothing quarantined");
    assert!(seqs_delivered(&destination).is_superset(&(0..50).collect()));
    assert!(seqs_delivered(&destination)
        .iter()
        .all(|seq| !(50..200).contains(seq)));
    drop(worker);
}
