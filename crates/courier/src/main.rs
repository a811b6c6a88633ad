//! `courier`: the command line. Parses flags, loads configuration, installs logging and metrics, and
//! hands over to the library crates. `anyhow` lives only here.
//!
//! # Layout
//! - [`config`]: `courier.toml`, layered with the environment, validated.
//! - [`telemetry`]: logs to stderr (text or JSON); metrics to StatsD, Prometheus and the status page.
//! - `cmd_*`: one module per subcommand.

mod cmd_changes;
mod cmd_check;
mod cmd_demo;
mod cmd_gameday;
mod cmd_migrate;
mod cmd_probe;
mod cmd_replay;
mod cmd_routes;
mod cmd_run;
mod cmd_status;
mod config;
mod telemetry;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Deliver Kafka topics to HTTP destinations. Progress lives in PostgreSQL as leased offset ranges:
/// never a lost message, duplicates only where a lease was interrupted, and no startup DDL outside
/// `courier migrate`.
#[derive(Debug, Parser)]
#[command(name = "courier", version, about, long_about = None, after_help = LOGGING_HELP)]
struct Cli {
    /// Log line format on stderr: `text` for people, `json` (one object per line) for log pipelines.
    /// Default: `[log] format` of the configuration file, else text.
    #[arg(long, global = true, env = "COURIER_LOG_FORMAT", value_enum)]
    log_format: Option<telemetry::LogFormat>,
    #[command(subcommand)]
    command: Command,
}

const LOGGING_HELP: &str = "\
Logging:
  Logs go to stderr. RUST_LOG sets what is logged, as tracing-subscriber's EnvFilter reads it
  (default: \"warn,courier=info\"), e.g. RUST_LOG=debug, RUST_LOG=warn,courier=debug,
  RUST_LOG=courier=info,librdkafka=warn. --log-format json writes one JSON object per line.
  Text logs are coloured only when stderr is a terminal, and never when NO_COLOR is set.";

impl Command {
    /// The configuration file this command reads, if any: its `[log] format` applies.
    fn config_path(&self) -> Option<&Path> {
        match self {
            Command::Run { config, .. } | Command::CheckConfig { config, .. } => {
                Some(config.as_path())
            }
            Command::Migrate { config, .. } => config.as_deref(),
            Command::Status(args) => Some(args.config_path()),
            _ => None,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a worker: plan, lease, deliver and checkpoint ranges until SIGTERM, SIGINT or SIGHUP, then drain.
    /// Serves the admin endpoint ([admin], default http://127.0.0.1:9464/: status page, /healthz,
    /// /readyz, /metrics).
    #[command(after_help = LOGGING_HELP)]
    Run {
        /// The configuration file (see courier.example.toml).
        #[arg(long, short, env = "COURIER_CONFIG", default_value = "courier.toml")]
        config: PathBuf,
        /// Apply pending migrations before starting (otherwise a schema that is behind refuses to start).
        #[arg(long)]
        migrate: bool,
        /// Record this worker's delivery settings for ROUTE over the ones the store has (repeatable). For
        /// a deliberate change on one worker; a fleet uses `courier routes update` before rolling.
        #[arg(long, value_name = "ROUTE")]
        accept_route_changes: Vec<String>,
    },
    /// Apply pending schema migrations, once, under an advisory lock. Safe while workers run.
    Migrate {
        /// Read store settings from this file; without it, DATABASE_URL with default timeouts.
        #[arg(long, short, env = "COURIER_CONFIG")]
        config: Option<PathBuf>,
        /// Migrate the local development cluster (`make postgres`) when neither --config nor DATABASE_URL
        /// names a database (without it, courier refuses to guess).
        #[arg(long, conflicts_with = "config")]
        dev: bool,
        /// How long to keep retrying a store that cannot be reached yet (default: worker.boot_timeout
        /// of the file, or 60s), e.g. `10s`, `2m`.
        #[arg(long, value_parser = humantime::parse_duration)]
        boot_timeout: Option<std::time::Duration>,
    },
    /// Check a configuration file (keys, broker list, librdkafka property names) and print what it would
    /// run, without connecting to anything; with --connect, also check the store (and its TLS), the
    /// schema version, Kafka, each route's topic and each destination, one line each.
    CheckConfig {
        #[arg(long, short, env = "COURIER_CONFIG", default_value = "courier.toml")]
        config: PathBuf,
        /// Also connect: store, schema version, Kafka, topics, destinations. Exits 1 naming what failed.
        #[arg(long)]
        connect: bool,
    },
    /// Where every route stands: progress, lag, leases, failures, workers. Exit 3 when something needs attention.
    Status(cmd_status::StatusArgs),
    /// The routes the store has recorded and their delivery settings; change those settings on purpose.
    Routes(cmd_routes::RoutesArgs),
    /// Stop every worker from leasing ROUTE's ranges (at their next lease call) until `courier resume`;
    /// recorded with the reason in `courier changes`, shown by `courier status`.
    Pause(cmd_changes::PauseArgs),
    /// Let workers lease a paused route's ranges again.
    Resume(cmd_changes::ResumeArgs),
    /// What changed: workers started and stopped, migrations, replays, pauses, route settings,
    /// Retry-After and circuits, failed and quarantined ranges. `--since 2h`, `--json`.
    Changes(cmd_changes::ChangesArgs),
    /// Deliver again a route's failed ranges, or any window of offsets; audited; `--dry-run`, `--wait`.
    Replay(cmd_replay::ReplayArgs),
    /// The customer's view: produce probe messages, receive them, report 100% or not and latency.
    Probe(cmd_probe::ProbeArgs),
    /// The demo: local services, a demo topic and destination, live progress, then a summary.
    Demo(cmd_demo::DemoArgs),
    /// Chaos gameday: incident 8 naive vs courier and the other faults of that day, every message counted.
    Gameday(cmd_gameday::GamedayArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = cli
        .log_format
        .or_else(|| cli.command.config_path().and_then(config::peek_log_format))
        .unwrap_or_default();
    telemetry::install_logging(log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("courier: error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let done = |result: anyhow::Result<()>| result.map(|()| ExitCode::SUCCESS);
        match cli.command {
            Command::Run {
                config,
                migrate,
                accept_route_changes,
            } => done(cmd_run::run(&config, migrate, accept_route_changes).await),
            Command::Migrate {
                config,
                dev,
                boot_timeout,
            } => done(cmd_migrate::run(config.as_deref(), dev, boot_timeout).await),
            Command::CheckConfig { config, connect } => {
                done(cmd_check::run(&config, connect).await)
            }
            Command::Status(args) => cmd_status::run(args).await,
            Command::Routes(args) => done(cmd_routes::run(args).await),
            Command::Pause(args) => done(cmd_changes::pause(args).await),
            Command::Resume(args) => done(cmd_changes::resume(args).await),
            Command::Changes(args) => done(cmd_changes::changes(args).await),
            Command::Replay(args) => done(cmd_replay::run(args).await),
            Command::Probe(args) => cmd_probe::run(args).await,
            Command::Demo(args) => done(cmd_demo::run(args).await),
            Command::Gameday(args) => cmd_gameday::run(args).await,
        }
    });
    // Blocking calls still running (a librdkafka metadata request to a broker that is away waits out
    // its own timeout) must not hold the exit: the outcome is decided.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok(code) => code,
        Err(error) => {
            // One line: what happened and, from the error itself, what to do. A JSON log stays JSON.
            match log_format {
                telemetry::LogFormat::Text => eprintln!("courier: error: {error:#}"),
                telemetry::LogFormat::Json => tracing::error!("courier: error: {error:#}"),
            }
            ExitCode::FAILURE
        }
    }
}
