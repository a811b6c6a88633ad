//! The translation of [`KafkaConfig`] into librdkafka's `ClientConfig` for each client courier makes
//! (range reader, producer, admin), with the properties tuned for reading exact offset ranges (each one
//! commented with why), the security settings every client shares, and `[kafka.extra]` applied last.

use std::collections::BTreeMap;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::ClientConfig;

use super::KafkaConfig;

/// The `group.id` range readers use when `extra` names none. librdkafka refuses `assign()` without a
/// group id, but a reader never subscribes, so it never joins the group, and it never commits: the store
/// owns progress. Every worker may share it.
pub const READER_GROUP_ID: &str = "courier-range-reader";

impl KafkaConfig {
    fn base(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id)
            .set("security.protocol", self.security_protocol.as_str())
            // librdkafka's own lines up to INFO reach courier's context, which picks their tracing level
            // (rdkafka would otherwise derive it from the `log` crate's filter, usually ERROR only).
            .set_log_level(RDKafkaLogLevel::Info);
        if self.security_protocol.sasl() {
            if let Some(mechanism) = self.sasl_mechanism {
                config.set("sasl.mechanism", mechanism.as_str());
            }
            if let Some(username) = &self.sasl_username {
                config.set("sasl.username", username);
            }
            // Read now, not kept: validate() has checked it is set; unset later, the broker says so.
            if let Some(password) = self
                .sasl_password_env
                .as_deref()
                .and_then(|variable| std::env::var(variable).ok())
            {
                config.set("sasl.password", password);
            }
        }
        if let Some(path) = &self.ssl_ca_location {
            config.set("ssl.ca.location", path.display().to_string());
        }
        config
    }

    /// Every property courier sets for a range reader, the SASL password shown as `***`: what
    /// `check-config` prints and tests compare.
    pub fn reader_properties(&self) -> BTreeMap<String, String> {
        let config = self.reader_client_config();
        config
            .config_map()
            .into_iter()
            .map(|(key, value)| {
                let value = if key == "sasl.password" { "***" } else { value };
                (key.to_owned(), value.to_owned())
            })
            .collect()
    }

    /// Creates (and drops) a client offline with every property courier would set, so librdkafka
    /// checks the property names and values of `[kafka.extra]` now rather than when a worker starts.
    /// librdkafka connects to no broker for this. The error names the offending property.
    pub fn check_properties(&self) -> Result<(), String> {
        use rdkafka::consumer::BaseConsumer;
        let mut config = self.reader_client_config();
        // No broker is contacted: librdkafka checks the properties when the client is created and
        // connects only to the bootstrap brokers it is given.
        config.remove("bootstrap.servers");
        // A placeholder, so a missing password variable does not hide the property check.
        if self.security_protocol.sasl() && config.get("sasl.password").is_none() {
            config.set("sasl.password", "unused");
        }
        config
            .create::<BaseConsumer>()
            .map(drop)
            .map_err(|error| format!("librdkafka refused the client configuration: {error}"))
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
    use std::path::PathBuf;

    use super::*;
    use crate::config::SaslMechanism;

    #[test]
    fn extra_properties_override_the_tuned_defaults() {
        let config = KafkaConfig::new("127.0.0.1:9092").with_extra("fetch.wait.max.ms", "50");
        let client = config.reader_client_config();
        assert_eq!(client.get("fetch.wait.max.ms"), Some("50"));
        assert_eq!(client.get("auto.offset.reset"), Some("error"));
        assert_eq!(client.get("enable.auto.commit"), Some("false"));
        assert_eq!(client.get("isolation.level"), Some("read_committed"));
    }

    fn sasl_ssl() -> KafkaConfig {
        let mut config = KafkaConfig::new("k1:9093,k2:9093").with_sasl(
            SaslMechanism::ScramSha512,
            "courier",
            "PATH",
            true,
        );
        config.ssl_ca_location = Some(PathBuf::from("/etc/courier/kafka-ca.pem"));
        config
    }

    #[test]
    fn every_client_gets_the_security_settings_and_the_password_is_never_shown() {
        let config = sasl_ssl();
        let password = std::env::var("PATH").expect("PATH is set for tests");
        for client in [
            config.reader_client_config(),
            config.producer_client_config(),
            config.admin_client_config(),
        ] {
            assert_eq!(client.get("security.protocol"), Some("sasl_ssl"));
            assert_eq!(client.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
            assert_eq!(client.get("sasl.username"), Some("courier"));
            assert_eq!(client.get("sasl.password"), Some(password.as_str()));
            assert_eq!(
                client.get("ssl.ca.location"),
                Some("/etc/courier/kafka-ca.pem")
            );
        }
        let shown = config.reader_properties();
        assert_eq!(shown.get("sasl.password").map(String::as_str), Some("***"));
        assert!(!format!("{config:?}{shown:?}").contains(&password));
        assert_eq!(
            config.identity(),
            "SASL SCRAM-SHA-512 as user \"courier\" (password from PATH), TLS"
        );
        let plain = KafkaConfig::new("k:9092").reader_client_config();
        assert_eq!(plain.get("security.protocol"), Some("plaintext"));
        assert_eq!(plain.get("sasl.username"), None);
    }

    #[test]
    fn unknown_extra_properties_are_refused_offline_naming_them() {
        let config = KafkaConfig::new("127.0.0.1:1").with_extra("fetch.wait.max.msec", "5");
        let message = config.check_properties().expect_err("unknown property");
        assert!(message.contains("fetch.wait.max.msec"), "{message}");
        assert_eq!(
            KafkaConfig::new("127.0.0.1:1")
                .with_extra("fetch.wait.max.ms", "5")
                .check_properties(),
            Ok(())
        );
        let mut sasl = sasl_ssl().with_extra("socket.keepalive.enable", "true");
        // librdkafka loads the CA file when the client is made: none here.
        sasl.ssl_ca_location = None;
        assert_eq!(
            sasl.check_properties(),
            Ok(()),
            "TLS and SCRAM are built in"
        );
    }
}
