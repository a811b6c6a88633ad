//! Starting, stopping and killing courier workers, in-process or as real `courier run` processes.
//!
//! Owns [`Launcher`] and [`WorkerHandle`]. Two ways to run a worker, same configuration:
//! - **in-process**: `courier_worker::Worker` on a tokio task. A "kill" aborts the task: every
//!   delivery task stops where it is, nothing is released, its pooled connections close, and its
//!   leases are left to expire, exactly what the store sees after `kill -9`. Used by the tests in
//!   `make test`, because `cargo test -p courier-chaos` does not build (and so could run a stale)
//!   `courier` binary.
//! - **process**: `courier run --config <file>` with SIGKILL / SIGTERM. Used by `courier gameday`, where
//!   the current executable *is* the courier binary: the real process boundary, real signals.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use courier_core::Ordering;
use courier_http::DestinationConfig;
use courier_kafka::KafkaConfig;
use courier_store::{MigrationReport, StoreConfig};
use courier_worker::{
    open_store, BootRetry, RouteConfig, Schema, StartFrom, Worker, WorkerConfig, WorkerError,
    WorkerStats,
};
use futures::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ChaosError;
use courier_testkit::unique_name;

/// How workers are run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launcher {
    InProcess,
    /// `courier run` processes of this executable.
    Process {
        exe: PathBuf,
    },
}

/// Everything one worker is configured with.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub store: StoreConfig,
    pub brokers: String,
    pub route: String,
    pub topic: String,
    pub destination_url: String,
    pub destination: DestinationConfig,
    pub range_size: u32,
    pub worker: WorkerConfig,
    /// Apply migrations first (`courier run --migrate`), as a booting worker of the demo does.
    pub migrate: bool,
}

impl WorkerSpec {
    pub(crate) fn destinations(&self) -> BTreeMap<String, DestinationConfig> {
        let mut destination = self.destination.clone();
        destination.url = self.destination_url.clone();
        BTreeMap::from([(crate::pipeline::DESTINATION.to_owned(), destination)])
    }

    pub(crate) fn route(&self) -> RouteConfig {
        RouteConfig {
            name: self.route.clone(),
            topic: self.topic.clone(),
            destination: crate::pipeline::DESTINATION.to_owned(),
            ordering: Ordering::None,
            range_size: self.range_size,
            // A chaos run judges delivery: nothing may give up and fail for good during the fault.
            max_attempts: 100_000,
            start: StartFrom::Earliest,
            on_poison: courier_worker::OnPoison::Quarantine,
            dead_letter_topic: None,
        }
    }

    /// The same configuration as a `courier.toml`, serialised from the very values the in-process
    /// launcher uses, so the two launchers cannot drift apart (a key written by hand could be forgotten).
    fn toml(&self) -> Result<String, ChaosError> {
        let file = ConfigFile {
            store: &self.store,
            kafka: KafkaConfig::new(&self.brokers),
            worker: &self.worker,
            destinations: self.destinations(),
            routes: BTreeMap::from([(self.route.clone(), self.route())]),
        };
        toml::to_string(&file)
            .map(|text| format!("# Written by courier gameday for one chaos worker.\n{text}"))
            .map_err(|e| ChaosError::Setup(format!("cannot write a worker's configuration: {e}")))
    }
}

/// The layout of a `courier.toml` (the sections `courier run` reads).
#[derive(serde::Serialize)]
struct ConfigFile<'a> {
    store: &'a StoreConfig,
    kafka: KafkaConfig,
    worker: &'a WorkerConfig,
    destinations: BTreeMap<String, DestinationConfig>,
    routes: BTreeMap<String, RouteConfig>,
}

type WorkerTask = JoinHandle<Result<Arc<WorkerStats>, WorkerError>>;

enum Kind {
    InProcess {
        id: String,
        stop: watch::Sender<bool>,
        task: Option<WorkerTask>,
    },
    Process {
        child: tokio::process::Child,
        pid: u32,
        log: PathBuf,
    },
}

/// One running worker.
pub struct WorkerHandle {
    kind: Kind,
}

impl std::fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("worker", &self.describe())
            .finish()
    }
}

/// What starting a worker produced.
pub struct Started {
    pub handle: WorkerHandle,
    /// The migration runner's report (in-process with `migrate`; processes log theirs).
    pub migration: Option<MigrationReport>,
}

impl WorkerHandle {
    /// Starts a worker. In-process, this returns once the worker is running; a process is returned as
    /// soon as it is spawned (see [`WorkerHandle::exited`] for one that dies at boot).
    pub async fn start(launcher: &Launcher, spec: &WorkerSpec) -> Result<Started, ChaosError> {
        match launcher {
            Launcher::InProcess => Self::start_in_process(spec).await,
            Launcher::Process { exe } => Self::start_process(exe, spec).map(|handle| Started {
                handle,
                migration: None,
            }),
        }
    }

    async fn start_in_process(spec: &WorkerSpec) -> Result<Started, ChaosError> {
        let boot =
            |what: &str, e: &dyn std::fmt::Display| ChaosError::WorkerBoot(format!("{what}: {e}"));
        // The same boot as `courier run`: a slow or restarting store is waited for, politely.
        let schema = if spec.migrate {
            Schema::Migrate
        } else {
            Schema::Check
        };
        let (store, migration) = open_store(
            &spec.store,
            schema,
            &BootRetry::new(spec.worker.boot_timeout),
        )
        .await
        .map_err(|e| boot("open the store", &e))?;
        let worker = Worker::new(
            store,
            KafkaConfig::new(spec.brokers.clone()),
            &spec.destinations(),
            vec![spec.route()],
            spec.worker.clone(),
        )
        .await
        .map_err(|e| boot("start the worker", &e))?;
        let id = worker.id().to_owned();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(worker.run(stopped));
        Ok(Started {
            handle: Self {
                kind: Kind::InProcess {
                    id,
                    stop,
                    task: Some(task),
                },
            },
            migration,
        })
    }

    fn start_process(exe: &Path, spec: &WorkerSpec) -> Result<Self, ChaosError> {
        let dir = std::env::temp_dir().join(unique_name("courier-chaos-worker"));
        std::fs::create_dir_all(&dir)
            .map_err(|e| ChaosError::Setup(format!("cannot create {}: {e}", dir.display())))?;
        let config = dir.join("courier.toml");
        std::fs::write(&config, spec.toml()?)
            .map_err(|e| ChaosError::Setup(format!("cannot write {}: {e}", config.display())))?;
        let log = dir.join("worker.log");
        let log_file = std::fs::File::create(&log)
            .map_err(|e| ChaosError::Setup(format!("cannot create {}: {e}", log.display())))?;
        let mut command = tokio::process::Command::new(exe);
        command.arg("run").arg("--config").arg(&config);
        if spec.migrate {
            command.arg("--migrate");
        }
        // Only the file configures it: no DATABASE_URL or COURIER__* from this environment leaks in.
        for (key, _) in std::env::vars() {
            if key.starts_with("COURIER_") || key == "DATABASE_URL" {
                command.env_remove(&key);
            }
        }
        command
            .env("KAFKA_BROKERS", &spec.brokers)
            .env("RUST_LOG", "warn,courier=info,courier_store=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        let child = command
            .spawn()
            .map_err(|e| ChaosError::Setup(format!("cannot start {} run: {e}", exe.display())))?;
        let pid = child.id().ok_or_else(|| {
            ChaosError::Setup("a worker process exited before it had a pid".into())
        })?;
        Ok(Self {
            kind: Kind::Process { child, pid, log },
        })
    }

    /// A SQL `LIKE` pattern matching this worker's `lease_owner` (`host-pid-xxxx`).
    pub fn owner_like(&self) -> String {
        match &self.kind {
            Kind::InProcess { id, .. } => id.clone(),
            Kind::Process { pid, .. } => format!("%-{pid}-____"),
        }
    }

    /// For messages: the worker id or pid and log file.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::InProcess { id, .. } => format!("in-process worker {id}"),
            Kind::Process { pid, log, .. } => {
                format!("worker process {pid} (log {})", log.display())
            }
        }
    }

    /// The process's log (process workers only).
    pub fn log(&self) -> Option<&Path> {
        match &self.kind {
            Kind::Process { log, .. } => Some(log),
            Kind::InProcess { .. } => None,
        }
    }

    /// `kill -9`: no drain, no release; its leases expire. In-process: the task is aborted.
    pub async fn kill(&mut self) {
        match &mut self.kind {
            Kind::InProcess { task, .. } => {
                if let Some(task) = task.take() {
                    task.abort();
                    // Wait for the abort to land, so its connections are closed when this returns.
                    let _aborted = task.await;
                }
            }
            Kind::Process { child, log, .. } => {
                // start_kill is SIGKILL; an already exited child is fine.
                let _ = child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
                remove_worker_dir(log);
            }
        }
    }

    /// SIGSTOP (`frozen`) or SIGCONT: the process stops running without noticing, as in a long GC
    /// pause or a frozen VM, and its leases expire under it. Process workers only.
    pub async fn freeze(&self, frozen: bool) -> Result<(), String> {
        let Kind::Process { pid, .. } = &self.kind else {
            return Err("SIGSTOP needs a worker process; run without --in-process".to_owned());
        };
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = tokio::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .map_err(|e| format!("cannot run kill {signal} {pid}: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "kill {signal} {pid} failed ({status}): has the worker exited?"
            ))
        }
    }

    /// A graceful stop (SIGTERM / the shutdown signal): drain, release, exit, within `bound`, after
    /// which it is killed. Returns an error describing how it ended when that was not cleanly.
    pub async fn stop(&mut self, bound: Duration) -> Result<(), String> {
        match &mut self.kind {
            Kind::InProcess { stop, task, id } => {
                let _ = stop.send(true);
                let Some(mut running) = task.take() else {
                    return Ok(());
                };
                match tokio::time::timeout(bound, &mut running).await {
                    Ok(Ok(Ok(_stats))) => Ok(()),
                    Ok(Ok(Err(error))) => Err(format!("worker {id} ended with an error: {error}")),
                    Ok(Err(join)) => Err(format!("worker {id} task failed: {join}")),
                    Err(_) => {
                        running.abort();
                        Err(format!(
                            "worker {id} did not drain within {bound:?}; aborted"
                        ))
                    }
                }
            }
            Kind::Process { child, pid, log } => {
                let pid_text = pid.to_string();
                let signalled = tokio::process::Command::new("kill")
                    .args(["-TERM", &pid_text])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .await;
                if let Err(e) = signalled {
                    let _ = child.start_kill();
                    return Err(format!("cannot send SIGTERM to {pid} ({e}); killed it"));
                }
                match tokio::time::timeout(bound, child.wait()).await {
                    Ok(Ok(status)) if status.success() => {
                        remove_worker_dir(log);
                        Ok(())
                    }
                    Ok(Ok(status)) => Err(format!(
                        "worker process {pid} exited with {status}; see {}",
                        log.display()
                    )),
                    Ok(Err(e)) => Err(format!("cannot wait for worker process {pid}: {e}")),
                    Err(_) => {
                        let _ = child.start_kill();
                        Err(format!("worker process {pid} did not exit within {bound:?} of SIGTERM; killed it"))
                    }
                }
            }
        }
    }

    /// `Some(how)` when the worker has already ended on its own (it failed to boot, or crashed).
    pub fn exited(&mut self) -> Option<String> {
        match &mut self.kind {
            Kind::InProcess { task, id, .. } => match task {
                Some(running) if running.is_finished() => {
                    // Finished, so the result is ready: say how it ended.
                    let how = match task.take().and_then(FutureExt::now_or_never) {
                        Some(Ok(Ok(_))) => "returned".to_owned(),
                        Some(Ok(Err(error))) => format!("failed: {error}"),
                        Some(Err(join)) => format!("panicked or was cancelled: {join}"),
                        None => "ended".to_owned(),
                    };
                    Some(format!("worker {id} stopped on its own ({how})"))
                }
                _ => None,
            },
            Kind::Process { child, pid, log } => match child.try_wait() {
                Ok(Some(status)) => Some(format!(
                    "worker process {pid} exited with {status}; see {}",
                    log.display()
                )),
                Ok(None) => None,
                Err(e) => Some(format!("cannot check worker process {pid}: {e}")),
            },
        }
    }
}

/// Removes a process worker's configuration and log once it ended as intended (killed on purpose, or
/// stopped cleanly); a worker that ended otherwise keeps them for a look, and the error names the log.
fn remove_worker_dir(log: &Path) {
    if let Some(dir) = log.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// `text` without ANSI colour sequences (`ESC [ ... m`), which courier's log lines carry.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip to the end of the sequence: the first letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Read back as `courier run` reads it: the same sections, each section's own types.
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ReadBack {
        store: StoreConfig,
        kafka: KafkaConfig,
        worker: WorkerConfig,
        destinations: BTreeMap<String, DestinationConfig>,
        routes: BTreeMap<String, RouteConfig>,
    }

    #[test]
    fn a_worker_process_reads_back_every_setting_the_in_process_launcher_uses() {
        let mut worker = crate::pipeline::fast_worker_config();
        worker.delivery_tasks = 3;
        worker.lease_ttl = Duration::from_millis(2500);
        let spec = WorkerSpec {
            store: StoreConfig::new("postgres://courier:secret@127.0.0.1:54329/scratch"),
            brokers: "127.0.0.1:9092".into(),
            route: "chaos".into(),
            topic: "chaos-topic".into(),
            destination_url: "http://127.0.0.1:9/sink".into(),
            destination: crate::pipeline::fast_destination(Duration::from_millis(700)),
            range_size: 50,
            worker,
            migrate: false,
        };
        let text = spec.toml().expect("serialises");
        let back: ReadBack = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back.store.url, spec.store.url);
        assert_eq!(back.store.timeouts, spec.store.timeouts);
        assert_eq!(back.kafka, KafkaConfig::new(&spec.brokers));
        // Debug covers every field, including those no hand-written file ever listed.
        assert_eq!(format!("{:?}", back.worker), format!("{:?}", spec.worker));
        assert_eq!(back.destinations, spec.destinations());
        let mut route = back.routes.get("chaos").cloned().expect("the route");
        route.name = "chaos".into();
        assert_eq!(format!("{route:?}"), format!("{:?}", spec.route()));
    }

    #[test]
    fn strips_colour_sequences() {
        assert_eq!(
            strip_ansi("\u{1b}[32m INFO\u{1b}[0m Applied migration. \u{1b}[3mversion\u{1b}[0m\u{1b}[2m=\u{1b}[0m1"),
            " INFO Applied migration. version=1"
        );
    }
}
