//! The sink on 127.0.0.1:0, driven by a plain HTTP client: recording, behaviours, per-path answers,
//! duplicate accounting, the event wait and shutdown. Synchronised on the sink's events, never sleeps.

use std::time::Duration;

use courier_sink::{Answer, Behaviour, Sink};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

async fn sink() -> Sink {
    Sink::start("127.0.0.1:0".parse().expect("valid address"))
        .await
        .expect("sink starts on a free local port")
}

/// One client per test (building one loads the TLS roots, which takes a while).
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .build()
        .expect("client builds")
}

/// POSTs `body` with `content_type` and the courier headers for `offsets`, returning status and body.
async fn post(
    client: &reqwest::Client,
    url: &str,
    content_type: &str,
    offsets: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, String) {
    let response = client
        .post(url)
        .header("Content-Type", content_type)
        .header("Idempotency-Key", format!("orders/1/{offsets}"))
        .header("X-Courier-Route", "orders")
        .header("X-Courier-Partition", "1")
        .header("X-Courier-Offsets", offsets)
        .body(body)
        .send()
        .await
        .expect("the sink answers");
    let status = response.status().as_u16();
    (status, response.text().await.expect("answer body"))
}

/// courier's envelope around `payload`, the message at `offset` of partition 1 of route `orders`.
fn envelope(offset: usize, payload: &Value) -> Value {
    json!({
        "id": format!("orders/1/{offset}"), "topic": "orders", "partition": 1, "offset": offset,
        "timestamp": null, "key": null, "key_encoding": null, "headers": [],
        "payload": payload, "payload_encoding": "json",
    })
}

/// POSTs a JSON array of envelopes around `payloads` (an array), as courier would.
async fn post_json(client: &reqwest::Client, url: &str, offsets: &str, payloads: Value) -> u16 {
    let envelopes: Vec<Value> = payloads
        .as_array()
        .expect("payloads is an array")
        .iter()
        .enumerate()
        .map(|(offset, payload)| envelope(offset, payload))
        .collect();
    post(
        client,
        url,
        "application/json",
        offsets,
        Value::from(envelopes).to_string(),
    )
    .await
    .0
}

#[tokio::test]
async fn records_json_and_ndjson_batches_with_their_headers() {
    let sink = sink().await;
    let client = client();
    assert_eq!(
        post_json(&client, &sink.url(), "0-2", json!([{"id": 0}, {"id": 1}])).await,
        200
    );
    let (status, _) = post(
        &client,
        &sink.url(),
        "application/x-ndjson",
        "2-4",
        format!(
            "{}\n{}\n",
            envelope(2, &json!({"id": 2})),
            envelope(3, &json!({"id": 3}))
        ),
    )
    .await;
    assert_eq!(status, 200);

    let received = sink.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].idempotency_key.as_deref(), Some("orders/1/0-2"));
    assert_eq!(received[0].route.as_deref(), Some("orders"));
    assert_eq!(received[0].partition, Some(1));
    assert_eq!(received[0].offset_bounds(), Some((0, 2)));
    assert_eq!(received[0].path, "/");
    assert_eq!(received[0].answer, Answer::Status(200));
    assert_eq!(received[1].elements, [json!({"id": 2}), json!({"id": 3})]);
    assert_eq!(received[1].envelopes[1]["id"], json!("orders/1/3"));
    let stats = sink.stats();
    assert_eq!(
        (
            stats.requests,
            stats.delivered,
            stats.delivered_elements,
            stats.failed
        ),
        (2, 2, 4, 0)
    );
    assert_eq!(sink.delivered_elements().len(), 4);
}

#[tokio::test]
async fn unparseable_batches_are_refused_with_400() {
    let sink = sink().await;
    let client = client();
    let (status, body) = post(
        &client,
        &sink.url(),
        "application/json",
        "0-1",
        "{\"id\": 0}",
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("not an array"), "{body}");
    let (status, body) = post(
        &client,
        &sink.url(),
        "application/json",
        "0-1",
        "[{\"id\": 0}]",
    )
    .await;
    assert_eq!(status, 400, "bare payloads are not courier envelopes");
    assert!(body.contains("not a courier envelope"), "{body}");
    let (status, _) = post(
        &client,
        &sink.url(),
        "application/x-ndjson",
        "1-2",
        "{\"id\": 1}\nnope\n",
    )
    .await;
    assert_eq!(status, 400);

    let failed = sink.failed();
    assert_eq!(failed.len(), 3);
    assert!(failed
        .iter()
        .all(|f| f.answer == Answer::Status(400) && f.body_error.is_some()));
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn behaviours_switch_at_runtime_and_per_path() {
    let sink = sink().await;
    let client = client();
    sink.set_path_behaviour("/b", Behaviour::Status(503));
    sink.set_path_behaviour("/c", Behaviour::FailEvery { n: 2, status: 500 });
    let batch = json!([{"id": 1}]);

    assert_eq!(
        post_json(&client, &sink.url_for("/a"), "0-1", batch.clone()).await,
        200
    );
    assert_eq!(
        post_json(&client, &sink.url_for("/b"), "0-1", batch.clone()).await,
        503
    );
    let c: Vec<u16> = statuses_of(&client, &sink.url_for("/c"), &batch, 4).await;
    assert_eq!(c, [200, 500, 200, 500]);

    sink.set_behaviour(Behaviour::StatusWithRetryAfter(429, 7));
    let response = client
        .post(sink.url_for("/a"))
        .header("Content-Type", "application/json")
        .body(batch.to_string())
        .send()
        .await
        .expect("the sink answers");
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("7")
    );

    sink.clear_path_behaviours();
    assert_eq!(
        post_json(&client, &sink.url_for("/b"), "0-1", batch.clone()).await,
        429,
        "back to the sink-wide behaviour"
    );

    let failed = sink.failed();
    assert_eq!(
        failed
            .iter()
            .map(|f| (f.path.as_str(), f.answer))
            .collect::<Vec<_>>(),
        [
            ("/b", Answer::Status(503)),
            ("/c", Answer::Status(500)),
            ("/c", Answer::Status(500)),
            ("/a", Answer::Status(429)),
            ("/b", Answer::Status(429)),
        ]
    );
    assert_eq!(sink.stats().delivered, 3);
}

async fn statuses_of(client: &reqwest::Client, url: &str, batch: &Value, n: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for i in 0..n {
        statuses.push(post_json(client, url, &format!("{i}-{}", i + 1), batch.clone()).await);
    }
    statuses
}

#[tokio::test]
async fn count_by_finds_duplicates_among_delivered_elements_only() {
    let sink = sink().await;
    let client = client();
    post_json(&client, &sink.url(), "0-2", json!([{"id": 1}, {"id": 2}])).await;
    post_json(&client, &sink.url(), "0-2", json!([{"id": 1}, {"id": 2}])).await;
    post_json(
        &client,
        &sink.url(),
        "2-3",
        json!([{"id": 3}, "not an object"]),
    )
    .await;
    sink.set_behaviour(Behaviour::Status(500));
    post_json(&client, &sink.url(), "2-3", json!([{"id": 3}])).await;

    let counts = sink.count_by(|e| e["id"].as_u64());
    assert_eq!(counts.len(), 3);
    assert_eq!((counts[&1], counts[&2], counts[&3]), (2, 2, 1));
    let duplicates = sink.duplicates_by(|e| e["id"].as_u64());
    assert_eq!(duplicates.len(), 2);
    assert!(
        !duplicates.contains_key(&3),
        "a failed request is not a delivery"
    );
}

#[tokio::test]
async fn delay_answers_ok_after_the_delay() {
    let sink = sink().await;
    let client = client();
    let delay = Duration::from_millis(200);
    sink.set_behaviour(Behaviour::Delay(delay));
    let started = std::time::Instant::now();
    assert_eq!(
        post_json(&client, &sink.url(), "0-1", json!([{"id": 1}])).await,
        200
    );
    assert!(started.elapsed() >= delay);
    assert_eq!(sink.stats().delivered, 1);
}

#[tokio::test]
async fn garbage_is_a_huge_non_json_ok() {
    let sink = sink().await;
    let client = client();
    sink.set_behaviour(Behaviour::Garbage);
    let mut response = client
        .post(sink.url())
        .header("Content-Type", "application/json")
        .body("[]")
        .send()
        .await
        .expect("the sink answers");
    assert_eq!(response.status().as_u16(), 200);
    let first = response
        .chunk()
        .await
        .expect("body streams")
        .expect("a first chunk");
    assert!(serde_json::from_slice::<Value>(&first).is_err());
    drop(response);
    assert_eq!(sink.stats().delivered, 1);
}

#[tokio::test]
async fn hang_is_recorded_on_arrival_and_released_by_shutdown() {
    let sink = sink().await;
    let client = client();
    sink.set_behaviour(Behaviour::Hang);
    let url = sink.url();
    let request =
        tokio::spawn(async move { post_json(&client, &url, "0-1", json!([{"id": 1}])).await });

    let stats = sink
        .wait_until(|s| s.failed == 1 && s.in_flight == 1, WAIT)
        .await
        .expect("the hanging request is recorded");
    assert_eq!(stats.requests, 1);
    assert_eq!(sink.failed()[0].answer, Answer::NoAnswer);
    assert!(!request.is_finished());

    sink.shutdown().await;
    let status = tokio::time::timeout(WAIT, request)
        .await
        .expect("shutdown releases the request")
        .expect("request task completes");
    assert_eq!(status, 503);
    assert_eq!(sink.stats().in_flight, 0);
    sink.shutdown().await;
}

#[tokio::test]
async fn wait_until_reports_the_last_stats_on_timeout() {
    let sink = sink().await;
    let client = client();
    post_json(&client, &sink.url(), "0-1", json!([{"id": 1}])).await;
    let error = sink
        .wait_until(|s| s.delivered >= 2, Duration::from_millis(50))
        .await
        .expect_err("only one batch was sent");
    assert_eq!(error.last.delivered, 1);
    assert!(error.to_string().contains("did not hold"));
}

#[tokio::test]
async fn wait_until_is_woken_by_each_request() {
    let sink = sink().await;
    let client = client();
    let url = sink.url();
    let sender = tokio::spawn(async move {
        for i in 0..5 {
            post_json(&client, &url, &format!("{i}-{}", i + 1), json!([{"id": i}])).await;
        }
    });
    let stats = sink
        .wait_until(|s| s.delivered_elements == 5, WAIT)
        .await
        .expect("five deliveries arrive");
    assert_eq!(stats.delivered, 5);
    sender.await.expect("sender completes");
}

#[tokio::test]
async fn get_answers_the_counters_without_recording() {
    let sink = sink().await;
    let client = client();
    post_json(&client, &sink.url(), "0-1", json!([{"id": 1}, {"id": 2}])).await;
    let text = client
        .get(sink.url())
        .send()
        .await
        .expect("the sink answers")
        .text()
        .await
        .expect("answer body");
    let counters: Value = serde_json::from_str(&text).expect("the counters are JSON");
    assert_eq!(counters["delivered_elements"], 2);
    assert_eq!(sink.stats().requests, 1);
}

#[tokio::test]
async fn a_taken_port_is_a_clear_error() {
    let sink = sink().await;
    let error = Sink::start(sink.addr())
        .await
        .expect_err("port already taken");
    assert!(
        error.to_string().contains(&sink.addr().to_string()),
        "{error}"
    );
}
