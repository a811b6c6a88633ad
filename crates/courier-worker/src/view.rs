//! What the admin endpoint sees of a running worker: when each of its loops last came round
//! ([`Liveness`]), its routes and its destinations' circuits ([`WorkerView`]).
//!
//! Owns the loop beats: the planner beats once per tick, delivery tasks once per turn of their loop and
//! once per lease renewal while a long delivery runs, the heartbeat task once per heartbeat. A loop that
//! stops beating is stuck (the store or Kafka being away slows the loops down, it does not stop them:
//! every call is bounded), which is what `/healthz` reports.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_http::CircuitState;
use courier_store::Store;

use crate::{Context, RouteConfig, WorkerConfig, WorkerStats};

/// One of the worker's loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loop {
    Planner,
    Delivery,
    Heartbeat,
}

impl Loop {
    pub const ALL: [Loop; 3] = [Loop::Planner, Loop::Delivery, Loop::Heartbeat];

    pub fn name(self) -> &'static str {
        match self {
            Loop::Planner => "planner",
            Loop::Delivery => "delivery",
            Loop::Heartbeat => "heartbeat",
        }
    }
}

/// When each loop last came round, and whether the worker is draining.
#[derive(Debug)]
pub struct Liveness {
    origin: Instant,
    /// Milliseconds after `origin` of each loop's last beat, by [`Loop`] order.
    beats: [AtomicU64; 3],
    draining: AtomicBool,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            beats: Default::default(),
            draining: AtomicBool::new(false),
        }
    }
}

impl Liveness {
    fn slot(&self, which: Loop) -> &AtomicU64 {
        &self.beats[which as usize]
    }

    /// `which` came round just now.
    pub fn beat(&self, which: Loop) {
        let at = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.slot(which).fetch_max(at, Ordering::Relaxed);
    }

    /// How long ago `which` last came round (since the worker was created, if it never did).
    pub fn since_last(&self, which: Loop) -> Duration {
        let at = Duration::from_millis(self.slot(which).load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(at)
    }

    /// The worker was told to stop: it leases nothing new and finishes what it holds.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}

/// A destination as this worker sees it right now.
#[derive(Debug, Clone)]
pub struct DestinationState {
    pub name: String,
    pub url: String,
    /// This worker's circuit breaker for it (each worker has its own).
    pub circuit: CircuitState,
    /// How much longer this worker holds off it (its `Retry-After`, or one shared through the store).
    pub holding_off_for: Option<Duration>,
    /// The routes delivering to it.
    pub routes: Vec<String>,
}

/// A read-only handle on a running worker, for the admin endpoint. Cheap to clone.
#[derive(Clone)]
pub struct WorkerView {
    pub(crate) ctx: Arc<Context>,
}

impl WorkerView {
    /// The worker's id, as in `lease_owner` and `courier_workers`.
    pub fn id(&self) -> &str {
        &self.ctx.id
    }

    pub fn liveness(&self) -> &Liveness {
        &self.ctx.liveness
    }

    pub fn store(&self) -> &Store {
        &self.ctx.store
    }

    pub fn config(&self) -> &WorkerConfig {
        &self.ctx.config
    }

    pub fn stats(&self) -> &WorkerStats {
        &self.ctx.stats
    }

    pub fn routes(&self) -> impl Iterator<Item = &RouteConfig> {
        self.ctx.routes.iter().map(|route| &route.config)
    }

    /// Every destination of this worker's routes, by name.
    pub fn destinations(&self) -> Vec<DestinationState> {
        let now = Instant::now();
        let mut found: Vec<DestinationState> = Vec::new();
        for route in &self.ctx.routes {
            let name = &route.config.destination;
            if let Some(known) = found.iter_mut().find(|d| &d.name == name) {
                known.routes.push(route.config.name.clone());
                continue;
            }
            found.push(DestinationState {
                name: name.clone(),
                url: route.deliverer.config().url.clone(),
                circuit: route.deliverer.circuit_state(),
                holding_off_for: route
                    .deliverer
                    .blocked_until()
                    .and_then(|until| until.checked_duration_since(now))
                    .filter(|left| !left.is_zero()),
                routes: vec![route.config.name.clone()],
            });
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        found
    }
}
