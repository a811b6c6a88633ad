//! The real Deliverer against a real Sink on 127.0.0.1: every outcome the design classifies.
//!
//! No test sends anything off the machine: destinations are the sink on a local port, a closed local
//! port, or a name in the special-use `.invalid` domain, which the deliverer's resolver answers
//! without asking any DNS server. Tests synchronise on the sink's events, never on sleeps.

use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use courier_core::{Disposition, Header, Message};
use courier_http::{Batch, CircuitState, Deliverer, Delivery, DestinationConfig, Format};
use courier_sink::{Answer, Behaviour, Sink};
use serde_json::{json, Value};

/// The bound on every await, so a broken test fails instead of hanging.
const WAIT: Duration = Duration::from_secs(30);

async fn sink() -> Sink {
    Sink::start("127.0.0.1:0".parse().expect("valid address"))
        .await
        .expect("sink starts on a free local port")
}

/// Messages whose payloads are `{"id": n}` for `ids`, at offsets equal to the ids.
fn messages(ids: std::ops::Range<i64>) -> Vec<Message> {
    ids.map(|id| Message {
        partition: 0,
        offset: id,
        timestamp_ms: None,
        key: None,
        headers: Vec::new(),
        payload: Some(format!(r#"{{"id":{id}}}"#).into_bytes()),
    })
    .collect()
}

fn batch(messages: &[Message]) -> Batch<'_> {
    let first = messages.first().map_or(0, |m| m.offset);
    let end = messages.last().map_or(first, |m| m.offset + 1);
    Batch {
        route: "orders",
        topic: "orders-topic",
        partition: 0,
        first_offset: first,
        end_offset: end,
        replay_id: None,
        messages,
    }
}

/// What users found lost: a binary key, headers (repeated, null, binary, non-ASCII), a payload that
/// is not UTF-8, and a tombstone with its key.
fn faithful_sample() -> Vec<Message> {
    let header = |name: &str, value: Option<&[u8]>| Header {
        name: name.to_owned(),
        value: value.map(<[u8]>::to_vec),
    };
    vec![
        Message {
            partition: 0,
            offset: 20,
            timestamp_ms: Some(1_764_489_600_000),
            key: Some(vec![0xde, 0xad, 0xbe, 0xef]),
            headers: vec![
                header("trace", Some(b"t-1")),
                header("trace", None),
                header("sig", Some(&[0xff, 0x00])),
                header("città", Some("ünï".as_bytes())),
            ],
            payload: Some(vec![0x89, b'P', b'N', b'G', 0x00, 0xff]),
        },
        Message {
            partition: 0,
            offset: 21,
            timestamp_ms: None,
            key: Some(b"customer-7".to_vec()),
            headers: Vec::new(),
            payload: None,
        },
        Message {
            partition: 0,
            offset: 22,
            timestamp_ms: Some(5),
            key: Some(b" padded key ".to_vec()),
            headers: Vec::new(),
            payload: Some(b"plain text".to_vec()),
        },
    ]
}

/// Headers the way the envelope lists them, for [`faithful_sample`]'s first message.
fn sample_headers() -> Value {
    json!([
        {"name": "trace", "value": "t-1", "encoding": "text"},
        {"name": "trace", "value": null, "encoding": null},
        {"name": "sig", "value": "/wA=", "encoding": "base64"},
        {"name": "città", "value": "ünï", "encoding": "text"},
    ])
}

fn unbase64(value: &Value) -> Vec<u8> {
    BASE64
        .decode(value.as_str().expect("a base64 string"))
        .expect("valid base64")
}

fn deliverer(url: &str, edit: impl FnOnce(&mut DestinationConfig)) -> Deliverer {
    let mut config = DestinationConfig::new(url);
    config.timeout = Duration::from_secs(5);
    edit(&mut config);
    Deliverer::new(config).expect("valid destination")
}

async fn deliver(deliverer: &Deliverer, batch: &Batch<'_>) -> Delivery {
    tokio::time::timeout(WAIT, deliverer.deliver(batch))
        .await
        .expect("delivery finishes within the test bound")
}

fn retry_after(delivery: &Delivery) -> Option<Duration> {
    match &delivery.disposition {
        Disposition::Retry { retry_after, .. } => *retry_after,
        other => panic!("expected a retry, got {other:?}"),
    }
}

fn assert_retry(delivery: &Delivery) {
    assert!(
        matches!(delivery.disposition, Disposition::Retry { .. }),
        "expected a retry, got {delivery:?}"
    );
}

fn assert_permanent(delivery: &Delivery) {
    assert!(
        matches!(delivery.disposition, Disposition::Permanent { .. }),
        "expected a permanent failure, got {delivery:?}"
    );
}

#[tokio::test]
async fn success_delivers_the_batch_with_its_headers() {
    let sink = sink().await;
    let deliverer = deliverer(&sink.url(), |_| {});
    let messages = messages(10..13);
    let delivery = deliver(&deliverer, &batch(&messages)).await;

    assert_eq!(delivery.disposition, Disposition::Success);
    assert_eq!(delivery.status, Some(200));
    assert!(delivery.attempted);
    let received = sink.received();
    assert_eq!(received.len(), 1);
    let request = &received[0];
    assert_eq!(request.idempotency_key.as_deref(), Some("orders/0/10-13"));
    assert_eq!(request.route.as_deref(), Some("orders"));
    assert_eq!(request.partition, Some(0));
    assert_eq!(request.offset_bounds(), Some((10, 13)));
    assert_eq!(request.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        request.elements,
        [json!({"id": 10}), json!({"id": 11}), json!({"id": 12})]
    );
    assert_eq!(sink.stats().delivered_elements, 3);
}

#[tokio::test]
async fn ndjson_batches_arrive_one_element_per_line() {
    let sink = sink().await;
    let deliverer = deliverer(&sink.url(), |c| c.format = Format::Ndjson);
    let mut messages = messages(0..2);
    messages.push(Message {
        partition: 0,
        offset: 2,
        timestamp_ms: None,
        key: None,
        headers: Vec::new(),
        payload: Some(b"not json\nat all".to_vec()),
    });
    let delivery = deliver(&deliverer, &batch(&messages)).await;

    assert_eq!(delivery.disposition, Disposition::Success);
    let received = sink.received();
    assert_eq!(
        received[0].content_type.as_deref(),
        Some("application/x-ndjson")
    );
    assert_eq!(
        received[0].elements,
        [
            json!({"id": 0}),
            json!({"id": 1}),
            json!("not json\nat all")
        ]
    );
}

#[tokio::test]
async fn envelopes_carry_keys_headers_tombstones_and_bytes_that_are_not_utf8() {
    let sink = sink().await;
    let deliverer = deliverer(&sink.url(), |_| {});
    let messages = faithful_sample();
    let delivery = deliver(&deliverer, &batch(&messages)).await;
    assert_eq!(delivery.disposition, Disposition::Success);

    let received = sink.received();
    assert_eq!(received.len(), 1);
    let envelopes = &received[0].envelopes;
    assert_eq!(envelopes.len(), 3);
    let binary = &envelopes[0];
    assert_eq!(binary["id"], json!("orders/0/20"));
    assert_eq!(binary["topic"], json!("orders-topic"));
    assert_eq!(
        (
            &binary["partition"],
            &binary["offset"],
            &binary["timestamp"]
        ),
        (&json!(0), &json!(20), &json!(1_764_489_600_000_i64))
    );
    assert_eq!(binary["key_encoding"], json!("base64"));
    assert_eq!(unbase64(&binary["key"]), [0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(binary["headers"], sample_headers());
    assert_eq!(binary["payload_encoding"], json!("base64"));
    assert_eq!(
        unbase64(&binary["payload"]),
        [0x89, b'P', b'N', b'G', 0x00, 0xff]
    );
    let tombstone = &envelopes[1];
    assert_eq!(tombstone["id"], json!("orders/0/21"));
    assert_eq!(tombstone["key"], json!("customer-7"));
    assert_eq!(tombstone["payload"], Value::Null);
    assert_eq!(tombstone["payload_encoding"], Value::Null);
    assert_eq!(tombstone["timestamp"], Value::Null);
    assert_eq!(envelopes[2]["payload"], json!("plain text"));
    assert_eq!(envelopes[2]["payload_encoding"], json!("text"));
    assert_eq!(received[0].replay, None, "a first delivery is no replay");
}

#[tokio::test]
async fn per_message_sends_the_payload_as_the_body_and_the_rest_as_headers() {
    let sink = sink().await;
    let deliverer = deliverer(&sink.url(), |c| c.format = Format::PerMessage);
    assert_eq!(
        deliverer.config().max_batch_messages,
        1,
        "per-message batches hold one message, so a failure resumes after the last delivered"
    );
    let messages = faithful_sample();
    let delivery = deliver(&deliverer, &batch(&messages)).await;
    assert_eq!(delivery.disposition, Disposition::Success);

    let received = sink.received();
    assert_eq!(received.len(), 3, "one request per message");
    let header = |i: usize, name: &str| {
        received[i]
            .headers
            .get(name)
            .map(|v| v.to_str().expect("visible ASCII").to_owned())
    };
    // The raw bytes, not an encoding of them.
    assert_eq!(received[0].body[..], [0x89, b'P', b'N', b'G', 0x00, 0xff]);
    assert_eq!(
        received[0].content_type.as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(
        received[0].idempotency_key.as_deref(),
        Some("orders/0/20"),
        "the message id is the idempotency key"
    );
    assert_eq!(header(0, "x-courier-id").as_deref(), Some("orders/0/20"));
    assert_eq!(
        header(0, "x-courier-topic").as_deref(),
        Some("orders-topic")
    );
    assert_eq!(header(0, "x-courier-offset").as_deref(), Some("20"));
    assert_eq!(received[0].offset_bounds(), Some((20, 21)));
    assert_eq!(
        header(0, "x-courier-timestamp").as_deref(),
        Some("1764489600000")
    );
    assert_eq!(header(0, "x-courier-key"), None);
    assert_eq!(
        header(0, "x-courier-key-base64").as_deref(),
        Some("3q2+7w==")
    );
    let kafka_headers: Value =
        serde_json::from_str(&header(0, "x-courier-headers").expect("headers header"))
            .expect("X-Courier-Headers is JSON");
    assert_eq!(kafka_headers, sample_headers());
    // The tombstone: no body, marked, its key kept.
    assert!(received[1].body.is_empty());
    assert_eq!(header(1, "x-courier-tombstone").as_deref(), Some("true"));
    assert_eq!(header(1, "x-courier-key").as_deref(), Some("customer-7"));
    assert_eq!(header(1, "x-courier-timestamp"), None);
    assert_eq!(header(1, "x-courier-headers"), None);
    // Text payload; a key with edge spaces would be trimmed by servers, so it goes base64.
    assert_eq!(received[2].body[..], b"plain text"[..]);
    assert_eq!(
        received[2].content_type.as_deref(),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(
        header(2, "x-courier-key-base64").as_deref(),
        Some(BASE64.encode(b" padded key ").as_str())
    );
    // The sink's reading of the headers gives the same envelope a batch would carry.
    assert_eq!(received[0].envelopes[0]["headers"], sample_headers());
    assert_eq!(
        unbase64(&received[0].envelopes[0]["key"]),
        [0xde, 0xad, 0xbe, 0xef]
    );
}

#[tokio::test]
async fn per_message_stops_at_the_first_failure() {
    let sink = sink().await;
    sink.set_behaviour(Behaviour::FailEvery { n: 2, status: 503 });
    let deliverer = deliverer(&sink.url(), |c| c.format = Format::PerMessage);
    let messages = messages(0..4);
    let delivery = deliver(&deliverer, &batch(&messages)).await;
    assert_retry(&delivery);
    assert_eq!(delivery.status, Some(503));
    assert_eq!(sink.received().len(), 1);
    assert_eq!(sink.failed().len(), 1, "nothing is sent after the failure");
}

#[tokio::test]
async fn a_replay_names_itself_and_keeps_the_same_ids() {
    let sink = sink().await;
    let deliverer = deliverer(&sink.url(), |_| {});
    let messages = messages(10..13);
    let first = batch(&messages);
    let replay = Batch {
        replay_id: Some(42),
        ..first
    };
    for batch in [first, replay] {
        assert_eq!(
            deliver(&deliverer, &batch).await.disposition,
            Disposition::Success
        );
    }
    let received = sink.received();
    assert_eq!(received[0].replay, None);
    assert_eq!(received[1].replay, Some(42));
    assert_eq!(
        received[0].idempotency_key, received[1].idempotency_key,
        "same bounds, same batch key"
    );
    assert_eq!(
        received[0].envelopes, received[1].envelopes,
        "same message ids"
    );

    // Per message too: the id is the idempotency key, and the replay is named.
    let per_message = deliverer_with_sink(&sink, Format::PerMessage);
    let replay = Batch {
        replay_id: Some(42),
        ..batch(&messages[..1])
    };
    assert_eq!(
        deliver(&per_message, &replay).await.disposition,
        Disposition::Success
    );
    let last = sink.received().pop().expect("a request");
    assert_eq!(last.replay, Some(42));
    assert_eq!(last.idempotency_key.as_deref(), Some("orders/0/10"));
}

fn deliverer_with_sink(sink: &Sink, format: Format) -> Deliverer {
    deliverer(&sink.url(), |c| c.format = format)
}

#[tokio::test]
async fn an_empty_batch_sends_nothing() {
    let sink = sink().await;
    let deliverer = deliverer(&sink.url(), |_| {});
    let delivery = deliver(&deliverer, &batch(&[])).await;
    assert_eq!(delivery.disposition, Disposition::Success);
    assert!(!delivery.attempted);
    assert_eq!(sink.stats().requests, 0);
}

#[tokio::test]
async fn service_unavailable_is_retryable() {
    let sink = sink().await;
    sink.set_behaviour(Behaviour::Status(503));
    let deliverer = deliverer(&sink.url(), |_| {});
    let messages = messages(0..1);
    let delivery = deliver(&deliverer, &batch(&messages)).await;

    assert_retry(&delivery);
    assert_eq!(delivery.status, Some(503));
    assert!(
        delivery.reason.starts_with("HTTP 503 Service Unavailable"),
        "{}",
        delivery.reason
    );
    assert_eq!(retry_after(&delivery), None);
    assert_eq!(deliverer.blocked_until(), None, "no Retry-After, no gate");
    let failed = sink.failed();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].answer, Answer::Status(503));
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn not_found_is_permanent_with_the_body_in_the_reason() {
    let sink = sink().await;
    sink.set_behaviour(Behaviour::StatusWithBody(
        404,
        "no hook named orders\n".into(),
    ));
    let deliverer = deliverer(&sink.url(), |_| {});
    let messages = messages(0..1);
    let delivery = deliver(&deliverer, &batch(&messages)).await;

    assert_permanent(&delivery);
    assert_eq!(delivery.status, Some(404));
    assert_eq!(delivery.reason, "HTTP 404 Not Found: no hook named orders");
    assert_eq!(
        delivery.disposition,
        Disposition::Permanent {
            reason: delivery.reason.clone()
        }
    );
}

#[tokio::test]
async fn not_implemented_is_permanent() {
    let sink = sink().await;
    sink.set_behaviour(Behaviour::Status(501));
    let deliverer = deliverer(&sink.url(), |_| {});
    let messages = messages(0..1);
    let delivery = deliver(&deliverer, &batch(&messages)).await;
    assert_permanent(&delivery);
    assert_eq!(delivery.status, Some(501));
}

#[tokio::test]
async fn statuses_are_classified_like_the_design_says() {
    let sink = sink().await;
    let messages = messages(0..1);
    for (status, retryable) in [
        (408, true),
        (429, true),
        (500, true),
        (502, true),
        (504, true),
        (400, false),
        (401, false),
        (409, false),
        (422, false),
        (302, false),
        (301, false),
    ] {
        sink.set_behaviour(Behaviour::Status(status));
        // A fresh deliverer each time, so the breaker and the gate play no part.
        let delivery = deliver(&deliverer(&sink.url(), |_| {}), &batch(&messages)).await;
        assert_eq!(delivery.status, Some(status));
        assert_eq!(
            matches!(delivery.disposition, Disposition::Retry { .. }),
            retryable,
            "{status}: {delivery:?}"
        );
        assert!(!delivery.disposition.is_success());
    }
    assert_eq!(sink.stats().failed, 11, "redirects are not followed");
}

#[tokio::test]
async fn a_long_error_body_is_cut_in_the_reason() {
    let sink = sink().await;
    sink.set_behaviour(Behaviour::StatusWithBody(500, "e".repeat(200_000)));
    let deliverer = deliverer(&sink.url(), |_| {});
    let messages = messages(0..1);
    let delivery = deliver(&deliverer, &batch(&messages)).await;

    assert_retry(&delivery);
    assert!(delivery
        .reason
        .starts_with("HTTP 500 Internal Server Error: eee"));
    assert!(
        delivery.reason.len() <= 512 + 64,
        "reason is {} bytes",
        delivery.reason.len()
    );
    assert!(delivery.reason.ends_with('…'));
}

#[tokio::test]
async fn too_many_requests_with_retry_after_seconds_blocks_the_destination() {
    let sink = sink().await;
    sink.set_behaviour(Behaviour::StatusWithRetryAfter(429, 30));
    let deliverer = deliverer(&sink.url(), |_| {});
    let messages = messages(0..1);
    let before = Instant::now();
    let delivery = deliver(&deliverer, &batch(&messages)).await;

    assert_eq!(delivery.status, Some(429));
    assert_eq!(retry_after(&delivery), Some(Duration::from_secs(30)));
    let until = deliverer
        .blocked_until()
        .expect("a 429 with Retry-After blocks the destination");
    assert!(
        until >= before + Duration::from_secs(30)
            && until <= Instant::now() + Duration::from_secs(30)
    );

    // While blocked, nothing is sent and the wait is passed on.
    let refused = deliver(&deliverer, &batch(&messages)).await;
    assert!(!refused.attempted);
    assert!(refused.reason.contains("Retry-After"), "{}", refused.reason);
    let wait = retry_after(&refused).expect("the remaining wait");
    assert!(
        wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
        "{wait:?}"
    );
    assert_eq!(
        sink.stats().requests,
        1,
        "the refused delivery sent nothing"
    );
    // Clones share the gate.
    assert_eq!(deliverer.clone().blocked_until(), Some(until));
}

#[tokio::test]
async fn retry_after_as_an_http_date_is_honoured() {
    let sink = sink().await;
    let at = SystemTime::now() + Duration::from_secs(20);
    sink.set_behaviour(Behaviour::StatusWithRetryAfterDate(503, at));
    let deliverer = deliverer(&sink.url(), |_| {});
    let messages = messages(0..1);
    let delivery = deliver(&deliverer, &batch(&messages)).await;

    assert_eq!(delivery.status, Some(503));
    let wait = retry_after(&delivery).expect("Retry-After parsed from the date");
    // HTTP dates have one-second resolution.
    assert!(
        wait >= Duration::from_secs(18) && wait <= Duration::from_secs(20),
        "{wait:?}"
    );
    assert!(deliverer.blocked_until().is_some());
}

#[tokio::test]
async fn retry_after_is_capped() {
    let sink = sink().await;
    sink.set_behaviour(Behaviour::StatusWithRetryAfter(429, 86_400));
    let deliverer = deliverer(&sink.url(), |c| c.max_retry_after = Duration::from_secs(60));
    let messages = messages(0..1);
    let delivery = deliver(&deliverer, &batch(&messages)).await;
    assert_eq!(retry_after(&delivery), Some(Duration::from_secs(60)));
}

#[tokio::test]
async fn a_hanging_destination_hits_the_request_timeout() {
    let sink = sink().await;
    sink.set_behaviour(Behaviour::Hang);
    let timeout = Duration::from_millis(300);
    let deliverer = deliverer(&sink.url(), |c| c.timeout = timeout);
    let messages = messages(0..1);
    let delivery = deliver(&deliverer, &batch(&messages)).await;

    assert_retry(&delivery);
    assert_eq!(delivery.status, None);
    assert!(
        delivery.reason.starts_with("timed out"),
        "{}",
        delivery.reason
    );
    assert!(delivery.elapsed >= timeout, "{:?}", delivery.elapsed);
    let failed = sink.failed();
    assert_eq!(failed.len(), 1, "the request did arrive");
    assert_eq!(failed[0].answer, Answer::NoAnswer);
    sink.shutdown().await;
}

#[tokio::test]
async fn connection_refused_is_retryable() {
    // A local port that was free a moment ago and has nothing listening now.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a local port");
        listener.local_addr().expect("local address").port()
    };
    let deliverer = deliverer(&format!("http://127.0.0.1:{port}/"), |_| {});
    let messages = messages(0..1);
    let delivery = deliver(&deliverer, &batch(&messages)).await;

    assert_retry(&delivery);
    assert_eq!(delivery.status, None);
    assert!(delivery.attempted);
    assert!(
        delivery.reason.starts_with("connect failed"),
        "{}",
        delivery.reason
    );
}

#[tokio::test]
async fn an_unresolvable_host_is_retryable_and_asks_no_dns_server() {
    let deliverer = deliverer("http://nonexistent.invalid/", |_| {});
    let messages = messages(0..1);
    let delivery = deliver(&deliverer, &batch(&messages)).await;

    assert_retry(&delivery);
    assert_eq!(delivery.status, None);
    assert!(
        delivery.reason.starts_with("DNS lookup failed"),
        "{}",
        delivery.reason
    );
    assert!(delivery.reason.contains(".invalid"), "{}", delivery.reason);
}

#[tokio::test]
async fn a_huge_garbage_body_is_not_buffered() {
    let sink = sink().await;
    sink.set_behaviour(Behaviour::Garbage);
    // The sink's garbage is 16 GiB: reading it whole could not finish within this timeout (and would
    // fail the delivery as timed out), so a success shows the body was read only up to a bound.
    let deliverer = deliverer(&sink.url(), |c| c.timeout = Duration::from_secs(2));
    let messages = messages(0..1);
    let delivery = deliver(&deliverer, &batch(&messages)).await;

    assert_eq!(delivery.disposition, Disposition::Success, "{delivery:?}");
    assert_eq!(delivery.reason, "HTTP 200 OK");
    assert_eq!(sink.stats().delivered, 1);
}

#[tokio::test]
async fn concurrency_is_limited_per_destination() {
    let sink = sink().await;
    sink.set_behaviour(Behaviour::Delay(Duration::from_millis(150)));
    let deliverer = deliverer(&sink.url(), |c| c.max_in_flight = 2);
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let deliverer = deliverer.clone();
            tokio::spawn(async move {
                let messages = messages(i * 10..i * 10 + 1);
                deliver(&deliverer, &batch(&messages)).await
            })
        })
        .collect();
    for task in tasks {
        let delivery = task.await.expect("delivery task completes");
        assert_eq!(delivery.disposition, Disposition::Success);
    }
    let stats = sink.stats();
    assert_eq!(stats.delivered, 8);
    assert_eq!(
        stats.max_in_flight, 2,
        "at most 2 at once, and the limit was reached"
    );
}

/// A deliverer whose circuit opens after 3 failures for `pause`, with the sink answering 503.
async fn opened_circuit(sink: &Sink, pause: Duration) -> Deliverer {
    sink.set_behaviour(Behaviour::Status(503));
    let deliverer = deliverer(&sink.url(), |c| {
        c.pause_after_failures = 3;
        c.pause_for = pause;
    });
    let messages = messages(0..1);
    for _ in 0..3 {
        let delivery = deliver(&deliverer, &batch(&messages)).await;
        assert_retry(&delivery);
        assert!(delivery.attempted);
    }
    assert!(matches!(
        deliverer.circuit_state(),
        CircuitState::Open { failures: 3, .. }
    ));
    deliverer
}

/// Waits for the end of the pause the deliverer itself reports (a deadline, not a guess).
async fn wait_for_half_open(deliverer: &Deliverer) {
    if let CircuitState::Open { until, .. } = deliverer.circuit_state() {
        let deadline = tokio::time::Instant::from_std(until);
        tokio::time::timeout(WAIT, tokio::time::sleep_until(deadline))
            .await
            .expect("the pause ends within the test bound");
    }
    assert!(matches!(
        deliverer.circuit_state(),
        CircuitState::HalfOpen {
            probe_in_flight: false,
            ..
        }
    ));
}

#[tokio::test]
async fn the_circuit_opens_after_n_failures_and_a_probe_closes_it() {
    let sink = sink().await;
    let deliverer = opened_circuit(&sink, Duration::from_millis(300)).await;
    let messages = messages(0..1);

    let refused = deliver(&deliverer, &batch(&messages)).await;
    assert!(!refused.attempted);
    assert_eq!(
        refused.reason,
        "destination paused (circuit open) after 3 consecutive failures"
    );
    assert!(retry_after(&refused).is_some_and(|wait| wait <= Duration::from_millis(300)));
    assert_eq!(sink.stats().requests, 3, "nothing sent while open");

    sink.set_behaviour(Behaviour::Ok);
    wait_for_half_open(&deliverer).await;
    let probe = deliver(&deliverer, &batch(&messages)).await;
    assert!(probe.attempted);
    assert_eq!(probe.disposition, Disposition::Success);
    assert_eq!(deliverer.circuit_state(), CircuitState::Closed);
    let after = deliver(&deliverer, &batch(&messages)).await;
    assert_eq!(after.disposition, Disposition::Success);
    assert_eq!(sink.stats().delivered, 2);
}

#[tokio::test]
async fn a_failed_probe_reopens_the_circuit() {
    let sink = sink().await;
    let deliverer = opened_circuit(&sink, Duration::from_millis(200)).await;
    let messages = messages(0..1);
    wait_for_half_open(&deliverer).await;

    let probe = deliver(&deliverer, &batch(&messages)).await;
    assert!(probe.attempted);
    assert_retry(&probe);
    assert!(matches!(
        deliverer.circuit_state(),
        CircuitState::Open { failures: 4, .. }
    ));
    assert!(!deliver(&deliverer, &batch(&messages)).await.attempted);
    assert_eq!(sink.stats().requests, 4);
}

#[tokio::test]
async fn half_open_lets_exactly_one_probe_through() {
    let sink = sink().await;
    let deliverer = opened_circuit(&sink, Duration::from_millis(200)).await;
    wait_for_half_open(&deliverer).await;

    sink.set_behaviour(Behaviour::Delay(Duration::from_millis(200)));
    let probe = tokio::spawn({
        let deliverer = deliverer.clone();
        async move {
            let messages = messages(0..1);
            deliver(&deliverer, &batch(&messages)).await
        }
    });
    sink.wait_until(|s| s.requests == 4, WAIT)
        .await
        .expect("the probe arrives");

    let messages = messages(1..2);
    let refused = deliver(&deliverer, &batch(&messages)).await;
    assert!(!refused.attempted);
    assert!(
        refused.reason.contains("probe request is in flight"),
        "{}",
        refused.reason
    );

    let probe = probe.await.expect("probe task completes");
    assert_eq!(probe.disposition, Disposition::Success);
    assert_eq!(deliverer.circuit_state(), CircuitState::Closed);
    assert_eq!(sink.stats().requests, 4);
}

/// A one-shot raw TCP destination on a local port: reads the request head (sent back through the
/// receiver), writes `answer` (maybe nothing) and closes the connection. For what a well-behaved
/// server never does.
async fn raw_destination(
    answer: &'static [u8],
) -> (String, tokio::sync::oneshot::Receiver<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a local port");
    let addr = listener.local_addr().expect("local address");
    let (head_tx, head_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        if let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 16 * 1024];
            let read = stream.read(&mut buf).await.unwrap_or(0);
            let _ = head_tx.send(String::from_utf8_lossy(&buf[..read]).into_owned());
            let _ = stream.write_all(answer).await;
            // Dropping the stream closes the connection.
        }
    });
    (format!("http://{addr}/"), head_rx)
}

#[tokio::test]
async fn a_connection_closed_without_an_answer_is_retryable() {
    let (url, _) = raw_destination(b"").await;
    let deliverer = deliverer(&url, |_| {});
    let messages = messages(0..1);
    let delivery = deliver(&deliverer, &batch(&messages)).await;
    assert_retry(&delivery);
    assert_eq!(delivery.status, None);
    assert!(delivery.attempted);
}

#[tokio::test]
async fn a_success_whose_body_cannot_be_read_is_retryable() {
    // Promises 100 bytes, sends 5, closes: whether the batch was applied is unknown.
    let (url, _) = raw_destination(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort").await;
    let deliverer = deliverer(&url, |_| {});
    let messages = messages(0..1);
    let delivery = deliver(&deliverer, &batch(&messages)).await;
    assert_retry(&delivery);
    assert_eq!(delivery.status, Some(200));
    assert!(
        delivery
            .reason
            .starts_with("HTTP 200 OK, then reading the response body failed"),
        "{}",
        delivery.reason
    );
}

#[tokio::test]
async fn configured_headers_cannot_replace_courier_headers() {
    let mut config = DestinationConfig::new("http://127.0.0.1:1/");
    config
        .headers
        .insert("X-Courier-Offsets".into(), "0-1".into());
    let error = Deliverer::new(config).expect_err("reserved header");
    assert!(error.to_string().contains("X-Courier-Offsets"), "{error}");
}

#[tokio::test]
async fn configured_headers_are_sent_with_courier_headers() {
    let (url, head) = raw_destination(b"HTTP/1.1 204 No Content\r\n\r\n").await;
    let deliverer = deliverer(&url, |c| {
        c.headers
            .insert("Authorization".into(), "Bearer s3cret".into());
        c.format = Format::Ndjson;
    });
    let messages = messages(5..7);
    let delivery = deliver(&deliverer, &batch(&messages)).await;
    assert_eq!(delivery.disposition, Disposition::Success);
    assert_eq!(delivery.status, Some(204));

    let head = tokio::time::timeout(WAIT, head)
        .await
        .expect("request read within the bound")
        .expect("the destination saw the request")
        .to_ascii_lowercase();
    for expected in [
        "post / http/1.1\r\n",
        "authorization: bearer s3cret\r\n",
        "content-type: application/x-ndjson\r\n",
        "idempotency-key: orders/0/5-7\r\n",
        "x-courier-route: orders\r\n",
        "x-courier-partition: 0\r\n",
        "x-courier-offsets: 5-7\r\n",
    ] {
        assert!(head.contains(expected), "missing {expected:?} in {head}");
    }
    // Secrets in configured headers stay out of debug output.
    assert!(!format!("{deliverer:?}").contains("s3cret"));
}
