//! Connection settings for every Kafka client courier makes, and the librdkafka properties tuned for
//! reading exact offset ranges.
//!
//! Owns: [`KafkaConfig`] and the translation into librdkafka's `ClientConfig` for the range reader,
//! the producer and the admin client, security settings included (TLS, SASL: the same for every
//! client). Nothing else in courier names a librdkafka property.
//!
//! Secrets: the SASL password is read from the environment variable `sasl_password_env` names, when a
//! client is created; the configuration holds only the variable's name, so no dump, `Debug` or error
//! can print the password. A password written in the file is refused.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

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

/// `security.protocol`: whether the connection is encrypted (TLS) and whether SASL authenticates it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    /// librdkafka's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }

    fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }
}

/// `sasl.mechanism`: how the SASL user proves who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The mechanism's name, as Kafka and librdkafka spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// A value that is never printed: `Debug` shows `***`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
struct Redacted(String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// librdkafka properties that have first-class keys, refused in `[kafka.extra]`: one place to say
/// each, and no password in the file by another name.
const FIRST_CLASS: &[(&str, &str)] = &[
    ("security.protocol", "security_protocol"),
    ("sasl.mechanism", "sasl_mechanism"),
    ("sasl.mechanisms", "sasl_mechanism"),
    ("sasl.username", "sasl_username"),
    ("sasl.password", "sasl_password_env"),
    ("ssl.ca.location", "ssl_ca_location"),
    ("bootstrap.servers", "brokers"),
    ("metadata.broker.list", "brokers"),
];

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

    /// Checks the broker list's form and the security settings, before any client is created: each
    /// error names the key and what to write.
    pub fn validate(&self) -> Result<(), String> {
        validate_brokers(&self.brokers)?;
        for (property, key) in FIRST_CLASS {
            if self.extra.contains_key(*property) {
                return Err(format!(
                    "kafka.extra.\"{property}\" is set, but courier has a key for it: write kafka.{key} \
                     instead (see courier.example.toml), so every client gets it and no secret sits in the file"
                ));
            }
        }
        if self.sasl_password.is_some() {
            return Err("kafka.sasl_password is set: courier does not read passwords from its \
                 configuration file (it is copied, diffed and printed). Put the password in an environment \
                 variable and name that variable, e.g. sasl_password_env = \"COURIER_KAFKA_PASSWORD\""
                .to_owned());
        }
        let sasl_keys = [
            ("sasl_mechanism", self.sasl_mechanism.is_some()),
            ("sasl_username", self.sasl_username.is_some()),
            ("sasl_password_env", self.sasl_password_env.is_some()),
        ];
        if self.security_protocol.sasl() {
            let example = [
                "sasl_mechanism = \"SCRAM-SHA-512\"",
                "sasl_username = \"courier\"",
                "sasl_password_env = \"COURIER_KAFKA_PASSWORD\"",
            ];
            for ((key, set), example) in sasl_keys.iter().zip(example) {
                if !set {
                    return Err(format!(
                        "kafka.{key} is missing: kafka.security_protocol is {} and SASL needs a mechanism, \
                         a user and the environment variable holding the password; write e.g. {example}",
                        self.security_protocol.as_str()
                    ));
                }
            }
            if let Some(variable) = &self.sasl_password_env {
                match std::env::var(variable) {
                    Ok(value) if !value.is_empty() => {}
                    _ => {
                        return Err(format!(
                            "kafka.sasl_password_env names the environment variable {variable}, which is \
                             not set (or empty) in courier's environment: set it to the SASL password of \
                             user {:?} (systemd: EnvironmentFile=; Kubernetes: a secretKeyRef)",
                            self.sasl_username.as_deref().unwrap_or_default()
                        ))
                    }
                }
            }
        } else if let Some((key, _)) = sasl_keys.iter().find(|(_, set)| *set) {
            return Err(format!(
                "kafka.{key} is set but kafka.security_protocol is {}, which does not use SASL: set \
                 security_protocol = \"sasl_ssl\" (or \"sasl_plaintext\" on a trusted network), or remove {key}",
                self.security_protocol.as_str()
            ));
        }
        if self.ssl_ca_location.is_some() && !self.security_protocol.tls() {
            return Err(format!(
                "kafka.ssl_ca_location is set but kafka.security_protocol is {}, which does not use TLS: \
                 set security_protocol = \"ssl\" or \"sasl_ssl\", or remove ssl_ca_location",
                self.security_protocol.as_str()
            ));
        }
        if let Some(path) = &self.ssl_ca_location {
            if !path.is_file() {
                return Err(format!(
                    "kafka.ssl_ca_location is {}, which is not a readable file: point it at the PEM file of \
                     the CA that signed the brokers' certificates",
                    path.display()
                ));
            }
        }
        Ok(())
    }

    /// Who courier is to the brokers, safe to print: `SASL SCRAM-SHA-256 as user "courier" (password
    /// from COURIER_KAFKA_PASSWORD) over TLS`, or `no authentication, TLS`.
    pub fn identity(&self) -> String {
        let tls = if self.security_protocol.tls() {
            "TLS"
        } else {
            "no TLS"
        };
        match (self.security_protocol.sasl(), self.sasl_mechanism) {
            (true, Some(mechanism)) => format!(
                "SASL {} as user {:?} (password from {}), {tls}",
                mechanism.as_str(),
                self.sasl_username.as_deref().unwrap_or_default(),
                self.sasl_password_env.as_deref().unwrap_or("?"),
            ),
            _ => format!("no authentication, {tls}"),
        }
    }

    /// Whether the brokers can refuse courier's credentials or certificate chain (SASL or TLS).
    pub(crate) fn can_be_refused(&self) -> bool {
        self.security_protocol != SecurityProtocol::Plaintext
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

/// `host:port[,host:port...]` (librdkafka also takes `proto://host:port`); names the first bad entry.
fn validate_brokers(brokers: &str) -> Result<(), String> {
    const EXAMPLE: &str = "e.g. brokers = \"kafka1:9092,kafka2:9092\"";
    if brokers.trim().is_empty() {
        return Err(format!(
            "kafka.brokers is empty: write the bootstrap brokers as host:port, comma-separated, {EXAMPLE}"
        ));
    }
    for entry in brokers.split(',').map(str::trim) {
        let address = entry.split_once("://").map_or(entry, |(_, rest)| rest);
        let well_formed = address.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && !host.contains(char::is_whitespace)
                && port.parse::<u16>().is_ok_and(|port| port > 0)
        });
        if !well_formed {
            let what = if entry.is_empty() {
                "an empty entry (a stray comma)".to_owned()
            } else {
                format!("{entry:?}, which is not host:port")
            };
            return Err(format!(
                "kafka.brokers has {what}: write each broker as host:port with its port, \
                 comma-separated, {EXAMPLE}"
            ));
        }
    }
    Ok(())
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

    fn refusal(text: &str) -> String {
        match toml::from_str::<KafkaConfig>(text) {
            Ok(config) => config.validate().err().unwrap_or_else(|| "accepted".into()),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn a_password_in_the_file_is_refused_pointing_at_the_environment() {
        let message = refusal(
            r#"
            brokers = "k:9092"
            security_protocol = "sasl_ssl"
            sasl_mechanism = "PLAIN"
            sasl_username = "courier"
            sasl_password = "hunter2"
            "#,
        );
        assert!(
            message.contains("kafka.sasl_password is set") && message.contains("sasl_password_env"),
            "{message}"
        );
        let message = refusal(
            r#"
            brokers = "k:9092"
            [extra]
            "sasl.password" = "hunter2"
            "#,
        );
        assert!(
            message.contains("kafka.extra.\"sasl.password\"")
                && message.contains("kafka.sasl_password_env"),
            "{message}"
        );
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn sasl_settings_must_be_complete_and_their_variable_set() {
        let message = refusal(
            r#"
            brokers = "k:9092"
            security_protocol = "sasl_plaintext"
            sasl_mechanism = "SCRAM-SHA-256"
            sasl_password_env = "PATH"
            "#,
        );
        assert!(
            message.contains("kafka.sasl_username is missing"),
            "{message}"
        );
        let message = refusal(
            r#"
            brokers = "k:9092"
            security_protocol = "sasl_plaintext"
            sasl_mechanism = "SCRAM-SHA-256"
            sasl_username = "courier"
            sasl_password_env = "COURIER_TEST_UNSET_VARIABLE_4711"
            "#,
        );
        assert!(
            message.contains("COURIER_TEST_UNSET_VARIABLE_4711, which is not set"),
            "{message}"
        );
        let message = refusal("brokers = \"k:9092\"\nsasl_username = \"courier\"");
        assert!(message.contains("does not use SASL"), "{message}");
        let message = refusal("brokers = \"k:9092\"\nsasl_mechanism = \"SCRAM-SHA-1\"");
        assert!(message.contains("SCRAM-SHA-1"), "{message}");
        let message = refusal("brokers = \"k:9092\"\nssl_ca_location = \"/etc/hosts\"");
        assert!(message.contains("does not use TLS"), "{message}");
    }

    #[test]
    fn the_broker_list_names_its_bad_entry() {
        assert_eq!(
            validate_brokers("k1:9092, k2:9092,[::1]:9092,ssl://k3:9093"),
            Ok(())
        );
        for (brokers, needle) in [
            ("k1:9092,k2", "\"k2\", which is not host:port"),
            ("k1:9092,", "an empty entry"),
            ("k1:notaport", "\"k1:notaport\""),
            (":9092", "\":9092\""),
            ("", "kafka.brokers is empty"),
        ] {
            let message = validate_brokers(brokers).expect_err(brokers);
            assert!(message.contains(needle), "{brokers}: {message}");
        }
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
