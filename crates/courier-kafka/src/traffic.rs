//! Bytes received from the brokers, from librdkafka's statistics: what reading ranges really costs on the
//! wire (prefetch past a range's end, refetches after a re-assignment, protocol overhead included).
//!
//! Owns: [`Traffic`] (a reader's running total, shared by all its consumers, closed ones included),
//! [`ClientTraffic`] (one client's last figures) and the [`RECEIVED_BYTES`] metric.
//!
//! librdkafka reports cumulative counters per broker connection every `statistics.interval.ms`. Each
//! client remembers the last figure per broker and adds only what grew since, so the total never goes
//! down when a broker leaves the statistics (a decommissioned broker, a bootstrap connection closed), and
//! what a consumer received stays counted after it is closed. What a consumer receives after its last
//! statistics and before it closes (under one interval) is not counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Deserialize;

use crate::reader::lock;

/// Bytes received from the brokers by courier's range readers, a counter (no labels).
pub const RECEIVED_BYTES: &str = "courier_kafka_received_bytes_total";

/// The running total of one reader's consumers.
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    received: AtomicU64,
}

impl Traffic {
    pub(crate) fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// One client's share of a [`Traffic`]: its last cumulative figure per broker.
#[derive(Debug)]
pub(crate) struct ClientTraffic {
    total: Arc<Traffic>,
    last: Mutex<HashMap<String, u64>>,
}

/// The part of librdkafka's statistics JSON (STATISTICS.md) this module reads.
#[derive(Deserialize)]
struct Statistics {
    #[serde(default)]
    brokers: HashMap<String, BrokerStatistics>,
}

#[derive(Deserialize)]
struct BrokerStatistics {
    /// Bytes received from this broker since the client was created.
    #[serde(default)]
    rxbytes: u64,
}

impl ClientTraffic {
    pub(crate) fn new(total: Arc<Traffic>) -> Self {
        Self {
            total,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one statistics report (librdkafka's JSON) and adds what was received since the last one.
    pub(crate) fn on_statistics(&self, json: &[u8]) {
        let statistics: Statistics = match serde_json::from_slice(json) {
            Ok(statistics) => statistics,
            Err(error) => {
                // Only the byte counter depends on it; reads are unaffected.
                tracing::debug!(%error, "Could not parse librdkafka's statistics; bytes received are not counted for this interval.");
                return;
            }
        };
        let mut grown = 0_u64;
        {
            let mut last = lock(&self.last);
            for (broker, figures) in statistics.brokers {
                let previous = last.entry(broker).or_insert(0);
                grown = grown.saturating_add(figures.rxbytes.saturating_sub(*previous));
                *previous = (*previous).max(figures.rxbytes);
            }
        }
        if grown > 0 {
            self.total.received.fetch_add(grown, Ordering::Relaxed);
            metrics::counter!(RECEIVED_BYTES).increment(grown);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(brokers: &[(&str, u64)]) -> Vec<u8> {
        let brokers: serde_json::Map<String, serde_json::Value> = brokers
            .iter()
            .map(|(name, rx)| {
                (
                    (*name).to_owned(),
                    serde_json::json!({ "rxbytes": rx, "txbytes": 7 }),
                )
            })
            .collect();
        serde_json::json!({ "name": "c#consumer-1", "rxbytes": 0, "brokers": brokers })
            .to_string()
            .into_bytes()
    }

    #[test]
    fn adds_growth_per_broker_and_keeps_what_closed_clients_received() {
        let total = Arc::new(Traffic::default());
        let first = ClientTraffic::new(Arc::clone(&total));
        first.on_statistics(&report(&[("k:9092/bootstrap", 100), ("k:9092/1", 1_000)]));
        assert_eq!(total.received(), 1_100);
        // The bootstrap connection left the report; broker 1 grew by 500.
        first.on_statistics(&report(&[("k:9092/1", 1_500)]));
        assert_eq!(total.received(), 1_600);
        // The same figures again add nothing.
        first.on_statistics(&report(&[("k:9092/1", 1_500)]));
        assert_eq!(total.received(), 1_600);
        drop(first);

        let second = ClientTraffic::new(Arc::clone(&total));
        second.on_statistics(&report(&[("k:9092/1", 300)]));
        assert_eq!(total.received(), 1_900);
        // Not statistics: ignored.
        second.on_statistics(b"not json");
        assert_eq!(total.received(), 1_900);
    }
}
