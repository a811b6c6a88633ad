//! `courier routes`: the routes the store has recorded with their delivery settings, and the deliberate
//! way to change those settings (a worker whose settings differ from the recorded ones refuses to start).
//! Runbook: docs/runbooks/route-settings-changed.md.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use courier_store::routes::describe_changes;
use courier_store::{RouteSettings, RouteSpec};
use courier_worker::{open_store, BootRetry, Schema};

use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct RoutesArgs {
    #[command(subcommand)]
    command: RoutesCommand,
}

#[derive(Debug, clap::Subcommand)]
enum RoutesCommand {
    /// Every recorded route: topic, destination, recorded delivery settings, when they last changed.
    List {
        #[arg(long, short, env = "COURIER_CONFIG", default_value = "courier.toml")]
        config: PathBuf,
    },
    /// Record ROUTE's delivery settings as the configuration file has them, on purpose. Workers already
    /// running keep their settings until restarted; workers started with the old ones then refuse to start.
    Update {
        #[arg(long, short, env = "COURIER_CONFIG", default_value = "courier.toml")]
        config: PathBuf,
        /// Show what would change, record nothing.
        #[arg(long)]
        dry_run: bool,
        /// The route (a [routes.NAME] section of the file).
        route: String,
    },
}

pub async fn run(args: RoutesArgs) -> anyhow::Result<()> {
    match args.command {
        RoutesCommand::List { config } => list(&config).await,
        RoutesCommand::Update {
            config,
            dry_run,
            route,
        } => update(&config, &route, dry_run).await,
    }
}

async fn list(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let boot = BootRetry::new(config.worker.boot_timeout);
    let (store, _) = open_store(&config.store, Schema::Check, &boot).await?;
    let routes = store.routes().await?;
    if routes.is_empty() {
        println!("No routes recorded yet: a worker records each route it serves when it starts.");
    }
    for route in routes {
        println!(
            "{}: topic {:?} -> destination {:?}{}, created {}, settings updated {}",
            route.name,
            route.topic,
            route.destination,
            if route.paused { " (paused)" } else { "" },
            route.created_at,
            route.updated_at
        );
        match route.settings {
            Some(settings) => {
                for (key, value) in settings.iter() {
                    println!("  {key} = {value:?}");
                }
            }
            None => {
                println!("  no settings recorded yet: the next worker to start it records its own")
            }
        }
    }
    Ok(())
}

async fn update(path: &std::path::Path, name: &str, dry_run: bool) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let (spec, settings) =
        configured(&config, name).with_context(|| format!("in {}", path.display()))?;
    let boot = BootRetry::new(config.worker.boot_timeout);
    let (store, _) = open_store(&config.store, Schema::Check, &boot).await?;
    if dry_run {
        let recorded = store.routes().await?.into_iter().find(|r| r.name == name);
        match recorded {
            None => println!("Route {name:?} is not recorded yet: the first worker to start it records its settings."),
            Some(route) => {
                let changes = route.settings.unwrap_or_default().changes_to(&settings);
                if changes.is_empty() {
                    println!("Route {name:?}: the recorded settings already match {}; nothing to change.", path.display());
                } else {
                    println!("Route {name:?} would change (dry run, nothing recorded): {}", describe_changes(&changes));
                }
            }
        }
        return Ok(());
    }
    match store.update_route_settings(&spec, &settings).await? {
        None => println!("Route {name:?} is not recorded yet: the first worker to start it records its settings."),
        Some(changes) if changes.is_empty() => println!(
            "Route {name:?}: the recorded settings already match {}; nothing changed.",
            path.display()
        ),
        Some(changes) => println!(
            "Route {name:?} updated: {}. Now restart or roll the workers serving it with this configuration; \
             until each restarts it keeps delivering with its old settings.",
            describe_changes(&changes)
        ),
    }
    Ok(())
}

/// The spec and settings `config` has for route `name`.
fn configured(config: &Config, name: &str) -> anyhow::Result<(RouteSpec, RouteSettings)> {
    let Some(route) = config.routes.get(name) else {
        bail!(
            "there is no [routes.{name}] section (configured routes: {})",
            config.routes.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    };
    // Config::load checked that every route's destination exists.
    let Some(destination) = config.destinations.get(&route.destination) else {
        bail!("routes.{name}.destination names no [destinations] section");
    };
    let spec = RouteSpec {
        name: route.name.clone(),
        topic: route.topic.clone(),
        destination: route.destination.clone(),
    };
    Ok((spec, route.settings(destination)))
}
