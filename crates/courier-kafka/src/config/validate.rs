//! The `[kafka]` rules checked before any client is created: the broker list's form, the security
//! settings complete and consistent, no security setting or password in `[kafka.extra]`. Each error
//! names the key and what to write.

use super::KafkaConfig;

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

impl KafkaConfig {
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
}
