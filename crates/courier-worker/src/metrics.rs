//! Every metric courier emits, named in one place.
//!
//! Names follow StatsD/Prometheus habits: `courier_` prefix, `_total` counters, `_seconds` timings. Labels
//! stay low-cardinality: route, destination, outcome, reason, never offsets or message ids. Paired counters
//! (leased / checkpointed / fenced / failed) rather than fast-moving gauges, so rates survive a lost packet.

use std::time::Duration;

use metrics::{counter, gauge, histogram};

pub const RANGES_LEASED: &str = "courier_ranges_leased_total";
pub const RANGES_CHECKPOINTED: &str = "courier_ranges_checkpointed_total";
pub const RANGES_FENCED: &str = "courier_ranges_fenced_total";
pub const RANGES_RETRIED: &str = "courier_ranges_retried_total";
pub const RANGES_FAILED: &str = "courier_ranges_failed_total";
pub const RANGES_RELEASED: &str = "courier_ranges_released_total";
pub const RANGES_REPLAYED: &str = "courier_ranges_replayed_total";
pub const MESSAGES_DELIVERED: &str = "courier_messages_delivered_total";
pub const DELIVERY_ATTEMPTS: &str = "courier_delivery_attempts_total";
pub const BATCH_LATENCY: &str = "courier_batch_latency_seconds";
pub const END_TO_END_LATENCY: &str = "courier_end_to_end_latency_seconds";
pub const LAG_MESSAGES: &str = "courier_lag_messages";
pub const STORE_ERRORS: &str = "courier_store_errors_total";
pub const KAFKA_ERRORS: &str = "courier_kafka_errors_total";
pub const ISOLATION_REQUESTS: &str = "courier_isolation_requests_total";
pub const MESSAGES_QUARANTINED: &str = "courier_messages_quarantined_total";
pub const DEAD_LETTERS: &str = "courier_dead_letters_total";
pub const OFFSETS_LOST: &str = "courier_offsets_lost_total";

pub fn range_leased(route: &str, count: usize) {
    counter!(RANGES_LEASED, "route" => route.to_owned()).increment(count as u64);
}

pub fn range_checkpointed(route: &str, messages: usize) {
    counter!(RANGES_CHECKPOINTED, "route" => route.to_owned()).increment(1);
    counter!(MESSAGES_DELIVERED, "route" => route.to_owned()).increment(messages as u64);
}

pub fn range_fenced(route: &str) {
    counter!(RANGES_FENCED, "route" => route.to_owned()).increment(1);
}

pub fn range_retried(route: &str) {
    counter!(RANGES_RETRIED, "route" => route.to_owned()).increment(1);
}

pub fn range_failed(route: &str, reason: &'static str) {
    counter!(RANGES_FAILED, "route" => route.to_owned(), "reason" => reason).increment(1);
}

pub fn range_released(route: &str) {
    counter!(RANGES_RELEASED, "route" => route.to_owned()).increment(1);
}

/// A replay range delivered (replays are audited in `courier_replays`; this counts their delivery).
pub fn ranges_replayed(route: &str, count: usize) {
    counter!(RANGES_REPLAYED, "route" => route.to_owned()).increment(count as u64);
}

/// `outcome`: `success`, `retry`, `permanent` or `refused` (not sent: circuit open or `Retry-After`).
pub fn delivery_attempt(route: &str, destination: &str, outcome: &'static str, latency: Duration) {
    counter!(DELIVERY_ATTEMPTS, "route" => route.to_owned(), "destination" => destination.to_owned(), "outcome" => outcome)
        .increment(1);
    if outcome != "refused" {
        histogram!(BATCH_LATENCY, "route" => route.to_owned()).record(latency.as_secs_f64());
    }
}

/// Kafka timestamp of the oldest message of a delivered batch to the destination's acknowledgement: the
/// customer's view of delay (one sample per batch, the worst message of it).
pub fn end_to_end_latency(route: &str, latency: Duration) {
    histogram!(END_TO_END_LATENCY, "route" => route.to_owned()).record(latency.as_secs_f64());
}

pub fn lag(route: &str, messages: i64) {
    gauge!(LAG_MESSAGES, "route" => route.to_owned()).set(messages as f64);
}

pub fn store_error(operation: &'static str) {
    counter!(STORE_ERRORS, "operation" => operation).increment(1);
}

/// An extra request spent bisecting a refused batch (also counted in `courier_delivery_attempts_total`).
pub fn isolation_request(route: &str, destination: &str) {
    counter!(ISOLATION_REQUESTS, "route" => route.to_owned(), "destination" => destination.to_owned())
        .increment(1);
}

/// Messages the destination refused on their own, set aside with their range's checkpoint: alert on any.
pub fn messages_quarantined(route: &str, count: usize) {
    counter!(MESSAGES_QUARANTINED, "route" => route.to_owned()).increment(count as u64);
}

/// Offsets Kafka deleted (retention, `DeleteRecords`) before they were delivered, recorded as losses with
/// their range's checkpoint: alert on any (docs/runbooks/retention.md).
pub fn offsets_lost(route: &str, offsets: u64) {
    counter!(OFFSETS_LOST, "route" => route.to_owned()).increment(offsets);
}

/// Quarantined messages written to the route's dead-letter topic.
pub fn dead_letters(route: &str, count: usize) {
    counter!(DEAD_LETTERS, "route" => route.to_owned()).increment(count as u64);
}

pub fn kafka_error(route: &str, reason: &'static str) {
    counter!(KAFKA_ERRORS, "route" => route.to_owned(), "reason" => reason).increment(1);
}

pub const PROBE_ROUNDS: &str = "courier_probe_rounds_total";
pub const PROBE_MISSING: &str = "courier_probe_missing_messages";
pub const PROBE_DUPLICATES: &str = "courier_probe_duplicates";
pub const PROBE_LATENCY: &str = "courier_probe_end_to_end_latency_seconds";

/// One `courier probe` round: alert on `healthy = false` rounds, on missing messages, on latency.
pub fn probe_round(
    route: &str,
    healthy: bool,
    missing: usize,
    duplicates: usize,
    latencies_ms: &[u64],
) {
    counter!(PROBE_ROUNDS, "route" => route.to_owned(), "outcome" => if healthy { "healthy" } else { "unhealthy" }).increment(1);
    gauge!(PROBE_MISSING, "route" => route.to_owned()).set(missing as f64);
    gauge!(PROBE_DUPLICATES, "route" => route.to_owned()).set(duplicates as f64);
    for latency in latencies_ms {
        histogram!(PROBE_LATENCY, "route" => route.to_owned()).record(*latency as f64 / 1000.0);
    }
}
