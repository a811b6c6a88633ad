//! The heartbeat loop: records this worker's host, pid and version every `worker.heartbeat_every` (so
//! `courier status` answers "who runs what?") and, once an hour, prunes `courier changes` events older
//! than `worker.changes_retention`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::context::Context;
use crate::view::Loop;
use crate::worker::VERSION;
use crate::{metrics, stopped};

pub(crate) async fn run(ctx: Arc<Context>, host: String, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(ctx.config.heartbeat_every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Pruning is rare: every worker does it, and a delete that finds nothing still costs a statement.
    let mut last_prune: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stopped(&mut stop) => return,
        }
        ctx.liveness.beat(Loop::Heartbeat);
        if let Err(error) = ctx
            .store
            .heartbeat(&ctx.id, &host, std::process::id(), VERSION)
            .await
        {
            metrics::store_error("heartbeat");
            tracing::warn!(worker = %ctx.id, %error, "Heartbeat failed.");
        }
        if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_CHANGES_EVERY) {
            last_prune = Some(tokio::time::Instant::now());
            match ctx.store.prune_changes(ctx.config.changes_retention).await {
                Ok(0) => {}
                Ok(pruned) => {
                    tracing::info!(worker = %ctx.id, pruned, retention = ?ctx.config.changes_retention, "Pruned old events of `courier changes`.")
                }
                Err(error) => {
                    metrics::store_error("prune changes");
                    tracing::warn!(worker = %ctx.id, %error, "Could not prune old events of `courier changes`; retrying at the next prune.");
                }
            }
        }
    }
}

/// How often a worker deletes events older than `worker.changes_retention`.
const PRUNE_CHANGES_EVERY: Duration = Duration::from_secs(3600);
