//! `courier replay`: deliver again the failed ranges of a route, its quarantined messages (all, one
//! partition's, or one), or any window of offsets of one of its partitions, even one already delivered. Always audited (who, why, when, what) in `courier_replays`;
//! delivered by the workers' replay tasks, on their own budget, so live traffic is never starved; the live
//! watermark never moves backwards.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use courier_core::OffsetRange;
use courier_kafka::RangeReader;
use courier_store::protocol::ReplayAudit;
use courier_store::{QuarantineFilter, ReplayFilter, ReplayOutcome, Store};
use courier_worker::{open_store, BootRetry, Schema};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    #[arg(long, short, env = "COURIER_CONFIG", default_value = "courier.toml")]
    config: PathBuf,
    /// The route to replay.
    #[arg(long)]
    route: String,
    /// Replay the route's failed ranges (optionally narrowed by --partition and --error).
    #[arg(long, conflicts_with_all = ["from", "to"])]
    failed: bool,
    /// Replay the route's quarantined messages (optionally narrowed by --partition and --offset), each
    /// as the window [offset, offset + 1); a message refused again is quarantined again.
    #[arg(long, conflicts_with_all = ["failed", "from", "to", "error"])]
    quarantined: bool,
    /// With --quarantined and --partition: only the message at this offset.
    #[arg(long, requires_all = ["quarantined", "partition"])]
    offset: Option<i64>,
    /// Only this partition.
    #[arg(long)]
    partition: Option<i32>,
    /// Only failed ranges whose last error contains this text (case-insensitive).
    #[arg(long, requires = "failed")]
    error: Option<String>,
    /// First offset of the window to replay (with --to and --partition).
    #[arg(long, requires_all = ["to", "partition"])]
    from: Option<i64>,
    /// Offset after the last one to replay (exclusive).
    #[arg(long, requires = "from")]
    to: Option<i64>,
    /// Why, for the audit trail (e.g. the ticket).
    #[arg(long)]
    reason: String,
    /// Who asks, for the audit trail (default: $USER@host).
    #[arg(long)]
    by: Option<String>,
    /// List what would be replayed, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Show progress until the replayed ranges are delivered (workers must be running).
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this long.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

pub async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    if !args.failed && !args.quarantined && args.from.is_none() {
        bail!("say what to replay: --failed (the route's failed ranges), --quarantined (its quarantined messages), or --partition P --from A --to B (a window)");
    }
    if args.reason.trim().is_empty() {
        bail!("--reason is empty: say why (it is kept in courier_replays for whoever asks later)");
    }
    let config = Config::load(&args.config)?;
    let Some(route) = config.routes.get(&args.route) else {
        bail!(
            "route {:?} is not in {} (known routes: {})",
            args.route,
            args.config.display(),
            config.routes.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    };
    let boot = BootRetry::new(config.worker.boot_timeout);
    let (store, _) = open_store(&config.store, Schema::Check, &boot).await?;
    let audit = ReplayAudit {
        requested_by: args.by.clone().unwrap_or_else(requested_by),
        reason: args.reason.clone(),
        dry_run: args.dry_run,
    };

    let outcome = if args.quarantined {
        let filter = QuarantineFilter {
            partition: args.partition,
            offset: args.offset,
        };
        let outcome = store
            .replay_quarantined(&route.name, &filter, &audit)
            .await?;
        if outcome.ranges.is_empty() {
            if let (Some(partition), Some(offset)) = (args.partition, args.offset) {
                bail!(
                    "route {} has no quarantined message at partition {partition} offset {offset} waiting for a replay \
                     (`courier status` lists them; a message already replayed is listed again only if refused again)",
                    route.name
                );
            }
        }
        outcome
    } else if args.failed {
        let filter = ReplayFilter {
            partition: args.partition,
            error_contains: args.error.clone(),
        };
        store.replay_failed(&route.name, &filter, &audit).await?
    } else {
        let (Some(partition), Some(from), Some(to)) = (args.partition, args.from, args.to) else {
            bail!("a window needs --partition, --from and --to");
        };
        let window =
            OffsetRange::new(from, to).with_context(|| format!("--from {from} --to {to}"))?;
        // Kafka's bounds first: a window outside what the topic holds cannot be read.
        let reader = RangeReader::connect(config.kafka.clone()).await?;
        let marks = reader.high_watermarks(&route.topic).await?;
        let Some(mark) = marks.iter().find(|m| m.partition == partition) else {
            bail!(
                "topic {:?} has no partition {partition} (it has {})",
                route.topic,
                marks.len()
            );
        };
        if window.start() < mark.low || window.end() > mark.high {
            bail!(
                "window {window} is outside what topic {:?} partition {partition} holds: [{}, {}). Replay a window inside it",
                route.topic,
                mark.low,
                mark.high
            );
        }
        store
            .replay_window(&route.name, partition, window, route.range_size, &audit)
            .await?
    };
    report(&outcome, &args);
    if let (Some(replay_id), true) = (outcome.replay_id, args.wait) {
        wait_for(&store, replay_id, args.timeout).await?;
    }
    Ok(())
}

fn report(outcome: &ReplayOutcome, args: &ReplayArgs) {
    let offsets: u64 = outcome.ranges.iter().map(|(_, r)| r.len()).sum();
    let verb = if args.dry_run {
        "would replay"
    } else {
        "replaying"
    };
    println!(
        "{verb} {} range(s), {offsets} offsets, of route {}:",
        outcome.ranges.len(),
        args.route
    );
    for (partition, range) in outcome.ranges.iter().take(50) {
        println!("  partition {partition} {range}");
    }
    if outcome.ranges.len() > 50 {
        println!("  ... and {} more", outcome.ranges.len() - 50);
    }
    if let Some(id) = outcome.replay_id {
        println!(
            "audited as replay {id} (courier_replays): by {}, reason {:?}",
            args.by.clone().unwrap_or_else(requested_by),
            args.reason
        );
    } else if outcome.ranges.is_empty() {
        println!("nothing to replay");
    }
}

async fn wait_for(store: &Store, replay_id: i64, timeout: Duration) -> anyhow::Result<()> {
    let (_, total) = store.replay_progress(replay_id).await?;
    let bar = ProgressBar::new(u64::try_from(total).unwrap_or(0));
    bar.set_style(
        ProgressStyle::with_template("{spinner} replayed {pos}/{len} ranges [{bar:40}] {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    loop {
        let (settled, total) = store.replay_progress(replay_id).await?;
        bar.set_position(u64::try_from(settled).unwrap_or(0));
        if settled >= total {
            bar.finish();
            println!("replay {replay_id} done: {total} range(s) settled (failed ones, if any, are listed by `courier status`)");
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!("replay {replay_id}: {settled} of {total} ranges settled after {timeout:?}; are workers running? (`courier status`)");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) fn requested_by() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    format!("{user}@{host}")
}
