//! The services a chaos run talks to, and the scratch databases it creates on them.
//!
//! Owns: where PostgreSQL and Kafka are (`DATABASE_URL` / `KAFKA_BROKERS`, or the local ones the scripts
//! start), whether they are *ours* to restart, [`ScratchDb`] (one fresh database per scenario and mode,
//! dropped at the end), and [`RawSession`]: a plain connection with the server's defaults, the "naive"
//! client of incident 8.

use std::path::{Path, PathBuf};
use std::time::Duration;

use courier_store::url::{redact, with_database};
use courier_store::{StoreConfig, Timeouts};
use tokio_postgres::NoTls;

use crate::ChaosError;

/// The local development cluster `scripts/postgres.sh start` creates.
pub const LOCAL_DATABASE_URL: &str = "postgres://courier:courier@127.0.0.1:54329/courier";
/// The local broker `scripts/kafka.sh start` runs.
pub const LOCAL_BROKERS: &str = "127.0.0.1:9092";
/// Every scratch database starts with this, so `scripts/postgres.sh clean-test-databases` (run by
/// `make test`) also drops one a crashed run left behind.
pub const SCRATCH_PREFIX: &str = "courier_test_chaos";
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
        let database = std::env::var("DATABASE_URL").ok().filter(|v| !v.is_empty());
        let brokers = std::env::var("KAFKA_BROKERS")
            .ok()
            .filter(|v| !v.is_empty());
        Self {
            external_database: database.is_some(),
            external_kafka: brokers.is_some(),
            server_url: database.unwrap_or_else(|| LOCAL_DATABASE_URL.to_owned()),
            brokers: brokers.unwrap_or_else(|| LOCAL_BROKERS.to_owned()),
            scripts_dir: find_scripts_dir(),
        }
    }

    /// Opens a session with the server's defaults on the server's own database (to create and drop
    /// scratch databases).
    async fn admin(&self) -> Result<RawSession, ChaosError> {
        RawSession::connect(&self.server_url, HARNESS_APP)
            .await
            .map_err(|e| {
                ChaosError::Setup(format!(
                    "cannot reach PostgreSQL at {} ({e}): start it with `scripts/postgres.sh start`, or set DATABASE_URL",
                    redact(&self.server_url)
                ))
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

/// A unique, lowercase name for a topic, route or database: `prefix_<pid>_<random>`.
pub fn unique_name(prefix: &str) -> String {
    let suffix: u32 = rand::random();
    format!("{prefix}_{}_{suffix:08x}", std::process::id())
}

/// One database created for one scenario run. Call [`ScratchDb::drop_now`] at the end; a run that
/// crashed leaves it for `scripts/postgres.sh clean-test-databases` (its name starts with
/// [`SCRATCH_PREFIX`]).
#[derive(Debug, Clone)]
pub struct ScratchDb {
    pub name: String,
    pub url: String,
    services: Services,
}

impl ScratchDb {
    /// Creates an empty database named after `label`.
    pub async fn create(services: &Services, label: &str) -> Result<Self, ChaosError> {
        let label: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        let name = unique_name(&format!("{SCRATCH_PREFIX}_{label}"));
        let admin = services.admin().await?;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .map_err(|e| {
                ChaosError::Setup(format!(
                    "cannot create the scratch database {name}: {}; the role needs CREATEDB (scripts/postgres.sh grants it)",
                    db_error(&e)
                ))
            })?;
        Ok(Self {
            url: with_database(&services.server_url, &name),
            name,
            services: services.clone(),
        })
    }

    /// Creates a database and applies courier's migrations.
    pub async fn migrated(services: &Services, label: &str) -> Result<Self, ChaosError> {
        let db = Self::create(services, label).await?;
        courier_store::Migrator::embedded()
            .run(&db.store_config(Timeouts::default()))
            .await
            .map_err(|e| {
                ChaosError::Setup(format!("migrating scratch database {}: {e}", db.name))
            })?;
        Ok(db)
    }

    /// courier's store configuration for this database: `application_name = 'courier'`, as a worker's.
    pub fn store_config(&self, timeouts: Timeouts) -> StoreConfig {
        StoreConfig {
            timeouts,
            ..StoreConfig::new(&self.url)
        }
    }

    /// The harness's own store configuration: courier's limits, but named [`HARNESS_APP`].
    pub fn harness_config(&self) -> StoreConfig {
        StoreConfig {
            application_name: HARNESS_APP.to_owned(),
            pool_size: 4,
            ..StoreConfig::new(&self.url)
        }
    }

    /// A naive session: no courier options, the server's defaults (no lock or statement timeout, no
    /// idle-in-transaction timeout, no connection check).
    pub async fn raw(&self, application_name: &str) -> Result<RawSession, ChaosError> {
        RawSession::connect(&self.url, application_name)
            .await
            .map_err(|e| {
                ChaosError::Setup(format!(
                    "cannot connect to scratch database {}: {e}",
                    self.name
                ))
            })
    }

    /// Drops the database, ending whatever sessions are still in it.
    pub async fn drop_now(self) -> Result<(), ChaosError> {
        let admin = self.services.admin().await?;
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        match tokio::time::timeout(Duration::from_secs(30), admin.batch_execute(&sql)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ChaosError::Setup(format!(
                "cannot drop scratch database {}: {}; `scripts/postgres.sh clean-test-databases` drops it later",
                self.name,
                db_error(&e)
            ))),
            Err(_) => Err(ChaosError::Setup(format!(
                "dropping scratch database {} took over 30 s; `scripts/postgres.sh clean-test-databases` drops it later",
                self.name
            ))),
        }
    }
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

/// A database error's own message and SQLSTATE when it has one, else the driver's text with causes.
pub fn db_error(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    }
}
