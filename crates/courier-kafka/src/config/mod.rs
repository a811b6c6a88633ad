//! Connection settings for every Kafka client courier makes, and the librdkafka properties tuned for
//! reading exact offset ranges.
//!
//! Owns [`KafkaConfig`]: the `[kafka]` section, its defaults and the builders tests and tools use.
//! Nothing else in courier names a librdkafka property. Its parts:
//! - `security`: the TLS and SASL vocabulary ([`SecurityProtocol`], [`SaslMechanism`]) and who courier
//!   is to the brokers, safe to print;
//! - `validate`: the rules checked before any client is created, each error naming the key and what to
//!   write;
//! - `client`: the translation into librdkafka's `ClientConfig` for the range reader, the producer and
//!   the admin client, security settings and `[kafka.extra]` included.
//!
//! Secrets: the SASL password is read from the environment variable `sasl_password_env` names, when a
//! client is created; the configuration holds only the variable's name, so no dump, `Debug` or error
//! can print the password. A password written in the file is refused.

mod client;
mod security;
mod validate;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use security::Redacted;
pub use security::{SaslMechanism, SecurityProtocol};

/// How courier reaches Kafka. Deserializes from the `[kafka]` section of courier's configuration.
///
/// ```toml
/// [kafka]
/// brokers = "127.0.0.1:9092"
/// client_id = "courier"
/// read_timeout = "30s"
/// security_protocol = "sasl_ssl"
/// sasl_mechanism = "SCRAM-SHA-512"
/// sasl_username = "courier"
/// sasl_password_env = "COURIER_KAFKA_PASSWORD"
/// ssl_ca_location = "/etc/courier/kafka-ca.pem"
/// [kafka.extra]
/// "socket.keepalive.enable" = "true"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`. Only used to discover the cluster.
    pub brokers: String,
    /// `client.id` sent to the brokers: how broker logs and quotas name courier.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Extra librdkafka properties (see librdkafka's CONFIGURATION.md), applied last: they override
    /// courier's tuned defaults, so a value here can slow range reads down or make them unsafe
    /// (`auto.offset.reset`, `isolation.level`). The security settings that have keys of their own
    /// below are refused here; others (`ssl.certificate.location` for client certificates, ...) belong
    /// here.
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
    /// How to talk to the brokers: `plaintext` (the default), `ssl` (TLS), `sasl_plaintext` (SASL
    /// without TLS: the password crosses the network in the clear with PLAIN), `sasl_ssl`.
    #[serde(default)]
    pub security_protocol: SecurityProtocol,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`; required with the `sasl_*` protocols.
    #[serde(default)]
    pub sasl_mechanism: Option<SaslMechanism>,
    /// The SASL user; required with the `sasl_*` protocols.
    #[serde(default)]
    pub sasl_username: Option<String>,
    /// The environment variable holding the SASL password, e.g. `COURIER_KAFKA_PASSWORD`; required with
    /// the `sasl_*` protocols. The password itself never goes in the file.
    #[serde(default)]
    pub sasl_password_env: Option<String>,
    /// Refused when set: a password does not belong in a configuration file (see `sasl_password_env`).
    /// Kept as a key only to say so clearly instead of "unknown field".
    #[serde(default, skip_serializing)]
    sasl_password: Option<Redacted>,
    /// PEM file of the CA(s) that signed the brokers' certificates (`ssl` and `sasl_ssl`); unset, the
    /// system's CA store.
    #[serde(default)]
    pub ssl_ca_location: Option<PathBuf>,
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

impl KafkaConfig {
    /// Settings for `brokers` with courier's defaults.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            client_id: default_client_id(),
            extra: BTreeMap::new(),
            read_timeout: default_read_timeout(),
            security_protocol: SecurityProtocol::default(),
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password_env: None,
            sasl_password: None,
            ssl_ca_location: None,
        }
    }

    /// The same settings authenticating with SASL `mechanism` as `username`, the password read from
    /// the environment variable `password_env` (over TLS when `tls`).
    pub fn with_sasl(
        mut self,
        mechanism: SaslMechanism,
        username: impl Into<String>,
        password_env: impl Into<String>,
        tls: bool,
    ) -> Self {
        self.security_protocol = if tls {
            SecurityProtocol::SaslSsl
        } else {
            SecurityProtocol::SaslPlaintext
        };
        self.sasl_mechanism = Some(mechanism);
        self.sasl_username = Some(username.into());
        self.sasl_password_env = Some(password_env.into());
        self
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
