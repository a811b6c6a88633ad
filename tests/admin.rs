//! The admin endpoint of a running worker, seen as a person sees it (a real headless Chromium loads the
//! status page), and `courier status` being honest: a route nobody runs, a destination failing now and a
//! broker that does not answer all need attention, and the last costs seconds.

use crate::common::{self, Worker};

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{courier, one_route_config, sink, stderr_of, stdout_of, topic_with, write_config};
use courier_sink::Behaviour;
use courier_store::{RouteSettings, RouteSpec};
use courier_testkit::{unique_name, TestDb};
use serde_json::Value;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `target/` of this build (the binary lives in `target/debug/`).
fn target_dir() -> PathBuf {
    let binary = PathBuf::from(common::COURIER);
    binary
        .parent()
        .and_then(|debug| debug.parent())
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// Debian's Chromium: `COURIER_CHROMIUM`, or what `scripts/chromium.sh` finds (installing it if missing,
/// as `scripts/postgres.sh` does PostgreSQL).
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("COURIER_CHROMIUM") {
        return PathBuf::from(path);
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/chromium.sh");
    let output = Command::new("bash")
        .arg(&script)
        .output()
        .expect("run scripts/chromium.sh");
    assert!(
        output.status.success(),
        "scripts/chromium.sh could not provide Chromium: {}",
        stderr_of(&output)
    );
    PathBuf::from(stdout_of(&output).trim())
}

/// Runs headless Chromium with `args` on `url`, bounded in time; its stdout.
fn headless(args: &[&str], url: &str) -> String {
    let profile = std::env::temp_dir().join(unique_name("chromium-profile"));
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chromium");
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().expect("poll chromium").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("headless chromium did not finish within 90s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().expect("chromium output");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        output.status.success(),
        "chromium failed: {}",
        stderr_of(&output)
    );
    stdout_of(&output)
}

/// Polls `url` until `accept` says yes about (status, body), or fails after `limit`.
async fn poll_until(
    client: &reqwest::Client,
    url: &str,
    limit: Duration,
    accept: impl Fn(u16, &str) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = String::from("no answer yet");
    loop {
        if let Ok(response) = client.get(url).send().await {
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            if accept(status, &body) {
                return body;
            }
            last = format!("HTTP {status}: {body}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} never gave the expected answer; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `<tr ...>...</tr>` whose id is `id`, from an HTML document.
fn row<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html
        .find(&format!("<tr id=\"{id}\""))
        .unwrap_or_else(|| panic!("no row {id} in {html}"));
    let end = html[start..]
        .find("</tr>")
        .map_or(html.len(), |end| start + end);
    &html[start..end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_of_a_running_worker_shows_a_failing_destination_with_its_error() {
    let db = TestDb::migrated().await;
    let topic = topic_with("admin", 1, 40).await;
    let destination = sink().await;
    destination.set_behaviour(Behaviour::StatusWithBody(
        503,
        "upstream on fire, try later".into(),
    ));
    let port = free_port();
    let extra = format!("[admin]\nlisten = \"127.0.0.1:{port}\"\nrefresh = \"1s\"\n");
    let config = write_config(
        "courier.toml",
        &one_route_config(&db.url, &topic, &destination.url(), &extra),
    );
    let _worker = Worker(
        courier(&["run", "--config", config.to_str().expect("path")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn courier run"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();

    // Ready once the store and Kafka answer; alive while its loops come round.
    let ready = poll_until(
        &client,
        &format!("{base}/readyz"),
        Duration::from_secs(90),
        |status, _| status == 200,
    )
    .await;
    assert!(ready.starts_with("ready"), "{ready}");
    let health = poll_until(
        &client,
        &format!("{base}/healthz"),
        Duration::from_secs(10),
        |s, _| s == 200,
    )
    .await;
    assert!(
        health.contains("planner") && health.contains("delivery"),
        "{health}"
    );

    // The destination refuses; once an attempt has failed, the page says so in its row.
    destination
        .wait_until(|s| s.failed >= 1, Duration::from_secs(60))
        .await
        .expect("the destination was tried");
    let html = poll_until(
        &client,
        &format!("{base}/"),
        Duration::from_secs(60),
        |_, body| body.contains("upstream on fire"),
    )
    .await;
    assert!(row(&html, "destination-d").contains("upstream on fire"));

    // Prometheus sees the failed attempts, by outcome.
    let metrics = poll_until(
        &client,
        &format!("{base}/metrics"),
        Duration::from_secs(30),
        |_, body| body.contains("courier_delivery_attempts_total{"),
    )
    .await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("courier_delivery_attempts_total{")
                && l.contains("outcome=\"retry\"")),
        "{metrics}"
    );

    // What a person sees: the DOM a real browser built from the page.
    let dom = headless(&["--dump-dom"], &format!("{base}/"));
    let destination_row = row(&dom, "destination-d");
    assert!(
        destination_row.contains("class=\"bad\"")
            && destination_row.contains("upstream on fire")
            && destination_row.contains(&destination.url()),
        "{destination_row}"
    );
    assert!(
        dom.contains("data-code=\"retrying-ranges\"")
            && dom.contains("docs/runbooks/retrying-ranges.md"),
        "the failing destination is an attention item with its runbook: {dom}"
    );
    assert!(
        row(&dom, "route-r-0").contains(&topic),
        "routes and partitions are listed"
    );
    assert!(dom.contains("(this one)"), "the worker lists itself");

    // And a picture of it, for people reviewing the run.
    let screenshot = target_dir().join("admin-status-page.png");
    let _ = std::fs::remove_file(&screenshot);
    headless(
        &[
            "--window-size=1280,1000",
            &format!("--screenshot={}", screenshot.display()),
        ],
        &format!("{base}/"),
    );
    let png = std::fs::read(&screenshot).expect("the screenshot was written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot, {} bytes",
        png.len()
    );

    // The destination recovers: everything is delivered, the page says all is well and shows the
    // end-to-end latency this worker measured.
    destination.set_behaviour(Behaviour::Ok);
    let html = poll_until(
        &client,
        &format!("{base}/"),
        Duration::from_secs(90),
        |_, body| body.contains("id=\"all-well\""),
    )
    .await;
    let route_row = row(&html, "route-r-0");
    assert!(
        route_row.contains(" ms</td>") && !route_row.contains("class=\"bad\""),
        "p50 and p99 shown for the route: {route_row}"
    );

    let body = client
        .get(format!("{base}/status.json"))
        .send()
        .await
        .expect("status.json answers")
        .text()
        .await
        .expect("status.json body");
    let status: Value = serde_json::from_str(&body).expect("status.json is JSON");
    assert_eq!(
        (
            &status["schema_version"],
            &status["ok"],
            &status["routes"][0]["live"]
        ),
        (&Value::from(2), &Value::from(true), &Value::from(true)),
        "the same report as `courier status --json`: {status}"
    );

    // The store goes away: not ready (with the reason), yet alive: a restart would not bring it back.
    let (admin_db, connection) =
        tokio_postgres::connect(&courier_core::local::database_url(), tokio_postgres::NoTls)
            .await
            .expect("connect to the server's own database");
    tokio::spawn(connection);
    admin_db
        .batch_execute(&format!(
            "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = '{name}' AND pid <> pg_backend_pid();",
            name = db.name
        ))
        .await
        .expect("cut the worker off its store");
    let not_ready = poll_until(
        &client,
        &format!("{base}/readyz"),
        Duration::from_secs(30),
        |s, _| s == 503,
    )
    .await;
    assert!(
        not_ready.contains("the store") && not_ready.contains("store-unavailable.md"),
        "{not_ready}"
    );
    let alive = client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz answers");
    assert_eq!(alive.status().as_u16(), 200, "{:?}", alive.text().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_needs_attention_for_routes_nobody_runs_and_a_silent_broker_costs_seconds() {
    let db = TestDb::migrated().await;
    let config_text = format!(
        "{}\n[routes.r2]\ntopic = \"other\"\ndestination = \"d\"\n",
        one_route_config(&db.url, "orders", "http://127.0.0.1:9/", "")
    );
    let config = write_config("courier.toml", &config_text);
    let config = config.to_str().expect("path");

    // A fresh database, two routes configured, no worker ever started: not OK.
    let output = courier(&["status", "--config", config, "--json"])
        .output()
        .expect("status");
    assert_eq!(output.status.code(), Some(3), "{}", stderr_of(&output));
    let status: Value = serde_json::from_str(&stdout_of(&output)).expect("JSON");
    assert_eq!(status["schema_version"], 2);
    assert_eq!(status["ok"], false);
    let items = status["attention"].as_array().expect("attention items");
    let not_started: Vec<&str> = items
        .iter()
        .filter(|item| item["code"] == "route-not-started")
        .filter_map(|item| item["route"].as_str())
        .collect();
    assert_eq!(not_started, ["r", "r2"], "{items:?}");
    assert!(items
        .iter()
        .all(|item| item["runbook"] == "docs/runbooks/no-live-worker.md"));
    let output = courier(&["status", "--config", config])
        .output()
        .expect("status");
    let text = stdout_of(&output);
    assert!(
        !text.contains("OK: nothing needs attention")
            && text.contains("[route-not-started] route r ")
            && text.contains("Runbook: docs/runbooks/no-live-worker.md"),
        "{text}"
    );

    // A route recorded once (a worker ran and left), and a broker that accepts connections but never
    // answers: the lag is unknown, which needs attention, and finding that out takes seconds.
    let store = db.store().await;
    store
        .register_route(
            &RouteSpec {
                name: "r".into(),
                topic: "orders".into(),
                destination: "d".into(),
            },
            &RouteSettings::default(),
            &[(0, 0)],
            false,
        )
        .await
        .expect("record the route");
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("a port that never answers");
    let silent_address = silent.local_addr().expect("address").to_string();
    let started = Instant::now();
    let output = courier(&["status", "--config", config, "--json", "--timeout", "2s"])
        .env("KAFKA_BROKERS", &silent_address)
        .output()
        .expect("status");
    let took = started.elapsed();
    assert_eq!(output.status.code(), Some(3), "{}", stderr_of(&output));
    assert!(
        took < Duration::from_secs(15),
        "status took {took:?} against a silent broker"
    );
    let status: Value = serde_json::from_str(&stdout_of(&output)).expect("JSON");
    let items = status["attention"].as_array().expect("attention items");
    let codes: Vec<(&str, Option<&str>)> = items
        .iter()
        .filter_map(|item| Some((item["code"].as_str()?, item["route"].as_str())))
        .collect();
    assert!(
        codes.contains(&("no-live-worker", Some("r")))
            && codes.contains(&("route-not-started", Some("r2")))
            && codes.contains(&("kafka-unreachable", None)),
        "{codes:?}"
    );
    let no_worker = items
        .iter()
        .find(|item| item["code"] == "no-live-worker")
        .expect("no-live-worker item");
    assert!(
        no_worker["since"].is_string() && no_worker["since_unix"].is_i64(),
        "says since when: {no_worker}"
    );
    assert_eq!(status["kafka"]["reachable"], false);
    assert!(status["partitions"][0]["lag"].is_null(), "lag is unknown");
    drop(silent);
}

#[test]
fn logs_are_json_lines_on_request_never_coloured_into_a_pipe_and_help_names_rust_log() {
    // A worker that cannot reach its store logs its retries, then gives up: enough to read its logs.
    let config = write_config(
        "courier.toml",
        &format!(
            "{}\n[admin]\nlisten = \"\"\n",
            one_route_config(
                "postgres://courier:courier@127.0.0.1:9/courier",
                "t",
                "http://127.0.0.1:9/",
                ""
            )
            .replace(
                "heartbeat_every = \"1s\"",
                "heartbeat_every = \"1s\"\nboot_timeout = \"1s\""
            )
        ),
    );
    let config = config.to_str().expect("path");

    let output = courier(&["--log-format", "json", "run", "--config", config])
        .output()
        .expect("courier run");
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.len() >= 2, "retries and the final error: {stderr}");
    for line in &lines {
        let event: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            event["level"].is_string() && event["message"].is_string(),
            "{line}"
        );
    }
    assert!(
        lines
            .last()
            .is_some_and(|l| l.contains("\"ERROR\"") && l.contains("store-unavailable.md")),
        "the final error is a JSON line too: {stderr}"
    );

    // Text, the default; stderr is a pipe here, so no colour codes, NO_COLOR or not.
    let output = courier(&["run", "--config", config])
        .env_remove("NO_COLOR")
        .output()
        .expect("courier run");
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("WARN") && !stderr.contains('\u{1b}'),
        "plain text into a pipe: {stderr:?}"
    );

    let help = stdout_of(&courier(&["--help"]).output().expect("courier --help"));
    assert!(
        help.contains("RUST_LOG") && help.contains("--log-format") && help.contains("NO_COLOR"),
        "{help}"
    );
}
