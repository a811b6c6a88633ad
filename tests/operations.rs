//! The on-call tools against real services: `courier status`, `courier replay`, `courier probe`, and
//! the StatsD metrics a worker sends.

use crate::common::{self, id, start_worker, wait_for_count, wait_for_ranges};

use std::process::Stdio;
use std::time::Duration;

use common::{courier, one_route_config, sink, stderr_of, stdout_of, topic_with, write_config};
use courier_sink::Behaviour;
use courier_testkit::TestDb;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_failures_replay_redelivers_them_audited_and_status_clears() {
    let db = TestDb::migrated().await;
    let topic = topic_with("ops", 2, 400).await;
    let destination = sink().await;
    destination.set_behaviour(Behaviour::StatusWithBody(422, "schema v0 rejected".into()));
    // Failed ranges are what this test is about (the default quarantines refused messages).
    let config = write_config(
        "courier.toml",
        &one_route_config(
            &db.url,
            &topic,
            &destination.url(),
            "on_poison = \"fail-range\"",
        ),
    );
    let config = config.to_str().expect("path");
    let worker = start_worker(config);

    // A permanent refusal fails ranges; once the destination accepts again, the rest flows past them.
    destination
        .wait_until(|s| s.failed >= 1, Duration::from_secs(120))
        .await
        .expect("a refusal");
    destination.set_behaviour(Behaviour::Ok);
    wait_for_count(
        &db,
        "SELECT count(*) FROM courier_partitions WHERE watermark = 400",
        2,
    )
    .await;

    let output = courier(&["status", "--config", config, "--json"])
        .output()
        .expect("status");
    assert_eq!(
        output.status.code(),
        Some(3),
        "failed ranges need attention: {}",
        stderr_of(&output)
    );
    let status: Value = serde_json::from_str(&stdout_of(&output)).expect("status --json is JSON");
    let partitions = status["partitions"].as_array().expect("partitions");
    assert_eq!(partitions.len(), 2);
    for partition in partitions {
        assert_eq!(
            (
                partition["watermark"].as_i64(),
                partition["kafka_high_watermark"].as_i64(),
                partition["lag"].as_i64()
            ),
            (Some(400), Some(400), Some(0))
        );
    }
    let attention = status["attention"].to_string();
    assert!(
        attention.contains("failed range") && attention.contains("docs/runbooks/failed-ranges.md"),
        "{attention}"
    );
    assert!(
        status["workers"][0]["version"].is_string(),
        "workers and their versions are listed"
    );
    let failed_ranges = status["failed"][0]["ranges"]
        .as_i64()
        .expect("failed count");

    // A dry run lists and changes nothing.
    let output = courier(&[
        "replay",
        "--config",
        config,
        "--route",
        "r",
        "--failed",
        "--reason",
        "look",
        "--dry-run",
    ])
    .output()
    .expect("dry run");
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert!(
        stdout_of(&output).contains(&format!("would replay {failed_ranges} range(s)")),
        "{}",
        stdout_of(&output)
    );
    wait_for_ranges(&db, |c| c.failed, failed_ranges).await;

    // The real replay, audited, waited on.
    let output = courier(&[
        "replay",
        "--config",
        config,
        "--route",
        "r",
        "--failed",
        "--reason",
        "TICKET-42 schema fixed",
        "--by",
        "alice",
        "--wait",
        "--timeout",
        "120s",
    ])
    .output()
    .expect("replay");
    assert!(
        output.status.success(),
        "{}\n{}",
        stdout_of(&output),
        stderr_of(&output)
    );
    assert!(
        stdout_of(&output).contains("done"),
        "{}",
        stdout_of(&output)
    );
    assert_eq!(
        destination.count_by(id).len(),
        800,
        "every message delivered after the replay"
    );
    let client = db.raw_client().await;
    let audit = client
        .query_one(
            "SELECT requested_by, reason, ranges, id FROM courier_replays",
            &[],
        )
        .await
        .expect("audit row");
    // Destinations can tell the replay from a retry: every replayed request names it.
    let replayed: Vec<_> = destination
        .received()
        .into_iter()
        .filter(|r| r.replay.is_some())
        .collect();
    assert!(!replayed.is_empty(), "the replay's deliveries name it");
    assert!(replayed
        .iter()
        .all(|r| r.replay == Some(audit.get::<_, i64>(3))));
    assert_eq!(
        (audit.get::<_, String>(0), audit.get::<_, String>(1)),
        ("alice".into(), "TICKET-42 schema fixed".into())
    );
    assert_eq!(i64::from(audit.get::<_, i32>(2)), failed_ranges);

    let output = courier(&["status", "--config", config])
        .output()
        .expect("status");
    assert!(
        output.status.success(),
        "nothing needs attention now: {}",
        stdout_of(&output)
    );
    assert!(
        stdout_of(&output).contains("OK: nothing needs attention"),
        "{}",
        stdout_of(&output)
    );

    // A window replay of delivered offsets: delivered again, watermark untouched.
    let output = courier(&[
        "replay",
        "--config",
        config,
        "--route",
        "r",
        "--partition",
        "0",
        "--from",
        "0",
        "--to",
        "100",
        "--reason",
        "customer lost data",
        "--wait",
        "--timeout",
        "120s",
    ])
    .output()
    .expect("window replay");
    assert!(output.status.success(), "{}", stderr_of(&output));
    let counts = destination.count_by(id);
    assert!(
        (0..100).all(|seq| counts.get(&format!("0-{seq}")).copied().unwrap_or(0) >= 2),
        "window delivered again"
    );
    wait_for_count(
        &db,
        "SELECT count(*) FROM courier_partitions WHERE watermark = 400",
        2,
    )
    .await;

    // Refusals name the valid range or the known routes.
    let output = courier(&[
        "replay",
        "--config",
        config,
        "--route",
        "r",
        "--partition",
        "0",
        "--from",
        "0",
        "--to",
        "10000",
        "--reason",
        "x",
    ])
    .output()
    .expect("outside");
    assert!(
        !output.status.success() && stderr_of(&output).contains("[0, 400)"),
        "{}",
        stderr_of(&output)
    );
    let output = courier(&[
        "replay", "--config", config, "--route", "nope", "--failed", "--reason", "x",
    ])
    .output()
    .expect("unknown route");
    assert!(
        !output.status.success() && stderr_of(&output).contains("known routes: r"),
        "{}",
        stderr_of(&output)
    );
    drop(worker);
}

#[tokio::test]
async fn status_against_a_database_without_the_schema_is_a_clear_message() {
    let db = TestDb::create().await;
    let config = write_config(
        "courier.toml",
        &one_route_config(&db.url, "t", "http://127.0.0.1:9/", ""),
    );
    let output = courier(&["status", "--config", config.to_str().expect("path")])
        .output()
        .expect("status");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr_of(&output).contains("courier migrate"),
        "{}",
        stderr_of(&output)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reports_every_message_arrived_and_flags_missing_ones() {
    let db = TestDb::migrated().await;
    let topic = topic_with("probe", 2, 0).await;
    let port = free_port();
    let config = write_config(
        "courier.toml",
        &one_route_config(
            &db.url,
            &topic,
            &format!("http://127.0.0.1:{port}/probe"),
            "",
        ),
    );
    let config = config.to_str().expect("path");

    // No worker yet: nothing can arrive, and the probe says so.
    let output = courier(&[
        "probe",
        "--config",
        config,
        "--route",
        "r",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--messages",
        "20",
        "--timeout",
        "2s",
    ])
    .output()
    .expect("probe");
    assert_eq!(output.status.code(), Some(3), "{}", stdout_of(&output));
    assert!(
        stdout_of(&output).contains("MISSING MESSAGES: 0/20 arrived"),
        "{}",
        stdout_of(&output)
    );

    let output = courier(&["migrate"])
        .env("DATABASE_URL", &db.url)
        .output()
        .expect("migrate");
    assert!(output.status.success());
    let worker = start_worker(config);
    let output = courier(&[
        "probe",
        "--config",
        config,
        "--route",
        "r",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--messages",
        "50",
        "--timeout",
        "90s",
    ])
    .output()
    .expect("probe");
    let stdout = stdout_of(&output);
    assert!(output.status.success(), "{stdout}\n{}", stderr_of(&output));
    assert!(
        stdout.contains("100% arrived: 50/50 arrived") && stdout.contains("p99"),
        "{stdout}"
    );
    drop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_sends_its_metrics_to_statsd_with_names_types_and_tags() {
    let db = TestDb::migrated().await;
    let topic = topic_with("metrics", 1, 300).await;
    let destination = sink().await;
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("udp");
    let port = udp.local_addr().expect("addr").port();
    let extra = format!("[metrics]\nstatsd_host = \"127.0.0.1\"\nstatsd_port = {port}\nprefix = \"test\"\ntags = {{ env = \"ci\" }}\n");
    let config = write_config(
        "courier.toml",
        &one_route_config(&db.url, &topic, &destination.url(), &extra),
    );
    let worker = start_worker(config.to_str().expect("path"));

    let wanted = [
        "test.courier_ranges_leased_total:",
        "test.courier_ranges_checkpointed_total:",
        "test.courier_messages_delivered_total:",
        "test.courier_delivery_attempts_total:",
        "test.courier_batch_latency_seconds:",
        "test.courier_end_to_end_latency_seconds:",
        "test.courier_lag_messages:",
    ];
    let mut seen: Vec<String> = Vec::new();
    let mut buffer = vec![0u8; 65_536];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !wanted
        .iter()
        .all(|w| seen.iter().any(|line| line.starts_with(w)))
    {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let received = tokio::time::timeout(left, udp.recv(&mut buffer)).await;
        let Ok(Ok(n)) = received else {
            panic!(
                "metrics never all arrived; missing {:?}",
                wanted
                    .iter()
                    .filter(|w| !seen.iter().any(|l| l.starts_with(*w)))
                    .collect::<Vec<_>>()
            );
        };
        seen.extend(
            String::from_utf8_lossy(&buffer[..n])
                .lines()
                .map(str::to_owned),
        );
    }
    drop(worker);
    let line = |prefix: &str| {
        seen.iter()
            .find(|l| l.starts_with(prefix))
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        line("test.courier_ranges_checkpointed_total:").contains("|c|#"),
        "counter: {}",
        line("test.courier_ranges_checkpointed_total:")
    );
    assert!(
        line("test.courier_batch_latency_seconds:").contains("|d|#"),
        "distribution: {}",
        line("test.courier_batch_latency_seconds:")
    );
    assert!(
        line("test.courier_lag_messages:").contains("|g|#"),
        "gauge: {}",
        line("test.courier_lag_messages:")
    );
    let attempts = line("test.courier_delivery_attempts_total:");
    for tag in ["env:ci", "route:r", "destination:d", "outcome:success"] {
        assert!(attempts.contains(tag), "tag {tag} missing from {attempts}");
    }
}

/// Runs `command` to its exit, or kills it and fails the test after `limit` (a worker that should have
/// refused to start runs forever).
fn exit_within(mut command: std::process::Command, limit: Duration) -> std::process::Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn courier");
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().expect("poll child").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("collect output");
            panic!(
                "courier still ran after {limit:?}; stderr: {}",
                stderr_of(&output)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("collect output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_another_url_and_format_refuses_to_start_until_the_change_is_recorded() {
    let db = TestDb::migrated().await;
    let topic = topic_with("identity", 1, 100).await;
    let (a, b) = (sink().await, sink().await);
    let config_a = write_config("a.toml", &one_route_config(&db.url, &topic, &a.url(), ""));
    let url_b = b.url().replacen("http://", "http://deploy:sekrit@", 1);
    let config_b = write_config(
        "b.toml",
        &one_route_config(&db.url, &topic, &url_b, "").replace(
            "max_batch_messages = 50",
            "max_batch_messages = 50\nformat = \"ndjson\"",
        ),
    );
    let (config_a, config_b) = (
        config_a.to_str().expect("path"),
        config_b.to_str().expect("path"),
    );
    let worker_a = start_worker(config_a);
    a.wait_until(|s| s.delivered_elements >= 100, Duration::from_secs(120))
        .await
        .expect("the first worker delivers the topic");

    // A second worker configured differently would split the route: it refuses, naming what differs.
    let output = exit_within(
        courier(&["run", "--config", config_b]),
        Duration::from_secs(60),
    );
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    let redacted_b = b.url().replacen("http://", "http://deploy:***@", 1);
    for expected in [
        format!(
            "destination.url: recorded {:?}, configured {redacted_b:?}",
            a.url()
        ),
        "destination.format: recorded \"json\", configured \"ndjson\"".to_owned(),
        "courier routes update --config FILE r".to_owned(),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in: {stderr}"
        );
    }
    assert!(!stderr.contains("sekrit"), "a password leaked: {stderr}");
    assert_eq!(
        b.stats().requests,
        0,
        "the refused worker delivered nothing"
    );

    // A typo in the flag is refused before anything is recorded.
    let output = courier(&["run", "--config", config_b, "--accept-route-changes", "rr"])
        .output()
        .expect("run");
    assert!(
        !output.status.success() && stderr_of(&output).contains("no [routes.rr] section"),
        "{}",
        stderr_of(&output)
    );
    // A dry run shows the change and records nothing: the first worker's settings still hold.
    let output = courier(&["routes", "update", "--config", config_b, "--dry-run", "r"])
        .output()
        .expect("routes update --dry-run");
    assert!(
        output.status.success() && stdout_of(&output).contains("would change"),
        "{}{}",
        stdout_of(&output),
        stderr_of(&output)
    );
    let output = exit_within(
        courier(&["run", "--config", config_b]),
        Duration::from_secs(60),
    );
    assert!(!output.status.success(), "a dry run must record nothing");

    // The deliberate change: recorded once, then the fleet rolls to the new configuration.
    let output = courier(&["routes", "update", "--config", config_b, "r"])
        .output()
        .expect("routes update");
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert!(
        stdout_of(&output).contains("destination.format: recorded \"json\", configured \"ndjson\""),
        "{}",
        stdout_of(&output)
    );
    let output = courier(&["routes", "list", "--config", config_b])
        .output()
        .expect("routes list");
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert!(
        stdout_of(&output).contains(&format!("destination.url = {redacted_b:?}")),
        "{}",
        stdout_of(&output)
    );
    drop(worker_a);
    let _worker_b = start_worker(config_b);
    let producer = courier_kafka::Producer::connect(courier_kafka::KafkaConfig::new(
        courier_core::local::kafka_brokers(),
    ))
    .await
    .expect("producer");
    let records = (0..50).map(|seq| {
        let body = serde_json::json!({ "id": format!("after-{seq}") });
        (Some(0), None, body.to_string().into_bytes())
    });
    producer.send_batch(&topic, records).await.expect("produce");
    b.wait_until(|s| s.delivered_elements >= 50, Duration::from_secs(120))
        .await
        .expect("the new worker delivers to the new URL");
    assert!(
        b.received()
            .iter()
            .all(|r| r.content_type.as_deref() == Some("application/x-ndjson")),
        "the new worker sends NDJSON"
    );
}

/// docs/runbooks/lag.md tells the operator to pause the route of a failing destination: no worker leases
/// it while the planner keeps carving (the lag stays visible), `courier status` says so until someone
/// resumes it, and the timeline records both with who and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_route_is_not_delivered_is_shown_by_status_and_resumes_recorded_in_changes() {
    let db = TestDb::migrated().await;
    let topic = topic_with("pause", 1, 400).await;
    let destination = sink().await;
    let config = write_config(
        "courier.toml",
        &one_route_config(&db.url, &topic, &destination.url(), ""),
    );
    let config = config.to_str().expect("path");
    // Recorded as a worker would (settings are adopted from the first worker), so it can be paused first.
    let spec = courier_store::RouteSpec {
        name: "r".into(),
        topic: topic.clone(),
        destination: "d".into(),
    };
    db.store()
        .await
        .ensure_route(&spec, &[(0, 0)])
        .await
        .expect("record the route");
    let output = courier(&[
        "pause",
        "r",
        "--reason",
        "destination down, INC-7",
        "--by",
        "alice",
        "--config",
        config,
    ])
    .output()
    .expect("pause");
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert!(
        stdout_of(&output).contains("Paused route r"),
        "{}",
        stdout_of(&output)
    );

    let _worker = start_worker(config);
    // The planner keeps carving while the route is paused, so the lag stays visible ...
    wait_for_count(
        &db,
        "SELECT frontier FROM courier_partitions WHERE route = 'r' AND partition = 0",
        400,
    )
    .await;
    // ... and no worker leases it. Showing that nothing happens takes a while: 50 poll intervals.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(destination.stats().delivered_elements, 0);
    let ranges = db.store().await.ranges("r").await.expect("ranges");
    assert!(
        ranges.iter().all(|range| range.epoch == 0),
        "a paused route's range was leased: {ranges:?}"
    );

    let output = courier(&["status", "--config", config])
        .output()
        .expect("status");
    let text = stdout_of(&output);
    assert_eq!(
        output.status.code(),
        Some(3),
        "a paused route needs attention: {text}"
    );
    for needle in ["PAUSED", "INC-7", "alice", "courier resume r"] {
        assert!(text.contains(needle), "{needle:?} missing: {text}");
    }
    let output = courier(&["status", "--json", "--config", config])
        .output()
        .expect("status --json");
    let status: Value = serde_json::from_slice(&output.stdout).expect("status --json");
    assert_eq!(status["paused"][0]["route"], "r", "{status}");

    let output = courier(&["resume", "r", "--reason", "fixed", "--config", config])
        .output()
        .expect("resume");
    assert!(output.status.success(), "{}", stderr_of(&output));
    destination
        .wait_until(|s| s.delivered_elements >= 400, Duration::from_secs(120))
        .await
        .expect("everything delivered once resumed");

    let output = courier(&[
        "changes", "--since", "1h", "--route", "r", "--config", config,
    ])
    .output()
    .expect("changes");
    let text = stdout_of(&output);
    assert!(output.status.success(), "{}", stderr_of(&output));
    for needle in ["route.paused", "route.resumed", "INC-7", "[alice]"] {
        assert!(text.contains(needle), "{needle:?} missing: {text}");
    }
}

/// A destination's circuit opening and closing again reach "what changed?" once each: transitions, not
/// the requests refused while it is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_circuit_opening_and_closing_is_recorded_once_each() {
    let db = TestDb::migrated().await;
    let topic = topic_with("circuit", 1, 400).await;
    let destination = sink().await;
    destination.set_behaviour(Behaviour::Status(500));
    let config = one_route_config(&db.url, &topic, &destination.url(), "").replacen(
        "max_batch_messages = 50",
        "max_batch_messages = 50\npause_after_failures = 3\npause_for = \"300ms\"",
        1,
    );
    let config = write_config("courier.toml", &config);
    let _worker = start_worker(config.to_str().expect("path"));
    let count = |kind: &str| {
        format!("SELECT count(*) FROM courier_changes WHERE kind = '{kind}' AND destination = 'd'")
    };
    wait_for_count(&db, &count("destination.circuit_opened"), 1).await;
    destination.set_behaviour(Behaviour::Ok);
    wait_for_count(&db, &count("destination.circuit_closed"), 1).await;
    let client = db.raw_client().await;
    let opened: i64 = client
        .query_one(count("destination.circuit_opened").as_str(), &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(opened, 1, "probes refused while open are not events");
}
