//! Connection settings for every Kafka client courier makes, and the librdkafka properties tuned for
//! reading exact offset ranges.
//!
//! Owns: [`KafkaConfig`] and the translation into librdkafka's `ClientConfig` for the range reader,
//! the producer and the admin client. Nothing else in courier names a librdkafka property.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::ClientConfig;
use serde::Deserialize;

/// How courier reaches Kafka. Deserializes from the `[kafka]` section of courier's configuration.
///
/// ```toml
/// [kafka]
/// brokers = "127.0.0.1:9092"
/// client_id = "courier"
/// read_timeout = "30s"
/// [kafka.extra]
/// "socket.keepalive.enable" = "true"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`. Only used to discover the cluster.
    pub brokers: String,
    /// `client.id` sent to the brokers: how broker logs and quotas name courier.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Extra librdkafka properties (see librdkafka's CONFIGURATION.md), applied last: they override
    /// courier's tuned defaults, so a value here can slow range reads down or make them unsafe
    /// (`auto.offset.reset`, `isolation.level`). Security settings (`security.protocol`, `sasl.*`)
    /// belong here.
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
    /// Upper bound on one range read, one metadata or watermark query, and one admin call. A broker that
    /// is down or stuck turns into a retryable timeout error after this long instead of a hang.
    #[serde(default = "default_read_timeout", with = "humantime_serde")]
    pub read_timeout: Duration,
}

fn default_client_id() -> String {
    "courier".to_owned()
}

fn default_read_timeout() -> Duration {
    Duration::from_secs(30)
}

/// The `group.id` range readers use when `extra` names none. librdkafka refuses `assign()` without a
/// group id, but a reader never subscribes, so it never joins the group, and it never commits: the store
/// owns progress. Every worker may share it.
pub const READER_GROUP_ID: &str = "courier-range-reader";

impl KafkaConfig {
    /// Settings for `brokers` with courier's defaults.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            client_id: default_client_id(),
            extra: BTreeMap::new(),
            read_timeout: default_read_timeout(),
        }
    }

    /// The same settings with another read timeout.
    pub fn with_read_timeout(mut self, read_timeout: Duration) -> Self {
        self.read_timeout = read_timeout;
        self
    }

    /// The same settings plus one librdkafka property (overrides courier's defaults).
    pub fn with_extra(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    fn base(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id)
            // librdkafka's own lines up to INFO reach courier's context, which picks their tracing level
            // (rdkafka would otherwise derive it from the `log` crate's filter, usually ERROR only).
            .set_log_level(RDKafkaLogLevel::Info);
        config
    }

    fn with_extras(&self, mut config: ClientConfig) -> ClientConfig {
        for (key, value) in &self.extra {
            config.set(key, value);
        }
        config
    }

    /// librdkafka settings of a range reader's consumer. Each choice is measured or required for
    /// reading exactly `[start, end)`; see DESIGN.md, "Reading a range from Kafka".
    pub(crate) fn reader_client_config(&self) -> ClientConfig {
        let mut config = self.base();
        config
            .set("group.id", READER_GROUP_ID)
            // The store owns progress: nothing is ever committed to Kafka, not even by accident.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Never jump silently: an offset deleted by retention (or not yet written) must surface as an
            // error the reader turns into `ReadError::Retention` or `ReadError::NotYetWritten`.
            .set("auto.offset.reset", "error")
            // Tells the reader when it has consumed everything the broker has, so a range whose tail holds
            // no deliverable message (transaction markers, aborted records) ends instead of waiting.
            .set("enable.partition.eof", "true")
            // A fetch at the tail waits at most this long for new data: with the default (500 ms) every
            // range read at the tail took ~501 ms; with 10 ms, ~10 ms.
            .set("fetch.wait.max.ms", "10")
            // librdkafka >= 2.4 (rdkafka 0.39 bundles 2.12): pause before refetching once the local queue
            // is full. The default (1000 ms) made reads 4-7x slower than this.
            .set("fetch.queue.backoff.ms", "10")
            // Retry a failed fetch (leader moved, broker restarting) sooner than the default 500 ms.
            .set("fetch.error.backoff.ms", "100")
            // read_committed: records of aborted transactions are never delivered to a destination (a POST
            // cannot be taken back). They, and the transaction markers, leave offset gaps the reader steps
            // over. The cost: reads and the planner's watermarks stop at the last stable offset, so an
            // open transaction holds delivery back until it commits or times out. Producers that do not
            // use transactions see no difference (their last stable offset is the high watermark).
            .set("isolation.level", "read_committed")
            // Prefetch at most this much per partition while a range is being read (default 64 MiB).
            .set("queued.max.messages.kbytes", "16384")
            // Statistics once a second: the reader counts the bytes received from them
            // (`RangeReader::bytes_received`). Parsing one report costs tens of microseconds.
            .set("statistics.interval.ms", "1000");
        self.with_extras(config)
    }

    /// librdkafka settings of the producer: every message acknowledged by all in-sync replicas, no
    /// duplicates from internal retries.
    pub(crate) fn producer_client_config(&self) -> ClientConfig {
        let mut config = self.base();
        config
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set(
                "message.timeout.ms",
                self.read_timeout.as_millis().max(1).to_string(),
            );
        self.with_extras(config)
    }

    /// librdkafka settings of the admin client.
    pub(crate) fn admin_client_config(&self) -> ClientConfig {
        let config = self.base();
        self.with_extras(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_properties_override_the_tuned_defaults() {
        let config = KafkaConfig::new("127.0.0.1:9092").with_extra("fetch.wait.max.ms", "50");
        let client = config.reader_client_config();
        assert_eq!(client.get("fetch.wait.max.ms"), Some("50"));
        assert_eq!(client.get("auto.offset.reset"), Some("error"));
        assert_eq!(client.get("enable.auto.commit"), Some("false"));
        assert_eq!(client.get("isolation.level"), Some("read_committed"));
    }

    #[test]
    fn deserializes_with_defaults_and_rejects_unknown_fields() {
        let config: KafkaConfig = toml::from_str(
            r#"
            brokers = "k1:9092,k2:9092"
            read_timeout = "5s"
            [extra]
            "socket.keepalive.enable" = "true"
            "#,
        )
        .expect("valid [kafka] section");
        assert_eq!(config.client_id, "courier");
        assert_eq!(config.read_timeout, Duration::from_secs(5));
        assert_eq!(
            config.reader_client_config().get("socket.keepalive.enable"),
            Some("true")
        );
        let minimal: KafkaConfig = toml::from_str(r#"brokers = "k:9092""#).expect("minimal");
        assert_eq!(minimal, KafkaConfig::new("k:9092"));
        assert!(toml::from_str::<KafkaConfig>("brokers = \"k:9092\"\nbroker = \"typo\"").is_err());
    }
}
