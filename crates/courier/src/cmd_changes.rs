//! `courier changes`, `courier pause` and `courier resume`: the operator's side of the store's timeline
//! ([`courier_store::changes`]). "What changed?" is the first question of an incident; pausing a route
//! whose destination is failing is the first answer of docs/runbooks/lag.md.

use std::path::PathBuf;
use std::time::Duration;

use courier_store::Store;
use courier_worker::{open_store, BootRetry, Schema};
use serde_json::json;

use crate::cmd_replay::requested_by;
use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct PauseArgs {
    #[arg(long, short, env = "COURIER_CONFIG", default_value = "courier.toml")]
    config: PathBuf,
    /// Why, for `courier changes` and `courier status` (e.g. "destination returns 500, INC-1234").
    #[arg(long)]
    reason: String,
    /// Who pauses, for the record (default: $USER@host).
    #[arg(long)]
    by: Option<String>,
    /// The route, as `courier routes list` names it.
    route: String,
}

#[derive(Debug, clap::Args)]
pub struct ResumeArgs {
    #[arg(long, short, env = "COURIER_CONFIG", default_value = "courier.toml")]
    config: PathBuf,
    /// Why, for `courier changes` (e.g. "destination fixed").
    #[arg(long, default_value = "")]
    reason: String,
    /// Who resumes, for the record (default: $USER@host).
    #[arg(long)]
    by: Option<String>,
    route: String,
}

#[derive(Debug, clap::Args)]
pub struct ChangesArgs {
    #[arg(long, short, env = "COURIER_CONFIG", default_value = "courier.toml")]
    config: PathBuf,
    /// How far back, e.g. `30m`, `2h`, `7d`.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    since: Duration,
    /// Only this route's events.
    #[arg(long)]
    route: Option<String>,
    /// At most this many events (the newest).
    #[arg(long, default_value_t = 1000)]
    limit: i64,
    /// Machine-readable output: one JSON array.
    #[arg(long)]
    json: bool,
}

async fn store(path: &std::path::Path) -> anyhow::Result<Store> {
    let config = Config::load(path)?;
    let boot = BootRetry::new(config.worker.boot_timeout);
    let (store, _) = open_store(&config.store, Schema::Check, &boot).await?;
    Ok(store)
}

pub async fn pause(args: PauseArgs) -> anyhow::Result<()> {
    if args.reason.trim().is_empty() {
        anyhow::bail!(
            "--reason is empty: say why the route is paused (it is shown by `courier status` until someone resumes it)"
        );
    }
    let store = store(&args.config).await?;
    let by = args.by.unwrap_or_else(requested_by);
    if store
        .set_route_paused(&args.route, true, &args.reason, &by)
        .await?
    {
        println!(
            "Paused route {}: no worker leases its ranges from its next lease call on; ranges already leased finish. \
             Its lag grows (see `courier status`). Resume with `courier resume {}`.",
            args.route, args.route
        );
    } else {
        let paused = store.paused_routes().await?;
        let current = paused.iter().find(|p| p.route == args.route);
        println!(
            "Route {} was already paused{}; nothing changed.",
            args.route,
            current.map_or(String::new(), describe_pause)
        );
    }
    Ok(())
}

pub async fn resume(args: ResumeArgs) -> anyhow::Result<()> {
    let store = store(&args.config).await?;
    let by = args.by.unwrap_or_else(requested_by);
    if store
        .set_route_paused(&args.route, false, &args.reason, &by)
        .await?
    {
        println!(
            "Resumed route {}: workers lease its ranges again at their next lease call.",
            args.route
        );
    } else {
        println!("Route {} was not paused; nothing changed.", args.route);
    }
    Ok(())
}

/// " since T by WHO: REASON", for a paused route.
pub fn describe_pause(paused: &courier_store::PausedRoute) -> String {
    format!(
        " since {} by {}: {}",
        paused.since.as_deref().unwrap_or("an unknown time"),
        paused.by.as_deref().unwrap_or("someone"),
        paused.reason.as_deref().unwrap_or("no reason recorded")
    )
}

pub async fn changes(args: ChangesArgs) -> anyhow::Result<()> {
    let store = store(&args.config).await?;
    let rows = store
        .changes(args.since, args.route.as_deref(), args.limit.max(1))
        .await?;
    if args.json {
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|c| {
                json!({
                    "id": c.id, "at": c.at, "kind": c.kind, "route": c.route,
                    "destination": c.destination, "actor": c.actor, "summary": c.summary,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let since = humantime::format_duration(args.since);
    if rows.is_empty() {
        println!("Nothing changed in the last {since}.");
        return Ok(());
    }
    println!(
        "CHANGES in the last {since} ({} event(s), oldest first)",
        rows.len()
    );
    println!(
        "  {:<24} {:<28} {:<20} summary",
        "at (UTC)", "kind", "route/destination"
    );
    for c in &rows {
        let subject = c
            .route
            .as_deref()
            .or(c.destination.as_deref())
            .unwrap_or("-");
        let actor = c
            .actor
            .as_deref()
            .map_or(String::new(), |a| format!(" [{a}]"));
        println!(
            "  {:<24} {:<28} {:<20} {}{actor}",
            c.at, c.kind, subject, c.summary
        );
    }
    if rows.len() as i64 >= args.limit {
        println!(
            "  (only the newest {}: raise --limit or narrow --since)",
            args.limit
        );
    }
    Ok(())
}
