//! Starting up against services that are slow, still starting, or briefly away.
//!
//! Owns [`BootRetry`]: every courier process (`run`, `migrate`, `status`, `replay`, `probe`, the chaos
//! launcher) reaches the store and Kafka through it at start. A call that fails with an error its
//! service calls transient is tried again after an exponential backoff with full jitter
//! ([`courier_core::Backoff`]), one log line per failed attempt naming the cause and the next wait,
//! until the boot deadline (`worker.boot_timeout`). Then the process gives up with one error naming
//! what it could not reach, for how long, the last cause and the runbook.
//!
//! Why: incident 8's herd. Containers that booted at once against a slow database crashed after one
//! short try, were restarted by the orchestrator, and made the herd worse. A booting courier waits
//! politely instead, and the jitter spreads the herd out.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use courier_core::Backoff;
use courier_store::{MigrationReport, Migrator, Store, StoreConfig, StoreError};
use tokio::time::Instant;

/// First wait after a failed attempt; doubles per attempt (full jitter) up to [`BOOT_RETRY_CAP`].
const BOOT_RETRY_BASE: Duration = Duration::from_millis(250);
/// Longest wait between two boot attempts.
const BOOT_RETRY_CAP: Duration = Duration::from_secs(8);

/// A service a booting process needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Store,
    Kafka,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Self::Store => "the store (PostgreSQL)",
            Self::Kafka => "Kafka",
        }
    }

    fn runbook(self) -> &'static str {
        match self {
            Self::Store => "docs/runbooks/store-unavailable.md",
            Self::Kafka => "docs/runbooks/kafka-unavailable.md",
        }
    }
}

/// A boot that could not reach a service within the boot deadline.
#[derive(Debug, thiserror::Error)]
#[error(
    "could not reach {} at {target} within the boot timeout ({timeout:?}, {attempts} attempt(s)); last error: {last}. \
     Check that it is up and reachable from this host, or raise worker.boot_timeout if it is only slow to start. \
     Runbook: {}",
    service.name(),
    service.runbook()
)]
pub struct GaveUp {
    pub service: Service,
    pub target: String,
    pub timeout: Duration,
    pub attempts: u32,
    pub last: String,
}

/// What a retried boot step ended with: the value, the step's own permanent error, or the deadline.
#[derive(Debug, thiserror::Error)]
pub enum BootError<E> {
    /// Not worth retrying (wrong password, schema behind, a topic that does not exist, ...).
    #[error(transparent)]
    Permanent(E),
    #[error(transparent)]
    GaveUp(#[from] GaveUp),
}

/// The boot deadline of one process, shared by every step of its start-up.
#[derive(Debug, Clone)]
pub struct BootRetry {
    timeout: Duration,
    deadline: Instant,
    backoff: Backoff,
}

impl BootRetry {
    /// A deadline `timeout` from now.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            deadline: Instant::now() + timeout,
            backoff: Backoff {
                base: BOOT_RETRY_BASE,
                cap: BOOT_RETRY_CAP,
            },
        }
    }

    /// Time left before the boot deadline.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Runs `step` until it succeeds, fails permanently (`is_transient` says no), or the deadline passes.
    /// `what` names the step in the log (`connect to the store`, `check topic "events"`); `target` is the
    /// printable address (never a password).
    pub async fn run<T, E, F, Fut>(
        &self,
        service: Service,
        what: &str,
        target: &str,
        is_transient: impl Fn(&E) -> bool,
        mut step: F,
    ) -> Result<T, BootError<E>>
    where
        E: Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut attempt: u32 = 0;
        loop {
            let error = match step().await {
                Ok(value) => {
                    if attempt > 0 {
                        tracing::info!(
                            service = service.name(),
                            %target,
                            attempts = attempt + 1,
                            "Boot: {what} succeeded after retrying."
                        );
                    }
                    return Ok(value);
                }
                Err(error) if !is_transient(&error) => return Err(BootError::Permanent(error)),
                Err(error) => error,
            };
            attempt += 1;
            let wait = self.backoff.delay(attempt - 1, rand::random::<f64>());
            if wait >= self.remaining() {
                return Err(BootError::GaveUp(GaveUp {
                    service,
                    target: target.to_owned(),
                    timeout: self.timeout,
                    attempts: attempt,
                    last: error.to_string(),
                }));
            }
            tracing::warn!(
                service = service.name(),
                %target,
                attempt,
                next_wait = ?wait,
                left = ?self.remaining(),
                "Boot: cannot {what} yet; retrying. {error}"
            );
            tokio::time::sleep(wait).await;
        }
    }
}

/// What a booting process does about the schema before it opens the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// Refuse to start on a schema that is behind (`courier run`, `status`, `replay`).
    Check,
    /// Apply pending migrations first, once, under the advisory lock (`courier migrate`, `run --migrate`).
    Migrate,
}

/// Reaches the store the way every courier process does at start: the schema checked or migrated, then
/// the pool opened, each step retried while the store is unreachable, overloaded or restarting.
pub async fn open_store(
    config: &StoreConfig,
    schema: Schema,
    boot: &BootRetry,
) -> Result<(Store, Option<MigrationReport>), BootError<StoreError>> {
    let target = courier_store::url::redact(&config.url);
    let transient = StoreError::is_transient;
    let migrator = Migrator::embedded();
    let report = match schema {
        Schema::Migrate => Some(
            boot.run(
                Service::Store,
                "apply migrations",
                &target,
                transient,
                || migrator.run(config),
            )
            .await?,
        ),
        Schema::Check => {
            boot.run(
                Service::Store,
                "check the schema version",
                &target,
                transient,
                || migrator.check(config),
            )
            .await?;
            None
        }
    };
    let store = boot
        .run(Service::Store, "connect", &target, transient, || {
            Store::connect(config)
        })
        .await?;
    Ok((store, report))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[derive(Debug)]
    struct Flaky {
        transient: bool,
    }

    impl Display for Flaky {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "flaky (transient: {})", self.transient)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_until_the_step_succeeds() {
        let calls = AtomicU32::new(0);
        let boot = BootRetry::new(Duration::from_secs(60));
        let value = boot
            .run(
                Service::Store,
                "connect",
                "db:5432/x",
                |e: &Flaky| e.transient,
                || async {
                    match calls.fetch_add(1, Ordering::SeqCst) {
                        0..=4 => Err(Flaky { transient: true }),
                        n => Ok(n),
                    }
                },
            )
            .await
            .expect("succeeds on the sixth call");
        assert_eq!(value, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_error_ends_the_boot_at_once() {
        let calls = AtomicU32::new(0);
        let boot = BootRetry::new(Duration::from_secs(60));
        let outcome: Result<(), _> = boot
            .run(
                Service::Kafka,
                "check topic",
                "broker:9092",
                |e: &Flaky| e.transient,
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(Flaky { transient: false })
                },
            )
            .await;
        assert!(matches!(outcome, Err(BootError::Permanent(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_at_the_deadline_naming_the_service_target_and_runbook() {
        let calls = AtomicU32::new(0);
        let started = Instant::now();
        let boot = BootRetry::new(Duration::from_secs(20));
        let outcome: Result<(), _> = boot
            .run(
                Service::Store,
                "connect to the store",
                "db.internal:5432/courier",
                |e: &Flaky| e.transient,
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(Flaky { transient: true })
                },
            )
            .await;
        let Err(BootError::GaveUp(gave_up)) = outcome else {
            panic!("expected the boot to give up, got {outcome:?}");
        };
        // Several attempts, spread by backoff, all inside the deadline.
        assert!(calls.load(Ordering::SeqCst) >= 3, "{gave_up:?}");
        assert_eq!(gave_up.attempts, calls.load(Ordering::SeqCst));
        assert!(started.elapsed() <= Duration::from_secs(20));
        let text = gave_up.to_string();
        for needle in [
            "the store (PostgreSQL)",
            "db.internal:5432/courier",
            "flaky (transient: true)",
            "worker.boot_timeout",
            "docs/runbooks/store-unavailable.md",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from: {text}");
        }
    }
}
