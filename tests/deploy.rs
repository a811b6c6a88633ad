//! What an installation runs: the systemd unit, the Kubernetes example and the least-privilege roles of
//! `deploy/`, checked against the binary, the defaults and the real local PostgreSQL.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{courier, one_route_config, sink, stderr_of, topic_with, write_config, COURIER};
use courier_testkit::{unique_name, TestDb};
use tokio_postgres::error::SqlState;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(file)
}

fn read(file: &str) -> String {
    std::fs::read_to_string(deploy(file)).unwrap_or_else(|e| panic!("read deploy/{file}: {e}"))
}

/// The longest a default worker takes to stop after SIGTERM: the drain, then releasing what is left
/// (bounded by twice the client deadline, see `Worker::run`).
fn default_stop_time() -> Duration {
    courier_worker::WorkerConfig::default().drain_timeout
        + courier_store::Timeouts::default().client_deadline * 2
}

/// `KEY=VALUE` of a unit file, `KEY: VALUE` of YAML: the value after `key`, as seconds.
fn seconds_after(text: &str, key: &str) -> u64 {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(key))
        .unwrap_or_else(|| panic!("no {key} in:\n{text}"));
    let value = line.trim_start()[key.len()..].trim().trim_end_matches('s');
    value
        .parse()
        .unwrap_or_else(|e| panic!("{key} {value:?} is not a number of seconds: {e}"))
}

#[test]
fn the_systemd_unit_verifies_restarts_on_failure_and_outlasts_the_drain() {
    let unit = read("courier.service");
    let stop = seconds_after(&unit, "TimeoutStopSec=");
    assert!(
        Duration::from_secs(stop) > default_stop_time() + Duration::from_secs(5),
        "TimeoutStopSec={stop}s leaves no room for the drain ({:?}): systemd would SIGKILL a draining worker",
        default_stop_time()
    );
    for needle in [
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "KillSignal=SIGTERM",
    ] {
        assert!(
            unit.contains(needle),
            "{needle} missing from deploy/courier.service"
        );
    }
    let Ok(verify) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!(
            "SKIPPED: systemd-analyze is not installed (Debian: apt-get install systemd), so deploy/courier.service \
             was not verified; its timings were checked"
        );
        return;
    };
    assert!(verify.status.success());
    // Verified as written, except that ExecStart names the binary this build made (verify insists the
    // command exists).
    let dir = std::env::temp_dir().join(unique_name("unit"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("courier.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/courier", COURIER)).expect("write unit");
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze verify");
    let stderr = stderr_of(&output);
    assert!(
        output.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify deploy/courier.service: {stderr}"
    );
}

#[test]
fn the_kubernetes_example_probes_the_admin_endpoint_and_outlasts_the_drain() {
    let manifest = read("kubernetes.yaml");
    let grace = seconds_after(&manifest, "terminationGracePeriodSeconds:");
    assert!(
        Duration::from_secs(grace) > default_stop_time() + Duration::from_secs(5),
        "terminationGracePeriodSeconds {grace} leaves no room for the drain ({:?})",
        default_stop_time()
    );
    for needle in [
        "kind: Deployment",
        "readinessProbe:",
        "path: /readyz",
        "livenessProbe:",
        "path: /healthz",
        "containerPort: 9464",
        "listen = \"0.0.0.0:9464\"",
        "args: [\"migrate\"]",
    ] {
        assert!(
            manifest.contains(needle),
            "{needle} missing from deploy/kubernetes.yaml"
        );
    }
}

/// psql as a superuser of the test server: `COURIER_TEST_PG_ADMIN_URL`, or, as root on the machine that
/// runs the cluster of `scripts/postgres.sh`, the `postgres` account over its Unix socket.
fn admin_psql(database: &str) -> Result<Command, String> {
    if let Ok(url) = std::env::var("COURIER_TEST_PG_ADMIN_URL") {
        let url = courier_store::url::with_database(&url, database);
        let mut command = Command::new("psql");
        command.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &url]);
        return Ok(command);
    }
    let server: tokio_postgres::Config = courier_core::local::database_url()
        .parse()
        .map_err(|e| format!("DATABASE_URL does not parse: {e}"))?;
    let port = server.get_ports().first().copied().unwrap_or(5432);
    let socket = format!("/var/run/postgresql/.s.PGSQL.{port}");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root || !Path::new(&socket).exists() {
        return Err(format!(
            "creating roles needs a superuser: set COURIER_TEST_PG_ADMIN_URL, or run as root next to the cluster \
             of scripts/postgres.sh (socket {socket})"
        ));
    }
    let mut command = Command::new("runuser");
    command.args([
        "-u",
        "postgres",
        "--",
        "psql",
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
    ]);
    command.args([
        "-h",
        "/var/run/postgresql",
        "-p",
        &port.to_string(),
        "-d",
        database,
    ]);
    Ok(command)
}

/// Roles are cluster-wide: dropped when the test ends, passed or not (their database stays until
/// `scripts/postgres.sh clean-test-databases`).
struct Roles {
    database: String,
    migrator: String,
    worker: String,
}

impl Drop for Roles {
    fn drop(&mut self) {
        // One role per statement: PostgreSQL 15 trips over a default ACL naming both when given both.
        for (database, sql) in [
            (&self.database, format!("DROP OWNED BY \"{}\"", self.worker)),
            (
                &self.database,
                format!("DROP OWNED BY \"{}\"", self.migrator),
            ),
            (
                &"postgres".to_owned(),
                format!("DROP ROLE IF EXISTS \"{}\"", self.worker),
            ),
            (
                &"postgres".to_owned(),
                format!("DROP ROLE IF EXISTS \"{}\"", self.migrator),
            ),
        ] {
            if let Ok(mut psql) = admin_psql(database) {
                let _ = psql.args(["-c", &sql]).stderr(Stdio::null()).status();
            }
        }
    }
}

fn run_admin(mut command: Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run psql: {e}"));
    assert!(output.status.success(), "{what}: {}", stderr_of(&output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn courier_runs_as_the_worker_role_of_roles_sql_which_cannot_run_ddl() {
    let db = TestDb::create().await;
    let mut psql = match admin_psql(&db.name) {
        Ok(psql) => psql,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    let migrator = unique_name("migrator");
    let worker = unique_name("worker");
    psql.args([
        "-v",
        &format!("migrator={migrator}"),
        "-v",
        &format!("worker={worker}"),
    ]);
    psql.arg("-f").arg(deploy("roles.sql"));
    let _roles = Roles {
        database: db.name.clone(),
        migrator: migrator.clone(),
        worker: worker.clone(),
    };
    run_admin(psql, "deploy/roles.sql");
    let mut passwords = admin_psql(&db.name).expect("admin");
    passwords.args([
        "-c",
        &format!("ALTER ROLE \"{migrator}\" PASSWORD 'm'"),
        "-c",
        &format!("ALTER ROLE \"{worker}\" PASSWORD 'w'"),
    ]);
    run_admin(passwords, "set passwords");
    let as_role = |role: &str, password: &str| {
        db.url
            .replacen("courier:courier@", &format!("{role}:{password}@"), 1)
    };
    let (migrator_url, worker_url) = (as_role(&migrator, "m"), as_role(&worker, "w"));

    // The migrator applies the schema and owns it.
    let output = courier(&["migrate"])
        .env("DATABASE_URL", &migrator_url)
        .output()
        .expect("migrate");
    assert!(
        output.status.success(),
        "migrate as {migrator}: {}",
        stderr_of(&output)
    );

    // The worker cannot create, alter or drop anything.
    let (client, connection) = tokio_postgres::connect(&worker_url, tokio_postgres::NoTls)
        .await
        .expect("connect as the worker role");
    tokio::spawn(connection);
    for ddl in [
        "CREATE TABLE courier_sneaky (a int)",
        "ALTER TABLE courier_ranges ADD COLUMN sneaky int",
        "CREATE INDEX courier_sneaky ON courier_ranges (updated_at)",
        "DROP TABLE courier_changes",
    ] {
        let error = client.batch_execute(ddl).await.expect_err(ddl);
        assert_eq!(
            error.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{ddl}: {error}"
        );
    }

    drop(client);

    // ... and `courier run` delivers everything as the worker, then drains on SIGTERM.
    let topic = topic_with("roles", 2, 300).await;
    let destination = sink().await;
    let config = write_config(
        "courier.toml",
        &one_route_config(&worker_url, &topic, &destination.url(), ""),
    );
    let config = config.to_str().expect("utf-8 path");
    let run = courier(&["run", "--config", config])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn courier run");
    let delivered = destination
        .wait_until(|s| s.delivered_elements >= 600, Duration::from_secs(120))
        .await;
    // The operator's tools work as the worker role too.
    let pause = courier(&["pause", "r", "--reason", "roles test", "--config", config])
        .output()
        .expect("pause");
    let changes = courier(&["changes", "--config", config])
        .output()
        .expect("changes");
    let _ = Command::new("kill")
        .args(["-TERM", &run.id().to_string()])
        .status();
    let exit = tokio::task::spawn_blocking(move || run.wait_with_output())
        .await
        .expect("join")
        .expect("wait");
    assert!(
        delivered.is_ok(),
        "not delivered as the worker role: {}",
        String::from_utf8_lossy(&exit.stderr)
    );
    assert!(
        exit.status.success(),
        "{}",
        String::from_utf8_lossy(&exit.stderr)
    );
    assert!(
        pause.status.success(),
        "pause as the worker role: {}",
        stderr_of(&pause)
    );
    let changes = String::from_utf8_lossy(&changes.stdout);
    assert!(
        changes.contains("route.paused") && changes.contains("worker.started"),
        "{changes}"
    );
}
