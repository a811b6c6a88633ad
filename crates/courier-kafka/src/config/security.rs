//! How courier's Kafka clients are secured: the `security.protocol` and `sasl.mechanism` vocabulary,
//! the password that is never printed, and who courier is to the brokers.

use serde::{Deserialize, Serialize};

use super::KafkaConfig;

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

    pub(super) fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }

    pub(super) fn tls(self) -> bool {
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
pub(super) struct Redacted(String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl KafkaConfig {
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
}
