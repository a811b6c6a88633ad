//! `courier gameday`: break things on purpose and count every message.
//!
//! Runs chaos scenarios from `courier-chaos` against the services `DATABASE_URL` and `KAFKA_BROKERS`
//! name (or the local ones `make services` starts): incident 8 reproduced in PostgreSQL, naive vs
//! courier, and the other faults of that day. Each scenario works in a scratch database of its own,
//! dropped at the end, and is judged on messages in, delivered, duplicates (explained by an interrupted
//! range or not), lost, longest stall and time to recover. Workers are real `courier run` processes of
//! this executable. Exit status 1 when any invariant or check fails.
//!
//! `--soak DURATION [--seed N]` runs the randomized fault soak instead (`courier_chaos::soak`), on a
//! PostgreSQL cluster and Kafka broker of its own that it restarts; it prints its seed first.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use courier_chaos::fmt_duration;
use courier_chaos::{render, Launcher, Length, Options, Scenario, Services, SoakOptions};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct GamedayArgs {
    /// Run this scenario (repeat for several); `--list` names them. Without it, every scenario runs.
    #[arg(long = "scenario", value_name = "NAME", value_enum)]
    scenarios: Vec<Scenario>,
    /// Run every scenario (the default when no --scenario is given).
    #[arg(long, conflicts_with = "scenarios")]
    all: bool,
    /// The long versions (about 7 minutes in all), including PostgreSQL and Kafka restarts when they
    /// are the local ones; without it, the short versions `make test` runs (about 1.5 minutes in all).
    #[arg(long)]
    full: bool,
    /// Print the reports as JSON on stdout instead of the tables.
    #[arg(long)]
    json: bool,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
    /// Run workers as tasks inside this process instead of `courier run` processes.
    #[arg(long)]
    in_process: bool,
    /// The randomized fault soak for this long (e.g. `5m`, `1h`): steady production through several
    /// `courier run` workers while random faults hit the pipeline, on a PostgreSQL cluster and Kafka
    /// broker of its own (started with scripts/, and restarted), then every message judged.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration,
          conflicts_with_all = ["scenarios", "all", "full", "in_process", "list"])]
    soak: Option<std::time::Duration>,
    /// The soak's seed (printed first; the same seed replays the same faults). Random when absent.
    #[arg(long, requires = "soak")]
    seed: Option<u64>,
    /// The soak's production rate, messages per second.
    #[arg(long, requires = "soak", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    rate: u64,
    /// The soak's number of workers.
    #[arg(long, requires = "soak", default_value_t = 3,
          value_parser = clap::value_parser!(u64).range(2..=16))]
    workers: u64,
}

pub async fn run(args: GamedayArgs) -> anyhow::Result<ExitCode> {
    if let Some(length) = args.soak {
        return soak(&args, length).await;
    }
    if args.list {
        for scenario in Scenario::ALL {
            println!("{:<14} {}", scenario.name(), scenario.about());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let scenarios: Vec<Scenario> = if args.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        let mut chosen = args.scenarios.clone();
        chosen.dedup();
        chosen
    };
    let launcher = if args.in_process {
        Launcher::InProcess
    } else {
        let exe = std::env::current_exe()
            .context("gameday: cannot locate the courier executable to start worker processes from; pass --in-process")?;
        Launcher::Process { exe }
    };
    let length = if args.full {
        Length::Full
    } else {
        Length::Short
    };
    let options = Options {
        length,
        launcher,
        services: Services::from_env(),
        allow_restarts: args.full,
    };
    eprintln!(
        "gameday: {} scenario(s), {} versions; PostgreSQL {}{}, Kafka {}{}; workers {}",
        scenarios.len(),
        if args.full { "full" } else { "short" },
        courier_store::url::redact(&options.services.server_url),
        if options.services.external_database {
            " (DATABASE_URL)"
        } else {
            ""
        },
        options.services.brokers,
        if options.services.external_kafka {
            " (KAFKA_BROKERS)"
        } else {
            ""
        },
        if args.in_process {
            "in-process"
        } else {
            "as `courier run` processes"
        },
    );

    let started = Instant::now();
    let mut reports = Vec::new();
    for (i, scenario) in scenarios.iter().enumerate() {
        eprintln!(
            "gameday: [{}/{}] {}: {}",
            i + 1,
            scenarios.len(),
            scenario.name(),
            scenario.about()
        );
        for report in scenario.run(&options).await {
            eprintln!(
                "gameday:     {}{}: {} ({})",
                report.scenario,
                report
                    .mode
                    .map(|m| format!(" [{}]", m.as_str()))
                    .unwrap_or_default(),
                report.verdict(),
                fmt_duration(report.elapsed)
            );
            reports.push(report);
        }
    }

    let passed = reports.iter().all(|r| r.passed());
    if args.json {
        let out = json!({
            "length": length,
            "passed": passed,
            "elapsed_seconds": started.elapsed().as_secs_f64(),
            "scenarios": reports,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&out).context("gameday: encoding the report")?
        );
    } else {
        println!("{}", render(&reports));
        println!(
            "gameday: {} in {}",
            if passed {
                "every invariant held"
            } else {
                "FAILED"
            },
            fmt_duration(started.elapsed())
        );
    }
    if !passed {
        let failed: Vec<String> = reports
            .iter()
            .filter(|r| !r.passed())
            .map(|r| {
                format!(
                    "{}{}",
                    r.scenario,
                    r.mode
                        .map(|m| format!(" [{}]", m.as_str()))
                        .unwrap_or_default()
                )
            })
            .collect();
        eprintln!(
            "gameday: failed: {}. Each failed check above says what broke; the scratch databases are dropped, rerun one with `courier gameday --scenario NAME`.",
            failed.join(", ")
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `courier gameday --soak`: prints the seed first, runs, prints the report; exit 1 when it failed.
async fn soak(args: &GamedayArgs, length: std::time::Duration) -> anyhow::Result<ExitCode> {
    let seed = args.seed.unwrap_or_else(rand::random);
    eprintln!(
        "soak: seed {seed} (replay with: courier gameday --soak {} --seed {seed})",
        humantime::format_duration(length)
    );
    let exe = std::env::current_exe()
        .context("gameday: cannot locate the courier executable to start worker processes from")?;
    let options = SoakOptions {
        seed,
        length,
        rate: usize::try_from(args.rate).context("gameday: --rate")?,
        workers: usize::try_from(args.workers).context("gameday: --workers")?,
        exe,
    };
    let say = |line: &str| eprintln!("soak: {line}");
    let report = courier_chaos::run_soak(&options, &say)
        .await
        .with_context(|| format!("soak (seed {seed}) could not be carried out"))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "passed": report.passed(),
                "by_kind": report.by_kind(),
                "soak": report,
            }))
            .context("gameday: encoding the report")?
        );
    } else {
        println!("{}", report.render());
    }
    let verdict = if report.passed() {
        "every invariant held"
    } else {
        "FAILED"
    };
    eprintln!("soak: seed {seed}: {verdict}");
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
