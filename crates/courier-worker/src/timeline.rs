//! What this worker records in the changes timeline (`courier changes`): its start (who, where, which
//! version and configuration), its destinations' circuits opening and closing, and its stop. A store
//! that is away never stops or slows the worker for it: the event is logged instead.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use courier_http::Deliverer;
use tokio::sync::watch;

use crate::context::Context;
use crate::worker::VERSION;
use crate::{metrics, stopped};

/// How often this worker's circuit breakers are looked at (in memory; the store hears of transitions only).
const CIRCUIT_WATCH_EVERY: Duration = Duration::from_secs(1);

/// Records each destination's circuit opening and closing again in "what changed?". The breaker lives in
/// the deliverer, per worker, and changes state on a request's outcome; looking at it once a second costs
/// nothing and records transitions only (a half-open probe that fails again is still "open").
pub(crate) async fn watch_circuits(ctx: Arc<Context>, mut stop: watch::Receiver<bool>) {
    let mut destinations: BTreeMap<&str, (&Deliverer, bool)> = BTreeMap::new();
    for route in &ctx.routes {
        destinations
            .entry(route.config.destination.as_str())
            .or_insert((&route.deliverer, false));
    }
    let mut every = tokio::time::interval(CIRCUIT_WATCH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stopped(&mut stop) => return,
        }
        for (name, (deliverer, was_open)) in destinations.iter_mut() {
            let state = deliverer.circuit_state();
            let open = state != courier_http::CircuitState::Closed;
            if open == *was_open {
                continue;
            }
            *was_open = open;
            let (kind, summary) = match state {
                courier_http::CircuitState::Open { failures, .. }
                | courier_http::CircuitState::HalfOpen { failures, .. } => (
                    courier_store::ChangeKind::CircuitOpened,
                    format!("destination {name}: circuit opened on worker {} after {failures} consecutive failures; it sends nothing there until a probe succeeds", ctx.id),
                ),
                courier_http::CircuitState::Closed => (
                    courier_store::ChangeKind::CircuitClosed,
                    format!("destination {name}: circuit closed on worker {}: a request succeeded", ctx.id),
                ),
            };
            record_change(
                &ctx,
                courier_store::Change::new(kind, summary).destination(name),
            )
            .await;
        }
    }
}

/// "Worker started": who, where, which version and configuration, serving what.
pub(crate) fn started_change(ctx: &Context, host: &str) -> courier_store::Change {
    let routes: Vec<&str> = ctx.routes.iter().map(|r| r.config.name.as_str()).collect();
    let summary = format!(
        "worker {} started on host {host} (pid {}), version {VERSION}, config {}, routes {}",
        ctx.id,
        std::process::id(),
        ctx.config
            .config_hash
            .as_deref()
            .unwrap_or("not from a file"),
        routes.join(", ")
    );
    courier_store::Change::new(courier_store::ChangeKind::WorkerStarted, summary)
}

/// Records an event of this worker. A store that is away must not stop or slow the worker: the event is
/// logged instead.
pub(crate) async fn record_change(ctx: &Context, change: courier_store::Change) {
    let change = change.actor(&ctx.id);
    if let Err(error) = ctx.store.record_change(&change).await {
        metrics::store_error("record change");
        tracing::warn!(worker = %ctx.id, %error, change = %change.summary, "Could not record this event for `courier changes`.");
    }
}
