//! What the worker's tasks share ([`Context`]): the store, the Kafka reader, the routes with their
//! destinations' deliverers, the idle gates and loop beats; what they count ([`WorkerStats`]); and the
//! log [`Throttle`] that keeps a failure repeating every tick visible without flooding the log.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use courier_core::{Ordering, RangeKind};
use courier_http::Deliverer;
use courier_kafka::RangeReader;
use courier_store::{LeaseRequest, Store};

use crate::config::{RouteConfig, WorkerConfig};
use crate::view::Liveness;
use crate::{delivery, idle};

/// One route as the runtime sees it: its settings and the deliverer of its destination (shared with every
/// other route to the same destination, so the concurrency limit and circuit breaker are per destination).
pub(crate) struct Route {
    pub config: RouteConfig,
    pub deliverer: Deliverer,
}

/// What a worker did, counted as it went.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub ranges_checkpointed: AtomicU64,
    pub messages_delivered: AtomicU64,
    pub ranges_fenced: AtomicU64,
    pub ranges_retried: AtomicU64,
    pub ranges_failed: AtomicU64,
    pub ranges_released: AtomicU64,
}

impl WorkerStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, AtomicOrdering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(AtomicOrdering::Relaxed)
    }
}

/// Everything the worker's tasks share.
pub(crate) struct Context {
    pub id: String,
    pub store: Store,
    pub reader: RangeReader,
    /// Writes dead letters; only when some route names a `dead_letter_topic`.
    pub dead_letters: Option<courier_kafka::Producer>,
    pub routes: Vec<Route>,
    pub config: WorkerConfig,
    pub stats: Arc<WorkerStats>,
    /// `routes` by name.
    pub route_index: HashMap<String, usize>,
    /// Idle live delivery tasks.
    pub live: idle::Gate,
    /// Idle replay tasks.
    pub replays: idle::Gate,
    /// Ranges were checkpointed: a planner holding a partition's tail back until its ranges in flight
    /// settle carves it now rather than at its next tick.
    pub settled: tokio::sync::Notify,
    /// When each loop last came round, for `/healthz`.
    pub liveness: Liveness,
}

impl Context {
    pub fn route(&self, name: &str) -> Option<&Route> {
        self.route_index.get(name).map(|i| &self.routes[*i])
    }

    pub fn gate(&self, kind: RangeKind) -> &idle::Gate {
        match kind {
            RangeKind::Live => &self.live,
            RangeKind::Replay => &self.replays,
        }
    }

    /// What to ask the store for: every route whose destination is not holding everyone off, or `None`
    /// when all of them are.
    pub fn lease_request(&self, kind: RangeKind, max_ranges: usize) -> Option<LeaseRequest> {
        let open: Vec<&Route> = self
            .routes
            .iter()
            .filter(|route| !delivery::destination_is_holding_off(route))
            .collect();
        if open.is_empty() {
            return None;
        }
        Some(LeaseRequest {
            routes: open.iter().map(|r| r.config.name.clone()).collect(),
            ordered: open
                .iter()
                .filter(|r| r.config.ordering == Ordering::Partition)
                .map(|r| r.config.name.clone())
                .collect(),
            owner: self.id.clone(),
            max_ranges,
            ttl: self.config.lease_ttl,
            kind,
        })
    }
}

/// Logs at most once per `every` for a given key, so a failure repeating every tick does not flood the
/// log at 2 a.m. while still being visible. On tokio's clock, like the loops that use it.
pub(crate) struct Throttle {
    every: Duration,
    last: std::sync::Mutex<std::collections::HashMap<String, tokio::time::Instant>>,
}

impl Throttle {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: std::sync::Mutex::default(),
        }
    }

    pub fn ready(&self, key: &str) -> bool {
        let now = tokio::time::Instant::now();
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match last.get(key) {
            Some(at) if now.duration_since(*at) < self.every => false,
            _ => {
                last.insert(key.to_owned(), now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::advance;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_repeating_failure_is_logged_once_per_period_per_key() {
        let throttle = Throttle::new(Duration::from_secs(30));
        assert!(throttle.ready("lease"));
        assert!(!throttle.ready("lease"));
        // Another failure is logged on its own account.
        assert!(throttle.ready("plan"));
        advance(Duration::from_secs(30) - Duration::from_millis(1)).await;
        assert!(!throttle.ready("lease"));
        advance(Duration::from_millis(1)).await;
        assert!(throttle.ready("lease"));
        // The period starts again from the line logged, not from the failures held back.
        assert!(!throttle.ready("lease"));
        assert!(throttle.ready("plan"));
    }
}
