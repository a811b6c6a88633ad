//! The soak's own PostgreSQL cluster and Kafka broker, which it restarts.
//!
//! Owns [`SoakServices`]: where they listen, and starting and stopping them through the project's
//! scripts with overrides (`COURIER_PG_CLUSTER` / `COURIER_PG_PORT` for `scripts/postgres.sh`,
//! `COURIER_KAFKA_DIR` / `COURIER_KAFKA_PORT` / `COURIER_KAFKA_CONTROLLER_PORT` for `scripts/kafka.sh`).
//! The shared services (127.0.0.1:54329 and :9092, which other tests use while a soak runs) are never
//! touched: the soak refuses their ports, and ignores `DATABASE_URL` and `KAFKA_BROKERS`.

use std::path::PathBuf;
use std::time::Duration;

use crate::env::{run_script, Services};
use crate::ChaosError;

/// The soak's PostgreSQL cluster (`scripts/postgres.sh` with `COURIER_PG_CLUSTER`).
pub const PG_CLUSTER: &str = "courier_soak";
pub const PG_PORT: u16 = 54339;
/// The soak's broker (`scripts/kafka.sh` with `COURIER_KAFKA_DIR=target/kafka-soak`).
pub const KAFKA_PORT: u16 = 9192;
pub const KAFKA_CONTROLLER_PORT: u16 = 9193;

/// The shared services' ports, which the soak must never restart.
const SHARED_PORTS: [u16; 3] = [54329, 9092, 9093];

const START_BOUND: Duration = Duration::from_secs(300);
const STOP_BOUND: Duration = Duration::from_secs(120);

/// The soak's services and how to restart them.
#[derive(Debug, Clone)]
pub struct SoakServices {
    pub scripts: PathBuf,
    pub pg_port: u16,
    pub kafka_port: u16,
    pub kafka_controller_port: u16,
    pub kafka_dir: PathBuf,
}

impl SoakServices {
    /// The defaults above, next to the checkout's `scripts/` (found as the other scenarios find it).
    /// `COURIER_SOAK_PG_PORT`, `COURIER_SOAK_KAFKA_PORT` and `COURIER_SOAK_KAFKA_CONTROLLER_PORT`
    /// move them when those ports are taken.
    pub fn locate() -> Result<Self, ChaosError> {
        let scripts = Services::from_env().scripts_dir.ok_or_else(|| {
            ChaosError::Setup(
                "cannot find the checkout's scripts/ (postgres.sh, kafka.sh) the soak starts and restarts its services with: run it from the checkout".into(),
            )
        })?;
        let port = |variable: &str, default: u16| -> Result<u16, ChaosError> {
            let Ok(value) = std::env::var(variable) else {
                return Ok(default);
            };
            let port: u16 = value.parse().map_err(|_| {
                ChaosError::Setup(format!("{variable}={value:?} is not a port number"))
            })?;
            if SHARED_PORTS.contains(&port) {
                return Err(ChaosError::Setup(format!(
                    "{variable}={port} is a shared service's port: the soak restarts its services, so it runs its own on other ports"
                )));
            }
            Ok(port)
        };
        // Canonical: kafka.sh recognises its broker by the properties path on the JVM's command line.
        let scripts = scripts
            .canonicalize()
            .map_err(|e| ChaosError::Setup(format!("cannot resolve {}: {e}", scripts.display())))?;
        let kafka_dir = scripts
            .parent()
            .unwrap_or(&scripts)
            .join("target/kafka-soak");
        Ok(Self {
            pg_port: port("COURIER_SOAK_PG_PORT", PG_PORT)?,
            kafka_port: port("COURIER_SOAK_KAFKA_PORT", KAFKA_PORT)?,
            kafka_controller_port: port(
                "COURIER_SOAK_KAFKA_CONTROLLER_PORT",
                KAFKA_CONTROLLER_PORT,
            )?,
            kafka_dir,
            scripts,
        })
    }

    /// What the pipeline talks to: these services, ours to restart.
    pub fn services(&self) -> Services {
        Services {
            server_url: format!(
                "postgres://courier:courier@127.0.0.1:{}/courier",
                self.pg_port
            ),
            brokers: format!("127.0.0.1:{}", self.kafka_port),
            external_database: false,
            external_kafka: false,
            scripts_dir: Some(self.scripts.clone()),
        }
    }

    fn pg_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("COURIER_PG_CLUSTER", PG_CLUSTER.to_owned()),
            ("COURIER_PG_PORT", self.pg_port.to_string()),
        ]
    }

    fn kafka_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("COURIER_KAFKA_DIR", self.kafka_dir.display().to_string()),
            ("COURIER_KAFKA_PORT", self.kafka_port.to_string()),
            (
                "COURIER_KAFKA_CONTROLLER_PORT",
                self.kafka_controller_port.to_string(),
            ),
        ]
    }

    /// Creates (first time) and starts both, idempotently; returns once both answer.
    pub async fn start(&self) -> Result<(), ChaosError> {
        self.start_postgres().await?;
        self.start_kafka().await
    }

    pub async fn start_postgres(&self) -> Result<(), ChaosError> {
        run_script(
            &self.scripts,
            "postgres.sh",
            "start",
            &self.pg_env(),
            START_BOUND,
        )
        .await
    }

    /// Stops the cluster (`pg_ctlcluster stop`: fast mode, every session ended).
    pub async fn stop_postgres(&self) -> Result<(), ChaosError> {
        run_script(
            &self.scripts,
            "postgres.sh",
            "stop",
            &self.pg_env(),
            STOP_BOUND,
        )
        .await
    }

    pub async fn start_kafka(&self) -> Result<(), ChaosError> {
        run_script(
            &self.scripts,
            "kafka.sh",
            "start",
            &self.kafka_env(),
            START_BOUND,
        )
        .await
    }

    /// Stops the broker (SIGTERM: a controlled shutdown; SIGKILL after 30 s).
    pub async fn stop_kafka(&self) -> Result<(), ChaosError> {
        run_script(
            &self.scripts,
            "kafka.sh",
            "stop",
            &self.kafka_env(),
            STOP_BOUND,
        )
        .await
    }

    /// The commands that stop them, for the report.
    pub fn stop_commands(&self) -> String {
        format!(
            "COURIER_PG_CLUSTER={PG_CLUSTER} COURIER_PG_PORT={} scripts/postgres.sh stop; COURIER_KAFKA_DIR=target/kafka-soak COURIER_KAFKA_PORT={} COURIER_KAFKA_CONTROLLER_PORT={} scripts/kafka.sh stop",
            self.pg_port, self.kafka_port, self.kafka_controller_port
        )
    }
}
