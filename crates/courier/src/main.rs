//! `courier`: the command line. Parses flags, loads configuration, installs logging and metrics, and
//! hands over to the library crates. `anyhow` lives only here.
//!
//! # Layout
//! - [`config`]: `courier.toml`, layered with the environment, validated.
//! - [`telemetry`]: tracing to stderr, metrics to StatsD.
//! - `cmd_*`: one module per subcommand.

mod cmd_changes;
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

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Deliver Kafka topics to HTTP destinations. Progress lives in PostgreSQL as leased offset ranges:
/// never a lost message, duplicates only where a lease was interrupted, and no startup DDL outside
/// `courier migrate`.
#[derive(Debug, Parser)]
#[command(name = "courier", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a worker: plan, lease, deliver and checkpoint ranges until SIGTERM, SIGINT or SIGHUP, then drain.
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
    /// Check a configuration file and print what it would run, without connecting to anything.
    CheckConfig {
        #[arg(long, short, env = "COURIER_CONFIG", default_value = "courier.toml")]
        config: PathBuf,
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
    telemetry::install_logging();
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
            Command::CheckConfig { config } => done(cmd_run::check_config(&config)),
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
            // One line: what happened and, from the error itself, what to do.
            eprintln!("courier: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
