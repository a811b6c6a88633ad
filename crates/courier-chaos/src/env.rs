//! The services a chaos run talks to, and the scratch databases it creates on them.
//!
//! Owns: where PostgreSQL and Kafka are (`DATABASE_URL` / `KAFKA_BROKERS`, or the local ones the scripts
//! start), whether they are *ours* to restart, the scratch database of a scenario run
//! ([`Services::scratch_db`]: a `courier_testkit::TestDb`, one per scenario and mode, dropped at the
//! end) and the harness's configuration on it, and [`RawSession`]: a plain connection with the
//! server's defaults, the "naive" client of incident 8.

use std::path::{Path, PathBuf};
use std::time::Duration;

use courier_core::local;
use courier_store::StoreConfig;
use courier_testkit::TestDb;
use tokio_postgres::NoTls;

use crate::ChaosError;

/// `application_name` of the harness's own sessions, so "terminate every courier connection" never
/// ends the harness's, and the evidence it prints tells them apart.
pub const HARNESS_APP: &str = "courier-chaos";

/// Where the services are and whether this run may restart them.
#[derive(Debug, Clone)]
pub struct Services {
    /// Any database URL on the server; scratch databases replace its database name.
    pub server_url: String,
    pub brokers: String,
    /// `DATABASE_URL` was set: the server is someone else's, never restarted.
    pub external_database: bool,
    /// `KAFKA_BROKERS` was set: the broker is someone else's, never restarted.
    pub external_kafka: bool,
    /// The workspace's `scripts/` folder, when found (restarts use `scripts/kafka.sh`).
    pub scripts_dir: Option<PathBuf>,
}

impl Services {
    /// From the environment, as every courier tool reads it.
    pub fn from_env() -> Self {
        let set = |variable| std::env::var(variable).is_ok_and(|v| !v.is_empty());
        Self {
            external_database: set("DATABASE_URL"),
            external_kafka: set("KAFKA_BROKERS"),
            server_url: local::database_url(),
            brokers: local::kafka_brokers(),
            scripts_dir: find_scripts_dir(),
        }
    }

    /// A scratch database on this server for one scenario run, `courier_test_chaos_<label>_...` (so
    /// `scripts/postgres.sh clean-test-databases` drops it if the run crashes), migrated or not.
    /// [`TestDb::drop_now`] drops it at the end.
    pub async fn scratch_db(&self, label: &str, migrated: bool) -> Result<TestDb, ChaosError> {
        let label = format!("chaos_{label}");
        Ok(if migrated {
            TestDb::migrated_on(&self.server_url, &label).await?
        } else {
            TestDb::create_on(&self.server_url, &label).await?
        })
    }
}

/// `scripts/` next to the current directory or above it, else the one this crate was built from.
fn find_scripts_dir() -> Option<PathBuf> {
    let has_scripts = |dir: &Path| dir.join("scripts/kafka.sh").is_file();
    if let Ok(cwd) = std::env::current_dir() {
        if let Some(dir) = cwd.ancestors().find(|d| has_scripts(d)) {
            return Some(dir.join("scripts"));
        }
    }
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    has_scripts(&built_from).then(|| built_from.join("scripts"))
}

/// Runs `scripts/<script> <action>` with `env` (and without `DATABASE_URL` and `KAFKA_BROKERS`, which
/// would make the scripts check someone else's service instead of managing their own), for at most
/// `bound`.
pub async fn run_script(
    scripts: &Path,
    script: &str,
    action: &str,
    env: &[(&str, String)],
    bound: Duration,
) -> Result<(), ChaosError> {
    let run = tokio::process::Command::new("bash")
        .arg(scripts.join(script))
        .arg(action)
        .env_remove("DATABASE_URL")
        .env_remove("KAFKA_BROKERS")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(bound, run)
        .await
        .map_err(|_| ChaosError::Stuck(format!("scripts/{script} {action} took over {bound:?}")))?
        .map_err(|e| ChaosError::Setup(format!("cannot run scripts/{script} {action}: {e}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ChaosError::Setup(format!(
            "scripts/{script} {action} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// The harness's own store configuration on `db`: courier's limits, but named [`HARNESS_APP`].
pub fn harness_config(db: &TestDb) -> StoreConfig {
    StoreConfig {
        application_name: HARNESS_APP.to_owned(),
        pool_size: 4,
        ..db.config()
    }
}

/// A naive session on `db`: no courier options, the server's defaults (no lock or statement timeout, no
/// idle-in-transaction timeout, no connection check).
pub async fn raw_session(db: &TestDb, application_name: &str) -> Result<RawSession, ChaosError> {
    RawSession::connect(&db.url, application_name)
        .await
        .map_err(|e| {
            ChaosError::Setup(format!(
                "cannot connect to scratch database {}: {e}",
                db.name
            ))
        })
}

/// A plain `tokio_postgres` session whose socket closes the moment it is dropped (the connection task is
/// aborted), even with a statement in flight: the server sees its client leave, as when a container dies.
pub struct RawSession {
    client: tokio_postgres::Client,
    connection: tokio::task::JoinHandle<()>,
}

impl RawSession {
    /// Connects to `url` with only `application_name` set: server defaults for everything else.
    pub async fn connect(url: &str, application_name: &str) -> Result<Self, tokio_postgres::Error> {
        let mut config: tokio_postgres::Config = url.parse()?;
        config
            .application_name(application_name)
            .connect_timeout(Duration::from_secs(5));
        Self::connect_with(&config).await
    }

    /// Connects with a prepared driver configuration.
    pub async fn connect_with(
        config: &tokio_postgres::Config,
    ) -> Result<Self, tokio_postgres::Error> {
        let (client, connection) = config.connect(NoTls).await?;
        let connection = tokio::spawn(async move {
            // The session ends when the harness drops it or the server ends it: both are expected.
            let _ended = connection.await;
        });
        Ok(Self { client, connection })
    }

    /// This session's backend pid.
    pub async fn backend_pid(&self) -> Result<i32, tokio_postgres::Error> {
        Ok(self
            .client
            .query_one("SELECT pg_backend_pid()", &[])
            .await?
            .get(0))
    }
}

impl std::ops::Deref for RawSession {
    type Target = tokio_postgres::Client;
    fn deref(&self) -> &Self::Target {
        &self.client
    }
}

impl Drop for RawSession {
    fn drop(&mut self) {
        self.connection.abort();
    }
}
