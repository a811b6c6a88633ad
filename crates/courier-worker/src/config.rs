//! What a worker process is told: how many delivery tasks, lease timing, and the routes it serves; and
//! the one place their rules are checked ([`validate_delivery`]), worded once for `courier check-config`,
//! `courier run` and [`Worker::new`](crate::Worker::new) alike.

use std::collections::BTreeMap;
use std::time::Duration;

use courier_core::{Backoff, Ordering};
use courier_http::DestinationConfig;
use courier_store::RouteSettings;
use serde::{Deserialize, Serialize};

/// The `[worker]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Concurrent delivery tasks in this process. Each holds at most `leases_per_task` ranges at a time.
    pub delivery_tasks: usize,
    /// Ranges a delivery task leases in one store round trip, delivers at once (ranges of different
    /// partitions go out together) and checkpoints in one transaction, with its next lease. A worker holds
    /// at most `delivery_tasks x leases_per_task` ranges' messages in memory.
    pub leases_per_task: usize,
    /// Delivery tasks reserved for operator replays, so a replay never takes live traffic's slots and a
    /// big replay never starves live traffic.
    pub replay_tasks: usize,
    /// How long a lease lasts without renewal. A range whose worker died is leased again after this.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How often a long delivery renews its lease. Must leave room for a destination timeout inside
    /// `lease_ttl`.
    #[serde(with = "humantime_serde")]
    pub renew_every: Duration,
    /// How long an idle delivery task first waits before asking for work again. While it keeps finding
    /// none, the wait doubles up to `max_idle_poll`, so idle workers cost the store little; ranges carved
    /// by this worker's own planner wake it at once.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Longest wait of an idle delivery task between two lease attempts.
    #[serde(with = "humantime_serde")]
    pub max_idle_poll: Duration,
    /// How often the planner reads Kafka's high watermarks and carves new ranges while messages arrive:
    /// a partition's new messages wait about this long before they are carved and delivered. While the
    /// watermarks stay still the planner slows down, doubling up to 250 ms (or this, if longer).
    #[serde(with = "humantime_serde")]
    pub plan_interval: Duration,
    /// A tail shorter than a range is carved once it has waited this long, so a quiet topic still flows.
    #[serde(with = "humantime_serde")]
    pub max_tail_age: Duration,
    /// Planned-but-unsettled ranges per partition the planner keeps ahead of delivery.
    pub ranges_ahead: usize,
    /// How long SIGTERM / SIGINT / SIGHUP waits for in-flight ranges before releasing their leases.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How often the worker records its heartbeat (and version) in the store.
    #[serde(with = "humantime_serde")]
    pub heartbeat_every: Duration,
    /// How often settled ranges below the watermark are deleted from the store.
    #[serde(with = "humantime_serde")]
    pub compact_every: Duration,
    /// How long `courier changes` keeps its events (workers started, pauses, replays, failed ranges...):
    /// older ones are deleted by the workers' heartbeat task, a bounded batch at a time.
    #[serde(with = "humantime_serde")]
    pub changes_retention: Duration,
    /// How long a booting process (`run`, `migrate`, `status`, `replay`, `probe`) keeps retrying, with
    /// backoff and jitter, to reach the store and Kafka before it gives up and exits non-zero.
    #[serde(with = "humantime_serde")]
    pub boot_timeout: Duration,
    /// First retry delay of a failed range (exponential with full jitter from here).
    #[serde(with = "humantime_serde")]
    pub retry_base: Duration,
    /// Longest retry delay, also the cap on a destination's `Retry-After` for a range.
    #[serde(with = "humantime_serde")]
    pub retry_cap: Duration,
    /// Routes whose recorded delivery settings this worker may replace with its own
    /// (`courier run --accept-route-changes ROUTE`). Never read from the file: accepting a change is a
    /// one-off decision, and a standing one would let two configurations take turns silently.
    #[serde(skip)]
    pub accept_route_changes: Vec<String>,
    /// A digest of the configuration this worker runs (`courier run` sets it from the file), recorded
    /// with "worker started" so `courier changes` shows when a fleet's configuration changed.
    #[serde(skip)]
    pub config_hash: Option<String>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            delivery_tasks: 8,
            leases_per_task: 8,
            replay_tasks: 1,
            lease_ttl: Duration::from_secs(30),
            renew_every: Duration::from_secs(10),
            poll_interval: Duration::from_millis(100),
            max_idle_poll: Duration::from_secs(1),
            // 35 ms, not 50: at 5,000 msgs/s end-to-end p99 68-69 ms against 103-106, for 18 store
            // transactions per 1,000 messages against 13 (bench latency, three runs each).
            plan_interval: Duration::from_millis(35),
            max_tail_age: Duration::from_millis(200),
            ranges_ahead: 32,
            drain_timeout: Duration::from_secs(15),
            heartbeat_every: Duration::from_secs(5),
            compact_every: Duration::from_secs(10),
            changes_retention: Duration::from_secs(30 * 24 * 3600),
            boot_timeout: Duration::from_secs(60),
            retry_base: Duration::from_millis(500),
            retry_cap: Duration::from_secs(300),
            accept_route_changes: Vec::new(),
            config_hash: None,
        }
    }
}

impl WorkerConfig {
    pub fn backoff(&self) -> Backoff {
        Backoff {
            base: self.retry_base,
            cap: self.retry_cap,
        }
    }

    /// Cross-field rules. `longest_destination_timeout` is the largest per-request timeout of any
    /// destination: a lease must outlive a renewal interval plus one request, or a healthy but slow
    /// delivery loses its lease and the range is delivered twice.
    pub fn validate(&self, longest_destination_timeout: Duration) -> Result<(), String> {
        if self.delivery_tasks == 0 {
            return Err("worker.delivery_tasks is 0: set at least 1".into());
        }
        if self.leases_per_task == 0 {
            return Err("worker.leases_per_task is 0: set at least 1".into());
        }
        for (key, value) in [
            ("lease_ttl", self.lease_ttl),
            ("renew_every", self.renew_every),
            ("poll_interval", self.poll_interval),
            ("plan_interval", self.plan_interval),
            ("heartbeat_every", self.heartbeat_every),
            ("changes_retention", self.changes_retention),
            ("retry_base", self.retry_base),
        ] {
            if value.is_zero() {
                return Err(format!("worker.{key} is zero: set a positive duration"));
            }
        }
        let needed = self.renew_every + longest_destination_timeout;
        if self.lease_ttl <= needed {
            return Err(format!(
                "worker.lease_ttl ({:?}) must exceed worker.renew_every ({:?}) plus the longest destination timeout ({:?}): \
                 otherwise a slow but healthy delivery loses its lease and is delivered twice. Raise lease_ttl above {:?} \
                 or lower renew_every",
                self.lease_ttl, self.renew_every, longest_destination_timeout, needed
            ));
        }
        if self.ranges_ahead == 0 {
            return Err(
                "worker.ranges_ahead is 0: set at least 1 (the planner would never carve)".into(),
            );
        }
        Ok(())
    }
}

/// Checks the worker's settings, every destination and every route (its own keys, and that its destination
/// is configured), naming the key at fault: `worker.lease_ttl`, `destinations.NAME`,
/// `routes.NAME.destination`. The CLI adds where each named key was set (file:line or the environment).
pub fn validate_delivery<'a>(
    worker: &WorkerConfig,
    destinations: &BTreeMap<String, DestinationConfig>,
    routes: impl IntoIterator<Item = &'a RouteConfig>,
) -> Result<(), String> {
    for (name, destination) in destinations {
        destination
            .validate()
            .map_err(|e| format!("destinations.{name}: {e}"))?;
    }
    let longest_timeout = destinations
        .values()
        .map(|d| d.timeout)
        .max()
        .unwrap_or_default();
    worker.validate(longest_timeout)?;
    for route in routes {
        route.validate()?;
        if !destinations.contains_key(&route.destination) {
            return Err(format!(
                "routes.{}.destination is {:?}, but there is no [destinations.{}] section (known: {}): add it, or name one of those",
                route.name,
                route.destination,
                route.destination,
                destinations.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    Ok(())
}

/// Where a new route starts reading a partition the first time it sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    /// The oldest message Kafka still has.
    #[default]
    Earliest,
    /// Only messages written after the route was first seen.
    Latest,
}

/// One `[routes.NAME]` section: a topic delivered to a destination, with its own progress.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Filled from the section name.
    #[serde(skip)]
    pub name: String,
    /// Kafka topic to read.
    pub topic: String,
    /// Name of a `[destinations.NAME]` section.
    pub destination: String,
    /// `"none"` (fastest) or `"partition"` (each partition delivered in offset order).
    #[serde(default)]
    pub ordering: Ordering,
    /// Offsets per range: the unit of leasing, checkpointing and retry. Bigger ranges mean fewer store
    /// transactions; smaller ones mean less redelivered after a crash.
    #[serde(default = "default_range_size")]
    pub range_size: u32,
    /// A range failing this many times is failed for good (listed, alerted on, replayable).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: i32,
    /// Where the route starts on partitions it has never seen.
    #[serde(default)]
    pub start: StartFrom,
    /// What a message the destination refuses for good (a 4xx such as 400 or 422, or a single message
    /// still too large) does to its range: `"quarantine"` isolates it and delivers the rest, or
    /// `"fail-range"` fails the whole range (the behaviour before quarantine existed).
    #[serde(default)]
    pub on_poison: OnPoison,
    /// A Kafka topic every quarantined message of this route is also written to, with headers naming
    /// the route, the destination's answer and the original topic, partition and offset (Kafka
    /// Connect's `__connect.errors.*` names). Default: none.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
}

/// What a route does with a message its destination refuses for good.
///
/// With `"quarantine"` the partition keeps moving: the refused message is found by bisecting the batch,
/// set aside (listed by `courier status`, replayable with `courier replay --quarantined`) and the rest
/// delivered. On a route with `ordering = "partition"` this means a later message of the same key can
/// reach the destination before the quarantined earlier one is replayed. Where order matters more than
/// progress, `"fail-range"` stops the partition at the range instead, as before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnPoison {
    #[default]
    Quarantine,
    FailRange,
}

fn default_range_size() -> u32 {
    1000
}

fn default_max_attempts() -> i32 {
    10
}

impl RouteConfig {
    /// The settings every worker serving this route must agree on, recorded by the first and compared by
    /// each one that starts (see `courier_store::routes`): where and how its messages are delivered. A new
    /// key is one more line here; routes recorded before it adopt the first worker's value.
    ///
    /// Left out on purpose: the destination's headers and URL credentials (rotating a token worker by
    /// worker must not need a ceremony, and secrets never go to the store), and throughput knobs
    /// (timeouts, batch sizes, in-flight limits) that change no message's destination, body or order.
    pub fn settings(&self, destination: &DestinationConfig) -> RouteSettings {
        let mut settings = RouteSettings::default();
        settings
            .set("destination.url", destination.redacted_url())
            .set("destination.format", destination.format.name())
            .set(
                "ordering",
                match self.ordering {
                    Ordering::None => "none",
                    Ordering::Partition => "partition",
                },
            )
            .set("range_size", self.range_size.to_string());
        settings
    }

    pub fn validate(&self) -> Result<(), String> {
        let name = &self.name;
        if self.topic.trim().is_empty() {
            return Err(format!(
                "routes.{name}.topic is empty: name the Kafka topic to deliver"
            ));
        }
        if self.range_size == 0 {
            return Err(format!(
                "routes.{name}.range_size is 0: use at least 1 (100 to 1000 suits most routes)"
            ));
        }
        if self
            .dead_letter_topic
            .as_ref()
            .is_some_and(|topic| topic.trim().is_empty() || *topic == self.topic)
        {
            return Err(format!(
                "routes.{name}.dead_letter_topic must name a topic other than the route's own ({:?}): remove the key or name a separate topic",
                self.topic
            ));
        }
        if self.dead_letter_topic.is_some() && self.on_poison == OnPoison::FailRange {
            return Err(format!(
                "routes.{name}: dead_letter_topic is set but on_poison = \"fail-range\" never quarantines a message: remove one of them"
            ));
        }
        if self.max_attempts < 1 {
            return Err(format!(
                "routes.{name}.max_attempts is {}: use at least 1",
                self.max_attempts
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_with_the_default_destination_timeout() {
        WorkerConfig::default()
            .validate(Duration::from_secs(10))
            .expect("valid");
    }

    #[test]
    fn a_lease_shorter_than_renewal_plus_a_request_is_refused() {
        let config = WorkerConfig {
            lease_ttl: Duration::from_secs(15),
            ..WorkerConfig::default()
        };
        let err = config
            .validate(Duration::from_secs(10))
            .expect_err("too short");
        assert!(
            err.contains("worker.lease_ttl") && err.contains("renew_every"),
            "{err}"
        );
    }

    #[test]
    fn zero_tasks_and_zero_ttl_are_refused() {
        let err = WorkerConfig {
            delivery_tasks: 0,
            ..WorkerConfig::default()
        }
        .validate(Duration::ZERO)
        .expect_err("0");
        assert!(err.contains("delivery_tasks"));
        let err = WorkerConfig {
            lease_ttl: Duration::ZERO,
            ..WorkerConfig::default()
        }
        .validate(Duration::ZERO)
        .expect_err("0");
        assert!(err.contains("lease_ttl"));
    }

    fn route(destination: &str) -> RouteConfig {
        RouteConfig {
            name: "orders".into(),
            topic: "orders".into(),
            destination: destination.into(),
            ordering: Ordering::None,
            range_size: 100,
            max_attempts: 5,
            start: StartFrom::Earliest,
            on_poison: OnPoison::Quarantine,
            dead_letter_topic: None,
        }
    }

    #[test]
    fn a_route_to_a_missing_destination_and_a_bad_destination_are_refused_naming_the_key() {
        let destinations = BTreeMap::from([(
            "hooks".to_owned(),
            DestinationConfig::new("http://127.0.0.1:9/hooks"),
        )]);
        let worker = WorkerConfig::default();
        validate_delivery(&worker, &destinations, &[route("hooks")]).expect("valid");
        let err = validate_delivery(&worker, &destinations, &[route("hook")]).expect_err("missing");
        assert!(
            err.starts_with("routes.orders.destination is \"hook\"")
                && err.contains("known: hooks"),
            "{err}"
        );
        let bad = BTreeMap::from([("hooks".to_owned(), DestinationConfig::new("not a url"))]);
        let err = validate_delivery(&worker, &bad, &[route("hooks")]).expect_err("bad url");
        assert!(err.starts_with("destinations.hooks: "), "{err}");
    }
}
