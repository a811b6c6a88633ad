//! `courier status`: where every route stands, who holds what, what failed, who runs which version.
//!
//! Exit status: 0 only when nothing needs attention: every configured route has a live worker, nothing
//! failed, is quarantined or is being retried, no destination holds everyone off, Kafka answered, and
//! lag and the oldest message's age are under their bounds (`[status]`, `--max-lag`, `--max-age`);
//! 3 when something needs attention; 1 when the status could not be read. Every attention item says
//! what, since when and which runbook; `--json` carries them as objects with a code (see
//! `courier_admin::report`, which judges for this command and the status page alike). A paused route
//! needs attention for as long as it is paused: a pause forgotten after an incident is lag nobody is
//! alerted to. Lag counts only offsets Kafka still holds; offsets below Kafka's log start that courier
//! never delivered are reported apart (deleted before delivery), and losses recorded in the last day
//! need attention too.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use courier_admin::report::{self, connect_reader, gather, seconds, Inputs, Report};
use courier_worker::{open_store, BootRetry, Schema};

use crate::config::Config;

/// Exit status meaning "read fine, but something needs attention".
pub const ATTENTION: u8 = 3;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[arg(long, short, env = "COURIER_CONFIG", default_value = "courier.toml")]
    config: PathBuf,
    /// Machine-readable output (its layout is versioned: `schema_version`).
    #[arg(long)]
    json: bool,
    /// Lag (messages, per route) above which a route needs attention [default: status.max_lag, 100000].
    #[arg(long)]
    max_lag: Option<i64>,
    /// Age of the oldest undelivered message above which a partition needs attention [default:
    /// status.max_age, 1m].
    #[arg(long, value_parser = humantime::parse_duration)]
    max_age: Option<Duration>,
    /// Bound on each Kafka call and on waiting for the store [default: status.timeout, 5s].
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
}

impl StatusArgs {
    pub fn config_path(&self) -> &Path {
        &self.config
    }
}

pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config)?;
    let mut bounds = config.status.clone();
    bounds.max_lag = args.max_lag.unwrap_or(bounds.max_lag);
    bounds.max_age = args.max_age.unwrap_or(bounds.max_age);
    bounds.timeout = args.timeout.unwrap_or(bounds.timeout);
    // A database without the schema, or behind it, is a clear message rather than a query error; a store
    // that does not answer costs `timeout`, not the worker's boot timeout.
    let boot = BootRetry::new(bounds.timeout);
    let (store, _) = open_store(&config.store, Schema::Check, &boot).await?;
    let reader = connect_reader(&config.kafka, bounds.timeout).await;
    let configured = config.configured_routes();
    let inputs = Inputs {
        configured: &configured,
        status: &bounds,
        heartbeat_every: config.worker.heartbeat_every,
        brokers: &config.kafka.brokers,
    };
    let report = gather(&store, reader.as_ref().map_err(Clone::clone), &inputs).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        print_tables(&report);
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(ATTENTION)
    })
}

fn print_tables(report: &Report) {
    let snapshot = &report.snapshot;
    println!("ROUTES");
    println!(
        "  {:<24} {:>4} {:>12} {:>12} {:>12} {:>10} {:>10} {:>12}",
        "route", "part", "watermark", "frontier", "kafka high", "lag", "failed", "oldest"
    );
    for v in &report.partitions {
        let lag = v.lag().map_or("?".to_owned(), |lag| lag.to_string());
        let high = v.kafka.map_or("?".to_owned(), |(_, high)| high.to_string());
        let oldest = v.oldest_age.map_or("-".to_owned(), seconds);
        println!(
            "  {:<24} {:>4} {:>12} {:>12} {:>12} {:>10} {:>10} {:>12}",
            v.route, v.partition, v.watermark, v.frontier, high, lag, v.failed_offsets, oldest
        );
    }
    for name in report.route_names() {
        if !report.partitions.iter().any(|p| p.route == name) {
            println!("  {name:<24} (no partitions recorded: never started)");
        }
    }
    println!("LEASES ({} shown)", snapshot.leases.len());
    for l in &snapshot.leases {
        let expiry = if l.expires_in_ms >= 0 {
            format!("expires in {:.1}s", l.expires_in_ms as f64 / 1000.0)
        } else {
            "EXPIRED".into()
        };
        println!(
            "  {:<24} {:>4} [{}, {}) {} epoch {} {}{}",
            l.route,
            l.partition,
            l.start_offset,
            l.end_offset,
            l.owner,
            l.epoch,
            expiry,
            if l.replay { " (replay)" } else { "" }
        );
    }
    println!("FAILED");
    for f in &snapshot.failed {
        println!(
            "  {:<24} {} range(s), {} offsets; newest error: {}",
            f.route, f.ranges, f.offsets, f.newest_error
        );
    }
    if !snapshot.retrying.is_empty() {
        println!("RETRYING");
        for r in &snapshot.retrying {
            println!(
                "  {:<24} {} range(s), {} offsets, destination {}, since {}; newest error: {}",
                r.route,
                r.ranges,
                r.offsets,
                r.destination,
                report::since_text(r.oldest_unix, report.now_unix()),
                r.newest_error
            );
        }
    }
    if !snapshot.quarantine.is_empty() {
        println!("QUARANTINED");
        for q in &snapshot.quarantined {
            println!(
                "  {:<24} {:>4} offset {:<12} {}{}{}",
                q.route,
                q.partition,
                q.offset,
                q.reason,
                if q.times > 1 {
                    format!(" (refused {} times)", q.times)
                } else {
                    String::new()
                },
                q.dead_letter_topic
                    .as_ref()
                    .map_or(String::new(), |t| format!(" (dead letter in {t})"))
            );
        }
        let total: i64 = snapshot.quarantine.iter().map(|q| q.messages).sum();
        if total > snapshot.quarantined.len() as i64 {
            println!(
                "  ... and {} more",
                total - snapshot.quarantined.len() as i64
            );
        }
    }
    if !snapshot.losses.is_empty() {
        println!("LOST (offsets Kafka deleted before delivery; newest first)");
        for loss in &snapshot.losses {
            println!(
                "  {:<24} {:>4} offsets {} ({} offset(s)) {} ago{}: {}",
                loss.route,
                loss.partition,
                loss.offsets,
                loss.offsets.len(),
                humantime::format_duration(Duration::from_secs(
                    u64::try_from(loss.age_secs).unwrap_or(0)
                )),
                loss.replay_id
                    .map_or(String::new(), |id| format!(" (found by replay {id})")),
                loss.reason
            );
        }
    }
    if !report.paused.is_empty() {
        println!("PAUSED");
        for p in &report.paused {
            println!("  {:<24}{}", p.route, crate::cmd_changes::describe_pause(p));
        }
    }
    for (route, open) in &snapshot.pending_replays {
        println!("  {route:<24} replay in progress: {open} range(s) to go");
    }
    println!("WORKERS");
    for w in &snapshot.workers {
        println!(
            "  {:<32} host {} pid {} version {} started {}s ago, heartbeat {}s ago{}",
            w.id,
            w.host,
            w.pid,
            w.version,
            w.started_secs_ago,
            w.heartbeat_secs_ago,
            if w.stopped {
                " (stopped)"
            } else if report.worker_is_live(w) {
                ""
            } else {
                " (NOT LIVE)"
            }
        );
    }
    if report.ok() {
        println!("OK: nothing needs attention.");
    } else {
        println!("ATTENTION");
        for item in &report.attention {
            println!(
                "  - [{}] {}",
                item.code.as_str(),
                item.line(report.now_unix())
            );
        }
    }
}
