//! courier as its users run it: real processes of the `courier` binary, killed, misconfigured, demoed.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use courier_core::local::kafka_brokers;
use courier_core::RangeState;
use courier_sink::Behaviour;
use courier_testkit::TestDb;
use serde_json::Value;

use crate::common;

use common::{courier, stderr_of, write_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_range_loses_nothing_and_duplicates_stay_inside_its_ranges() {
    const PARTITIONS: i32 = 4;
    const PER_PARTITION: usize = 1500;
    let db = TestDb::migrated().await;
    let topic = common::topic_with("kill", PARTITIONS, PER_PARTITION).await;
    let sink = common::sink().await;
    sink.set_behaviour(Behaviour::Delay(Duration::from_millis(60)));
    let config = write_config(
        "courier.toml",
        &common::one_route_config(&db.url, &topic, &sink.url(), ""),
    );
    let config = config.to_str().expect("utf-8 path");
    let spawn = || {
        courier(&["run", "--config", config])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn courier")
    };
    let mut victim = spawn();
    let mut survivor = spawn();
    let victim_owner = format!("%-{}-%", victim.id());

    // Kill the victim while it holds a lease, after it has delivered something.
    let store = db.store().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let held: Vec<i64> = loop {
        let leases = store.leases_held_by(&victim_owner).await.expect("leases");
        if !leases.is_empty() && sink.stats().delivered > 0 {
            victim.kill().expect("SIGKILL");
            break leases.iter().map(|range| range.id).collect();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the victim never held a lease"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let _ = victim.wait();

    // The survivor delivers everything, the victim's ranges included (after their lease expires).
    let total = PARTITIONS as usize * PER_PARTITION;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let _ = sink
            .wait_until(
                |s| s.delivered_elements as usize >= total,
                Duration::from_millis(500),
            )
            .await;
        if sink
            .count_by(|e: &Value| e.get("id").and_then(Value::as_str).map(str::to_owned))
            .len()
            == total
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every message arrived after the kill"
        );
    }
    // ... and settles every range, the victim's included, before it is stopped.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let open = store
            .range_counts(Some("r"))
            .await
            .expect("open ranges")
            .not_done();
        if open == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{open} range(s) never settled after the kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = survivor.kill();
    let _ = survivor.wait();

    // Duplicates fall only inside ranges whose lease was interrupted (leased again: epoch > 1).
    let mut batches_by_id: HashMap<String, Vec<(i32, i64)>> = HashMap::new();
    for request in sink.received() {
        let partition = request.partition.expect("partition header");
        let (start, _) = request.offset_bounds().expect("offsets header");
        for element in &request.elements {
            if let Some(id) = element.get("id").and_then(Value::as_str) {
                batches_by_id
                    .entry(id.to_owned())
                    .or_default()
                    .push((partition, start));
            }
        }
    }
    let ranges = store.ranges("r").await.expect("ranges");
    let mut duplicates = 0;
    for (id, deliveries) in batches_by_id.iter().filter(|(_, d)| d.len() > 1) {
        duplicates += deliveries.len() - 1;
        for (partition, offset) in deliveries {
            let range = ranges
                .iter()
                .find(|r| r.partition == *partition && r.contains(*offset))
                .expect("range of a duplicate");
            assert!(
                range.epoch > 1,
                "message {id} was delivered twice outside an interrupted range"
            );
        }
    }
    let held_now = store.ranges_by_id(&held).await.expect("held ranges");
    assert_eq!(
        held_now.len(),
        held.len(),
        "every held range is still there"
    );
    for range in &held_now {
        assert_eq!(
            range.state,
            RangeState::Done,
            "a range the victim held was not delivered by the survivor"
        );
        assert!(range.epoch > 1, "the victim's range was leased again");
    }
    eprintln!(
        "killed worker held {} range(s); {duplicates} duplicate deliveries, all inside them",
        held.len()
    );
}

#[tokio::test]
async fn the_demo_delivers_every_event_and_says_so() {
    let db = TestDb::create().await;
    let output = courier(&["demo", "--events", "3000", "--partitions", "3", "--quiet"])
        .env("DATABASE_URL", &db.url)
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed: {stdout}\n{}",
        stderr_of(&output)
    );
    assert!(
        stdout.contains("delivered           3000 (0 lost)"),
        "{stdout}"
    );
    assert!(stdout.contains("end-to-end p99"), "{stdout}");
}

#[test]
fn a_bad_configuration_ends_with_one_clear_line_and_a_failure_exit() {
    let config = write_config(
        "bad.toml",
        r#"
        [store]
        url = "postgres://courier:courier@127.0.0.1:54329/courier"
        [store.timeouts]
        client_deadline = "2s"
        statement_timeout = "3s"
        [kafka]
        brokers = "127.0.0.1:9092"
        "#,
    );
    let output = courier(&["run", "--config", config.to_str().expect("path")])
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("statement_timeout") && stderr.contains("client_deadline"),
        "{stderr}"
    );

    let config = write_config("typo.toml", "[store]\nurl = \"postgres://x@127.0.0.1/x\"\n[kafka]\nbrokers = \"x\"\n[worker]\nlease_tll = \"5s\"\n");
    let output = courier(&["check-config", "--config", config.to_str().expect("path")])
        .output()
        .expect("run");
    assert!(!output.status.success());
    assert!(
        stderr_of(&output).contains("lease_tll"),
        "{}",
        stderr_of(&output)
    );
}

#[tokio::test]
async fn an_unreachable_store_is_retried_until_the_boot_timeout_then_named_and_a_wrong_password_fails_at_once(
) {
    // A store that does not answer is waited for, politely, until the boot timeout: one line per
    // attempt, then one error naming the store, the timeout and the runbook.
    let output = courier(&["migrate", "--boot-timeout", "3s"])
        .env(
            "DATABASE_URL",
            "postgres://courier:courier@127.0.0.1:1/courier",
        )
        .env("NO_COLOR", "1")
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    let retries = stderr
        .lines()
        .filter(|l| l.contains("Boot: cannot apply migrations yet; retrying"))
        .count();
    assert!(retries >= 2, "several attempts, each logged: {stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("courier: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    for needle in [
        "could not reach the store (PostgreSQL) at postgres://courier:***@127.0.0.1:1/courier",
        "within the boot timeout (3s",
        "make postgres",
        "docs/runbooks/store-unavailable.md",
    ] {
        assert!(errors[0].contains(needle), "{needle:?} missing: {stderr}");
    }

    let db = TestDb::create().await;
    let wrong = db.url.replacen("courier:courier@", "courier:wrong@", 1);
    let output = courier(&["migrate"])
        .env("DATABASE_URL", &wrong)
        .output()
        .expect("run");
    let stderr = stderr_of(&output);
    assert!(
        !output.status.success() && stderr.contains("refused the login"),
        "{stderr}"
    );
}

#[tokio::test]
async fn run_refuses_a_database_without_the_schema_naming_courier_migrate() {
    let db = TestDb::create().await;
    let config = write_config(
        "courier.toml",
        &format!(
            "[store]\nurl = \"{}\"\n[kafka]\nbrokers = \"{}\"\n[destinations.d]\nurl = \"http://127.0.0.1:9/\"\n[routes.r]\ntopic = \"t\"\ndestination = \"d\"\n",
            db.url,
            kafka_brokers()
        ),
    );
    let output = courier(&["run", "--config", config.to_str().expect("path")])
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    assert!(stderr.contains("courier migrate"), "{stderr}");
    // Nothing was written: the database is still empty.
    let client = db.raw_client().await;
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(tables, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_ranges_and_leaves_no_lease_behind() {
    let db = TestDb::migrated().await;
    let topic = common::topic_with("drain", 2, 2000).await;
    let sink = common::sink().await;
    // Slow enough that ranges are in flight when the signal comes, fast enough to drain in time.
    sink.set_behaviour(Behaviour::Delay(Duration::from_millis(30)));
    let config = write_config(
        "courier.toml",
        &common::one_route_config(&db.url, &topic, &sink.url(), ""),
    );
    let worker = courier(&["run", "--config", config.to_str().expect("path")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let owner = format!("%-{}-%", worker.id());
    let client = db.raw_client().await;
    let store = db.store().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let leased = store.leases_held_by(&owner).await.expect("leases");
        if !leased.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker never leased a range"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || worker.wait_with_output())
        .await
        .expect("join")
        .expect("wait");
    assert!(
        exit.status.success(),
        "a drained worker exits 0: {}",
        String::from_utf8_lossy(&exit.stderr)
    );
    let stderr = String::from_utf8_lossy(&exit.stderr);
    assert!(
        stderr.contains("Draining") && stderr.contains("Worker stopped"),
        "{stderr}"
    );
    let left = store.leases_held_by(&owner).await.expect("leases").len();
    assert_eq!(
        left, 0,
        "every in-flight range was finished or released, none left to expire"
    );
    let stopped: bool = client
        .query_one(
            "SELECT stopped_at IS NOT NULL FROM courier_workers WHERE id LIKE $1",
            &[&owner],
        )
        .await
        .expect("worker row")
        .get(0);
    assert!(stopped, "the worker recorded its stop");
}

/// SIGHUP (a closed SSH session, `kill -HUP` by habit) once killed a worker on the spot: exit 129, leases
/// left to expire, no log line, and `courier status` still listing it as live. It drains like SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_drains_like_sigterm_records_the_stop_and_says_so() {
    let db = TestDb::migrated().await;
    let topic = common::topic_with("hup", 2, 1000).await;
    let sink = common::sink().await;
    sink.set_behaviour(Behaviour::Delay(Duration::from_millis(30)));
    let config = write_config(
        "courier.toml",
        &common::one_route_config(&db.url, &topic, &sink.url(), ""),
    );
    let config = config.to_str().expect("path");
    let worker = courier(&["run", "--config", config])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let owner = format!("%-{}-%", worker.id());
    let client = db.raw_client().await;
    let store = db.store().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let leased = store.leases_held_by(&owner).await.expect("leases");
        if !leased.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker never leased a range"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = Command::new("kill")
        .args(["-HUP", &worker.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || worker.wait_with_output())
        .await
        .expect("join")
        .expect("wait");
    let stderr = String::from_utf8_lossy(&exit.stderr);
    assert!(
        exit.status.success(),
        "a SIGHUP'd worker drains and exits 0, got {:?}: {stderr}",
        exit.status
    );
    assert!(
        stderr.contains("Received SIGHUP")
            && stderr.contains("Draining")
            && stderr.contains("Worker stopped"),
        "{stderr}"
    );
    let left = store.leases_held_by(&owner).await.expect("leases").len();
    assert_eq!(left, 0, "every in-flight range was finished or released");
    let stopped: bool = client
        .query_one(
            "SELECT stopped_at IS NOT NULL FROM courier_workers WHERE id LIKE $1",
            &[&owner],
        )
        .await
        .expect("worker row")
        .get(0);
    assert!(
        stopped,
        "the worker recorded its stop, so status no longer counts it as live"
    );

    // "What changed?" has its start (with version and configuration) and its drained stop.
    let output = courier(&["changes", "--since", "1h", "--json", "--config", config])
        .output()
        .expect("courier changes");
    assert!(output.status.success(), "{}", stderr_of(&output));
    let events: Vec<Value> =
        serde_json::from_slice(&output.stdout).expect("changes --json is a JSON array");
    let of_worker = |kind: &str| {
        events
            .iter()
            .filter(|e| e["kind"] == kind)
            .filter(|e| {
                e["actor"]
                    .as_str()
                    .is_some_and(|a| a.contains(&format!("-{}-", exit_pid(&owner))))
            })
            .map(|e| e["summary"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    let started = of_worker("worker.started");
    assert_eq!(started.len(), 1, "{events:?}");
    assert!(
        started[0].contains("version") && started[0].contains("config sha256:"),
        "{}",
        started[0]
    );
    let stopped = of_worker("worker.stopped");
    assert_eq!(stopped.len(), 1, "{events:?}");
    assert!(stopped[0].contains("stopped"), "{}", stopped[0]);
}

/// The pid inside a `%-PID-%` owner pattern.
fn exit_pid(owner: &str) -> &str {
    owner.trim_matches(|c| c == '%' || c == '-')
}

#[tokio::test]
async fn migrate_names_the_database_it_changed_and_never_guesses_one() {
    // Nothing names a database: refused, naming the ways to name one, the built-in one only with --dev.
    let output = courier(&["migrate"])
        .env_remove("COURIER_CONFIG")
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    for needle in [
        "no database named",
        "--config FILE",
        "DATABASE_URL",
        "--dev",
    ] {
        assert!(stderr.contains(needle), "{needle:?} missing: {stderr}");
    }
    assert!(
        !stderr.contains("courier:courier@"),
        "the password is shown: {stderr}"
    );

    let db = TestDb::create().await;
    // --dev and DATABASE_URL naming another database contradict each other: refused, naming both.
    let output = courier(&["migrate", "--dev"])
        .env_remove("COURIER_CONFIG")
        .env("DATABASE_URL", &db.url)
        .output()
        .expect("run");
    let stderr = stderr_of(&output);
    assert!(
        !output.status.success()
            && stderr.contains("--dev")
            && stderr.contains(&courier_store::url::redact(&db.url)),
        "{stderr}"
    );

    let output = courier(&["migrate"])
        .env("DATABASE_URL", &db.url)
        .output()
        .expect("run");
    assert!(output.status.success(), "{}", stderr_of(&output));
    let redacted = courier_store::url::redact(&db.url);
    let stdout = common::stdout_of(&output);
    assert!(
        stdout.contains("Applied migrations") && stdout.contains(&format!("to {redacted}")),
        "{stdout}"
    );
    assert!(!stdout.contains("courier:courier@"), "{stdout}");
}

// Multi-threaded: the sink serves the destination check while this thread waits for the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_connect_checks_each_service_on_its_own_line_and_names_what_failed() {
    let db = TestDb::migrated().await;
    let topic = common::topic_with("check", 2, 0).await;
    let sink = common::sink().await;
    let good = write_config(
        "good.toml",
        &common::one_route_config(&db.url, &topic, &sink.url(), ""),
    );
    let output = courier(&[
        "check-config",
        "--connect",
        "--config",
        good.to_str().expect("path"),
    ])
    .output()
    .expect("run");
    let stdout = common::stdout_of(&output);
    assert!(output.status.success(), "{stdout}{}", stderr_of(&output));
    for line in [
        "  ok    store: ",
        "  ok    schema: version ",
        "  ok    kafka: ",
        &format!("  ok    topic {topic:?} (route r): 2 partition(s)"),
        "  ok    destination d: ",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(line)),
            "no line {line:?}:\n{stdout}"
        );
    }
    assert!(stdout.contains("All checks passed."), "{stdout}");

    // A wrong store URL, a topic that does not exist, a destination nobody listens at: each its own
    // FAIL line; the schema cannot be checked without the store.
    let missing = courier_testkit::unique_name("no-such-topic");
    let bad = write_config(
        "bad.toml",
        &common::one_route_config(
            "postgres://courier:courier@127.0.0.1:1/courier",
            &missing,
            "http://127.0.0.1:1/hooks",
            "",
        ),
    );
    let output = courier(&[
        "check-config",
        "--connect",
        "--config",
        bad.to_str().expect("path"),
    ])
    .output()
    .expect("run");
    let stdout = common::stdout_of(&output);
    let stderr = stderr_of(&output);
    assert!(!output.status.success(), "{stdout}");
    for line in [
        "  FAIL  store: cannot reach the store at 127.0.0.1:1/courier",
        "  skip  schema: ",
        "  ok    kafka: ",
        &format!("  FAIL  topic {missing:?} (route r): topic {missing:?} does not exist"),
        "  FAIL  destination d: http://127.0.0.1:1/hooks: no HTTP answer",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(line)),
            "no line {line:?}:\n{stdout}"
        );
    }
    assert!(
        stderr.contains(&format!(
            "3 check(s) failed: store, topic {missing:?} (route r), destination d"
        )),
        "{stderr}"
    );
}
